"""One client connection speaking the native protocol: its subscriptions and replies.

Sans-I/O: the WebSocket adapter feeds it the text of each incoming message and
gives it a :class:`Transport` to write complete frames to. A subscribe becomes
a :class:`~broadcaster.feed.Join` handed to a :class:`Joiner`; when the join is
answered the session sends ``subscribed``, a ``reset`` if the cursor could not
be served, the catch-up, ``synced``, and from then on, as the hub subscriber of
that table, every live batch.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Final, Protocol

from . import protocol
from .changes import Change
from .exceptions import ProtocolError
from .feed import Join, JoinResult
from .frames import text_frame
from .hub import Batch, Hub

__all__ = ["FRAME_BYTES", "Joiner", "NativeSession", "Transport", "encode_batch"]

logger = logging.getLogger(__name__)

# The key under which a batch memoises its native encoding.
_NATIVE_FRAME: Final = "native.frame"

# Messages are packed into frames of at most this many bytes (one message alone
# may be larger), so a burst or a snapshot never becomes one frame of many
# megabytes: common clients refuse frames over 1 MiB by default.
FRAME_BYTES: Final = 256 * 1024


def _chunks(messages: Sequence[bytes]) -> list[list[bytes]]:
    chunks: list[list[bytes]] = []
    size = FRAME_BYTES
    for message in messages:
        if size + len(message) > FRAME_BYTES:
            chunks.append([])
            size = 0
        chunks[-1].append(message)
        size += len(message) + 1
    return chunks


def _frame(messages: Sequence[bytes]) -> bytes:
    return text_frame(messages[0] if len(messages) == 1 else protocol.batch(list(messages)))


def encode_batch(batch: Batch) -> bytes:
    """The frames carrying a live batch, as one string of bytes.

    Changes carry the batch's cursor, except in frames before the last, which
    carry the cursor the read started from: a client cut off between two frames
    resumes from there and receives the batch again instead of skipping part of
    it. A batch with no change becomes a ``cursor`` message; a ``reset`` goes first.
    """
    head = [] if batch.reset is None else [protocol.encode_reset(batch.table_id, batch.reset)]
    if not batch.changes:
        return _frame([*head, protocol.encode_cursor(batch.table_id, batch.cursor)])
    final = [protocol.encode_change(change, batch.cursor) for change in batch.changes]
    chunks = _chunks(head + final)
    if len(chunks) == 1:
        return _frame(chunks[0])
    early = [protocol.encode_change(change, batch.since) for change in batch.changes]
    messages = head + early
    frames = []
    start = 0
    for number, chunk in enumerate(chunks):
        end = start + len(chunk)
        frames.append(_frame(chunk if number == len(chunks) - 1 else messages[start:end]))
        start = end
    return b"".join(frames)


class Transport(Protocol):
    def send(self, frame: bytes) -> None:
        """Queue a complete WebSocket frame; never block."""

    def close(self, code: int, reason: str) -> None:
        """Start the closing handshake with ``code``."""


class Joiner(Protocol):
    def join(self, join: Join) -> None:
        """Answer ``join`` at the next read."""

    def cancel(self, join: Join) -> None:
        """Forget ``join`` if it has not been answered."""


class NativeSession:
    """Subscriptions and request handling for one native-protocol connection."""

    def __init__(
        self,
        hub: Hub,
        joiner: Joiner,
        transport: Transport,
        *,
        max_subscriptions: int,
        max_message_bytes: int,
    ) -> None:
        self._hub = hub
        self._joiner = joiner
        self._transport = transport
        self._max_subscriptions = max_subscriptions
        self._max_message_bytes = max_message_bytes
        # table_id -> its pending Join, or None once live.
        self.tables: dict[str, Join | None] = {}
        self.closed = False

    def receive_text(self, data: bytes) -> None:
        """Handle one complete text message from the client."""
        if len(data) > self._max_message_bytes:
            self._error(
                protocol.TOO_LARGE,
                f"message of {len(data)} bytes exceeds the limit of "
                f"{self._max_message_bytes} bytes",
            )
            return
        try:
            text = data.decode()
        except UnicodeDecodeError:
            self._transport.close(protocol.CLOSE_INVALID_DATA, "text frame is not valid UTF-8")
            return
        try:
            message = protocol.parse_client_message(text)
            self._handle(message)
        except ProtocolError as exc:
            self._error(exc.code, exc.message, exc.ref)

    def receive_binary(self) -> None:
        """Handle one binary message: the native protocol has none."""
        self._error(protocol.BINARY_NOT_SUPPORTED, "the native protocol uses text frames only")

    def _handle(self, message: protocol.ClientMessage) -> None:
        if isinstance(message, protocol.Ping):
            self._reply(protocol.encode_pong(message.ref))
        elif isinstance(message, protocol.Subscribe):
            self._subscribe(message)
        else:
            self._leave(message.table_id)
            self._reply(protocol.encode_unsubscribed(message.ref, message.table_id))

    def _subscribe(self, message: protocol.Subscribe) -> None:
        table_id = message.table_id
        if table_id in self.tables:
            # Subscribing again starts over from the cursor given this time.
            self._leave(table_id)
        elif len(self.tables) >= self._max_subscriptions:
            raise ProtocolError(
                protocol.TOO_MANY_SUBSCRIPTIONS,
                f"a connection may hold at most {self._max_subscriptions} subscriptions",
                message.ref,
            )

        def joined(result: JoinResult) -> None:
            self._joined(join, message.ref, result)

        join = Join(table_id, joined, message.cursor, message.snapshot)
        self.tables[table_id] = join
        self._joiner.join(join)

    def _joined(self, join: Join, ref: protocol.Ref, result: JoinResult) -> None:
        table_id = join.table_id
        if self.closed or self.tables.get(table_id) is not join:
            return
        self._reply(protocol.encode_subscribed(ref, table_id))
        if result.reset is not None:
            self._reply(protocol.encode_reset(table_id, result.reset))
        self._send_catch_up(result.changes)
        self._reply(protocol.encode_synced(table_id, result.cursor))
        # Sending may have closed the session (a slow consumer): it must not
        # become a subscriber after close() has run.
        if self.closed or self.tables.get(table_id) is not join:
            return
        self.tables[table_id] = None
        self._hub.subscribe(table_id, self)

    def _send_catch_up(self, changes: Sequence[Change]) -> None:
        for chunk in _chunks([protocol.encode_change(change) for change in changes]):
            self._transport.send(_frame(chunk))

    def _leave(self, table_id: str) -> None:
        if table_id not in self.tables:
            return
        join = self.tables.pop(table_id)
        if join is None:
            self._hub.unsubscribe(table_id, self)
        else:
            self._joiner.cancel(join)

    def deliver(self, batch: Batch) -> None:
        self._transport.send(batch.memo(_NATIVE_FRAME, encode_batch))

    def close(self) -> None:
        """Leave every table; the connection is gone or going."""
        if self.closed:
            return
        self.closed = True
        for table_id in list(self.tables):
            self._leave(table_id)

    def _reply(self, message: bytes) -> None:
        self._transport.send(text_frame(message))

    def _error(self, code: str, message: str, ref: protocol.Ref = None) -> None:
        logger.debug("client error %s: %s", code, message)
        self._reply(protocol.encode_error(code, message, ref))
