"""A real server on port 0, and small clients to talk to it."""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import pytest
from websockets.asyncio.client import ClientConnection, connect

from broadcaster.net.server import Server
from broadcaster.net.websocket import WebSocketConnection
from broadcaster.settings import Settings
from tests.support.timeouts import eventually, within

# Fast failure detection, so fault tests finish quickly.
TEST_SETTINGS: dict[str, Any] = {
    "port": 0,
    # Most tests are about delivery; tests/integration/test_auth.py turns auth on.
    "auth": "none",
    "keepalive_interval": 0.5,
    "keepalive_timeout": 2.0,
    "reconnect_max_delay": 0.5,
    "close_timeout": 2.0,
}


async def http_get(url: str) -> tuple[int, Any]:
    """GET ``url``; return the status and the decoded JSON body."""
    parts = urlsplit(url)
    reader, writer = await asyncio.open_connection(parts.hostname, parts.port)
    try:
        request = f"GET {parts.path} HTTP/1.1\r\nHost: {parts.netloc}\r\nConnection: close\r\n\r\n"
        writer.write(request.encode())
        raw = await within(reader.read(), 5)
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()
    head, _, body = raw.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    try:
        return status, json.loads(body)
    except ValueError:
        return status, body.decode(errors="replace")


async def is_ready(server: Server) -> bool:
    status, _ = await http_get(server.url + "/readyz")
    return status == 200


@contextlib.asynccontextmanager
async def running_server(
    database_url: str,
    *,
    wait_ready: bool = True,
    sockets: list[socket.socket] | None = None,
    **overrides: Any,
) -> AsyncIterator[Server]:
    """A server on a free port (or on ``sockets``), started (and LISTENing unless not
    ``wait_ready``)."""
    settings = Settings(**{**TEST_SETTINGS, **overrides})
    server = Server(settings, database_url)
    await within(server.start(sockets), 10)
    try:
        if wait_ready:
            await eventually(lambda: is_ready(server), 10)
        yield server
    finally:
        await within(server.stop(), 10)


@dataclass
class Synced:
    """What a subscribe brought: a reset reason, the catch-up, the cursor."""

    reset: str | None = None
    changes: list[Any] = field(default_factory=list)
    cursor: str = ""


class Client:
    """A websockets client speaking the native protocol as JSON values."""

    def __init__(self, connection: ClientConnection) -> None:
        self.connection = connection
        self._ref = 0
        self._backlog: list[Any] = []
        self.cursors: dict[str, str] = {}
        """The last cursor seen for each table: where to resume."""

    async def send(self, message: dict[str, Any]) -> Any:
        if "ref" not in message:
            self._ref += 1
            message = {**message, "ref": self._ref}
        await self.connection.send(json.dumps(message))
        return message["ref"]

    async def recv(self, units: float = 5) -> Any:
        """The next message (a frame carrying a batch is split into messages)."""
        if not self._backlog:
            frame = json.loads(await within(self.connection.recv(), units))
            self._backlog = frame if isinstance(frame, list) else [frame]
        return self._backlog.pop(0)

    async def request(self, message: dict[str, Any]) -> Any:
        """Send ``message`` and return the reply that carries its ref."""
        ref = await self.send(message)
        reply = await self.recv()
        assert reply.get("ref") == ref, reply
        return reply

    async def subscribe(self, table_id: str, **options: Any) -> Synced:
        """Subscribe; return what arrived up to and including ``synced``."""
        ref = await self.send({"type": "subscribe", "table_id": table_id, **options})
        reply = await self.recv()
        assert reply == {"type": "subscribed", "ref": ref, "table_id": table_id}, reply
        synced = Synced()
        while True:
            message = await self.recv(10)
            if message["type"] == "reset":
                assert message["table_id"] == table_id, message
                synced.reset = message["reason"]
            elif message["type"] == "change":
                assert "cursor" not in message, message
                synced.changes.append(message)
            else:
                assert message["type"] == "synced", message
                assert message["table_id"] == table_id, message
                synced.cursor = message["cursor"]
                self.cursors[table_id] = synced.cursor
                return synced

    async def changes(self, count: int, units: float = 10) -> list[Any]:
        """The next ``count`` live changes (``cursor`` messages are noted and skipped)."""
        received: list[Any] = []
        while len(received) < count:
            message = await self.recv(units)
            if message["type"] == "cursor":
                self.cursors[message["table_id"]] = message["cursor"]
                continue
            assert message["type"] == "change", message
            self.cursors[message["table_id"]] = message["cursor"]
            received.append(message)
        return received

    async def assert_silent(self, units: float = 0.3) -> None:
        """No message arrives within ``units`` (use after a known-delivered change)."""
        if self._backlog:
            raise AssertionError(f"unexpected message {self._backlog[0]}")
        try:
            frame = await within(self.connection.recv(), units)
        except TimeoutError:
            return
        raise AssertionError(f"unexpected message {frame!r}")


@contextlib.asynccontextmanager
async def client(server: Server, **options: Any) -> AsyncIterator[Client]:
    async with connect(server.ws_url, open_timeout=5, close_timeout=2, **options) as connection:
        yield Client(connection)


@dataclass
class Write:
    """One write of a WebSocket connection to its socket."""

    data: bytes
    queued: int
    """What its transport held unsent right after it."""


def record_writes(monkeypatch: pytest.MonkeyPatch) -> list[Write]:
    """Every write the connections of an in-process server make, from now on."""
    writes: list[Write] = []
    write = WebSocketConnection.write

    def recording(self: WebSocketConnection, data: bytes) -> None:
        write(self, data)
        transport = self._transport
        writes.append(Write(data, transport.get_write_buffer_size() if transport else 0))

    monkeypatch.setattr(WebSocketConnection, "write", recording)
    return writes
