"""Runs the changefeed's reads: on wake-ups, joins, a new LISTEN session and a timer.

The I/O around :class:`~broadcaster.feed.Feed`: it runs one read at a time
through :class:`~broadcaster.queries.ChangeReader`, publishes live batches to
the hub and answers joins, retries a failed read with capped backoff, and
prunes old tombstones. It is *caught up* once a read of every live table has
finished after the current LISTEN session started: a change committed while
no LISTEN session was up raised no wake-up, but that read finds it.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable

import asyncpg

from .cursors import Origin
from .feed import Feed, Join
from .hub import Hub
from .payloads import decode
from .queries import DATABASE_ERRORS, ChangeReader

__all__ = ["Poller"]

logger = logging.getLogger(__name__)


class Poller:
    def __init__(
        self,
        hub: Hub,
        reader: ChangeReader,
        *,
        refresh_interval: float,
        tombstone_retention: float,
        retry_max_delay: float,
        read_delay: float = 0.0,
    ) -> None:
        self._hub = hub
        self._reader = reader
        self._feed = Feed()
        self._refresh_interval = refresh_interval
        self._tombstone_retention = tombstone_retention
        self._retry_max_delay = retry_max_delay
        self._read_delay = read_delay
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
        self._feed.wake(decode(payload))
        if self._feed.due:
            self._wakeup.set()

    def listening(self) -> None:
        """A LISTEN session started: read every live table again."""
        self._session += 1
        self.status = "catching up after (re)connecting"
        self._feed.wake(None)
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

    async def _read_loop(self) -> None:
        failures = 0
        while True:
            await self._wakeup.wait()
            if self._read_delay:
                # Commits that arrive together are read, and framed, together:
                # fewer reads and sends per change, for a bounded added delay.
                await asyncio.sleep(self._read_delay)
            self._wakeup.clear()
            try:
                await self._read_once()
            except DATABASE_ERRORS as exc:
                failures += 1
                self.status = f"reading changes failed: {exc}"
                delay = min(self._retry_max_delay, 0.1 * 2 ** (failures - 1))
                delay *= random.uniform(0.5, 1.0)
                logger.warning("poller: %s; retrying in %.1fs", self.status, delay)
                await asyncio.sleep(delay)
                self._wakeup.set()
                continue
            failures = 0
            if self._feed.due:
                self._wakeup.set()

    async def _read_once(self) -> None:
        if self._origin is None:
            self._origin = await self._reader.origin()
        session = self._session
        read = self._feed.plan(self._origin, self._hub.is_subscribed)
        if read is None:
            return
        try:
            result = await self._reader.read(read.requests)
        except asyncpg.DataError:
            if not any(join.since is not None for join, _ in read.joins):
                self._feed.failed(read)
                raise
            # A cursor can look well-formed yet be refused by Postgres; left in
            # the read it would fail every retry and stall every subscriber.
            logger.warning("poller: Postgres refused a client's cursor", exc_info=True)
            self._feed.failed(read, refuse_cursors=True)
            self._wakeup.set()
            return
        except BaseException:
            self._feed.failed(read)
            raise
        batches, answered = self._feed.complete(read, result)
        for batch in batches:
            self._hub.publish(batch)
        for join, join_result in answered:
            try:
                join.on_joined(join_result)
            except Exception:
                logger.exception("answering a join of %r failed", join.table_id)
        if read.every_live_table and session == self._session and not self.caught_up:
            self._caught_up_session = session
            self.status = "caught up"
            logger.info("poller: caught up (%d live tables)", self._feed.live_tables)

    async def _timer(self, interval: float, action: Callable[[], Awaitable[None]]) -> None:
        while True:
            await asyncio.sleep(interval)
            try:
                await action()
            except DATABASE_ERRORS:
                logger.warning("poller: periodic %s failed", action.__name__, exc_info=True)

    async def _refresh(self) -> None:
        # Advances every live table's cursor even when nothing changes, so an
        # idle subscriber's resume point stays younger than the tombstone
        # retention; it also bounds the delay of any change whose wake-up was lost.
        self._feed.refresh()
        self._wakeup.set()

    async def _prune(self) -> None:
        removed = await self._reader.prune(self._tombstone_retention)
        if removed:
            logger.info("poller: pruned %d tombstones", removed)
