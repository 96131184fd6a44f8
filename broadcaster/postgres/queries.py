"""The statements the server runs on Postgres, outside the LISTEN connection.

:meth:`ChangeReader.read` runs a :class:`~broadcaster.core.feed.Read` as one
statement, so everything it returns, and the snapshot it reports as the next
cursor, come from one snapshot. Every public method of :class:`ChangeReader`
and :class:`PostgresAuthorizerFunction` raises
:class:`~broadcaster.exceptions.DatabaseError` when the database or the network
fails, with the driver's exception as its ``__cause__``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import uuid
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Protocol

import asyncpg

from ..core import presence
from ..core.broadcasts import CHANNEL as BROADCAST_CHANNEL
from ..core.changes import Change
from ..core.cursors import FOREIGN, PRUNED, Origin
from ..core.feed import ReadResult, Request, Row
from ..core.presence import CHANNEL as PRESENCE_CHANNEL
from ..core.tables import EVERY_TABLE, to_database
from ..exceptions import ConfigurationError
from .errors import DRIVER_ERRORS, raises_database_error

__all__ = [
    "ChangeReader",
    "PostgresAuthorizerFunction",
    "ReadSession",
]

# A change-log entry (alias c) as clients see it (changes.py: spliced into
# messages unparsed): the row after the change as logged; for a DELETE, the
# row's identity. Concatenated rather than built as jsonb, which would parse
# and re-encode it.
_ENTRY_ROW = """CASE WHEN c.op = 'DELETE'
            THEN '{"id":' || to_json(c.id) || ',"table_id":' || to_json(c.table_id) || '}'
            ELSE c.new::text END"""
# When the change committed, where Postgres tracks it (track_commit_timestamp);
# else when its transaction started.
_UTC_ISO = """'YYYY-MM-DD"T"HH24:MI:SS.US"Z"'"""
_COMMITTED_AT = f"""to_char(coalesce(
            CASE WHEN current_setting('track_commit_timestamp') = 'on'
                 THEN pg_xact_commit_timestamp(xid(c.xid)) END,
            c.at) AT TIME ZONE 'UTC', {_UTC_ISO})"""
_ENTRY = f"""SELECT 2, chk.k, c.op, c.table_id, c.id, c.seq, {_ENTRY_ROW}, c.old::text,
       {_COMMITTED_AT}
FROM chk JOIN broadcaster_changes AS c"""
# The same, from one scan of the log since the oldest snapshot the requests
# read from, rather than one scan per request (each of every partition's
# index): OFFSET 0 keeps the planner from folding it into a nested loop over
# the requests. A live read of 10 tables took 20 to 25% less time.
_ENTRY_LIVE = _ENTRY.replace(
    "JOIN broadcaster_changes AS c",
    """JOIN (
    SELECT * FROM broadcaster_changes
    WHERE xid >= (
        SELECT min(pg_snapshot_xmin(since)) FROM chk
        WHERE since IS NOT NULL AND reset IS NULL AND NOT compact
    )
    OFFSET 0
) AS c""",
)
# A table's entries since a request's snapshot (aliases chk, c).
_SINCE = """c.table_id = chk.t AND c.xid >= pg_snapshot_xmin(chk.since)
    AND NOT pg_visible_in_snapshot(c.xid, chk.since)"""

# One statement: a request k reads table t's changes since snapshot `since`
# (the log's entries whose transaction is not visible in it), or every row of
# the table when `since` is null or cannot be served (rows' own, or a
# published table's); a request with a null t reads the changes of every
# table of rows but those in $6 (every table is rows' tables: a published
# table is read by its name only). The
# `xid >= xmin` join condition is what lets the log's index serve the read.
# A joining subscriber's catch-up ($7) of more than $8 changes is compacted to
# the latest change of each row, so that a cursor days old costs no more
# memory than a snapshot of the table (docs/guarantees.md).
_READ = f"""
WITH req AS (
    SELECT k, t, since::pg_snapshot AS since
    FROM unnest($1::int[], $2::text[], $3::text[]) AS u(k, t, since)
), catch_up AS (
    SELECT k FROM unnest($1::int[], $7::bool[]) AS u(k, catch_up) WHERE catch_up
), cur AS (
    SELECT pg_current_snapshot() AS s, (SELECT pruned_below FROM broadcaster_state) AS pruned_below,
        (SELECT logged_since FROM broadcaster_state) AS logged_since
), chk AS (
    SELECT req.k, req.t, req.since,
        CASE
            WHEN req.since IS NULL THEN NULL
            WHEN pg_snapshot_xmax(req.since) > pg_snapshot_xmax(cur.s) THEN $4::text
            WHEN pg_snapshot_xmin(req.since) < cur.pruned_below THEN $5::text
            -- A cursor from before the change log (schema revision 0007).
            WHEN NOT pg_visible_in_snapshot(cur.logged_since, req.since) THEN $5::text
        END AS reset,
        -- A catch-up of more than $8 changes is compacted; counted up to $8 + 1.
        req.k IN (SELECT k FROM catch_up) AND (
            SELECT count(*) FROM (
                SELECT FROM broadcaster_changes AS c, (SELECT req.t, req.since) AS chk
                WHERE {_SINCE} LIMIT $8::int + 1
            ) AS n
        ) > $8::int AS compact
    FROM req, cur
)
SELECT 0 AS kind, NULL::int AS k, NULL::text AS op, NULL::text AS table_id,
       NULL::text AS id, NULL::bigint AS version, (SELECT s::text FROM cur) AS body,
       NULL::text AS old, NULL::text AS committed_at
