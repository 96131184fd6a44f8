"""A Python client for the native protocol: change streams and live tables.

One :class:`Client` holds one WebSocket connection and any number of
subscriptions on it, reconnects with capped, jittered exponential backoff when
the connection drops, and resubscribes every table from the last cursor it saw,
so nothing committed while it was away is missed. Changes not newer than what a
subscription already delivered for that row are dropped, so a resume never
delivers the same row version twice. ``docs/clients.md`` has the details.

Two ways to consume a table::

    import asyncio

    from broadcaster.client import Change, Reset, connect


    async def main() -> None:
        async with connect("ws://127.0.0.1:8000/ws") as client:
            # 1. A live view: the table's rows, kept up to date.
            table = await client.table("t1")  # returns once the snapshot is in
            print(len(table.rows), table.get("r1"))
            row = await table.wait_for_row("r2", lambda row: row["data"].get("done"), timeout=5)

            # 2. A stream of changes, e.g. for a worker.
            async for event in client.subscribe("t2", snapshot=True):
                if isinstance(event, Reset):
                    ...  # drop what you hold for t2: its snapshot follows
                elif event.op == "DELETE":
                    ...  # event.id was deleted
                else:
                    ...  # event.row is the row's new state (event.version)


    asyncio.run(main())

Leaving ``async with`` closes the connection and ends every iterator; leaving
an ``async for`` (``break``, an exception) or calling
:meth:`Subscription.aclose` unsubscribes from that table.

Exceptions, all under :class:`broadcaster.exceptions.BroadcasterError`::

    ClientError                     anything the client raises on purpose
    ├── ConnectError                the first connection could not be opened
    ├── ClientClosedError           the client, or this subscription, is closed
    ├── SlowConsumerError           a subscription's queue overflowed where no
    │                               cursor can resume it (see docs/clients.md)
    └── SubscriptionError           the server refused a subscribe, or ended a
        │                           subscription (``forbidden``); ``code`` is
        │                           the protocol's error code
        └── TooManySubscriptionsError   code ``too_many_subscriptions``
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections import deque
from collections.abc import AsyncGenerator, Awaitable, Callable, Mapping
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Final, Literal, Self, TypeAlias

from websockets.asyncio.client import ClientConnection
from websockets.asyncio.client import connect as ws_connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus

from ..core.backoff import Backoff
from ..exceptions import BroadcasterError
from ..protocols.native import CLOSE_UNAUTHORIZED

__all__ = [
    "INTERRUPTED",
    "Backoff",
    "Change",
    "Client",
    "ClientClosedError",
    "ClientError",
    "ConnectError",
    "Event",
    "Op",
    "Reset",
    "SlowConsumerError",
    "Subscription",
    "SubscriptionError",
    "Table",
    "Token",
    "TooManySubscriptionsError",
    "connect",
]

logger = logging.getLogger(__name__)

Op: TypeAlias = Literal["INSERT", "UPDATE", "DELETE"]
_OPS: Final[frozenset[str]] = frozenset(("INSERT", "UPDATE", "DELETE"))

INTERRUPTED: Final = "interrupted"
"""The reason of a :class:`Reset` the client makes itself: a snapshot was cut
short by a lost connection and starts over."""

DEFAULT_QUEUE_SIZE: Final = 10_000

Token: TypeAlias = str | Callable[[], str | Awaitable[str]]
"""A JWT, or a function (sync or async) that returns a fresh one."""


# Exceptions ------------------------------------------------------------------


class ClientError(BroadcasterError):
    """Root of every exception :mod:`broadcaster.client` raises on purpose."""


class ConnectError(ClientError):
    """The first connection could not be opened.

    Raised by :meth:`Client.open` (``async with connect(...)``) when the server
    refused the handshake for good (a bad URI, an HTTP 4xx answer) or when no
    connection opened within ``connect_timeout``. Connections lost later are
    re-established without raising.
    """


class ClientClosedError(ClientError):
    """The client, or the subscription or table view used, is closed."""


class SlowConsumerError(ClientError):
    """A subscription's queue overflowed where no cursor can resume it.

    That is while the first snapshot of the subscription (or the snapshot after
    a reset) is arriving: there is no cursor to resume from. The iterator
    yields what it queued, then raises this; the subscription is closed.
    """


class SubscriptionError(ClientError):
    """The server answered a ``subscribe`` with an ``error``, or ended a
    subscription with a ``forbidden`` error naming its table.

    ``code`` is the protocol's stable error code (``docs/protocol.md``),
    ``message`` the server's explanation and ``table_id`` the table.
    """

    def __init__(self, table_id: str, code: str, message: str) -> None:
        super().__init__(f"subscribing to {table_id!r} failed: {code}: {message}")
        self.table_id = table_id
        self.code = code
        self.message = message


class TooManySubscriptionsError(SubscriptionError):
    """The connection already holds the server's maximum of subscriptions."""


