"""From NOTIFY payloads to hub deliveries, strictly in commit order.

The listener's callback calls :meth:`Dispatcher.push` and returns. The dispatch
task takes everything that has arrived since it last ran, decodes each payload
once, fetches the rows that came by reference (a fetch finishes before anything
behind it is delivered), groups the changes by table and publishes one batch
per table.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Awaitable, Callable, Sequence

from .exceptions import PayloadError
from .hub import Hub, group_by_table
from .payloads import Change, decode

__all__ = ["Dispatcher", "FetchRows"]

logger = logging.getLogger(__name__)

FetchRows = Callable[[Sequence[str]], Awaitable[dict[str, tuple[str, str]]]]
"""Reads rows by id: ``{id: (table_id, row_json)}`` for those that still exist."""


class Dispatcher:
    def __init__(self, hub: Hub, fetch_rows: FetchRows) -> None:
        self._hub = hub
        self._fetch_rows = fetch_rows
        self._pending: deque[str] = deque()
        self._wakeup = asyncio.Event()
        self.delivered = 0

    def push(self, payload: str) -> None:
        """Queue one payload; called from the NOTIFY callback, so it only appends."""
        self._pending.append(payload)
        self._wakeup.set()

    async def run(self) -> None:
        """Dispatch forever; cancel to stop."""
        while True:
            await self._wakeup.wait()
            self._wakeup.clear()
            payloads = list(self._pending)
            self._pending.clear()
            await self.dispatch(payloads)

    async def dispatch(self, payloads: Sequence[str]) -> None:
        changes: list[Change] = []
        for payload in payloads:
            try:
                changes.append(decode(payload))
            except PayloadError:
                logger.exception("dropping a malformed payload: %.200r", payload)
        if any(change.needs_fetch for change in changes):
            changes = await self._resolve(changes)
        for batch in group_by_table(changes):
            self.delivered += self._hub.publish(batch) * len(batch.changes)

    async def _resolve(self, changes: list[Change]) -> list[Change]:
        wanted = [change.id for change in changes if change.needs_fetch]
        try:
            rows = await self._fetch_rows(wanted)
        except Exception:
            logger.exception("could not fetch %d referenced rows", len(wanted))
            rows = {}
        resolved: list[Change] = []
        for change in changes:
            if not change.needs_fetch:
                resolved.append(change)
                continue
            found = rows.get(change.id)
            # A row that is gone or has moved to another table was deleted or
            # moved after this change; the notification for that follows.
            if found is None or found[0] != change.table_id:
                logger.debug("referenced row %r no longer in %r", change.id, change.table_id)
                continue
            resolved.append(Change(change.op, change.table_id, change.id, change.version, found[1]))
        return resolved
