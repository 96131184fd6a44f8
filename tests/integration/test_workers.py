"""Connections on the socket ``serve --workers`` binds behave as on uvicorn's own."""

from __future__ import annotations

import asyncio
import contextlib
import socket

import pytest

from broadcaster.net.websocket import WebSocketConnection
from broadcaster.net.workers import bind
from tests.support.server import client, running_server

pytestmark = pytest.mark.asyncio


@pytest.mark.parametrize("bound_by", ["uvicorn", "serve --workers"])
async def test_connections_send_small_frames_at_once(
    database_url: str, monkeypatch: pytest.MonkeyPatch, bound_by: str
) -> None:
    # Nagle's algorithm holds a small frame while an earlier one is
    # unacknowledged, until the client's delayed ACK (up to 40 ms on Linux).
    accepted: list[asyncio.BaseTransport] = []
    made = WebSocketConnection.connection_made

    def recording(self: WebSocketConnection, transport: asyncio.BaseTransport) -> None:
        made(self, transport)
        accepted.append(transport)

    monkeypatch.setattr(WebSocketConnection, "connection_made", recording)
    with contextlib.ExitStack() as stack:
        sockets = None
        if bound_by == "serve --workers":
            sockets = [stack.enter_context(bind("127.0.0.1", 0))]
        async with running_server(database_url, sockets=sockets) as server, client(server) as c:
            await c.subscribe("t1")
            (transport,) = accepted
            sock = transport.get_extra_info("socket")
            assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