def _subscription_error(table_id: str, code: str, message: str) -> SubscriptionError:
    if code == "too_many_subscriptions":
        return TooManySubscriptionsError(table_id, code, message)
    return SubscriptionError(table_id, code, message)


# What a subscription yields --------------------------------------------------


@dataclass(frozen=True, slots=True)
class Change:
    """One change of one row, as the server sent it.

    ``row`` is the whole row (``docs/protocol.md``); for a ``DELETE`` it may
    hold only ``id``, ``table_id`` and ``version``. ``cursor`` is set on live
    changes and ``None`` on catch-up (snapshot or resume) changes. A cursor
    covers the whole batch it came with; to save a resume point, prefer
    :attr:`Subscription.cursor`, which covers exactly what was yielded.
    """

    table_id: str
    op: Op
    id: str
    version: int
    row: dict[str, Any]
    cursor: str | None = None


@dataclass(frozen=True, slots=True)
class Reset:
    """Drop everything held for ``table_id``: its snapshot follows.

    ``reason`` is the server's (``malformed_cursor``, ``foreign_cursor``,
    ``history_pruned``) or :data:`INTERRUPTED` when the client restarts a
    snapshot that a lost connection cut short.
    """

    table_id: str
    reason: str


Event: TypeAlias = Change | Reset
"""What iterating a :class:`Subscription` yields."""


# Subscriptions ---------------------------------------------------------------

# Where a subscription stands with the server.
_IDLE: Final = "idle"  # not subscribed on this connection: subscribe when connected
_PENDING: Final = "pending"  # subscribe sent, waiting for "subscribed"
_SYNCING: Final = "syncing"  # subscribed; catch-up arriving
_LIVE: Final = "live"  # synced; live changes arriving
_PAUSED: Final = "paused"  # queue overflowed: unsubscribed until the consumer drains it
_CLOSED: Final = "closed"  # gone for good


class _Malformed(Exception):
    """A server message does not follow the protocol."""


def _text(message: Mapping[str, Any], key: str) -> str:
    value = message.get(key)
    if not isinstance(value, str):
        raise _Malformed(f"{key} is not a string")
    return value


def _ref(message: Mapping[str, Any]) -> int:
    # The client's refs are ints from 1; the server echoes them verbatim.
    ref = message.get("ref")
    return ref if isinstance(ref, int) and not isinstance(ref, bool) else 0


def _parse_change(message: Mapping[str, Any]) -> Change:
    table_id = _text(message, "table_id")
    op = message.get("op")
    row = message.get("row")
    cursor = message.get("cursor")
    if op not in _OPS:
        raise _Malformed(f"unknown op {op!r}")
    if not isinstance(row, dict):
        raise _Malformed("row is not an object")
    row_id = row.get("id")
    version = row.get("version")
    if not isinstance(row_id, str):
        raise _Malformed("row.id is not a string")
    if not isinstance(version, int) or isinstance(version, bool):
        raise _Malformed("row.version is not an integer")
    if cursor is not None and not isinstance(cursor, str):
        raise _Malformed("cursor is not a string")
    return Change(table_id, op, row_id, version, row, cursor)


