"""WebSocket connections, served on the transport itself rather than through ASGI.

uvicorn parses each HTTP request; starlette answers the plain HTTP routes. An
upgrade request is handed, with its socket, to :class:`WebSocketConnection`
(uvicorn's ``ws`` protocol-class hook). It runs websockets' sans-I/O
``ServerProtocol`` for the handshake and for incoming frames, and writes outgoing
frames straight to the transport: the frame built once for a change goes to
every subscriber as the same bytes, and a client whose unsent data exceeds
``max_buffer_bytes`` is closed as a slow consumer without anyone waiting on it.
See ``docs/performance.md`` for why the fan-out path bypasses ASGI.

Every WebSocket-level rule lives here, so both sessions get it: text messages
are valid UTF-8 (checked fragment by fragment), a message is assembled in one
buffer bounded by ``max_frame_bytes`` and from at most
:data:`MAX_FRAMES_PER_MESSAGE` frames, a connection handles a bounded share of
input per event-loop turn, and whatever the server writes (pongs and close
frames too) counts against ``max_buffer_bytes``. ``docs/security.md`` lists
what each bad input gets.
"""

from __future__ import annotations

import asyncio
import codecs
import http
import logging
from typing import TYPE_CHECKING, Any, Final, cast
from urllib.parse import parse_qs, urlsplit

from websockets.exceptions import InvalidState
from websockets.frames import Frame, Opcode
from websockets.http11 import Request
from websockets.protocol import Protocol, Side, State
from websockets.server import ServerProtocol

from ..core.writes import Writes
from ..protocols import native as protocol
from ..protocols import phoenix
from ..sessions.native import NativeSession
from ..sessions.supabase import SupabaseSession

if TYPE_CHECKING:
    from .runtime import Runtime

__all__ = ["MAX_FRAMES_PER_MESSAGE", "WebSocketConnection"]

logger = logging.getLogger(__name__)

MAX_FRAMES_PER_MESSAGE: Final = 1024
"""Frames one message may be split into; more close the connection (1008).

Browsers never fragment what they send. Empty continuation frames count
against no size limit, so without this a client could keep one message open
for ever, a few bytes a frame.
"""

# Input is fed to websockets' parser a slice at a time, and a connection hands
# the event loop back after a turn's budget: a read of 256 KiB of empty frames
# is 40,000 frames, half a second of work that would stall every other client.
# A slice holds at most 85 frames, about a millisecond of parsing; slicing
# costs a large message nothing measurable.
_SLICE_BYTES: Final = 512
_TURN_BYTES: Final = 64 * 1024
_TURN_FRAMES: Final = 64

_utf8_decoder = codecs.getincrementaldecoder("utf-8")

NATIVE_PATH = "/ws"
# Where supabase-js connects: NEXT_PUBLIC_SUPABASE_URL + /realtime/v1/websocket.
SUPABASE_PATHS = frozenset({"/realtime/v1/websocket", "/socket/websocket"})


