"""A subscription to one table's changes, read as an async iterator.

:class:`Subscription` queues, up to ``queue_size`` events, what its
:class:`~._stream.Stream` takes in, and tracks the cursor that covers exactly
what the iterator has yielded.
"""

from __future__ import annotations

from collections import deque
from collections.abc import AsyncGenerator
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ._events import Event
from ._stream import CLOSED, PAUSED, Stream

if TYPE_CHECKING:
    from ._core import Core

__all__ = ["Subscription"]


@dataclass(slots=True)
class _Item:
    event: Event
    # The cursor that covers everything up to and including this item, if it is
    # the last one taken in before a commit.
    commit: str | None = None


class Subscription(Stream):
    """One table's changes, as an async iterator of :data:`Event`.

    Get one from :meth:`Client.subscribe`. What arrives is queued (at most
    ``queue_size`` events) until the iterator takes it; see ``docs/clients.md``
    for what a full queue does. Closing the iterator (``break`` out of
    ``async for``, an exception in its body, :meth:`aclose`) unsubscribes.
    """

    def __init__(
        self,
        core: Core,
        table_id: str,
        *,
        cursor: str | None,
        snapshot: bool,
        queue_size: int,
        filter: str | None = None,
    ) -> None:
        if queue_size < 1:
            raise ValueError("queue_size must be at least 1")
        super().__init__(core, table_id, cursor, snapshot, filter)
        self._queue: deque[_Item] = deque()
        self._queue_size = queue_size
        self._position = cursor

    @property
    def cursor(self) -> str | None:
        """A cursor covering exactly the changes yielded so far: save it to resume.

        Pass it as ``cursor=`` to :meth:`Client.subscribe` (in this process or
        another) to get every change after the last one yielded. ``None``
        until the first snapshot or catch-up has been yielded.
        """
        return self._position

    @property
    def queued(self) -> int:
        """Events waiting to be read."""
        return len(self._queue)

    def _offer(self, event: Event) -> bool:
        if len(self._queue) >= self._queue_size:
            return False
        self._queue.append(_Item(event))
        self._notify()
        return True

    def _committed(self, cursor: str) -> None:
        if self._queue:
            self._queue[-1].commit = cursor
        else:
            self._position = cursor

    def _end(self) -> None:
        # Closed: what is queued is not read.
        self._queue.clear()
        super()._end()

    def __aiter__(self) -> AsyncGenerator[Event, None]:
        return self._iterate()

    async def _iterate(self) -> AsyncGenerator[Event, None]:
        # A generator, so that leaving ``async for`` closes it (and unsubscribes).
        try:
            while True:
                try:
                    event = await self.__anext__()
                except StopAsyncIteration:
                    return
                yield event
        finally:
            self._core.remove(self)

    async def __anext__(self) -> Event:
        """The next event; raises ``StopAsyncIteration`` once closed."""
        while True:
            if self._queue:
                item = self._queue.popleft()
                if item.commit is not None:
                    self._position = item.commit
                if not self._queue and self._state == PAUSED:
                    self._core.resume(self)
                return item.event
            if self._state == CLOSED:
                if self._error is not None:
                    raise self._error
                raise StopAsyncIteration
            if self._state == PAUSED:
                self._core.resume(self)
            signal = self._signal
            await signal.wait()
