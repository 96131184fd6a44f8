"""What a subscription and a table view share: one table's state with the server.

:class:`Stream` follows one table through subscribe, catch-up, live changes,
pauses and reconnections; it keeps the cursor to resume from and, per row, the
highest version taken in, so a resume never delivers a row version twice.
:class:`~._subscription.Subscription` queues what it takes in,
:class:`~._table.Table` applies it.
"""

from __future__ import annotations

import asyncio
import logging
from types import TracebackType
from typing import TYPE_CHECKING, Any, Final, Self

from ._errors import ClientClosedError, SlowConsumerError
from ._events import INTERRUPTED, Change, Event, Reset

if TYPE_CHECKING:
    from ._core import Core

__all__ = ["CLOSED", "IDLE", "LIVE", "PAUSED", "PENDING", "SYNCING", "Stream"]

# The package's logger, as documented: records keep its name whichever module logs.
logger = logging.getLogger("broadcaster.client")

# Where a subscription stands with the server.
IDLE: Final = "idle"  # not subscribed on this connection: subscribe when connected
PENDING: Final = "pending"  # subscribe sent, waiting for "subscribed"
SYNCING: Final = "syncing"  # subscribed; catch-up arriving
LIVE: Final = "live"  # synced; live changes arriving
PAUSED: Final = "paused"  # queue overflowed: unsubscribed until the consumer drains it
CLOSED: Final = "closed"  # gone for good


class Stream:
    """What :class:`Subscription` and :class:`Table` share: one table's
    subscription state, its cursor and what it holds to drop stale versions."""

    def __init__(
        self, core: Core, table_id: str, cursor: str | None, snapshot: bool, filter: str | None
    ) -> None:
        if not isinstance(table_id, str) or not table_id:
            raise ValueError("table_id must be a non-empty string")
        if filter is not None and (not isinstance(filter, str) or not filter):
            raise ValueError("filter must be a non-empty string such as 'room_id=eq.5', or None")
        self.table_id = table_id
        self.filter = filter
        """The filter sent with every subscribe (``room_id=eq.5``), or ``None``."""
        self._core = core
        self._snapshot = snapshot
        self._state: str = IDLE
        self._ref: int | None = None
        # The cursor to resubscribe from: everything up to it has been taken in.
        self._received = cursor
        # A reset came and its snapshot has not been synced: _received is stale.
        self._reset_unsynced = False
        # Changes taken in with no cursor to resume from (a first snapshot).
        self._dirty = False
        # Make an INTERRUPTED reset when the next subscribe is answered.
        self._restart = False
        self._ever_synced = False
        # Subscribes refused for now (unavailable, rate_limited) since the last synced.
        self._refusals = 0
        # Row key (the change's id) -> the highest version taken in, deleted rows included.
        self._versions: dict[str, int] = {}
        # Deleted row ids, forgotten at the second new cursor after their delete:
        # by then a cursor that covers the delete is the resume point, and a
        # read from it returns no state of the row older than the delete.
        self._deleted: set[str] = set()
        self._deleted_before: set[str] = set()
        self._error: BaseException | None = None
        self._signal = asyncio.Event()

    # For the core.

    def _subscribe_message(self, ref: int) -> dict[str, Any]:
        message: dict[str, Any] = {"type": "subscribe", "ref": ref, "table_id": self.table_id}
        if self.filter is not None:
            # On every subscribe, resumes included: the server holds no filter
            # across connections, and a cursor alone would catch up unfiltered.
            message["filter"] = self.filter
        if self._received is not None:
            message["cursor"] = self._received
        else:
            if self._snapshot:
                message["snapshot"] = True
            self._restart = self._dirty
        self._ref = ref
        self._state = PENDING
        return message

    @property
    def _active(self) -> bool:
        return self._state in (SYNCING, LIVE)

    def _subscribed(self) -> None:
        self._state = SYNCING
        if self._restart:
            self._restart = False
            self._take_reset(INTERRUPTED)

    def _take_change(self, change: Change) -> None:
        held = self._versions.get(change.id)
        if held is not None and change.version <= held:
            return
        if not self._offer(change):
            self._overflow()
            return
        self._versions[change.id] = change.version
        if change.op == "DELETE":
            self._deleted.add(change.id)
        else:
            self._deleted.discard(change.id)
            self._deleted_before.discard(change.id)
        if self._received is None:
            self._dirty = True

    def _take_reset(self, reason: str) -> None:
        if not self._offer(Reset(self.table_id, reason)):
            self._overflow()
            return
        self._versions.clear()
        self._deleted.clear()
        self._deleted_before.clear()
        self._reset_unsynced = True

    def _commit(self, cursor: str) -> None:
        """Everything up to ``cursor`` has been taken in."""
        if not self._active:
            return
        if cursor != self._received:
            # A new cursor. (The frames of a live batch but its last carry the
            # cursor the batch started from.)
            for row_id in self._deleted_before:
                self._versions.pop(row_id, None)
            self._deleted_before, self._deleted = self._deleted, set()
            # A reset's snapshot ends with the first new cursor: at synced, or
            # with the last frame of the live batch that carried the reset.
            self._reset_unsynced = False
            self._dirty = False
        self._received = cursor
        self._committed(cursor)

    def _synced(self, cursor: str) -> None:
        if not self._active:
            return
        self._commit(cursor)
        self._state = LIVE
        self._ever_synced = True
        self._refusals = 0
        self._notify()

    def _overflow(self) -> None:
        if self._received is None or self._reset_unsynced:
            self._core.remove(self, end=False)  # what is queued is still read
            self._fail(
                SlowConsumerError(
                    f"the queue of {self.table_id!r} overflowed during a snapshot; "
                    "read faster, raise queue_size or use Client.table()"
                )
            )
            return
        logger.info("the queue of %r is full: pausing it until it is read", self.table_id)
        self._core.pause(self)

    def _fail(self, error: BaseException) -> None:
        self._error = error
        self._state = CLOSED
        self._notify()

    def _end(self) -> None:
        self._state = CLOSED
        self._notify()

    def _notify(self) -> None:
        self._signal.set()
        self._signal = asyncio.Event()

    # For subclasses.

    def _offer(self, event: Event) -> bool:
        """Take ``event`` in; ``False`` when there is no room for it."""
        raise NotImplementedError

    def _committed(self, cursor: str) -> None:
        raise NotImplementedError

    def _closed_error(self) -> BaseException:
        if self._error is not None:
            return self._error
        if self._core.closed:
            return ClientClosedError("the client is closed")
        return ClientClosedError(f"the subscription to {self.table_id!r} is closed")

    # Public.

    @property
    def closed(self) -> bool:
        """The subscription has ended: closed, failed, or its client closed."""
        return self._state == CLOSED

    @property
    def synced(self) -> bool:
        """The subscription is live: its catch-up is in and no resubscribe is under way."""
        return self._state == LIVE

    async def wait_synced(self) -> None:
        """Wait until the subscription has been synced once.

        Raises the :class:`SubscriptionError` that answered the subscribe, or
        :class:`ClientClosedError` if it ends first.
        """
        while not self._ever_synced:
            signal = self._signal
            if self._state == CLOSED:
                raise self._closed_error()
            await signal.wait()

    async def aclose(self) -> None:
        """Unsubscribe: no more changes of this table arrive."""
        self._core.remove(self)

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()
