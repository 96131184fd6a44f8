"""Running the server: uvicorn with the starlette app and our WebSocket protocol class."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from typing import Any

import h11
import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

from ..exceptions import StartupError
from ..settings import Settings
from .app import create_app
from .websocket import WebSocketConnection

__all__ = ["Server"]


class _HandshakeTimeout(H11Protocol):
    """uvicorn's HTTP/1.1 protocol, closing connections that send no complete request.

    uvicorn waits for ever for a request that never arrives, arrives a byte at
    a time, or whose body does; each such connection would hold a socket
    (slowloris). Whenever a request is owed (the connection is new, or its
    previous response is sent) it must arrive whole, body included, within
    the timeout, or the connection is closed. WebSocket upgrade requests that
    RFC 6455 does not allow (section 4.1: HTTP/1.1 or later, and a GET has no
    body) are refused here, where the request's HTTP version is still known:
    uvicorn hands the upgrade on rewritten as HTTP/1.1.
    """

    handshake_timeout = 10.0

    def connection_made(self, transport: Any) -> None:
        super().connection_made(transport)
        self._upgraded = False
        self._handshake_timer: asyncio.TimerHandle | None = None
        self._watch_request()

    def _watch_request(self) -> None:
        """Run the timer while the client owes a request (whole), stop it otherwise."""
        owed = self.conn.their_state in (h11.IDLE, h11.SEND_BODY)
        if self._upgraded or not owed or self.transport.is_closing():
            self._stop_handshake_timer()
        elif self._handshake_timer is None:
            self._handshake_timer = self.loop.call_later(
                self.handshake_timeout, self._handshake_expired
            )

    def _handshake_expired(self) -> None:
        self._handshake_timer = None
        if not self.transport.is_closing():
            self.transport.close()

    def _stop_handshake_timer(self) -> None:
        if self._handshake_timer is not None:
            self._handshake_timer.cancel()
            self._handshake_timer = None

    def handle_events(self) -> None:
        super().handle_events()
        self._watch_request()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        self._watch_request()

    def handle_websocket_upgrade(self, event: Any) -> None:
        self._upgraded = True
        self._stop_handshake_timer()
        if event.http_version < b"1.1":
            self.send_400_response("A WebSocket upgrade needs HTTP/1.1 or later.")
            return
        if any(_declares_body(name, value) for name, value in self.headers):
            # Waiting for the body would be slowloris again; websockets would
            # drop the connection without a word.
            self.send_400_response("A WebSocket upgrade request has no body.")
            return
        super().handle_websocket_upgrade(event)

    def connection_lost(self, exc: Exception | None) -> None:
        self._stop_handshake_timer()
        super().connection_lost(exc)


def _declares_body(name: bytes, value: bytes) -> bool:
    """Does this header (name lower-cased) announce a request body?"""
    return name == b"transfer-encoding" or (name == b"content-length" and value.strip() != b"0")


class Server:
    """One server process's HTTP and WebSocket listener.

    ``await start()`` returns once the socket is bound and the runtime started;
    :attr:`port` is then the real port (useful with ``port=0``).
    """

    def __init__(self, settings: Settings, database_url: str) -> None:
        self.settings = settings
        config = uvicorn.Config(
            create_app(settings, database_url),
            host=settings.host,
            port=settings.port,
            ws=WebSocketConnection,
            http=type(
                "HandshakeTimeout",
                (_HandshakeTimeout,),
                {"handshake_timeout": settings.handshake_timeout},
            ),
            lifespan="on",
            log_config=None,
            access_log=False,
            # Clients get close_timeout to finish their closing handshake.
            timeout_graceful_shutdown=int(settings.close_timeout) + 1,
        )
        self._uvicorn = uvicorn.Server(config)
        self._task: asyncio.Task[None] | None = None

    @property
    def port(self) -> int:
        sockets = self._uvicorn.servers[0].sockets
        return int(sockets[0].getsockname()[1])

    @property
    def url(self) -> str:
        return f"http://{self.settings.host}:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"ws://{self.settings.host}:{self.port}/ws"

    async def start(self, sockets: list[socket.socket] | None = None) -> None:
        """Start serving, on ``sockets`` already bound (workers) or on host and port."""
        self._task = asyncio.create_task(self._uvicorn.serve(sockets=sockets))
        while not self._uvicorn.started:
            if self._task.done():
                await self._task
                raise StartupError("the server stopped during start-up; see its log")
            await asyncio.sleep(0.01)

    async def wait(self) -> None:
        """Serve until SIGINT or SIGTERM; connected clients get close code 1001."""
        if self._task is not None:
            await self._task

    async def stop(self) -> None:
        self._uvicorn.should_exit = True
        if self._task is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