UNION ALL
SELECT 1, chk.k, NULL, NULL, NULL, NULL, chk.reset, NULL, NULL FROM chk WHERE chk.reset IS NOT NULL
UNION ALL
SELECT 3, chk.k, 'INSERT', r.table_id, r.id, 0, to_jsonb(r)::text,
       NULL, NULL
FROM chk JOIN rows AS r ON r.table_id = chk.t
WHERE chk.since IS NULL OR chk.reset IS NOT NULL
UNION ALL
SELECT 3, chk.k, 'INSERT', chk.t, l.id, 0, l.image, NULL, NULL
FROM chk CROSS JOIN LATERAL broadcaster_rows_of(chk.t) AS l
WHERE chk.t IS NOT NULL AND (chk.since IS NULL OR chk.reset IS NOT NULL)
UNION ALL
{_ENTRY_LIVE} ON {_SINCE}
WHERE chk.since IS NOT NULL AND chk.reset IS NULL AND NOT chk.compact
UNION ALL
SELECT * FROM (
    SELECT DISTINCT ON (chk.k, c.id) 2, chk.k, c.op, c.table_id, c.id, c.seq, {_ENTRY_ROW},
           c.old::text, {_COMMITTED_AT}
    FROM chk JOIN broadcaster_changes AS c ON {_SINCE}
    WHERE chk.since IS NOT NULL AND chk.reset IS NULL AND chk.compact
    ORDER BY chk.k, c.id, c.seq DESC
) AS latest
UNION ALL
{_ENTRY} ON chk.t IS NULL AND c.xid >= pg_snapshot_xmin(chk.since)
WHERE chk.reset IS NULL AND c.table_id <> ALL($6::text[])
  AND c.table_id NOT IN (SELECT p.table_id FROM broadcaster_published AS p)
  AND NOT pg_visible_in_snapshot(c.xid, chk.since)
"""

_ORIGIN = """
SELECT (SELECT system_identifier FROM pg_control_system()),
       (SELECT oid FROM pg_database WHERE datname = current_database())
