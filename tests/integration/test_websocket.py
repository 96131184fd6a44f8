"""The native protocol against a real server and a real Postgres: changes, filtering, bad input."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import logging
import socket
import weakref
from collections.abc import AsyncIterator

import asyncpg
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.http11 import Request

from broadcaster.net.server import Server
from broadcaster.net.websocket import WebSocketConnection
from tests.support.server import Client, client, record_writes, running_server
from tests.support.timeouts import eventually, seconds, within

pytestmark = pytest.mark.asyncio


@pytest.fixture
async def server(database_url: str) -> AsyncIterator[Server]:
    async with running_server(database_url, max_message_bytes=1024, max_frame_bytes=4096) as s:
        yield s


@pytest.fixture
async def db(database_url: str) -> AsyncIterator[asyncpg.Connection]:
    connection = await asyncpg.connect(database_url)
    yield connection
    await connection.close()


ROW_FIELDS = {"id", "table_id", "data", "enriching_columns", "version", "created_at", "updated_at"}


async def test_insert_update_delete_arrive_with_every_field(
    server: Server, db: asyncpg.Connection
) -> None:
    async with client(server) as c:
        await c.subscribe("t1")
        await db.execute("INSERT INTO rows (id, table_id, data) VALUES ('r1', 't1', '{\"a\": 1}')")
        (insert,) = await c.changes(1)
        assert insert["type"] == "change"
        assert insert["table_id"] == "t1"
        assert insert["op"] == "INSERT"
        row = insert["row"]
        assert set(row) == ROW_FIELDS
        assert row["id"] == "r1"
        assert row["data"] == {"a": 1}
        assert row["enriching_columns"] == []
        assert row["created_at"] == row["updated_at"]

        await db.execute("UPDATE rows SET enriching_columns = '{a,b}' WHERE id = 'r1'")
        (update,) = await c.changes(1)
        assert update["op"] == "UPDATE"
        assert update["row"]["enriching_columns"] == ["a", "b"]
        assert update["row"]["version"] > row["version"]
        assert update["old"] == {k: v for k, v in row.items() if k != "version"}

        await db.execute("DELETE FROM rows WHERE id = 'r1'")
        (delete,) = await c.changes(1)
        assert delete["op"] == "DELETE"
        assert delete["row"] == {"id": "r1", "table_id": "t1", "version": delete["row"]["version"]}
        assert delete["row"]["version"] > update["row"]["version"]
        assert delete["old"] == {k: v for k, v in update["row"].items() if k != "version"}
        assert "old" not in insert


async def test_a_transaction_of_many_rows_arrives_in_order(
    server: Server, db: asyncpg.Connection
) -> None:
    async with client(server) as c:
        await c.subscribe("t1")
        async with db.transaction():
            for i in range(50):
                await db.execute(
                    "INSERT INTO rows (id, table_id, data) VALUES ($1, 't1', $2::jsonb)",
                    f"r{i}",
                    json.dumps({"i": i}),
                )
        changes = await c.changes(50)
        assert [change["row"]["data"]["i"] for change in changes] == list(range(50))


async def test_clients_only_receive_their_tables(server: Server, db: asyncpg.Connection) -> None:
    async with client(server) as a, client(server) as b, client(server) as both:
        await a.subscribe("A")
        await b.subscribe("B")
        await both.subscribe("A")
        await both.subscribe("B")
        await db.execute("INSERT INTO rows (id, table_id) VALUES ('x', 'A'), ('y', 'B')")
        assert [m["row"]["id"] for m in await a.changes(1)] == ["x"]
        assert [m["row"]["id"] for m in await b.changes(1)] == ["y"]
        assert sorted(m["row"]["id"] for m in await both.changes(2)) == ["x", "y"]
        await db.execute("INSERT INTO rows (id, table_id) VALUES ('z', 'C')")
        await db.execute("UPDATE rows SET data = '{\"n\": 2}' WHERE id = 'x'")
        assert [m["row"]["id"] for m in await a.changes(1)] == ["x"]
        await b.assert_silent()


async def test_unsubscribe_stops_delivery(server: Server, db: asyncpg.Connection) -> None:
    async with client(server) as c, client(server) as witness:
        await c.subscribe("t1")
        await witness.subscribe("t1")
        reply = await c.request({"type": "unsubscribe", "table_id": "t1"})
        assert reply == {"type": "unsubscribed", "ref": reply["ref"], "table_id": "t1"}
        await db.execute("INSERT INTO rows (id, table_id) VALUES ('r', 't1')")
        await witness.changes(1)
        await c.assert_silent()


async def test_a_200_kb_row_commits_and_arrives_whole(
    server: Server, db: asyncpg.Connection
) -> None:
    big = "x" * 200_000
    async with client(server) as c:
        await c.subscribe("t1")
        await db.execute(
            "INSERT INTO rows (id, table_id, data) VALUES ('big', 't1', $1::jsonb)",
            json.dumps({"big": big}),
        )
        (change,) = await c.changes(1)
        assert change["row"]["data"]["big"] == big
        await db.execute("DELETE FROM rows WHERE id = 'big'")
        (delete,) = await c.changes(1)
        assert delete["op"] == "DELETE"
        assert delete["row"]["id"] == "big"


async def test_moving_a_row_deletes_it_from_the_old_table(
    server: Server, db: asyncpg.Connection
) -> None:
    async with client(server) as old, client(server) as new:
        await old.subscribe("A")
        await new.subscribe("B")
        await db.execute("INSERT INTO rows (id, table_id) VALUES ('m', 'A')")
        await old.changes(1)
        await db.execute("UPDATE rows SET table_id = 'B' WHERE id = 'm'")
        (gone,) = await old.changes(1)
        (arrived,) = await new.changes(1)
        assert (gone["op"], gone["row"]["id"]) == ("DELETE", "m")
        assert (arrived["op"], arrived["row"]["table_id"]) == ("INSERT", "B")


async def test_ping_pong(server: Server) -> None:
    async with client(server) as c:
        assert await c.request({"type": "ping", "ref": "p1"}) == {"type": "pong", "ref": "p1"}


@pytest.mark.parametrize(
    ("frame", "code", "ref"),
    [
        ("{nope", "bad_json", None),
        ("[1, 2]", "bad_message", None),
        ('"subscribe"', "bad_message", None),
        ('{"type": "dance", "ref": 7}', "unknown_type", 7),
        ('{"ref": 8}', "bad_message", 8),
        ('{"type": "subscribe", "ref": 9}', "bad_message", 9),
        ('{"type": "subscribe", "ref": 10, "table_id": 5}', "bad_message", 10),
        ('{"type": "unsubscribe", "ref": 11, "table_id": ""}', "bad_message", 11),
        ('{"type": "ping", "ref": {"a": 1}}', "bad_message", None),
        ('{"type": "ping", "ref": "' + "x" * 2000 + '"}', "too_large", None),
    ],
)
async def test_bad_input_gets_an_error_and_the_connection_goes_on(
    server: Server, db: asyncpg.Connection, frame: str, code: str, ref: object
) -> None:
    async with client(server) as c, client(server) as other:
        await c.subscribe("t1")
        await other.subscribe("t1")
        await c.connection.send(frame)
        error = await c.recv()
        assert error["type"] == "error"
        assert error["code"] == code
        assert isinstance(error["message"], str)
        assert error["message"]
        assert error.get("ref") == ref
        await db.execute("INSERT INTO rows (id, table_id) VALUES ('after', 't1')")
        assert (await c.changes(1))[0]["row"]["id"] == "after"
        assert (await other.changes(1))[0]["row"]["id"] == "after"


async def test_a_binary_frame_is_refused(server: Server) -> None:
    async with client(server) as c:
        await c.connection.send(b"\x00\x01")
        error = await c.recv()
        assert error["code"] == "binary_not_supported"
        assert await c.request({"type": "ping"}) == {"type": "pong", "ref": 1}


async def test_too_many_subscriptions(database_url: str) -> None:
    async with running_server(database_url, max_subscriptions=2) as server, client(server) as c:
        await c.subscribe("a")
        await c.subscribe("b")
        await c.subscribe("a")  # already held: not a new subscription
        error = await c.request({"type": "subscribe", "table_id": "c"})
        assert error["code"] == "too_many_subscriptions"
        await c.request({"type": "unsubscribe", "table_id": "a"})
        await c.subscribe("c")


async def test_a_fragmented_message_is_reassembled(server: Server) -> None:
    async with client(server) as c:
        await c.connection.send(iter(['{"type": "pi', 'ng", "ref": 3}']))
        assert await c.recv() == {"type": "pong", "ref": 3}


async def test_a_frame_over_the_hard_limit_closes_with_1009(server: Server) -> None:
    async with client(server) as c, client(server) as other:
        await c.connection.send("x" * 5000)
        with pytest.raises(ConnectionClosed) as closed:
            await within(c.connection.recv(), 5)
        assert closed.value.rcvd is not None
        assert closed.value.rcvd.code == 1009
        assert await other.request({"type": "ping"}) == {"type": "pong", "ref": 1}


async def test_invalid_utf8_closes_with_1007(server: Server) -> None:
    async with client(server) as c:
        # A text frame whose payload is not UTF-8 needs the low-level API.
        from websockets.frames import Frame, Opcode

        c.connection.protocol.send_frame(Frame(Opcode.TEXT, b"\xff\xfe"))
        c.connection.send_data()
        with pytest.raises(ConnectionClosed) as closed:
            await within(c.connection.recv(), 5)
        assert closed.value.rcvd is not None
        assert closed.value.rcvd.code == 1007


async def test_unknown_websocket_path_is_404(server: Server) -> None:
    with pytest.raises(InvalidStatus) as refused:
        async with connect(f"ws://127.0.0.1:{server.port}/nope", open_timeout=5):
            pass
    assert refused.value.response.status_code == 404


@contextlib.asynccontextmanager
async def slow_client(server: Server) -> AsyncIterator[Client]:
    """A client that stops reading once one message waits unread.

    A tiny receive buffer turns off the kernel's autotuning (which would
    absorb tens of megabytes on loopback): the server's buffer grows.
    """
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", server.port))
    sock.setblocking(False)
    async with client(server, sock=sock, max_queue=1) as c:
        yield c


async def closed_as_slow_consumer(c: Client) -> None:
    """Read what was queued; the close that follows is 4000."""

    async def drain() -> None:
        while True:
            await c.connection.recv()

    with pytest.raises(ConnectionClosed) as closed:
        await within(drain(), 30)
    assert closed.value.rcvd is not None
    assert closed.value.rcvd.code == 4000


async def test_a_slow_consumer_is_closed_with_4000_and_others_carry_on(
    database_url: str, db: asyncpg.Connection
) -> None:
    """A client that stops reading is cut off; the listener and other clients never wait."""
    async with (
        running_server(database_url, max_buffer_bytes=64 * 1024) as server,
        client(server) as fast,
        slow_client(server) as slow,
    ):
        await fast.subscribe("t1")
        await slow.subscribe("t1")
        payload = json.dumps({"pad": "p" * 6000})
        rows = 1200
        for start in range(0, rows, 100):
            await db.executemany(
                "INSERT INTO rows (id, table_id, data) VALUES ($1, 't1', $2::jsonb)",
                [(f"r{i}", payload) for i in range(start, start + 100)],
            )
        received = await fast.changes(rows, units=30)
        assert [m["row"]["id"] for m in received] == [f"r{i}" for i in range(rows)]
        await closed_as_slow_consumer(slow)


async def test_a_slow_consumer_is_cut_off_during_its_catch_up_before_it_is_all_queued(
    database_url: str, db: asyncpg.Connection, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A 12 MB catch-up to a client that does not read: the server queues about
    BROADCASTER_MAX_BUFFER_BYTES for it, not the whole catch-up."""
    writes = record_writes(monkeypatch)
    payload = json.dumps({"pad": "p" * 6000})
    for start in range(0, 2000, 100):
        await db.executemany(
            "INSERT INTO rows (id, table_id, data) VALUES ($1, 'big', $2::jsonb)",
            [(f"r{i}", payload) for i in range(start, start + 100)],
        )
    async with (
        running_server(database_url, max_buffer_bytes=64 * 1024) as server,
        slow_client(server) as slow,
    ):
        await slow.send({"type": "subscribe", "table_id": "big", "snapshot": True})
        await closed_as_slow_consumer(slow)
    assert writes
    assert max(write.queued for write in writes) < 1024 * 1024


