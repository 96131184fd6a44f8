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
import functools
import json
import re
import uuid
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from typing import Any, ParamSpec, Protocol, TypeVar

import asyncpg

from ..core import presence
from ..core.broadcasts import CHANNEL as BROADCAST_CHANNEL
from ..core.changes import Change
from ..core.cursors import FOREIGN, PRUNED, Origin
from ..core.feed import ReadResult, Request, Row
from ..core.presence import CHANNEL as PRESENCE_CHANNEL
from ..core.tables import EVERY_TABLE, to_database
from ..exceptions import ConfigurationError, DatabaseError

__all__ = [
    "DRIVER_ERRORS",
    "ChangeReader",
    "PostgresAuthorizerFunction",
    "ReadSession",
]

DRIVER_ERRORS = (
    OSError,
    TimeoutError,
    asyncpg.PostgresError,
    asyncpg.InterfaceError,
    # asyncpg raises this when a connection breaks in the middle of an operation.
    asyncpg.InternalClientError,
)
"""What a driver call may raise when the database or the network fails.

Only the modules of :mod:`broadcaster.postgres` catch these; what they raise
past their public surface is :class:`~broadcaster.exceptions.DatabaseError`.
"""

_P = ParamSpec("_P")
_T = TypeVar("_T")


def _raises_database_error(
    method: Callable[_P, Awaitable[_T]],
) -> Callable[_P, Coroutine[Any, Any, _T]]:
    """``method``, raising :class:`DatabaseError` from the driver's errors."""

    @functools.wraps(method)
    async def wrapper(*args: _P.args, **kwargs: _P.kwargs) -> _T:
        try:
            return await method(*args, **kwargs)
        except DRIVER_ERRORS as exc:
            raise DatabaseError(str(exc) or type(exc).__name__) from exc

    return wrapper


# What a read returns for a tombstone (alias b), shared by both statements below.
_TOMBSTONE = """SELECT 2, chk.k, 'DELETE', b.table_id, b.id, b.version,
       json_build_object('id', b.id, 'table_id', b.table_id, 'version', b.version)::text
"""
# A tombstone whose row is back where it was is older than the row: a re-insert
# or a move back (the row is read too), or a move a later trigger cancelled
# after the BEFORE trigger had written its tombstone (triggers.sql).
_ROW_GONE = (
    "NOT EXISTS (SELECT FROM rows AS live WHERE live.id = b.id AND live.table_id = b.table_id)"
)

# The version a row is read with. The BEFORE trigger draws a row's version
# before the unique check, and that check waits for a concurrent deletion of
# the same id: a re-insert that raced a deletion holds a version older than the
# deletion's tombstone, and a client ordering by version would drop it. Such a
# row is read with the tombstone's version + 1, which no change is ever given
# (the sequence steps by 2, see triggers.sql): newer than the deletion, older
# than any later change of the row, drawn once the deletion had committed. Only
# a row whose last writer inserted it (or moved it in) can have raced, so only
# those cost a lookup.
_READ_VERSION = """CASE WHEN r.inserted_xid IS NOT DISTINCT FROM r.changed_xid
            THEN greatest(r.version, (SELECT max(b.version) + 1 FROM broadcaster_tombstones AS b
                                      WHERE b.table_id = r.table_id AND b.id = r.id))
            ELSE r.version END"""

# A row as clients see it (changes.py: spliced into messages unparsed).
# Timestamps are UTC ISO-8601 so they do not depend on the session's TimeZone.
# Concatenated rather than json_build_object, which looks up how to encode
# each argument's type at every row: a third less of Postgres' CPU per row
# read, and compact (json_build_object writes "key" : value, ...).
_UTC_ISO = """'YYYY-MM-DD"T"HH24:MI:SS.US"Z"'"""
_ROW_JSON = f"""'{{"id":' || to_json(r.id) || ',"table_id":' || to_json(r.table_id)
       || ',"data":' || r.data || ',"enriching_columns":' || to_json(r.enriching_columns)
       || ',"version":' || coalesce(r.read_version::text, 'null')
       || ',"created_at":"' || to_char(r.created_at AT TIME ZONE 'UTC', {_UTC_ISO})
       || '","updated_at":"' || to_char(r.updated_at AT TIME ZONE 'UTC', {_UTC_ISO})
       || '"}}'"""


def _rows(op: str, source: str) -> str:
    """A branch returning the rows that ``source`` (FROM chk, rows AS r ... WHERE) selects.

    OFFSET 0 keeps the subquery apart, so each row's read version (and its
    lookup) is computed once, not once per use.
    """
    return f"""SELECT 3, r.k, {op}, r.table_id, r.id, r.read_version,
       {_ROW_JSON}
FROM (
    SELECT chk.k, chk.since, r.id, r.table_id, r.data, r.enriching_columns, r.created_at,
           r.updated_at, r.inserted_xid, {_READ_VERSION} AS read_version
    {source}
    OFFSET 0
) AS r
"""