class _Stream:
    """What :class:`Subscription` and :class:`Table` share: one table's
    subscription state, its cursor and what it holds to drop stale versions."""

    def __init__(self, core: _Core, table_id: str, cursor: str | None, snapshot: bool) -> None:
        if not isinstance(table_id, str) or not table_id:
            raise ValueError("table_id must be a non-empty string")
        self.table_id = table_id
        self._core = core
        self._snapshot = snapshot
        self._state: str = _IDLE
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
        # Row id -> the highest version taken in, deleted rows included.
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
        if self._received is not None:
            message["cursor"] = self._received
        else:
            if self._snapshot:
                message["snapshot"] = True
            self._restart = self._dirty
        self._ref = ref
        self._state = _PENDING
        return message

    @property
    def _active(self) -> bool:
        return self._state in (_SYNCING, _LIVE)

    def _subscribed(self) -> None:
        self._state = _SYNCING
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
        self._state = _LIVE
        self._ever_synced = True
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
        self._state = _CLOSED
        self._notify()

    def _end(self) -> None:
        self._state = _CLOSED
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
        return self._state == _CLOSED

    @property
    def synced(self) -> bool:
        """The subscription is live: its catch-up is in and no resubscribe is under way."""
        return self._state == _LIVE

    async def wait_synced(self) -> None:
        """Wait until the subscription has been synced once.

        Raises the :class:`SubscriptionError` that answered the subscribe, or
        :class:`ClientClosedError` if it ends first.
        """
        while not self._ever_synced:
            signal = self._signal
            if self._state == _CLOSED:
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


@dataclass(slots=True)
class _Item:
    event: Event
    # The cursor that covers everything up to and including this item, if it is
    # the last one taken in before a commit.
    commit: str | None = None


class Subscription(_Stream):
    """One table's changes, as an async iterator of :data:`Event`.

    Get one from :meth:`Client.subscribe`. What arrives is queued (at most
    ``queue_size`` events) until the iterator takes it; see ``docs/clients.md``
    for what a full queue does. Closing the iterator (``break`` out of
    ``async for``, an exception in its body, :meth:`aclose`) unsubscribes.
    """

    def __init__(
        self,
        core: _Core,
        table_id: str,
        *,
        cursor: str | None,
        snapshot: bool,
        queue_size: int,
    ) -> None:
        if queue_size < 1:
            raise ValueError("queue_size must be at least 1")
        super().__init__(core, table_id, cursor, snapshot)
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
                if not self._queue and self._state == _PAUSED:
                    self._core.resume(self)
                return item.event
            if self._state == _CLOSED:
                if self._error is not None:
                    raise self._error
                raise StopAsyncIteration
            if self._state == _PAUSED:
                self._core.resume(self)
            signal = self._signal
            await signal.wait()


class Table(_Stream):
    """A live view of one table: its rows by id, kept up to date.

    Get one from :meth:`Client.table`. :attr:`rows` is replaced in place as
    changes arrive; treat it as read-only. After a :class:`Reset` (see
    :attr:`resets`) it is emptied and refilled by the snapshot that follows.
    """

    def __init__(
        self,
        core: _Core,
        table_id: str,
        *,
        rows: Mapping[str, Mapping[str, Any]] | None,
        cursor: str | None,
    ) -> None:
        if rows and cursor is None:
            raise ValueError("rows need the cursor they were read at")
        super().__init__(core, table_id, cursor, snapshot=True)
        self.rows: dict[str, dict[str, Any]] = {}
        """Row id -> the row (``id``, ``table_id``, ``data``, ``version``, ...)."""
        self.resets: list[str] = []
        """The reason of every reset this view went through, oldest first."""
        for row_id, row in (rows or {}).items():
            version = row.get("version")
            if not isinstance(version, int) or isinstance(version, bool):
                raise ValueError(f"row {row_id!r} has no integer version")
            self.rows[row_id] = dict(row)
            self._versions[row_id] = version

    @property
    def cursor(self) -> str | None:
        """The cursor the view is up to date with: save it with :attr:`rows` to resume."""
        return self._received

    def get(self, row_id: str) -> dict[str, Any] | None:
        """The row with id ``row_id``, or ``None``."""
        return self.rows.get(row_id)

    def __len__(self) -> int:
        return len(self.rows)

    def __contains__(self, row_id: object) -> bool:
        return row_id in self.rows

    def _offer(self, event: Event) -> bool:
        if isinstance(event, Reset):
            self.rows.clear()
            self.resets.append(event.reason)
        elif event.op == "DELETE":
            self.rows.pop(event.id, None)
        else:
            self.rows[event.id] = event.row
        self._notify()
        return True

    def _committed(self, cursor: str) -> None:
        self._notify()

    async def wait_for(
        self,
        predicate: Callable[[Table], object],
        timeout: float | None = None,  # noqa: ASYNC109 (a convenience for tests)
    ) -> None:
        """Wait until ``predicate(self)`` is true; checked now and after every change.

        Raises ``TimeoutError`` after ``timeout`` seconds (``None``: no limit),
        :class:`ClientClosedError` if the view or its client closes first.
        """
        async with asyncio.timeout(timeout):
            while True:
                signal = self._signal
                if predicate(self):
                    return
                if self._state == _CLOSED:
                    raise self._closed_error()
                await signal.wait()

    async def wait_for_row(
        self,
        row_id: str,
        predicate: Callable[[dict[str, Any]], object] | None = None,
        timeout: float | None = None,  # noqa: ASYNC109 (a convenience for tests)
    ) -> dict[str, Any]:
        """Wait until row ``row_id`` exists (and satisfies ``predicate``); return it."""

        def ready(table: Table) -> bool:
            row = table.rows.get(row_id)
            return row is not None and (predicate is None or bool(predicate(row)))

        await self.wait_for(ready, timeout)
        return self.rows[row_id]


