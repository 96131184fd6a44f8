"""The client without I/O: its subscriptions, the messages it sends and those it receives.

:class:`Core` parses every text frame the server sends and hands each message
to the table it concerns; what it has to send, it appends to its outbox for
the connection (:mod:`._connection`) to write. It owns the request refs, the
pending subscribes and the pings awaiting their pong.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections import deque
from collections.abc import Callable, Mapping
from typing import Any, Final, get_args

from ..core.backoff import Backoff
from ._errors import ClientClosedError, ClientError, subscription_error
from ._events import Change, Op
from ._stream import IDLE, LIVE, PAUSED, PENDING, SYNCING, Stream

__all__ = ["Core"]

# The package's logger, as documented: records keep its name whichever module logs.
logger = logging.getLogger("broadcaster.client")

_OPS: Final[frozenset[str]] = frozenset(get_args(Op))

# Refusals of a subscribe that say "not now": it is sent again after a delay.
# (A published table is looked up in the database at each subscribe.)
_TRANSIENT: Final[frozenset[str]] = frozenset({"unavailable", "rate_limited"})
_BACKOFF: Final = Backoff()


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
    # The row's key; a server older than the message's id has it in row.id
    # (every row of rows does, and every DELETE's).
    row_id = message.get("id", row.get("id"))
    version = row.get("version")
    if not isinstance(row_id, str):
        raise _Malformed("id is not a string")
    if not isinstance(version, int) or isinstance(version, bool):
        raise _Malformed("row.version is not an integer")
    if cursor is not None and not isinstance(cursor, str):
        raise _Malformed("cursor is not a string")
    old = message.get("old")
    if old is not None and not isinstance(old, dict):
        raise _Malformed("old is not an object")
    return Change(table_id, op, row_id, version, row, cursor, old)


class Core:
    """The client's subscriptions and replies, without I/O.

    The connection feeds it every text frame (:meth:`receive`) and sends what
    it appends to :attr:`outbox`, in order; ``wake`` is called after each append.
    A subscribe refused for now (``unavailable``, ``rate_limited``) is sent
    again ``retry_delay(n)`` seconds later, ``n`` counting such refusals of
    the table in a row.
    """

    def __init__(
        self, wake: Callable[[], None], retry_delay: Callable[[int], float] = _BACKOFF.delay
    ) -> None:
        self._wake = wake
        self._retry_delay = retry_delay
        self.streams: dict[str, Stream] = {}
        self.outbox: deque[str] = deque()
        self.connected = False
        self.closed = False
        self._ref = 0
        self._subscribes: dict[int, Stream] = {}
        self._pongs: dict[int, asyncio.Future[None]] = {}
        # Told the token's expiry when the server accepts an auth message.
        self.on_authenticated: Callable[[float | None], None] | None = None

    def _send(self, message: dict[str, Any]) -> None:
        self.outbox.append(json.dumps(message, separators=(",", ":")))
        self._wake()

    def _next_ref(self) -> int:
        self._ref += 1
        return self._ref

    def _subscribe(self, stream: Stream) -> None:
        ref = self._next_ref()
        self._subscribes[ref] = stream
        self._send(stream._subscribe_message(ref))

    def _unsubscribe(self, table_id: str) -> None:
        self._send({"type": "unsubscribe", "ref": self._next_ref(), "table_id": table_id})

    # Subscriptions.

    def add(self, stream: Stream) -> None:
        if self.closed:
            raise ClientClosedError("the client is closed")
        if stream.table_id in self.streams:
            raise ClientError(f"{stream.table_id!r} is already subscribed on this client")
        self.streams[stream.table_id] = stream
        if self.connected:
            self._subscribe(stream)

    def remove(self, stream: Stream, *, end: bool = True) -> None:
        """Forget ``stream``, unsubscribe it if the server holds it, and end it."""
        if self.streams.get(stream.table_id) is not stream:
            return
        del self.streams[stream.table_id]
        if self.connected and stream._state in (PENDING, SYNCING, LIVE):
            self._unsubscribe(stream.table_id)
        if end:
            stream._end()

    def pause(self, stream: Stream) -> None:
        if self.connected and stream._state in (PENDING, SYNCING, LIVE):
            self._unsubscribe(stream.table_id)
        stream._state = PAUSED

    def resume(self, stream: Stream) -> None:
        if stream._state != PAUSED:
            return
        stream._state = IDLE
        if self.connected:
            self._subscribe(stream)

    # The connection.

    def opened(self) -> None:
        self.connected = True
        for stream in self.streams.values():
            if stream._state == IDLE:
                self._subscribe(stream)

    def lost(self) -> None:
        self.connected = False
        self.outbox.clear()
        self._subscribes.clear()
        for pong in self._pongs.values():
            pong.cancel()
        self._pongs.clear()
        for stream in self.streams.values():
            if stream._state in (PENDING, SYNCING, LIVE):
                stream._state = IDLE
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
        live: dict[Stream, str] = {}
        for message in messages:
            try:
                if not isinstance(message, dict):
                    raise _Malformed("not an object")
                self._handle(message, live)
            except _Malformed as exc:
                logger.error("ignoring a malformed server message (%s): %.200r", exc, message)
        for stream, cursor in live.items():
            stream._commit(cursor)

    def _handle(self, message: dict[str, Any], live: dict[Stream, str]) -> None:
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
            if stream is not None and stream._state == PENDING:
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
            if stream._state != PENDING or self.streams.get(stream.table_id) is not stream:
                return
            if code in _TRANSIENT:
                self._retry(stream, code, text)
                return
        elif code == "forbidden" and isinstance(message.get("table_id"), str):
            # The server ended a subscription (a refreshed token no longer allows it).
            stream = self.streams.get(message["table_id"])
            if stream is None or stream._state in (IDLE, PAUSED):
                return
        else:
            logger.warning("the server reported an error: %s: %s", code, text)
            return
        del self.streams[stream.table_id]
        stream._fail(subscription_error(stream.table_id, code, text))

    def _retry(self, stream: Stream, code: str, text: str) -> None:
        stream._state = IDLE
        stream._refusals += 1
        delay = self._retry_delay(stream._refusals)
        logger.info(
            "subscribing to %r refused for now (%s: %s); again in %.1f s",
            stream.table_id,
            code,
            text,
            delay,
        )

        def again() -> None:
            # Unless a new connection subscribed it meanwhile, or it is gone.
            current = self.streams.get(stream.table_id) is stream
            if self.connected and current and stream._state == IDLE:
                self._subscribe(stream)

        asyncio.get_running_loop().call_later(delay, again)
