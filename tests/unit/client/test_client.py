"""Unit tests for broadcaster.client's connection: the client against fake servers."""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
from collections.abc import AsyncIterator, Callable
from http import HTTPStatus
from typing import Any

import pytest
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.http11 import Request, Response

from broadcaster.client import (
    Backoff,
    Client,
    ClientClosedError,
    ConnectError,
    connect,
)
from broadcaster.exceptions import BroadcasterError
from tests.support.timeouts import eventually, seconds, within

pytestmark = pytest.mark.asyncio


class FakeServer:
    """A native-protocol server that answers subscribes with synced and records
    what it receives; each test decides what else it does."""

    def __init__(self, *, answer_pings: bool = True) -> None:
        self.answer_pings = answer_pings
        self.received: list[dict[str, Any]] = []
        self.close_codes: list[int | None] = []
        self.connections = 0
        self.after_synced: Callable[[ServerConnection], Any] | None = None
        self.server: Server | None = None

    @property
    def url(self) -> str:
        assert self.server is not None
        port = self.server.sockets[0].getsockname()[1]
        return f"ws://127.0.0.1:{port}/ws"

    async def handler(self, ws: ServerConnection) -> None:
        self.connections += 1
        try:
            async for text in ws:
                message = json.loads(text)
                self.received.append(message)
                if message["type"] == "subscribe":
                    table_id = message["table_id"]
                    cursor = f"cursor-{len(self.received)}"
                    await ws.send(
                        json.dumps(
                            [
                                {"type": "subscribed", "ref": message["ref"], "table_id": table_id},
                                {"type": "synced", "table_id": table_id, "cursor": cursor},
                            ]
                        )
                    )
                    if self.after_synced is not None:
                        await self.after_synced(ws)
                elif message["type"] == "ping" and self.answer_pings:
                    await ws.send(json.dumps({"type": "pong", "ref": message["ref"]}))
        finally:
            await ws.wait_closed()
            self.close_codes.append(ws.close_code)

    def subscribes(self) -> list[dict[str, Any]]:
        return [m for m in self.received if m["type"] == "subscribe"]


@contextlib.asynccontextmanager
async def fake_server(fake: FakeServer, **options: Any) -> AsyncIterator[FakeServer]:
    async with serve(fake.handler, "127.0.0.1", 0, **options) as server:
        fake.server = server
        yield fake


def fast_client(url: str, **options: Any) -> Client:
    return connect(url, backoff=Backoff(initial=0.01, maximum=0.1), close_timeout=1, **options)


async def test_a_missing_pong_means_a_dead_connection() -> None:
    async with fake_server(FakeServer(answer_pings=False)) as fake:
        client = fast_client(fake.url, ping_interval=0.05, ping_timeout=0.1)
        async with client:
            subscription = client.subscribe("t")
            await within(subscription.wait_synced())
            await eventually(lambda: client.connections >= 2)
            await eventually(lambda: len(fake.subscribes()) >= 2)
            first, second = fake.subscribes()[:2]
            assert "cursor" not in first
            assert second["cursor"].startswith("cursor-")
            assert any(m["type"] == "ping" for m in fake.received)


async def test_pongs_keep_the_connection() -> None:
    async with fake_server(FakeServer()) as fake:
        client = fast_client(fake.url, ping_interval=0.02, ping_timeout=seconds(2))
        async with client:
            await eventually(lambda: sum(m["type"] == "ping" for m in fake.received) >= 5)
            assert client.connections == 1
    assert fake.close_codes == [1000]


async def test_a_slow_consumer_close_is_followed_by_a_resume() -> None:
    fake = FakeServer()

    async def close_once(ws: ServerConnection) -> None:
        if fake.connections == 1:
            await ws.close(4000, "slow consumer")

    fake.after_synced = close_once
    async with fake_server(fake), fast_client(fake.url) as client:
        table = await within(client.table("t"))
        await eventually(lambda: client.connections == 2 and len(fake.subscribes()) == 2)
        await eventually(lambda: table.cursor == "cursor-2")
        assert fake.subscribes()[1]["cursor"] == "cursor-1"
        assert table.synced


async def test_a_filtered_view_resumes_with_its_filter_after_a_reconnect() -> None:
    fake = FakeServer()

    async def close_once(ws: ServerConnection) -> None:
        if fake.connections == 1:
            await ws.close(1001, "going away")

    fake.after_synced = close_once
    async with fake_server(fake), fast_client(fake.url) as client:
        table = await within(client.table("public.messages", filter="room_id=eq.5"))
        await eventually(lambda: table.cursor == "cursor-2")
    first, again = fake.subscribes()
    assert (first["filter"], first["snapshot"]) == ("room_id=eq.5", True)
    assert (again["filter"], again["cursor"]) == ("room_id=eq.5", "cursor-1")


async def test_a_refused_handshake_is_a_connect_error() -> None:
    def not_found(connection: ServerConnection, request: Request) -> Response:
        return connection.respond(HTTPStatus.NOT_FOUND, "no WebSocket here\n")

    async with fake_server(FakeServer(), process_request=not_found) as fake:
        with pytest.raises(ConnectError, match="404"):
            await within(fast_client(fake.url).open())


async def test_an_unreachable_server_is_retried_until_connect_timeout() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    client = fast_client(f"ws://127.0.0.1:{port}/ws", connect_timeout=0.3)
    with pytest.raises(ConnectError, match="within"):
        await within(client.open())
    assert client.closed


async def test_the_first_connection_waits_for_a_server_that_starts_late() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    fake = FakeServer()
    client = fast_client(f"ws://127.0.0.1:{port}/ws", connect_timeout=seconds(10))
    opening = asyncio.create_task(client.open())
    await asyncio.sleep(0.1)
    assert not opening.done()
    async with serve(fake.handler, "127.0.0.1", port):
        await within(opening)
        assert client.connected
        await client.close()


async def test_close_ends_subscriptions_and_refuses_new_ones() -> None:
    async with fake_server(FakeServer()) as fake:
        client = fast_client(fake.url)
        async with client:
            subscription = client.subscribe("t")
            waiting = asyncio.ensure_future(subscription.__anext__())
            await asyncio.sleep(0.05)
        with pytest.raises(StopAsyncIteration):
            await within(waiting)
        with pytest.raises(BroadcasterError, match="closed"):
            client.subscribe("u")
        await eventually(lambda: fake.close_codes == [1000])


async def test_closing_while_opening_raises_client_closed() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    client = fast_client(f"ws://127.0.0.1:{port}/ws")
    opening = asyncio.create_task(client.open())
    await asyncio.sleep(0.05)
    await within(client.close())
    with pytest.raises(ClientClosedError):
        await within(opening)