# The sans-I/O core -----------------------------------------------------------


class _Core:
    """The client's subscriptions and replies, without I/O.

    The connection feeds it every text frame (:meth:`receive`) and sends what
    it appends to :attr:`outbox`, in order; ``wake`` is called after each append.
    """

    def __init__(self, wake: Callable[[], None]) -> None:
        self._wake = wake
        self.streams: dict[str, _Stream] = {}
        self.outbox: deque[str] = deque()
        self.connected = False
        self.closed = False
        self._ref = 0
        self._subscribes: dict[int, _Stream] = {}
        self._pongs: dict[int, asyncio.Future[None]] = {}
        # Told the token's expiry when the server accepts an auth message.
        self.on_authenticated: Callable[[float | None], None] | None = None

    def _send(self, message: dict[str, Any]) -> None:
        self.outbox.append(json.dumps(message, separators=(",", ":")))
        self._wake()

    def _next_ref(self) -> int:
        self._ref += 1
        return self._ref

    def _subscribe(self, stream: _Stream) -> None:
        ref = self._next_ref()
        self._subscribes[ref] = stream
        self._send(stream._subscribe_message(ref))

    def _unsubscribe(self, table_id: str) -> None:
        self._send({"type": "unsubscribe", "ref": self._next_ref(), "table_id": table_id})

    # Subscriptions.

    def add(self, stream: _Stream) -> None:
        if self.closed:
            raise ClientClosedError("the client is closed")
        if stream.table_id in self.streams:
            raise ClientError(f"{stream.table_id!r} is already subscribed on this client")
        self.streams[stream.table_id] = stream
        if self.connected:
            self._subscribe(stream)

    def remove(self, stream: _Stream, *, end: bool = True) -> None:
        """Forget ``stream``, unsubscribe it if the server holds it, and end it."""
        if self.streams.get(stream.table_id) is not stream:
            return
        del self.streams[stream.table_id]
        if self.connected and stream._state in (_PENDING, _SYNCING, _LIVE):
            self._unsubscribe(stream.table_id)
        if end:
            stream._end()

    def pause(self, stream: _Stream) -> None:
        if self.connected and stream._state in (_PENDING, _SYNCING, _LIVE):
            self._unsubscribe(stream.table_id)
        stream._state = _PAUSED

    def resume(self, stream: _Stream) -> None:
        if stream._state != _PAUSED:
            return
        stream._state = _IDLE
        if self.connected:
            self._subscribe(stream)

    # The connection.

    def opened(self) -> None:
        self.connected = True
        for stream in self.streams.values():
            if stream._state == _IDLE:
                self._subscribe(stream)

    def lost(self) -> None:
        self.connected = False
        self.outbox.clear()
        self._subscribes.clear()
        for pong in self._pongs.values():
            pong.cancel()
        self._pongs.clear()
        for stream in self.streams.values():
            if stream._state in (_PENDING, _SYNCING, _LIVE):
                stream._state = _IDLE
                stream._notify()

    def close(self) -> None:
        self.closed = True
        self.lost()
        for stream in list(self.streams.values()):
            stream._end()
        self.streams.clear()

    def ping(self) -> asyncio.Future[None]:
        """Send a ping; the future is resolved by its pong."""
        ref = self._next_ref()
        pong = self._pongs[ref] = asyncio.get_running_loop().create_future()
        self._send({"type": "ping", "ref": ref})
        return pong

    # What the server sends.

    def receive(self, text: str) -> None:
        """Handle one text frame: a message or an array of them."""
        try:
            frame = json.loads(text)
        except ValueError:
            logger.error("the server sent a frame that is not JSON: %.200r", text)
            return
        messages = frame if isinstance(frame, list) else [frame]
        # Live changes are committed at the end of their frame. (A live batch
        # split over frames carries, in all but its last, the cursor it started
        # from: a client cut off in between receives the batch again.)
        live: dict[_Stream, str] = {}
        for message in messages:
            try:
                if not isinstance(message, dict):
                    raise _Malformed("not an object")
                self._handle(message, live)
            except _Malformed as exc:
                logger.error("ignoring a malformed server message (%s): %.200r", exc, message)
        for stream, cursor in live.items():
            stream._commit(cursor)

    def _handle(self, message: dict[str, Any], live: dict[_Stream, str]) -> None:
        kind = message.get("type")
        if kind == "change":
            change = _parse_change(message)
            stream = self.streams.get(change.table_id)
            if stream is None or not stream._active:
                return
            stream._take_change(change)
            if change.cursor is not None:
                live[stream] = change.cursor
        elif kind in ("reset", "synced", "cursor"):
            stream = self.streams.get(_text(message, "table_id"))
            if stream is None or not stream._active:
                return
            if kind == "reset":
                stream._take_reset(_text(message, "reason"))
                return
            live.pop(stream, None)
            if kind == "synced":
                stream._synced(_text(message, "cursor"))
            else:
                stream._commit(_text(message, "cursor"))
        elif kind == "subscribed":
            stream = self._subscribes.pop(_ref(message), None)
            if stream is not None and stream._state == _PENDING:
                stream._subscribed()
        elif kind == "authenticated":
            expires_at = message.get("expires_at")
            if self.on_authenticated is not None:
                self.on_authenticated(
                    float(expires_at) if isinstance(expires_at, int | float) else None
                )
        elif kind == "pong":
            pong = self._pongs.pop(_ref(message), None)
            if pong is not None and not pong.done():
                pong.set_result(None)
        elif kind == "error":
            self._error(message)
        elif kind != "unsubscribed":
            logger.debug("ignoring a server message of type %r", kind)

    def _error(self, message: dict[str, Any]) -> None:
        code = _text(message, "code")
        text = str(message.get("message", ""))
        stream = self._subscribes.pop(_ref(message), None)
        if stream is not None:
            # It answers a subscribe: the server did not subscribe.
            if stream._state != _PENDING or self.streams.get(stream.table_id) is not stream:
                return
        elif code == "forbidden" and isinstance(message.get("table_id"), str):
            # The server ended a subscription (a refreshed token no longer allows it).
            stream = self.streams.get(message["table_id"])
            if stream is None or stream._state in (_IDLE, _PAUSED):
                return
        else:
            logger.warning("the server reported an error: %s: %s", code, text)
            return
        del self.streams[stream.table_id]
        stream._fail(_subscription_error(stream.table_id, code, text))