"""

# The change log's partitions, by name (quoted as needed).
_PARTITIONS = """
SELECT p.inhrelid::regclass::text
FROM pg_inherits AS p
WHERE p.inhparent = 'broadcaster_changes'::regclass
ORDER BY 1
"""

# Prunes from several server processes must not race; the loser skips its turn.
_PRUNE_LOCK = 0x62726F61_64636173  # "broadcas"

# How long a prune waits for a partition's lock: a reader or a writer's
# transaction in it delays the prune to a later turn, never the other way.
_PRUNE_LOCK_TIMEOUT = "100ms"


# Seconds a stopping server waits for Postgres to acknowledge closing a session.
_CLOSE_TIMEOUT = 5.0


class _Fetcher(Protocol):
    async def fetch(self, query: str, *args: object) -> list[asyncpg.Record]: ...


class ReadSession:
    """One connection for the read statement, opened on first use and again after it broke.

    Reads run one at a time (the read loop), many times a second: asyncpg's
    pool spent as much Python CPU acquiring and releasing its connection as
    the server spent running the read and decoding what it returned.
    """

    def __init__(self, connect: Callable[[], Awaitable[asyncpg.Connection]]) -> None:
        self._connect = connect
        self._connection: asyncpg.Connection | None = None
        self._lock = asyncio.Lock()

    async def fetch(self, query: str, *args: object) -> list[asyncpg.Record]:
        async with self._lock:
            connection = self._connection
            if connection is None or connection.is_closed():
                connection = self._connection = await self._connect()
            try:
                return await connection.fetch(query, *args)
            except (asyncpg.InterfaceError, asyncpg.InternalClientError, OSError):
                # The connection broke, or was left mid-statement: the next read
                # opens another. A statement error (PostgresError) leaves it usable.
                self._connection = None
                connection.terminate()
                raise
            except BaseException:
                # Cancelled mid-read: asyncpg cancels the statement on the server
                # and the connection stays usable, unless it could not.
                if connection.is_closed():
                    self._connection = None
                raise

    async def close(self) -> None:
        connection, self._connection = self._connection, None
        if connection is not None:
            # asyncpg aborts a connection it could not close in time, or at all.
            with contextlib.suppress(*DRIVER_ERRORS):
                await connection.close(timeout=_CLOSE_TIMEOUT)


class ChangeReader:
    """The server's statements. ``reads``, if given, runs :meth:`read` (connections.py
    gives it a :class:`ReadSession` that plans it once); ``pool`` runs the rest.
    A catch-up of more than ``max_catch_up`` changes is compacted."""

    def __init__(
        self, pool: asyncpg.Pool, *, reads: _Fetcher | None = None, max_catch_up: int = 10_000
    ) -> None:
        self._pool = pool
        self._reads: _Fetcher = pool if reads is None else reads
        self._max_catch_up = max_catch_up

    @raises_database_error
    async def origin(self) -> Origin:
        ((system_identifier, database_oid),) = await self._pool.fetch(_ORIGIN)
        return Origin(int(system_identifier), int(database_oid))

    @raises_database_error
    async def read(self, requests: Sequence[Request]) -> ReadResult:
        arguments = (
            [r.key for r in requests],
            [r.table_id for r in requests],
            [r.since for r in requests],
            FOREIGN,
            PRUNED,
        )
        every = [r for r in requests if r.table_id is EVERY_TABLE]
        exclude = list(every[0].exclude) if every else []
        catch_up = [r.catch_up for r in requests]
        records = await self._reads.fetch(_READ, *arguments, exclude, catch_up, self._max_catch_up)
        snapshot = ""
        resets: dict[int, str] = {}
        rows: list[Row] = []
        for kind, key, op, table_id, row_id, version, body, old, committed_at in records:
            if kind == 0:
                snapshot = body
            elif kind == 1:
                resets[key] = body
            else:
                change = Change(op, table_id, row_id, version, body, old, committed_at)
                rows.append(Row(key, change))
        return ReadResult(snapshot, resets, rows)

    @raises_database_error
    async def prune(self, retention: float) -> int:
        """Empty the change log's partitions whose entries are all older than ``retention``
        seconds; return how many.

        A partition holds an hour of writing transactions (by their start), so
        it goes once its newest entry is an hour older than the retention. In
        the transaction that empties it, ``pruned_below`` moves past its
        newest xid: a read locks the partitions before it takes its snapshot,
        so it sees both or neither, and a cursor that had not seen those
        changes is refused (``history_pruned``).
        """
        emptied = 0
        async with self._pool.acquire() as connection:
            for (partition,) in await connection.fetch(_PARTITIONS):
                async with connection.transaction():
                    if not await connection.fetchval(
                        "SELECT pg_try_advisory_xact_lock($1)", _PRUNE_LOCK
                    ):
                        return emptied
                    emptied += await self._empty_if_old(connection, partition, retention)
        return emptied

    @staticmethod
    async def _empty_if_old(connection: Any, partition: str, retention: float) -> int:
        # The partition's name comes from the catalog (regclass output, quoted
        # as needed); it cannot be a bind parameter.
        newest = f"SELECT xid::text, at < now() - make_interval(secs => $1 + 3600) FROM {partition}"
        newest += " ORDER BY xid DESC LIMIT 1"
        found = await connection.fetchrow(newest, retention)
        if found is None or not found[1]:
            return 0
        try:
            async with connection.transaction():  # a savepoint, for the timeout's error
                await connection.execute(f"SET LOCAL lock_timeout = '{_PRUNE_LOCK_TIMEOUT}'")
                await connection.execute(f"LOCK TABLE {partition} IN ACCESS EXCLUSIVE MODE")
        except asyncpg.LockNotAvailableError:
            return 0
        # Again under the lock: a writer may have just started this hour of the ring.
        found = await connection.fetchrow(newest, retention)
        if found is None or not found[1]:
            return 0
        await connection.execute(
            "UPDATE broadcaster_state"
            " SET pruned_below = greatest(pruned_below, ($1::numeric + 1)::text::xid8)",
            found[0],
        )
        await connection.execute(f"TRUNCATE {partition}")
        return 1

    @raises_database_error
    async def register(
        self,
        process: str,
        tables: Sequence[str | None],
        promised: Sequence[str | None],
        window: float,
    ) -> None:
        """Register ``tables`` for ``process`` with no promise, and promise to read
        ``promised`` for ``window`` seconds (see core/promises.py)."""
        await self._pool.execute(
            "INSERT INTO broadcaster_listeners AS l (table_id, process, polling_until)"
            " SELECT t, $1, CASE WHEN p THEN now() + make_interval(secs => $4)"
            "  ELSE '-infinity'::timestamptz END"
            " FROM unnest($2::text[], $3::bool[]) AS u(t, p)"
            " ON CONFLICT (table_id, process) DO UPDATE"
            " SET polling_until = EXCLUDED.polling_until, seen_at = now()",
            process,
            [to_database(t) for t in (*tables, *promised)],
            [False] * len(tables) + [True] * len(promised),
            window,
        )

    @raises_database_error
    async def horizon(self) -> tuple[int, str]:
        """A fresh xid, above every xid assigned before it, and a snapshot (see core/promises.py).

        It takes an xid and commits: nothing is written but the commit record,
        which need not wait for its flush.
        """
        ((_, xid, snapshot),) = await self._pool.fetch(
            "SELECT set_config('synchronous_commit', 'off', true),"
            " pg_current_xact_id()::text, pg_current_snapshot()::text"
        )
        return int(xid), str(snapshot)

    @raises_database_error
    async def unregister(self, process: str, tables: Sequence[str | None]) -> None:
        await self._pool.execute(
            "DELETE FROM broadcaster_listeners WHERE process = $1 AND table_id = ANY($2::text[])",
            process,
            [to_database(t) for t in tables],
        )

    @raises_database_error
    async def keep_listening(self, process: str, stale_after: float) -> int:
        """Prove ``process`` alive; remove the registrations of processes that stopped doing so.

        Returns how many registrations ``process`` still has.
        """
        async with self._pool.acquire() as connection, connection.transaction():
            await connection.execute(
                "DELETE FROM broadcaster_listeners"
                " WHERE seen_at < now() - make_interval(secs => $1) AND process <> $2",
                stale_after,
                process,
            )
            status = await connection.execute(
                "UPDATE broadcaster_listeners SET seen_at = now() WHERE process = $1", process
            )
        return int(status.split()[-1])

    @raises_database_error
    async def broadcast(self, payload: str) -> None:
        """NOTIFY one broadcast to every server process (see core/broadcasts.py)."""
        await self._pool.execute("SELECT pg_notify($1, $2)", BROADCAST_CHANNEL, payload)

    @raises_database_error
    async def track(self, topic: str, key: str, slot: str, process: str, meta: Any) -> None:
        """Upsert the presence of ``slot`` and announce it, the previous one as a leave.

        Each track gets a new ``phx_ref``: Phoenix clients apply a diff's joins
        before its leaves, matched by ref, so a re-track under the same ref
        would remove the presence it just added.
        """
        meta_json = json.dumps(meta, ensure_ascii=False)
        ref = uuid.uuid4().hex
        async with self._pool.acquire() as connection, connection.transaction():
            previous = await connection.fetchrow(
                "SELECT key, phx_ref, meta::text FROM broadcaster_presence"
                " WHERE slot = $1 FOR UPDATE",
                slot,
            )
            await connection.execute(
                "INSERT INTO broadcaster_presence (slot, phx_ref, topic, key, process, meta)"
                " VALUES ($1, $2, $3, $4, $5, $6::jsonb)"
                " ON CONFLICT (slot) DO UPDATE"
                " SET phx_ref = $2, key = $4, meta = $6::jsonb, seen_at = now()",
                slot,
                ref,
                topic,
                key,
                process,
                meta_json,
            )
            leaves = (
                [] if previous is None else [(previous[0], previous[1], json.loads(previous[2]))]
            )
            for payload in presence.diffs(topic, [(key, ref, meta)], leaves):
                await connection.execute("SELECT pg_notify($1, $2)", PRESENCE_CHANNEL, payload)

    @raises_database_error
    async def untrack(self, slots: Sequence[str]) -> None:
        """Remove presences and announce them."""
        async with self._pool.acquire() as connection, connection.transaction():
            gone = await connection.fetch(
                "DELETE FROM broadcaster_presence WHERE slot = ANY($1::text[])"
                " RETURNING topic, key, phx_ref, meta::text",
                list(slots),
            )
            await self._announce_leaves(connection, gone)

    @raises_database_error
    async def presence_state(self, topic: str) -> list[tuple[str, str, Any]]:
        records = await self._pool.fetch(
            "SELECT key, phx_ref, meta::text FROM broadcaster_presence"
            " WHERE topic = $1 ORDER BY slot",
            topic,
        )
        return [(r[0], r[1], json.loads(r[2])) for r in records]

    @raises_database_error
    async def keep_presence(self, process: str, stale_after: float) -> None:
        """Prove this process alive; remove (and announce) the presences of dead ones."""
        async with self._pool.acquire() as connection, connection.transaction():
            await connection.execute(
                "UPDATE broadcaster_presence SET seen_at = now() WHERE process = $1", process
            )
            gone = await connection.fetch(
                "DELETE FROM broadcaster_presence"
                " WHERE seen_at < now() - make_interval(secs => $1)"
                " RETURNING topic, key, phx_ref, meta::text",
                stale_after,
            )
            await self._announce_leaves(connection, gone)

    @staticmethod
    async def _announce_leaves(connection: Any, gone: Sequence[Any]) -> None:
        # One NOTIFY per presence: a diff of many (a process that died with
        # thousands of clients) would not fit in NOTIFY's 8000 bytes.
        for topic, key, ref, meta in gone:
            await connection.execute(
                "SELECT pg_notify($1, $2)",
                PRESENCE_CHANNEL,
                presence.diff(topic, [], [(key, ref, json.loads(meta))]),
            )

    @raises_database_error
    async def notification_queue_usage(self) -> float:
        return float(await self._pool.fetchval("SELECT pg_notification_queue_usage()"))


# A function name, schema-qualified or not: it is spliced into the statement.
_FUNCTION_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)?")


class PostgresAuthorizerFunction:
    """The operator's ``f(claims jsonb, table_id text[, binding jsonb]) returns boolean``,
    called on the pool: with the binding if the function takes it.

    ``pool`` is looked up at each call: the server's pool is opened after the
    authorizer is built, and a call before then fails like a lost database.
    """

    def __init__(self, pool: Callable[[], asyncpg.Pool | None], name: str) -> None:
        if not _FUNCTION_NAME.fullmatch(name):
            raise ConfigurationError(
                f"authorizer must be a function name like broadcaster_authorize, not {name!r}"
            )
        self.name = name
        self._pool = pool
        # The name is validated above; it cannot be a bind parameter.
        self._with_binding = f"SELECT {name}($1::jsonb, $2::text, $3::jsonb)"
        self._without = f"SELECT {name}($1::jsonb, $2::text)"
        self._takes_binding: bool | None = None

    @raises_database_error
    async def allows(self, claims: str, table_id: str, binding: str | None) -> bool:
        """Does the function answer true for ``claims`` (a JSON object), ``table_id``
        and ``binding`` (a JSON object, or None)?"""
        pool = self._pool()
        if pool is None:
            raise ConnectionError("the database is not connected yet")
        async with pool.acquire() as connection:
            if self._takes_binding is None:
                # Asked once: a deployment changes its function's signature
                # with a restart.
                self._takes_binding = bool(
                    await connection.fetchval(
                        "SELECT to_regprocedure($1 || '(jsonb, text, jsonb)') IS NOT NULL",
                        self.name,
                    )
                )
            if self._takes_binding:
                answer = await connection.fetchval(self._with_binding, claims, table_id, binding)
            else:
                answer = await connection.fetchval(self._without, claims, table_id)
            # The function is the operator's and may leave session state
            # behind (a SET, an advisory lock); the pool does not reset
            # connections (connections.py).
            await connection.reset()
        return answer is True
