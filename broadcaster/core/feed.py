"""The changefeed of one server process: what to read next, and where the results go.

Sans-I/O. Every delivery comes from a *read*: one SQL statement, with one
snapshot, that returns the rows and tombstones of some tables whose transaction
is not visible in a given snapshot (or every row of a table, for a snapshot
load), together with its own snapshot. That snapshot is the next cursor, so a
cursor is exactly "everything visible in it has been read" and no commit order
or NOTIFY ordering is trusted.

The feed keeps, for every *live* table (one with subscribers), the snapshot of
the last read that covered it. A wake-up marks a live table to be read again
from there. A subscriber *joins* a table at the next read: that read also
returns its catch-up (from its cursor) or snapshot (every row), it is answered
with the read's cursor, and from then on it receives every live batch of the
table. Because the join and the live stream meet at one snapshot, nothing is
missed between catch-up and live.

A join of :data:`~broadcaster.core.tables.EVERY_TABLE` (``None``) makes every table
live from its read's snapshot (``all_since``): a wake-up of any table then reads
it from its own snapshot, or from ``all_since`` if it has none, and a read of
every live table also reads every other table from ``all_since`` (one request
with no table_id, which excludes the tables read by their own request).

Driving it: :meth:`Feed.plan`, given the database's origin, returns the next
:class:`Read` (or ``None``); the caller runs it against the database, hands the
:class:`ReadResult` to :meth:`Feed.complete` (or calls :meth:`Feed.failed`),
then publishes the live batches and answers the joins it returns, in that order.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

from ..exceptions import CursorError
from . import cursors
from .changes import Change
from .cursors import Origin, Snapshot
from .hub import Batch
from .tables import EVERY_TABLE

__all__ = ["Feed", "Join", "JoinResult", "Read", "ReadResult", "Request", "Row"]


@dataclass(frozen=True)
class JoinResult:
    """What a joining subscriber receives: maybe a reset, its catch-up, its cursor, and
    for a published table what Postgres decided on the catch-up's changes (as
    :attr:`Batch.checks <broadcaster.core.hub.Batch>`)."""

    reset: str | None
    changes: list[Change]
    cursor: str
    checks: Mapping[Hashable, Sequence[bool]] = field(default_factory=dict)


@dataclass(eq=False)
class Join:
    """A subscriber waiting to join ``table_id`` (or every table) at the next read.

    ``cursor`` resumes after a cursor the server gave; ``snapshot`` asks for
    every row. With neither, the join only waits for the read that makes it
    live. A cursor that cannot be served turns into a reset followed by every
    row: the feed sets ``reset`` when it decodes the cursor, or the read does.
    """

    table_id: str | None
    on_joined: Callable[[JoinResult], None]
    cursor: str | None = None
    snapshot: bool = False
    since: Snapshot | None = field(default=None, init=False)
    reset: str | None = field(default=None, init=False)
    cancelled: bool = field(default=False, init=False)

    def decode_cursor(self, origin: Origin) -> None:
        if self.cursor is None or self.reset is not None:
            return
        try:
            self.since = cursors.decode(self.cursor, origin)
        except CursorError as exc:
            self.reset = exc.reason

    @property
    def request_since(self) -> str | None:
        """The snapshot to read from, or ``None`` for every row."""
        if self.reset is None and self.since is not None:
            return self.since.text
        return None

    @property
    def wants_rows(self) -> bool:
        if self.table_id is EVERY_TABLE:
            # Every table has no history or snapshot to offer: it only goes live.
            return False
        return self.reset is not None or self.since is not None or self.snapshot


@dataclass(frozen=True)
class Request:
    """One part of a read: a table's changes since a snapshot, or all its rows.

    ``table_id`` :data:`EVERY_TABLE` reads the changes of every table but those in
    ``exclude`` (``since`` is then always set). ``catch_up`` marks a joining
    subscriber's catch-up, which the read may compact (the latest change of
    each row) when it holds too many changes; a live table's read never is.
    """

    key: int
    table_id: str | None
    since: str | None
    exclude: tuple[str, ...] = ()
    catch_up: bool = False


@dataclass
class Read:
    origin: Origin
    """The database read, whose snapshots become cursors."""
    requests: list[Request] = field(default_factory=list)
    live: dict[str, int] = field(default_factory=dict)
    """Live table -> key of the request that reads it."""
    every_table: int | None = None
    """Key of the request reading every other table, if any."""
    joins: list[tuple[Join, int | None]] = field(default_factory=list)
    """Each join with the key of the request holding its rows (None: no rows)."""
    every_live_table: bool = False
    refresh: bool = False


class Row(NamedTuple):
    """One item a read returned for request ``key`` (a named tuple, like :class:`Change`)."""

    key: int
    change: Change


@dataclass(frozen=True)
class ReadResult:
    snapshot: str
    resets: dict[int, str]
    """Request key -> why its ``since`` could not be served (its rows are then all rows)."""
    rows: list[Row]


class Feed:
    def __init__(self) -> None:
        self._live: dict[str, str] = {}
        # While every table is live: the snapshot up to which every table not
        # in _live has been read.
        self._all_since: str | None = None
        self._woken: set[str] = set()
        self._wake_all = False
        self._refresh = False
        self._joins: list[Join] = []
        # Tables with a join not yet answered (pending or in a running read):
        # their wake-ups count, since the join's read may not see that change.
        self._joining: dict[str | None, int] = {}
        self.served_version = 0
        """Changes whenever :meth:`served` may answer differently."""

    @property
    def live_tables(self) -> int:
        return len(self._live)

    def wake(self, table_id: str | None) -> None:
        """Rows of ``table_id`` (or of every table) changed."""
        if table_id is EVERY_TABLE:
            self._wake_all = True
        elif (
            table_id in self._live
            or table_id in self._joining
            or self._all_since is not None
            or EVERY_TABLE in self._joining
        ):
            self._woken.add(table_id)

    def refresh(self) -> None:
        """Read every live table, and advance the cursor of those with no change."""
        self._wake_all = True
        self._refresh = True

    def join(self, join: Join) -> None:
        self._joins.append(join)
        self._joining[join.table_id] = self._joining.get(join.table_id, 0) + 1
        self.served_version += 1

    def cancel(self, join: Join) -> None:
        """Forget a join that has not been answered yet (its read may be running)."""
        join.cancelled = True
        if join in self._joins:
            self._joins.remove(join)
            self._answered(join)

    def _answered(self, join: Join) -> None:
        self.served_version += 1
        remaining = self._joining[join.table_id] - 1
        if remaining:
            self._joining[join.table_id] = remaining
        else:
            del self._joining[join.table_id]

    def served(self, is_subscribed: Callable[[str | None], bool]) -> tuple[set[str], bool]:
        """The tables live or being joined for subscribers of their own, and whether every
        table is (for :class:`~broadcaster.core.promises.Promises`' registrations)."""
        tables = {t for t in self._live if is_subscribed(t)}
        tables.update(t for t in self._joining if t is not EVERY_TABLE)
        every = EVERY_TABLE in self._joining or (
            self._all_since is not None and is_subscribed(EVERY_TABLE)
        )
        return tables, every

    @property
    def due(self) -> bool:
        return bool(self._joins or self._woken or self._wake_all)

    def plan(self, origin: Origin, is_subscribed: Callable[[str | None], bool]) -> Read | None:
        """The next read, taking the pending wake-ups and joins; ``None`` if none is due.

        ``is_subscribed(EVERY_TABLE)`` tells whether every table has subscribers. A
        read of every live table is planned even when there is none, so that
        catching up after a lost LISTEN connection always ends with a read.
        """
        if self._all_since is not None and not is_subscribed(EVERY_TABLE):
            self._all_since = None
            self.served_version += 1
        all_since = self._all_since
        # A table read only for every-table subscribers is dropped once it is
        # back at all_since: it is then read from there, like any other.
        for table_id in [
            t
            for t, since in self._live.items()
            if not is_subscribed(t) and (all_since is None or since == all_since)
        ]:
            del self._live[table_id]
            self.served_version += 1
        read = Read(origin, every_live_table=self._wake_all, refresh=self._refresh)
        if self._wake_all:
            tables = list(self._live)
        else:
            tables = [t for t in self._woken if t in self._live or all_since is not None]
        # A woken table that is not live yet is being joined: keep its wake-up
        # for the read after the one that makes it live.
        self._woken.difference_update(tables)
        keys: dict[tuple[str, str | None, bool], int] = {}

        def key_for(table_id: str, since: str | None, catch_up: bool = False) -> int:
            # A catch-up from a live table's own snapshot is that table's live
            # read: too recent to need compacting.
            request_key = keys.get((table_id, since, False))
            if request_key is None and catch_up:
                request_key = keys.get((table_id, since, True))
            if request_key is None:
                request_key = keys[(table_id, since, catch_up)] = len(read.requests)
                read.requests.append(Request(request_key, table_id, since, catch_up=catch_up))
            return request_key

        for table_id in tables:
            read.live[table_id] = key_for(table_id, self._live.get(table_id, all_since))
        for join in self._joins:
            join.decode_cursor(origin)
            joined = join.table_id
            if (
                joined is not EVERY_TABLE
                and all_since is not None
                and joined not in self._live
                and joined not in read.live
            ):
                # Every-table subscribers must get this table's changes up to
                # the snapshot where the joining subscriber's begin.
                read.live[joined] = key_for(joined, all_since)
            rows_key = None
            if joined is not EVERY_TABLE and join.wants_rows:
                since = join.request_since
                rows_key = key_for(joined, since, catch_up=since is not None)
            read.joins.append((join, rows_key))
        if self._wake_all and all_since is not None:
            read.every_table = len(read.requests)
            read.requests.append(
                Request(read.every_table, EVERY_TABLE, all_since, exclude=tuple(read.live))
            )
        if EVERY_TABLE not in self._joining:
            self._woken.intersection_update(self._joining)
        self._wake_all = False
        self._refresh = False
        self._joins = []
        if not read.live and not read.joins and not read.every_live_table:
            return None
        return read

    def failed(self, read: Read, *, refuse_cursors: bool = False) -> None:
        """``read`` could not be run: take its wake-ups and joins back.

        ``refuse_cursors`` when Postgres refused the read's input: only a
        client's cursor can be at fault (the feed's own come from Postgres), so
        every join that brought one gets a reset and every row instead.
        """
        if refuse_cursors:
            for join, _ in read.joins:
                if join.since is not None:
                    join.since = None
                    join.reset = cursors.MALFORMED
        self._woken.update(read.live)
        self._wake_all = self._wake_all or read.every_live_table
        self._refresh = self._refresh or read.refresh
        for join, _ in read.joins:
            if join.cancelled:
                self._answered(join)
        self._joins[:0] = [join for join, _ in read.joins if not join.cancelled]

    def complete(
        self, read: Read, result: ReadResult
    ) -> tuple[list[Batch], list[tuple[Join, JoinResult]]]:
        """The live batches to publish, then the joins to answer, for a finished read."""
        cursor = cursors.encode(read.origin, result.snapshot)
        found: dict[int, list[Change]] = {request.key: [] for request in read.requests}
        for row in result.rows:
            found[row.key].append(row.change)
        for changes in found.values():
            changes.sort(key=lambda change: change.version)

        batches: list[Batch] = []
        for request in read.requests:
            table_id = request.table_id
            if table_id is EVERY_TABLE or read.live.get(table_id) != request.key:
                continue
            changes = found[request.key]
            reset = result.resets.get(request.key)
            if table_id in self._live or self._all_since is not None:
                self._live[table_id] = result.snapshot
            if changes or reset or read.refresh:
                since = cursors.encode(read.origin, request.since or result.snapshot)
                batches.append(Batch(table_id, changes, cursor, reset, since=since))
        if read.every_table is not None:
            request = read.requests[read.every_table]
            batches.extend(self._every_table_batches(read, request, result, found[request.key]))

        answered: list[tuple[Join, JoinResult]] = []
        for join, rows_key in read.joins:
            if rows_key is None:
                reset, changes = join.reset, []
            else:
                reset, changes = join.reset or result.resets.get(rows_key), found[rows_key]
            self._answered(join)
            if join.cancelled:
                continue
            if join.table_id is EVERY_TABLE:
                if self._all_since is None:
                    self._all_since = result.snapshot
                    self.served_version += 1
            else:
                self._live.setdefault(join.table_id, result.snapshot)
            answered.append((join, JoinResult(reset, changes, cursor)))
        return batches, answered

    def _every_table_batches(
        self, read: Read, request: Request, result: ReadResult, changes: list[Change]
    ) -> list[Batch]:
        if self._all_since is not None:
            self._all_since = result.snapshot
        if request.key in result.resets:
            # Nothing to replay to every-table subscribers (they have no cursor
            # to resume from); a change lost to pruning cannot be recovered.
            return []
        by_table: dict[str, list[Change]] = {}
        for change in changes:
            by_table.setdefault(change.table_id, []).append(change)
        cursor = cursors.encode(read.origin, result.snapshot)
        since = cursors.encode(read.origin, request.since or result.snapshot)
        return [Batch(t, found, cursor, since=since) for t, found in by_table.items()]