async def test_sigterm_like_shutdown_closes_clients_with_1001(database_url: str) -> None:
    async with running_server(database_url) as server, client(server) as c:
        await c.subscribe("t1")
        stop = asyncio.create_task(server.stop())
        with pytest.raises(ConnectionClosed) as closed:
            await within(c.connection.recv(), 10)
        assert closed.value.rcvd is not None
        assert closed.value.rcvd.code == 1001
        await within(stop, 10)


async def test_many_clients_on_one_table_all_receive(
    server: Server, db: asyncpg.Connection
) -> None:
    clients: list[Client] = []
    async with contextlib.AsyncExitStack() as stack:
        for _ in range(20):
            c = await stack.enter_async_context(client(server))
            await c.subscribe("t1")
            clients.append(c)
        await db.execute("INSERT INTO rows (id, table_id) VALUES ('all', 't1')")
        for c in clients:
            assert (await c.changes(1))[0]["row"]["id"] == "all"


async def test_what_one_read_brings_a_client_goes_out_in_one_write(
    server: Server, db: asyncpg.Connection, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two tables changed together: both batches reach the socket in one write."""
    writes = record_writes(monkeypatch)
    async with client(server) as c:
        await c.subscribe("t1")
        await c.subscribe("t2")
        async with db.transaction():
            await db.execute("INSERT INTO rows (id, table_id) VALUES ('a', 't1'), ('b', 't2')")
        received = await c.changes(2)
        assert {m["table_id"] for m in received} == {"t1", "t2"}
    (carrying,) = [w.data for w in writes if b'"type":"change"' in w.data]
    assert b'"table_id":"t1"' in carrying
    assert b'"table_id":"t2"' in carrying


@pytest.mark.parametrize("path", ["/ws", "/realtime/v1/websocket?vsn=2.0.0"])
async def test_an_open_connection_does_not_keep_its_upgrade_request(
    server: Server, monkeypatch: pytest.MonkeyPatch, path: str
) -> None:
    """Its headers are over a kilobyte, for every connection as long as it lives."""
    requests: list[weakref.ref[Request]] = []
    handshake = WebSocketConnection._handshake

    def recording(self: WebSocketConnection, request: Request) -> None:
        requests.append(weakref.ref(request))
        handshake(self, request)

    monkeypatch.setattr(WebSocketConnection, "_handshake", recording)
    url = server.ws_url.removesuffix("/ws") + path
    async with connect(url, open_timeout=5, close_timeout=2) as connection:
        await connection.ping()
        gc.collect()
        assert [ref() for ref in requests] == [None]


def close_at_once(port: int) -> None:
    """Upgrade, send a close frame and close the socket without waiting for the answer.

    As bench/wsclient.c leaves, and a client that exits: the server's close
    frame reaches a socket that is gone, which resets the connection, on
    loopback before the server's send() returns.
    """
    with socket.create_connection(("127.0.0.1", port), timeout=seconds(5)) as sock:
        sock.sendall(
            b"GET /ws HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
            b"Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
            b"Sec-WebSocket-Version: 13\r\n\r\n"
        )
        response = b""
        while b"\r\n\r\n" not in response:
            received = sock.recv(4096)
            if not received:
                break
            response += received
        assert b" 101 " in response
        # A close frame (1000), masked with a zero key.
        sock.sendall(b"\x88\x82\x00\x00\x00\x00\x03\xe8")


async def test_a_client_that_closes_at_once_after_its_close_frame_costs_no_error(
    server: Server, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    lost: list[Exception | None] = []
    connection_lost = WebSocketConnection.connection_lost

    def recording(self: WebSocketConnection, exc: Exception | None) -> None:
        lost.append(exc)
        connection_lost(self, exc)

    monkeypatch.setattr(WebSocketConnection, "connection_lost", recording)
    clients = 20
    for _ in range(clients):
        await asyncio.to_thread(close_at_once, server.port)
    await eventually(lambda: len(lost) == clients)
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR] == []