# The client ------------------------------------------------------------------


class _DeadConnection(Exception):
    """No pong came back in time."""


def _permanent(error: BaseException) -> bool:
    """Whether a failed first connection attempt is not worth retrying."""
    if isinstance(error, InvalidStatus):
        status = error.response.status_code
        return 400 <= status < 500 and status not in (408, 429)
    return not isinstance(error, OSError | ConnectionClosed | InvalidHandshake)


class Client:
    """One connection to a broadcaster server and its subscriptions.

    Create it with :func:`connect`; ``async with`` opens it (see
    :meth:`open`) and closes it.
    """

    def __init__(
        self,
        url: str,
        *,
        backoff: Backoff | None = None,
        ping_interval: float | None = 20.0,
        ping_timeout: float = 10.0,
        open_timeout: float | None = 10.0,
        close_timeout: float | None = 5.0,
        connect_timeout: float | None = None,
        queue_size: int = DEFAULT_QUEUE_SIZE,
        max_frame_bytes: int | None = None,
        websocket_options: Mapping[str, Any] | None = None,
        token: Token | None = None,
        refresh_margin: float = 30.0,
    ) -> None:
        if ping_interval is not None and not ping_interval > 0:
            raise ValueError("ping_interval must be positive (or None: no heartbeat)")
        if not ping_timeout > 0:
            raise ValueError("ping_timeout must be positive")
        if queue_size < 1:
            raise ValueError("queue_size must be at least 1")
        self.url = url
        self.backoff = backoff or Backoff()
        self.ping_interval = ping_interval
        self.ping_timeout = ping_timeout
        self.connect_timeout = connect_timeout
        self.queue_size = queue_size
        self._websocket_options: dict[str, Any] = {
            "open_timeout": open_timeout,
            "close_timeout": close_timeout,
            "max_size": max_frame_bytes,
            # The heartbeat is the protocol's ping message (see _heartbeat).
            "ping_interval": None,
            # The server negotiates no extension.
            "compression": None,
            **(websocket_options or {}),
        }
        self._token = token
        self._refresh_margin = refresh_margin
        self._refresh: asyncio.TimerHandle | None = None
        self._refusal: ClientError | None = None
        self._outbox_ready = asyncio.Event()
        self._core = _Core(self._outbox_ready.set)
        self._core.on_authenticated = self._authenticated
        self._ws: ClientConnection | None = None
        self._task: asyncio.Task[None] | None = None
        self._opened: asyncio.Future[None] | None = None
        self._closing = False
        self.connections = 0
        """How many connections have been opened (1 + the reconnections)."""

    # Lifecycle.

    @property
    def connected(self) -> bool:
        """A connection is open right now."""
        return self._core.connected

    @property
    def closed(self) -> bool:
        return self._core.closed

    @property
    def subscriptions(self) -> Mapping[str, Subscription | Table]:
        """The open subscriptions and table views, by table id."""
        return {
            table_id: stream
            for table_id, stream in self._core.streams.items()
            if isinstance(stream, Subscription | Table)
        }

    async def open(self) -> None:
        """Connect; return once the first connection is open.

        Failures that may pass (connection refused, a timeout, HTTP 5xx while
        the server starts) are retried with :attr:`backoff` for up to
        ``connect_timeout`` seconds (``None``: no limit); others (a bad URI,
        HTTP 4xx) raise :class:`ConnectError` at once.
        """
        if self._core.closed:
            raise ClientClosedError("the client is closed")
        if self._task is not None:
            raise ClientError("the client is already open")
        self._opened = opened = asyncio.get_running_loop().create_future()
        self._task = asyncio.create_task(self._run(), name=f"broadcaster client {self.url}")
        try:
            async with asyncio.timeout(self.connect_timeout):
                await asyncio.shield(opened)
        except TimeoutError:
            await self.close()
            raise ConnectError(
                f"no connection to {self.url} within {self.connect_timeout} seconds"
            ) from None
        except asyncio.CancelledError:
            current = asyncio.current_task()
            if self._closing and current is not None and not current.cancelling():
                # close() was called meanwhile; this task was not cancelled.
                raise ClientClosedError("the client was closed while opening") from None
            await self.close()
            raise
        except BaseException:
            await self.close()
            raise

    async def close(self) -> None:
        """Close the connection (code 1000) and end every subscription."""
        if self._closing:
            return
        self._closing = True
        ws = self._ws
        if ws is not None:
            try:
                await ws.close()
            except Exception as exc:  # the connection may be failing already
                logger.debug("closing the connection failed: %r", exc)
        task = self._task
        if task is not None:
            task.cancel()
            await asyncio.wait({task})
            if not task.cancelled() and task.exception() is not None:
                logger.error("the client's task failed", exc_info=task.exception())
        opened = self._opened
        if opened is not None and opened.done() and not opened.cancelled():
            opened.exception()  # retrieved: open() has raised it, or nobody waits
        elif opened is not None:
            opened.cancel()
        self._core.close()

    async def __aenter__(self) -> Client:
        await self.open()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    # Subscribing.

    def subscribe(
        self,
        table_id: str,
        *,
        cursor: str | None = None,
        snapshot: bool = False,
        queue_size: int | None = None,
    ) -> Subscription:
        """Subscribe to ``table_id``; iterate the result for its changes.

        With ``snapshot=True`` every row comes first (as ``INSERT`` changes);
        with ``cursor`` (from :attr:`Subscription.cursor` or
        :attr:`Table.cursor`) every change since that cursor does, or a
        :class:`Reset` and every row if the server cannot serve the cursor.
        With neither, only changes committed from now on. The subscribe is
        sent at once (or when connected); an error answering it is raised by
        the iterator and by :meth:`Subscription.wait_synced`.
        """
        subscription = Subscription(
            self._core,
            table_id,
            cursor=cursor,
            snapshot=snapshot,
            queue_size=self.queue_size if queue_size is None else queue_size,
        )
        self._core.add(subscription)
        return subscription

    async def table(
        self,
        table_id: str,
        *,
        rows: Mapping[str, Mapping[str, Any]] | None = None,
        cursor: str | None = None,
    ) -> Table:
        """A live view of ``table_id``, returned once its snapshot is in.

        To resume a view saved earlier, pass its ``rows`` and ``cursor``: only
        what changed since is sent (or a reset and a snapshot, if the cursor
        cannot be served). Raises :class:`SubscriptionError` if the server
        refuses the subscription.
        """
        view = Table(self._core, table_id, rows=rows, cursor=cursor)
        self._core.add(view)
        try:
            await view.wait_synced()
        except BaseException:
            self._core.remove(view)
            raise
        return view

    # The connection.

    async def _run(self) -> None:
        opened = self._opened
        assert opened is not None
        try:
            await self._connect_forever(opened)
        except Exception as exc:
            # A bug: end every subscription with it rather than hang them.
            logger.exception("the client for %s failed", self.url)
            if not opened.done():
                opened.set_exception(exc)
            error = ClientError(f"the client for {self.url} failed: {exc!r}")
            error.__cause__ = exc
            for stream in list(self._core.streams.values()):
                self._core.remove(stream)
                stream._fail(error)

    async def _connect_forever(self, opened: asyncio.Future[None]) -> None:
        loop = asyncio.get_running_loop()
        failures = 0
        while not self._closing:
            if failures:
                await asyncio.sleep(self.backoff.delay(failures))
            try:
                ws = await ws_connect(self.url, **self._websocket_options)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                failures += 1
                if not opened.done() and _permanent(exc):
                    opened.set_exception(ConnectError(f"cannot connect to {self.url}: {exc}"))
                    return
                logger.warning("cannot connect to %s: %s; retrying", self.url, exc)
                continue
            self.connections += 1
            opened_at = loop.time()
            if not opened.done() and self._token is None:
                opened.set_result(None)
            elif not opened.done():
                # With a token, the client is open once the server accepts it.
                self._core.on_authenticated = self._opened_when_authenticated(opened)
            else:
                logger.info("reconnected to %s", self.url)
            await self._session(ws)
            if ws.close_code == CLOSE_UNAUTHORIZED and isinstance(self._token, str):
                # The same token would be refused again: give up.
                self._refusal = ClientError(
                    f"{self.url} refused the token: {ws.close_reason or 'unauthorized'}"
                )
                for stream in list(self._core.streams.values()):
                    self._core.remove(stream)
                    stream._fail(self._refusal)
                if not opened.done():
                    opened.set_exception(self._refusal)
                return
            if loop.time() - opened_at >= self.backoff.maximum:
                failures = 0
            failures += 1

    @staticmethod
    async def _get_token(token: Token) -> str:
        if isinstance(token, str):
            return token
        value = token()
        return value if isinstance(value, str) else await value

    async def _authenticate(self, ws: ClientConnection) -> None:
        """Send the token first: the server handles messages in order, so the
        subscribes that follow are served once it is accepted."""
        if self._token is not None:
            token = await self._get_token(self._token)
            await ws.send(json.dumps({"type": "auth", "ref": "auth", "token": token}))

    def _opened_when_authenticated(
        self, opened: asyncio.Future[None]
    ) -> Callable[[float | None], None]:
        def authenticated(expires_at: float | None) -> None:
            self._core.on_authenticated = self._authenticated
            if not opened.done():
                opened.set_result(None)
            self._authenticated(expires_at)

        return authenticated

    def _authenticated(self, expires_at: float | None) -> None:
        if self._refresh is not None:
            self._refresh.cancel()
            self._refresh = None
        if expires_at is None or self._token is None or isinstance(self._token, str):
            return
        loop = asyncio.get_running_loop()
        # Refresh a margin before expiry, or halfway through a shorter lifetime.
        lifetime = expires_at - time.time()
        delay = max(0.0, lifetime - min(self._refresh_margin, lifetime / 2))
        self._refresh = loop.call_later(delay, lambda: loop.create_task(self._send_fresh_token()))

    async def _send_fresh_token(self) -> None:
        if self._token is None:
            return
        try:
            token = await self._get_token(self._token)
        except Exception:
            logger.exception("getting a fresh token failed; the connection ends at expiry")
            return
        if self._core.connected:
            self._core.outbox.append(json.dumps({"type": "auth", "ref": "auth", "token": token}))
            self._outbox_ready.set()

    async def _session(self, ws: ClientConnection) -> None:
        self._ws = ws
        await self._authenticate(ws)
        self._core.opened()
        tasks = [
            asyncio.create_task(self._read(ws)),
            asyncio.create_task(self._write(ws)),
        ]
        if self.ping_interval is not None:
            tasks.append(asyncio.create_task(self._heartbeat(self.ping_interval)))
        try:
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            self._ws = None
            self._core.lost()
            if self._refresh is not None:
                self._refresh.cancel()
                self._refresh = None
            if ws.close_code is None:
                # A dead connection (no pong): waiting for a closing handshake is pointless.
                ws.transport.abort()
                await ws.wait_closed()
        for task in done:
            error = None if task.cancelled() else task.exception()
            if isinstance(error, _DeadConnection):
                logger.warning("%s; reconnecting", error)
            elif isinstance(error, ConnectionClosed) or error is None:
                if not self._closing:
                    logger.info(
                        "connection to %s closed (code %s %s); reconnecting",
                        self.url,
                        ws.close_code,
                        ws.close_reason or "",
                    )
            else:
                logger.error("connection to %s failed; reconnecting", self.url, exc_info=error)

    async def _read(self, ws: ClientConnection) -> None:
        async for frame in ws:
            if isinstance(frame, str):
                self._core.receive(frame)
            else:
                logger.warning("ignoring a binary frame from the server")

    async def _write(self, ws: ClientConnection) -> None:
        outbox = self._core.outbox
        while True:
            while outbox:
                await ws.send(outbox.popleft())
            self._outbox_ready.clear()
            await self._outbox_ready.wait()

    async def _heartbeat(self, interval: float) -> None:
        while True:
            await asyncio.sleep(interval)
            pong = self._core.ping()
            try:
                await asyncio.wait_for(pong, self.ping_timeout)
            except TimeoutError:
                raise _DeadConnection(
                    f"no pong from {self.url} within {self.ping_timeout} seconds"
                ) from None


