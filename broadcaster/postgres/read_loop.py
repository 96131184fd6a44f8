"""Runs the changefeed's reads: on wake-ups, joins, a new LISTEN session and timers.

The I/O around :class:`~broadcaster.core.feed.Feed` and
:class:`~broadcaster.core.promises.Promises`: it registers the tables this process
serves (with the promises that let writers skip their NOTIFY), reads promised
tables every poll interval, runs one read at a time through
:class:`~broadcaster.postgres.queries.ChangeReader`, publishes live batches to the hub
and answers joins, retries a failed read with capped backoff, and prunes the
change log. It is *caught up* once a read of every live table has
finished after the current LISTEN session started: a change committed while
no LISTEN session was up raised no wake-up, but that read finds it.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
from collections.abc import Awaitable, Callable, Collection, Mapping, Sequence

import asyncpg

from ..core import visibility
from ..core.backoff import Backoff
from ..core.checks import HeldChecks, Pending
from ..core.cursors import Origin
from ..core.feed import Feed, Join, Read
from ..core.hub import Hub
from ..core.promises import Promises
from ..core.published import PublishedTable
from ..core.tables import EVERY_TABLE, ordered
from ..core.visibility import Viewer
from ..core.wakeups import decode
from ..core.writes import Writes
from ..exceptions import DatabaseError
from .queries import ChangeReader

__all__ = ["CheckFilters", "CheckRows", "ReadLoop"]

CheckFilters = Callable[
    [PublishedTable, Sequence[str], Sequence[str]], Awaitable[Sequence[Sequence[bool]]]
]
"""Whether each image (a row's JSON) of a published table passes each filter, asked of
Postgres in one statement (``broadcaster/postgres/filtering.py``)."""

CheckRows = Callable[[PublishedTable, Viewer, Sequence[str]], Awaitable[Collection[int]]]
"""The indices of the keys whose rows of a published table a viewer may see now, asked
of Postgres in one statement (``broadcaster/postgres/visibility.py``)."""

logger = logging.getLogger(__name__)


class ReadLoop:
    """Reads changes for one server process; see the module."""

    def __init__(
        self,
        hub: Hub,
        reader: ChangeReader,
        *,
        refresh_interval: float,
        history_retention: float,
        retry_max_delay: float,
        read_delay: float = 0.0,
        process: str = "",
        poll_interval: float = 0.005,
        poll_window: float = 0.0,
        poll_min_rate: float = 0.0,
        writes: Writes | None = None,
        held_checks: HeldChecks | None = None,
        check_filters: CheckFilters | None = None,
        check_rows: CheckRows | None = None,
        published: Callable[[str], bool] = lambda table_id: False,
    ) -> None:
        self._hub = hub
        self._held_checks = HeldChecks() if held_checks is None else held_checks
        self._check_filters = check_filters
        self._check_rows = check_rows
        self._published = published
        self._writes = Writes() if writes is None else writes
        self._reader = reader
        self._feed = Feed()
        self._refresh_interval = refresh_interval
        self._history_retention = history_retention
        self._retry_max_delay = retry_max_delay
        self._read_delay = read_delay
        self._process = process
        self._promises = Promises(
            window=poll_window, interval=poll_interval, min_rate=poll_min_rate
        )
        # (feed.served_version, promises.epoch) when the registrations last
        # matched the tables served: comparing them costs a pass over every table.
        self._registered_for = (-1, -1)
        self._wakeup = asyncio.Event()
        self._origin: Origin | None = None
        self._session = 0
        self._caught_up_session = -1
        self.status = "not caught up yet"

    @property
    def caught_up(self) -> bool:
        return self._caught_up_session == self._session

    # Called by the listener; both only record and return.

    def notified(self, payload: str) -> None:
        table_id = decode(payload)
        self._feed.wake(table_id)
        if table_id is not EVERY_TABLE:
            self._promises.woken(table_id, time.monotonic())
        if self._feed.due:
            self._wakeup.set()

    def listening(self) -> None:
        """A LISTEN session started: register again and read every live table again."""
        # The registrations may be gone with a crashed database (they are
        # unlogged); they are made again before that read.
        self._promises.reset()
        self._session += 1
        self.status = "catching up after (re)connecting"
        self._feed.wake(EVERY_TABLE)
        self._wakeup.set()

    # Called by sessions.

    def join(self, join: Join) -> None:
        self._feed.join(join)
        self._wakeup.set()

    def cancel(self, join: Join) -> None:
        self._feed.cancel(join)

    async def run(self) -> None:
        """Read whenever something is due; cancel to stop."""
        async with asyncio.TaskGroup() as tasks:
            tasks.create_task(self._read_loop())
            tasks.create_task(self._timer(self._refresh_interval, self._refresh))
            tasks.create_task(self._timer(self._refresh_interval * 10, self._prune))

    async def unregister(self, tables: Collection[str | None] | None = None) -> None:
        """Remove registrations of this process (default: all of them, on a clean stop).

        Raises :class:`~broadcaster.exceptions.DatabaseError` if that failed.
        """
        drop = ordered(self._promises.registered if tables is None else tables)
        if drop:
            await self._reader.unregister(self._process, drop)
            self._promises.dropped(drop)

    async def _read_loop(self) -> None:
        failures = 0
        while True:
            deadline = self._promises.next_deadline(time.monotonic())
            if deadline is None:
                await self._wakeup.wait()
            else:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(max(0.0, deadline - time.monotonic())):
                        await self._wakeup.wait()
            if self._read_delay and self._wakeup.is_set():
                # Commits that arrive together are read, and framed, together:
                # fewer reads and sends per change, for a bounded added delay.
                await asyncio.sleep(self._read_delay)
            self._wakeup.clear()
            try:
                await self._read_once()
            except DatabaseError as exc:
                failures += 1
                self.status = f"reading changes failed: {exc}"
                delay = Backoff.capped_at(self._retry_max_delay).delay(failures)
                logger.warning("read loop: %s; retrying in %.1fs", self.status, delay)
                await asyncio.sleep(delay)
                self._wakeup.set()
                continue
            failures = 0
            if self._feed.due:
                self._wakeup.set()

    async def _register(self) -> None:
        """Bring the registrations in line with the tables served, before reading them."""
        now = time.monotonic()
        version = (self._feed.served_version, self._promises.epoch)
        register: list[str | None] = []
        drop: list[str | None] = []
        if version == self._registered_for:
            promise = self._promises.renewals(now)
        else:
            tables, every = self._feed.served(self._hub.is_subscribed)
            wanted: set[str | None] = set(tables)
            if every:
                wanted.add(EVERY_TABLE)
            register, promise, drop = self._promises.changes(wanted, now)
        if register or promise:
            try:
                await self._reader.register(self._process, register, promise, self._promises.window)
            except BaseException:
                self._promises.made(register, promise, time.monotonic(), confirmed=False)
                raise
            self._promises.made(register, promise, time.monotonic())
        await self.unregister(drop)
        self._registered_for = version

    def _observe(
        self,
        snapshot: str,
        issued_at: float,
        read: Collection[str | None],
        found: Collection[str | None],
        horizon: int | None = None,
        *,
        changes: Mapping[str, int] | None = None,
    ) -> None:
        observed = self._promises.observe(
            snapshot, issued_at, read, found, horizon, changes=changes
        )
        for table_id in observed:
            # The final read of a promise that ran out.
            self._feed.wake(table_id)
            self._wakeup.set()

    async def _read_once(self) -> None:
        if self._origin is None:
            self._origin = await self._reader.origin()
        await self._register()
        for table_id in self._promises.to_poll(time.monotonic()):
            self._feed.wake(table_id)
        read = self._feed.plan(self._origin, self._hub.is_subscribed)
        if read is not None:
            await self._read(read)
        issued_at = time.monotonic()
        if self._promises.needs_horizon(issued_at):
            horizon, snapshot = await self._reader.horizon()
            self._observe(snapshot, issued_at, set(), set(), horizon)
        elif read is None and self._promises.needs_snapshot(issued_at):
            snapshot = (await self._reader.read([])).snapshot
            self._observe(snapshot, issued_at, set(), set())

    async def _read(self, read: Read) -> None:
        session = self._session
        issued_at = time.monotonic()
        try:
            result = await self._reader.read(read.requests)
            pending = self._held_checks.pending(row.change for row in result.rows)
            await self._decide(pending)
        except DatabaseError as exc:
            if not isinstance(exc.__cause__, asyncpg.DataError) or not any(
                join.since is not None for join, _ in read.joins
            ):
                self._feed.failed(read)
                raise
            # A cursor can look well-formed yet be refused by Postgres; left in
            # the read it would fail every retry and stall every subscriber.
            logger.warning("read loop: Postgres refused a client's cursor", exc_info=True)
            self._feed.failed(read, refuse_cursors=True)
            self._wakeup.set()
            return
        except BaseException:
            self._feed.failed(read)
            raise
        batches, answered = self._feed.complete(read, result)
        for work in pending:
            work.attach(batches)
        changed = {batch.table_id: len(batch.changes) for batch in batches if batch.changes}
        self._observe(result.snapshot, issued_at, set(read.live), changed.keys(), changes=changed)
        # One write per client for every batch this read brings it. A join's
        # catch-up is not held: it may be large, and written as it goes, a
        # slow consumer is cut off before the rest is queued for it.
        with self._writes.round():
            for batch in batches:
                batch.published = self._published(batch.table_id)
                self._hub.publish(batch)
        for join, join_result in answered:
            for work in pending:
                if work.table.table_id == join.table_id and join_result.changes:
                    join_result = dataclasses.replace(
                        join_result, checks=work.answers_for(join_result.changes)
                    )
            try:
                join.on_joined(join_result)
            except Exception:
                logger.exception("answering a join of %r failed", join.table_id)
        if read.every_live_table and session == self._session and not self.caught_up:
            self._caught_up_session = session
            self.status = "caught up"
            logger.info("read loop: caught up (%d live tables)", self._feed.live_tables)

    async def _decide(self, pending: list[Pending]) -> None:
        """Postgres' answers to the checks subscribers hold on the read's changes: one
        statement per table for its filters, one per viewer of a table with
        row-level security."""
        for work in pending:
            if work.filters and self._check_filters is not None:
                work.answer_filters(
                    await self._check_filters(
                        work.table, [check.filter for check in work.filters], work.images
                    )
                )
            if work.rows and self._check_rows is not None:
                keys = visibility.plan(work.table, work.changes)
                # One statement per viewer, side by side on the pool's
                # connections rather than one after another.
                answers = await asyncio.gather(
                    *(self._check_rows(work.table, c.viewer, keys.keys) for c in work.rows)
                )
                for check, visible in zip(work.rows, answers, strict=True):
                    work.answer(check, keys.delivered(visible))

    async def _timer(self, interval: float, action: Callable[[], Awaitable[None]]) -> None:
        while True:
            await asyncio.sleep(interval)
            try:
                await action()
            except DatabaseError:
                logger.warning("read loop: periodic %s failed", action.__name__, exc_info=True)

    async def _refresh(self) -> None:
        # Advances every live table's cursor even when nothing changes, so an
        # idle subscriber's resume point stays younger than the history
        # retention; it also bounds the delay of any change whose wake-up was lost.
        self._feed.refresh()
        self._wakeup.set()
        # Registrations of a process silent for three refreshes are removed (it
        # died, or was stopped that long; until then its writers keep
        # notifying): this one registers again if so.
        kept = await self._reader.keep_listening(self._process, 3 * self._refresh_interval)
        if kept < len(self._promises.registered):
            logger.warning("read loop: registrations were removed; registering again")
            self._promises.reset()
            self._wakeup.set()

    async def _prune(self) -> None:
        removed = await self._reader.prune(self._history_retention)
        if removed:
            logger.info("read loop: emptied %d partitions of the change log", removed)
