"""One client connection speaking the native protocol: its subscriptions and replies.

Sans-I/O: the WebSocket adapter feeds it the text of each incoming message and
gives it a :class:`Transport` to write complete frames to. The session is also
the hub subscriber for every table it subscribes to.
"""

from __future__ import annotations

import logging
from typing import Final, Protocol

from . import protocol
from .exceptions import ProtocolError
from .frames import text_frame
from .hub import Batch, Hub

__all__ = ["NativeSession", "Transport"]

logger = logging.getLogger(__name__)

# The key under which a batch memoises its native encoding.
_NATIVE_FRAME: Final = "native.frame"


def encode_batch(batch: Batch) -> bytes:
    """The frame carrying ``batch``: one message, or a JSON array for a burst."""
    messages = [protocol.encode_change(change) for change in batch.changes]
    return text_frame(messages[0] if len(messages) == 1 else protocol.batch(messages))


class Transport(Protocol):
    def send(self, frame: bytes) -> None:
        """Queue a complete WebSocket frame; never block."""

    def close(self, code: int, reason: str) -> None:
        """Start the closing handshake with ``code``."""


class NativeSession:
    """Subscriptions and request handling for one native-protocol connection."""

    def __init__(
        self,
        hub: Hub,
        transport: Transport,
        *,
        max_subscriptions: int,
        max_message_bytes: int,
    ) -> None:
        self._hub = hub
        self._transport = transport
        self._max_subscriptions = max_subscriptions
        self._max_message_bytes = max_message_bytes
        self.tables: dict[str, None] = {}
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
            table_id = message.table_id
            if table_id not in self.tables and len(self.tables) >= self._max_subscriptions:
                raise ProtocolError(
                    protocol.TOO_MANY_SUBSCRIPTIONS,
                    f"a connection may hold at most {self._max_subscriptions} subscriptions",
                    message.ref,
                )
            self.tables[table_id] = None
            self._hub.subscribe(table_id, self)
            self._reply(protocol.encode_subscribed(message.ref, table_id))
        else:
            self.tables.pop(message.table_id, None)
            self._hub.unsubscribe(message.table_id, self)
            self._reply(protocol.encode_unsubscribed(message.ref, message.table_id))

    def deliver(self, batch: Batch) -> None:
        self._transport.send(batch.memo(_NATIVE_FRAME, encode_batch))

    def close(self) -> None:
        """Leave every table; the connection is gone or going."""
        if self.closed:
            return
        self.closed = True
        for table_id in self.tables:
            self._hub.unsubscribe(table_id, self)
        self.tables.clear()

    def _reply(self, message: bytes) -> None:
        self._transport.send(text_frame(message))

    def _error(self, code: str, message: str, ref: protocol.Ref = None) -> None:
        logger.debug("client error %s: %s", code, message)
        self._reply(protocol.encode_error(code, message, ref))