def connect(
    url: str,
    *,
    backoff: Backoff | None = None,
    ping_interval: float | None = 20.0,
    ping_timeout: float = 10.0,
    open_timeout: float | None = 10.0,
    close_timeout: float | None = 5.0,
    connect_timeout: float | None = None,
    queue_size: int = DEFAULT_QUEUE_SIZE,
    max_frame_bytes: int | None = None,
    websocket_options: Mapping[str, Any] | None = None,
    token: Token | None = None,
    refresh_margin: float = 30.0,
) -> Client:
    """A :class:`Client` for the server at ``url`` (``ws://host:port/ws``); use ``async with``.

    - ``backoff``: delays between reconnection attempts (:class:`Backoff`).
    - ``ping_interval``: seconds between heartbeat pings (``None``: none);
      ``ping_timeout``: seconds to wait for the pong before reconnecting.
    - ``open_timeout``: seconds one connection attempt (TCP, TLS, HTTP
      upgrade) may take; ``close_timeout``: seconds to wait for the server's
      close frame when closing.
    - ``connect_timeout``: seconds :meth:`Client.open` keeps retrying the first
      connection (``None``: until it opens).
    - ``queue_size``: events each :class:`Subscription` queues for its reader.
    - ``max_frame_bytes``: the largest frame accepted (``None``: no limit; the
      server packs frames up to 256 KiB, but one large row is one message).
    - ``token``: a JWT, or a function returning one (sync or async), sent as an
      ``auth`` message on every connection. With a function, a fresh token is
      sent ``refresh_margin`` seconds before the current one expires (or halfway
      through a shorter lifetime). A plain token the server refuses (close 4001)
      ends the client with :class:`ClientError` instead of reconnecting.
    - ``websocket_options``: more keyword arguments for
      :func:`websockets.asyncio.client.connect` (``additional_headers``,
      ``ssl``, ``proxy``...).
    """
    return Client(
        url,
        backoff=backoff,
        ping_interval=ping_interval,
        ping_timeout=ping_timeout,
        open_timeout=open_timeout,
        close_timeout=close_timeout,
        connect_timeout=connect_timeout,
        queue_size=queue_size,
        max_frame_bytes=max_frame_bytes,
        websocket_options=websocket_options,
        token=token,
        refresh_margin=refresh_margin,
    )