class WebSocketConnection(asyncio.Protocol):
    """One WebSocket connection, from the upgrade request to the closed socket."""

    def __init__(
        self,
        config: Any,
        server_state: Any,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        self._runtime: Runtime | None = app_state.get("broadcaster")
        self._connections: set[Any] = server_state.connections
        settings = self._runtime.settings if self._runtime is not None else None
        self._max_buffer_bytes = settings.max_buffer_bytes if settings else 0
        self._writes = self._runtime.writes if self._runtime is not None else Writes()
        self._close_timeout = settings.close_timeout if settings else 1.0
        self._max_frame_bytes = settings.max_frame_bytes if settings else 1
        # The handshake's ServerProtocol, then one for frames (_frames_only).
        self._ws: Protocol = ServerProtocol(max_size=self._max_frame_bytes, logger=logger)
        self._transport: asyncio.Transport | None = None
        self._session: NativeSession | SupabaseSession | None = None
        # A fragmented message being assembled: its opcode, its bytes so far
        # (websockets bounds them by max_frame_bytes), how many frames brought
        # them, and for text the UTF-8 decoder that checks each as it comes.
        self._message_opcode: Opcode | None = None
        self._message = bytearray()
        self._message_frames = 0
        self._utf8: codecs.IncrementalDecoder | None = None
        # Input received but not parsed yet (one read at most: reading pauses
        # while any is left), from _position on.
        self._input = b""
        self._position = 0
        self._resume: asyncio.Handle | None = None
        # Why reading is paused: the session asked, or too much is unsent.
        self._session_paused = False
        self._writing_paused = False
        self._reading = True
        self._close_sent = False
        self._abort_timer: asyncio.TimerHandle | None = None
        self._peer = "?"

    @property
    def buffered_bytes(self) -> int:
        """What this connection holds of its client's input and of its output.

        Input not parsed yet, websockets' parser buffer (at most a frame), the
        fragmented message being assembled and the unsent output: with the
        limits, a small constant times ``max_frame_bytes`` plus
        ``max_buffer_bytes``, whatever the client sends.
        """
        unsent = self._transport.get_write_buffer_size() if self._transport is not None else 0
        return (
            len(self._input)
            - self._position
            + len(self._ws.reader.buffer)
            + len(self._message)
            + unsent
        )

    # asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # An asyncio.Transport, or one of uvloop's (which do not subclass it).
        self._transport = cast(asyncio.Transport, transport)
        # Past the limit the client is closed as a slow consumer, and reading
        # pauses (pause_writing) until what is unsent drains to a quarter of it:
        # pings read meanwhile would queue pongs nobody reads.
        self._transport.set_write_buffer_limits(high=self._max_buffer_bytes)
        peer = transport.get_extra_info("peername")
        if peer:
            self._peer = f"{peer[0]}:{peer[1]}"
        self._connections.add(self)

    def data_received(self, data: bytes) -> None:
        if self._position < len(self._input):
            # Read before the pause took effect (a TLS transport may do that).
            self._input = self._input[self._position :] + data
        else:
            self._input = data
        self._position = 0
        self._receive()

    def eof_received(self) -> bool | None:
        # Reading pauses while input is left, so none is left here.
        self._ws.receive_eof()
        self._flush()
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        self._connections.discard(self)
        self._input = b""
        self._message = bytearray()
        for handle in (self._abort_timer, self._resume):
            if handle is not None:
                handle.cancel()
        if self._session is not None:
            self._session.close()
            if self._runtime is not None:
                self._runtime.connections -= 1
            logger.debug("%s disconnected", self._peer)

    def pause_writing(self) -> None:
        self._writing_paused = True
        self._update_reading()

    def resume_writing(self) -> None:
        self._writing_paused = False
        self._update_reading()

    # uvicorn calls this on every connection when the server shuts down.

    def shutdown(self) -> None:
        if self._ws.state is State.OPEN:
            self.close(protocol.CLOSE_GOING_AWAY, "server shutting down")
        elif self._transport is not None:
            self._transport.close()

    # Transport, for the session

    def send(self, frame: bytes) -> None:
        if self._writes.holding:
            self._writes.hold(self, frame)
        else:
            self.write(frame)

    def write(self, data: bytes) -> None:
        """Write frames now (:class:`~broadcaster.core.writes.Writes` calls it at a round's end)."""
        transport = self._transport
        if transport is None or self._ws.state is not State.OPEN:
            return
        transport.write(data)
        self._check_unsent()

    def pause_reading(self) -> None:
        self._session_paused = True
        self._update_reading()

    def resume_reading(self) -> None:
        self._session_paused = False
        self._update_reading()

    def close(self, code: int, reason: str) -> None:
        if self._session is not None:
            self._session.close()
        try:
            self._ws.send_close(code, reason)
        except InvalidState:
            return
        self._flush()

    # internals

    def _receive(self) -> None:
        """Parse and handle pending input, within one turn's budget."""
        self._resume = None
        handled = frames = 0
        transport = self._transport
        try:
            while (
                self._position < len(self._input)
                and transport is not None
                and not transport.is_closing()
                and not self._session_paused
                and not self._writing_paused
                and handled < _TURN_BYTES
                and frames < _TURN_FRAMES
            ):
                end = self._position + _SLICE_BYTES
                chunk = self._input[self._position : end]
                self._position += len(chunk)
                handled += len(chunk)
                frames += self._feed(chunk)
        except Exception:
            # A bug must cost this connection alone, with a close frame, not
            # escape into asyncio, which would drop the socket without one.
            logger.exception("handling input from %s failed", self._peer)
            self._fail(protocol.CLOSE_INTERNAL_ERROR, "internal error")
        if self._position >= len(self._input):
            self._input = b""
            self._position = 0
        self._update_reading()

    def _feed(self, data: bytes) -> int:
        """Give ``data`` to the parser and handle what it found; return the frame count."""
        self._ws.receive_data(data)
        events = self._ws.events_received()
        for event in events:
            if isinstance(event, Request):
                self._handshake(event)
            elif isinstance(event, Frame):
                self._frame(event)
        self._flush()
        return len(events)

    def _update_reading(self) -> None:
        """Read from the socket unless input is left or something asked for a pause.

        Left input is handled at a later turn, unless the session or the
        unsent output holds it back; their resume calls come back here.
        """
        transport = self._transport
        if transport is None or transport.is_closing():
            return
        pending = self._position < len(self._input)
        held = self._session_paused or self._writing_paused
        reading = not pending and not held
        if reading != self._reading:
            self._reading = reading
            if reading:
                transport.resume_reading()
            else:
                transport.pause_reading()
        if pending and not held and self._resume is None:
            self._resume = asyncio.get_running_loop().call_soon(self._receive)

    def _check_unsent(self) -> None:
        """Close a client as a slow consumer once its unsent data passes the limit."""
        transport = self._transport
        if transport is None or self._ws.state is not State.OPEN:
            return
        unsent = transport.get_write_buffer_size()
        if unsent > self._max_buffer_bytes:
            logger.warning(
                "%s is a slow consumer (%d bytes unsent): closing it", self._peer, unsent
            )
            self.close(protocol.CLOSE_SLOW_CONSUMER, "slow consumer")

    def _fail(self, code: int, reason: str) -> None:
        """Fail the connection (RFC 6455, 7.1.7): a close frame, then the TCP close."""
        if self._session is not None:
            self._session.close()
        self._message = bytearray()
        self._utf8 = None
        if self._ws.state is State.OPEN or self._ws.state is State.CONNECTING:
            self._ws.fail(code, reason)
        self._flush()

    @staticmethod
    def _refuse(handshake: ServerProtocol, status: http.HTTPStatus, text: str) -> None:
        handshake.send_response(handshake.reject(status, text))

    def _frames_only(self) -> None:
        """Go on with a protocol for frames alone, the upgrade accepted.

        websockets' ServerProtocol keeps the upgrade request (its headers, over
        a kilobyte) in its parser for as long as the connection lives. uvicorn
        hands over the request alone, so that parser holds nothing after it.
        """
        self._flush()  # the 101 response, from the handshake's protocol
        self._ws = Protocol(Side.SERVER, max_size=self._max_frame_bytes, logger=logger)

    def _handshake(self, request: Request) -> None:
        handshake = self._ws
        if not isinstance(handshake, ServerProtocol):
            # Only the handshake's protocol parses requests.
            return
        url = urlsplit(request.path)
        runtime = self._runtime
        read_loop = runtime.read_loop if runtime is not None else None
        messaging = runtime.messaging if runtime is not None else None
        if runtime is None or read_loop is None or messaging is None:
            self._refuse(handshake, http.HTTPStatus.SERVICE_UNAVAILABLE, "Starting up.\n")
            return
        if request.headers.get_all("Sec-WebSocket-Version") != ["13"]:
            # RFC 6455, 4.4: name the version this server speaks.
            response = handshake.reject(
                http.HTTPStatus.UPGRADE_REQUIRED, "Only WebSocket version 13 is supported.\n"
            )
            response.headers["Sec-WebSocket-Version"] = "13"
            handshake.send_response(response)
            return
        if url.path != NATIVE_PATH and url.path not in SUPABASE_PATHS:
            self._refuse(handshake, http.HTTPStatus.NOT_FOUND, "No WebSocket endpoint here.\n")
            return
        query = parse_qs(url.query)
        vsn = (query.get("vsn") or [phoenix.VSN_1])[0]
        if url.path in SUPABASE_PATHS and vsn not in (phoenix.VSN_1, phoenix.VSN_2):
            self._refuse(handshake, http.HTTPStatus.BAD_REQUEST, f"Unsupported vsn {vsn[:20]!r}.\n")
            return
        origin = request.headers.get("Origin")
        if origin is not None and not runtime.origin_allowed(origin):
            # A browser page of another site must not use its visitor's network
            # position to reach this server (cross-site WebSocket hijacking).
            self._refuse(handshake, http.HTTPStatus.FORBIDDEN, "Origin not allowed.\n")
            return
        if runtime.connections >= runtime.settings.max_connections:
            self._refuse(handshake, http.HTTPStatus.SERVICE_UNAVAILABLE, "Too many connections.\n")
            return
        response = handshake.accept(request)
        handshake.send_response(response)
        if response.status_code != http.HTTPStatus.SWITCHING_PROTOCOLS:
            return
        self._frames_only()
        runtime.connections += 1
        if url.path in SUPABASE_PATHS:
            self._session = SupabaseSession(
                runtime.hub,
                read_loop,
                self,
                vsn=vsn,
                authorizer=runtime.authorizer,
                verifier=runtime.verifier,
                apikey=next(iter(query.get("apikey", [])), None),
                messaging=messaging,
                limits=runtime.limits,
                publishable_keys=runtime.publishable_keys,
                published=runtime.directory,
                authorizer_decides_published=runtime.settings.authorizer is not None,
            )
            logger.debug("%s connected to %s (vsn %s)", self._peer, url.path, vsn)
            return
        self._session = NativeSession(
            runtime.hub,
            read_loop,
            self,
            authorizer=runtime.authorizer,
            verifier=runtime.verifier,
            token=_token(request, url.query),
            limits=runtime.limits,
            messaging=messaging,
            published=runtime.directory,
        )
        logger.debug("%s connected to %s", self._peer, url.path)

    def _frame(self, frame: Frame) -> None:
        session = self._session
        if session is None or session.closed:
            # The connection failed or is closing: nothing more is handled.
            return
        opcode = frame.opcode
        if opcode is Opcode.CONT:
            # websockets refuses a continuation frame with no message to continue.
            self._message_frames += 1
            if self._message_frames > MAX_FRAMES_PER_MESSAGE:
                self._fail(
                    protocol.CLOSE_POLICY_VIOLATION,
                    f"message split into more than {MAX_FRAMES_PER_MESSAGE} frames",
                )
                return
            data = bytes(frame.data)
            self._message += data
            if self._utf8 is not None and not self._valid_text(data, frame.fin):
                return
            if not frame.fin:
                return
            opcode = self._message_opcode or Opcode.TEXT
            data = bytes(self._message)
            self._message = bytearray()
            self._message_opcode = self._utf8 = None
            self._message_frames = 0
        elif opcode is Opcode.TEXT or opcode is Opcode.BINARY:
            # Unmasked, a frame's data is bytes already: this copies nothing.
            data = bytes(frame.data)
            if not frame.fin:
                self._message_opcode = opcode
                self._message = bytearray(data)
                self._message_frames = 1
                if opcode is Opcode.TEXT:
                    self._utf8 = _utf8_decoder()
                    self._valid_text(data, False)
                return
            if opcode is Opcode.TEXT and not data.isascii() and not self._valid_text(data, True):
                return
        else:
            # websockets answers pings and closes itself.
            return
        # Pongs first: the pings that came between this message's fragments
        # are answered before it is (Autobahn 5.6).
        self._flush()
        if opcode is Opcode.TEXT:
            session.receive_text(data)
        else:
            session.receive_binary(data)

    def _valid_text(self, data: bytes, final: bool) -> bool:
        """Is ``data`` valid UTF-8 so far? If not, fail the connection (1007).

        A fragment goes through its message's incremental decoder as it
        arrives, so an invalid one fails at once (Autobahn 6.4); a code point
        may straddle two fragments.
        """
        try:
            if self._utf8 is None:
                data.decode()
            else:
                self._utf8.decode(data, final)
        except UnicodeDecodeError:
            self._fail(protocol.CLOSE_INVALID_DATA, "text message is not valid UTF-8")
            return False
        return True

    def _flush(self) -> None:
        transport = self._transport
        if transport is None:
            return
        writes = self._ws.data_to_send()
        if writes:
            if self._close_sent:
                # Nothing follows the close frame (websockets would still
                # answer pings while it waits for the client's).
                writes = [data for data in writes if not data]
            # One write, not one per frame: a slice of pings is a hundred pongs.
            data = b"".join(writes)
            if data:
                transport.write(data)
            if b"" in writes:
                # websockets' end of output: the closing handshake is done, the
                # connection failed or the upgrade was refused. Half-closed, the
                # client reads all that was sent and closes its side; closed at
                # once, input it is still sending would reset the connection
                # and could destroy the close frame before the client read it.
                if not transport.can_write_eof():
                    transport.close()
                else:
                    try:
                        transport.write_eof()
                    except OSError:
                        # Reset already: a client that closed its socket right
                        # after its close frame resets the connection when ours
                        # reaches it, on loopback before our send() returns.
                        transport.abort()
        self._close_sent = self._ws.close_sent is not None
        # Pongs count against the limit like any frame: a client sending pings
        # without reading would otherwise queue them without bound.
        self._check_unsent()
        if self._ws.close_expected() and self._abort_timer is None:
            self._abort_timer = asyncio.get_running_loop().call_later(
                self._close_timeout, transport.abort
            )


def _token(request: Request, query: str) -> str | None:
    """A token sent with the upgrade request: ``Authorization: Bearer`` or ``access_token``.

    Browsers cannot set headers on a WebSocket, hence the query parameter; it
    ends up in proxies' access logs (see docs/security.md).
    """
    header = request.headers.get("Authorization")
    if header is not None:
        scheme, _, credentials = header.partition(" ")
        if scheme.lower() == "bearer" and credentials.strip():
            return credentials.strip()
    for value in parse_qs(query).get("access_token", []):
        if value:
            return value
    return None
