"""WebSocket connections, served on the transport itself rather than through ASGI.

uvicorn parses each HTTP request; starlette answers the plain HTTP routes. An
upgrade request is handed, with its socket, to :class:`WebSocketConnection`
(uvicorn's ``ws`` protocol-class hook). It runs websockets' sans-I/O
``ServerProtocol`` for the handshake and for incoming frames, and writes outgoing
frames straight to the transport: the frame built once for a change goes to
every subscriber as the same bytes, and a client whose unsent data exceeds
``max_buffer_bytes`` is closed as a slow consumer without anyone waiting on it.
See ``docs/performance.md`` for why the fan-out path bypasses ASGI.
"""

from __future__ import annotations

import asyncio
import http
import logging
from typing import TYPE_CHECKING, Any, cast
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

__all__ = ["WebSocketConnection"]

logger = logging.getLogger(__name__)

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
        self._fragments: list[bytes] = []
        self._fragment_opcode: Opcode | None = None
        self._abort_timer: asyncio.TimerHandle | None = None
        self._peer = "?"

    # asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # An asyncio.Transport, or one of uvloop's (which do not subclass it).
        self._transport = cast(asyncio.Transport, transport)
        peer = transport.get_extra_info("peername")
        if peer:
            self._peer = f"{peer[0]}:{peer[1]}"
        self._connections.add(self)

    def data_received(self, data: bytes) -> None:
        self._ws.receive_data(data)
        for event in self._ws.events_received():
            if isinstance(event, Request):
                self._handshake(event)
            elif isinstance(event, Frame):
                self._frame(event)
        self._flush()

    def eof_received(self) -> bool | None:
        self._ws.receive_eof()
        self._flush()
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        self._connections.discard(self)
        if self._abort_timer is not None:
            self._abort_timer.cancel()
        if self._session is not None:
            self._session.close()
            if self._runtime is not None:
                self._runtime.connections -= 1
            logger.debug("%s disconnected", self._peer)

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
        if transport.get_write_buffer_size() > self._max_buffer_bytes:
            logger.warning(
                "%s is a slow consumer (%d bytes unsent): closing it",
                self._peer,
                transport.get_write_buffer_size(),
            )
            self.close(protocol.CLOSE_SLOW_CONSUMER, "slow consumer")

    def pause_reading(self) -> None:
        if self._transport is not None and not self._transport.is_closing():
            self._transport.pause_reading()

    def resume_reading(self) -> None:
        if self._transport is not None and not self._transport.is_closing():
            self._transport.resume_reading()

    def close(self, code: int, reason: str) -> None:
        if self._session is not None:
            self._session.close()
        try:
            self._ws.send_close(code, reason)
        except InvalidState:
            return
        self._flush()

    # internals

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
        poller = runtime.poller if runtime is not None else None
        reader = runtime.reader if runtime is not None else None
        if runtime is None or poller is None or reader is None:
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
                poller,
                self,
                vsn=vsn,
                authorizer=runtime.authorizer,
                verifier=runtime.verifier,
                apikey=next(iter(query.get("apikey", [])), None),
                max_subscriptions=runtime.limits.max_subscriptions,
                max_message_bytes=runtime.limits.max_message_bytes,
                broadcasts=runtime.broadcasts,
                send_broadcast=reader.broadcast,
                publishable_keys=runtime.publishable_keys,
                presences=runtime.presences,
                presence_store=reader,
            )
            logger.debug("%s connected to %s (vsn %s)", self._peer, url.path, vsn)
            return
        self._session = NativeSession(
            runtime.hub,
            poller,
            self,
            authorizer=runtime.authorizer,
            verifier=runtime.verifier,
            token=_token(request, url.query),
            limits=runtime.limits,
            messaging=runtime.messaging,
        )
        logger.debug("%s connected to %s", self._peer, url.path)

    def _frame(self, frame: Frame) -> None:
        opcode = frame.opcode
        if opcode is Opcode.CONT:
            self._fragments.append(bytes(frame.data))
            if not frame.fin:
                return
            opcode = self._fragment_opcode or Opcode.TEXT
            data = b"".join(self._fragments)
            self._fragments = []
            self._fragment_opcode = None
        elif opcode in (Opcode.TEXT, Opcode.BINARY):
            if not frame.fin:
                self._fragment_opcode = opcode
                self._fragments = [bytes(frame.data)]
                return
            data = bytes(frame.data)
        else:
            # websockets answers pings and closes itself.
            return
        session = self._session
        if session is None or session.closed:
            return
        if opcode is Opcode.TEXT:
            session.receive_text(data)
        else:
            session.receive_binary(data)

    def _flush(self) -> None:
        transport = self._transport
        if transport is None:
            return
        for data in self._ws.data_to_send():
            if data:
                transport.write(data)
            else:
                # websockets asks the server to close TCP once the closing
                # handshake is done (or the handshake was refused).
                transport.close()
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