# A row changed since the request's snapshot: new to it, or changed.
_CHANGED_OP = """CASE WHEN r.inserted_xid IS NOT NULL
                 AND NOT pg_visible_in_snapshot(r.inserted_xid, r.since)
            THEN 'INSERT' ELSE 'UPDATE' END"""
_EVERY_ROW = _rows(
    "'INSERT'",
    """FROM chk JOIN rows AS r ON r.table_id = chk.t
    WHERE chk.since IS NULL OR chk.reset IS NOT NULL""",
)
_CHANGED_ROWS = _rows(
    _CHANGED_OP,
    """FROM chk JOIN rows AS r
      ON r.table_id = chk.t AND r.changed_xid >= pg_snapshot_xmin(chk.since)
    WHERE chk.since IS NOT NULL AND chk.reset IS NULL
      AND NOT pg_visible_in_snapshot(r.changed_xid, chk.since)""",
)
# Each table_id's rows through the index, as a lateral subquery the planner may
# not flatten: as a join, it hashed the table_ids against a scan of all of
# `rows` (66 ms at 100,000 rows, against 7).
_CHANGED_ROWS_EVERY_TABLE = _rows(
    _CHANGED_OP,
    """FROM chk
    JOIN tids ON chk.t IS NULL AND tids.t IS NOT NULL AND tids.t <> ALL($6::text[])
    CROSS JOIN LATERAL (
        SELECT * FROM rows
        WHERE rows.table_id = tids.t AND rows.changed_xid >= pg_snapshot_xmin(chk.since)
        OFFSET 0
    ) AS r
    WHERE chk.reset IS NULL AND NOT pg_visible_in_snapshot(r.changed_xid, chk.since)""",
)

# One statement: a request k reads table t since snapshot `since` (rows and
# tombstones whose transaction is not visible in it), or every row when `since`
# is null or cannot be served. Every row and rows since a cursor are separate
# branches: a single condition OR-ing them keeps the planner from the
# (table_id, changed_xid) index and scans the whole table on every read. The
# `changed_xid >= xmin` join condition is what lets the index serve a catch-up;
# rows written before the triggers were installed have a null changed_xid and
# only come with every row.
_READ = f"""
WITH req AS (
    SELECT k, t, since::pg_snapshot AS since
    FROM unnest($1::int[], $2::text[], $3::text[]) AS u(k, t, since)
), cur AS (
    SELECT pg_current_snapshot() AS s, (SELECT pruned_below FROM broadcaster_state) AS pruned_below
), chk AS (
    SELECT req.k, req.t, req.since,
        CASE
            WHEN req.since IS NULL THEN NULL
            WHEN pg_snapshot_xmax(req.since) > pg_snapshot_xmax(cur.s) THEN $4::text
            WHEN pg_snapshot_xmin(req.since) < cur.pruned_below THEN $5::text
        END AS reset
    FROM req, cur
)
SELECT 0 AS kind, NULL::int AS k, NULL::text AS op, NULL::text AS table_id,
       NULL::text AS id, NULL::bigint AS version, (SELECT s::text FROM cur) AS body
UNION ALL
SELECT 1, chk.k, NULL, NULL, NULL, NULL, chk.reset FROM chk WHERE chk.reset IS NOT NULL
UNION ALL
{_TOMBSTONE}FROM chk JOIN broadcaster_tombstones AS b ON b.table_id = chk.t
WHERE chk.since IS NOT NULL AND chk.reset IS NULL
  AND b.xid >= pg_snapshot_xmin(chk.since) AND NOT pg_visible_in_snapshot(b.xid, chk.since)
  AND {_ROW_GONE}
UNION ALL
{_EVERY_ROW}UNION ALL
{_CHANGED_ROWS}"""

# The same, with requests for every table (a null table_id) but those excluded
# ($6). Only used when a read has one: the table_ids are walked through the
# (table_id, changed_xid) index (a loose index scan, one probe per table_id), so
# writers pay for no index on changed_xid alone.
_READ_EVERY = (
    _READ.replace(
        "WITH req AS",
        """WITH RECURSIVE tids AS (
    SELECT min(table_id) AS t FROM rows
    UNION ALL
    SELECT (SELECT min(r.table_id) FROM rows AS r WHERE r.table_id > tids.t)
    FROM tids WHERE tids.t IS NOT NULL
), req AS""",
        1,
    )
    + f"""UNION ALL
{_TOMBSTONE}FROM chk JOIN broadcaster_tombstones AS b ON chk.t IS NULL
WHERE chk.reset IS NULL AND b.table_id <> ALL($6::text[])
  AND b.xid >= pg_snapshot_xmin(chk.since) AND NOT pg_visible_in_snapshot(b.xid, chk.since)
  AND {_ROW_GONE}
UNION ALL
{_CHANGED_ROWS_EVERY_TABLE}"""
)

_ORIGIN = """
SELECT (SELECT system_identifier FROM pg_control_system()),
       (SELECT oid FROM pg_database WHERE datname = current_database())
"""

# Tombstones older than the retention go; pruned_below moves past the newest
# one removed, so a cursor that had not seen it is refused (history_pruned).
_PRUNE = """
WITH gone AS (
    DELETE FROM broadcaster_tombstones
    WHERE deleted_at < now() - make_interval(secs => $1)
    RETURNING xid
), newest AS (
    SELECT max(xid::text::numeric) AS xid FROM gone
)
UPDATE broadcaster_state
SET pruned_below = greatest(pruned_below, ((SELECT xid FROM newest) + 1)::text::xid8)
WHERE (SELECT xid FROM newest) IS NOT NULL
RETURNING (SELECT count(*) FROM gone)
"""

# Prunes from several server processes must not race; the loser skips its turn.
_PRUNE_LOCK = 0x62726F61_64636173  # "broadcas"


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
    gives it a :class:`ReadSession` that plans it once); ``pool`` runs the rest."""

    def __init__(self, pool: asyncpg.Pool, *, reads: _Fetcher | None = None) -> None:
        self._pool = pool
        self._reads: _Fetcher = pool if reads is None else reads

    @_raises_database_error
    async def origin(self) -> Origin:
        ((system_identifier, database_oid),) = await self._pool.fetch(_ORIGIN)
        return Origin(int(system_identifier), int(database_oid))

    @_raises_database_error
    async def read(self, requests: Sequence[Request]) -> ReadResult:
        arguments = (
            [r.key for r in requests],
            [r.table_id for r in requests],
            [r.since for r in requests],
            FOREIGN,
            PRUNED,
        )
        every = [r for r in requests if r.table_id is EVERY_TABLE]
        if every:
            records = await self._reads.fetch(_READ_EVERY, *arguments, list(every[0].exclude))
        else:
            records = await self._reads.fetch(_READ, *arguments)
        snapshot = ""
        resets: dict[int, str] = {}
        rows: list[Row] = []
        for kind, key, op, table_id, row_id, version, body in records:
            if kind == 0:
                snapshot = body
            elif kind == 1:
                resets[key] = body
            else:
                rows.append(Row(key, Change(op, table_id, row_id, version, body)))
        return ReadResult(snapshot, resets, rows)

    @_raises_database_error
    async def prune(self, retention: float) -> int:
        """Delete tombstones older than ``retention`` seconds; return how many."""
        async with self._pool.acquire() as connection, connection.transaction():
            if not await connection.fetchval("SELECT pg_try_advisory_xact_lock($1)", _PRUNE_LOCK):
                return 0
            removed = await connection.fetchval(_PRUNE, retention)
        return int(removed or 0)

    @_raises_database_error
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

    @_raises_database_error
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

    @_raises_database_error
    async def unregister(self, process: str, tables: Sequence[str | None]) -> None:
        await self._pool.execute(
            "DELETE FROM broadcaster_listeners WHERE process = $1 AND table_id = ANY($2::text[])",
            process,
            [to_database(t) for t in tables],
        )

    @_raises_database_error
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

    @_raises_database_error
    async def broadcast(self, payload: str) -> None:
        """NOTIFY one broadcast to every server process (see core/broadcasts.py)."""
        await self._pool.execute("SELECT pg_notify($1, $2)", BROADCAST_CHANNEL, payload)

    @_raises_database_error
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

    @_raises_database_error
    async def untrack(self, slots: Sequence[str]) -> None:
        """Remove presences and announce them."""
        async with self._pool.acquire() as connection, connection.transaction():
            gone = await connection.fetch(
                "DELETE FROM broadcaster_presence WHERE slot = ANY($1::text[])"
                " RETURNING topic, key, phx_ref, meta::text",
                list(slots),
            )
            await self._announce_leaves(connection, gone)

    @_raises_database_error
    async def presence_state(self, topic: str) -> list[tuple[str, str, Any]]:
        records = await self._pool.fetch(
            "SELECT key, phx_ref, meta::text FROM broadcaster_presence"
            " WHERE topic = $1 ORDER BY slot",
            topic,
        )
        return [(r[0], r[1], json.loads(r[2])) for r in records]

    @_raises_database_error
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

    @_raises_database_error
    async def notification_queue_usage(self) -> float:
        return float(await self._pool.fetchval("SELECT pg_notification_queue_usage()"))


# A function name, schema-qualified or not: it is spliced into the statement.
_FUNCTION_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)?")


class PostgresAuthorizerFunction:
    """The operator's ``f(claims jsonb, table_id text) returns boolean``, called on the pool.

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
        self._query = f"SELECT {name}($1::jsonb, $2::text)"

    @_raises_database_error
    async def allows(self, claims: str, table_id: str) -> bool:
        """Does the function answer true for ``claims`` (a JSON object) and ``table_id``?"""
        pool = self._pool()
        if pool is None:
            raise ConnectionError("the database is not connected yet")
        async with pool.acquire() as connection:
            answer = await connection.fetchval(self._query, claims, table_id)
            # The function is the operator's and may leave session state
            # behind (a SET, an advisory lock); the pool does not reset
            # connections (connections.py).
            await connection.reset()
        return answer is True
