"""Arbitrary frames thrown at a live server: no crash, no unhandled exception, others unaffected.

The server runs on an event loop of its own in a thread, so hypothesis can
drive plain (synchronous) WebSocket clients at it, one connection per example.
Each example ends one of two ways: the connection still works (a ping after
the frames gets its pong in bounded time), or the server closed it with a
close frame whose code answers bad input in docs/protocol.md. A hang, a
connection dropped without a close frame, or any other code fails it.
"""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Iterator
from typing import Any

import asyncpg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from websockets.exceptions import ConnectionClosed
from websockets.frames import CloseCode
from websockets.sync.client import connect

from broadcaster.net.server import Server
from broadcaster.protocols import native
from tests.support.server import running_server
from tests.support.timeouts import seconds

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=40),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4)
    ),
    max_leaves=12,
)

messages = st.fixed_dictionaries(
    {"type": st.sampled_from(["subscribe", "unsubscribe", "ping", "auth", "other", ""])},
    optional={
        "ref": json_values,
        "table_id": st.one_of(st.sampled_from(["t1", "fuzz", ""]), json_values),
        "cursor": st.one_of(st.sampled_from(["v1:1:2:3:3:", "garbage"]), json_values),
        "snapshot": json_values,
        "token": json_values,
    },
)

frames = st.one_of(
    messages.map(json.dumps),
    json_values.map(json.dumps),
    st.text(max_size=300),
    st.binary(max_size=300),
    st.builds(lambda n: "x" * n, st.integers(0, 200_000)),
)


INPUT_CLOSES = frozenset(
    {value for name, value in vars(native).items() if name.startswith("CLOSE_")}
    | {CloseCode.PROTOCOL_ERROR}
) - {native.CLOSE_GOING_AWAY, native.CLOSE_INTERNAL_ERROR}
"""Close codes that answer a client's input (docs/protocol.md). 1001 is the
server shutting down and 1011 its own failure: neither answers input."""


def _pong(reply: str | bytes) -> bool:
    """Is ``reply`` (or one message of its batch) the pong to the final ping?"""
    if isinstance(reply, bytes):
        return False
    message = json.loads(reply)
    return any(
        m == {"type": "pong", "ref": "end"}
        for m in (message if isinstance(message, list) else [message])
    )


class ThreadedServer:
    """A server on its own loop in a thread; unhandled loop exceptions are collected."""

    def __init__(self, database_url: str) -> None:
        self.loop = asyncio.new_event_loop()
        self.errors: list[dict[str, Any]] = []
        self.loop.set_exception_handler(lambda _loop, context: self.errors.append(context))
        self._ready = threading.Event()
        self._stop: asyncio.Event | None = None
        self.server: Server | None = None
        self._thread = threading.Thread(target=self._run, args=(database_url,), daemon=True)

    def _run(self, database_url: str) -> None:
        async def main() -> None:
            self._stop = asyncio.Event()
            async with running_server(database_url, max_frame_bytes=128 * 1024) as server:
                self.server = server
                self._ready.set()
                await self._stop.wait()

        self.loop.run_until_complete(main())
        self.loop.close()

    def __enter__(self) -> ThreadedServer:
        self._thread.start()
        assert self._ready.wait(seconds(30)), "the server did not start"
        return self

    def __exit__(self, *exc_info: object) -> None:
        assert self._stop is not None
        self.loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(seconds(30))


@pytest.fixture
def threaded(database_url: str) -> Iterator[ThreadedServer]:
    with ThreadedServer(database_url) as server:
        yield server


def test_arbitrary_frames_never_hurt_the_server_or_other_clients(
    threaded: ThreadedServer, database_url: str
) -> None:
    assert threaded.server is not None
    url = threaded.server.ws_url

    with connect(url, open_timeout=seconds(5)) as witness:
        witness.send(json.dumps({"type": "subscribe", "ref": 1, "table_id": "t1"}))
        assert json.loads(witness.recv(timeout=seconds(10)))["type"] == "subscribed"
        assert json.loads(witness.recv(timeout=seconds(10)))["type"] == "synced"

        @settings(
            max_examples=150,
            deadline=None,
            suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
        )
        @given(st.lists(frames, min_size=1, max_size=8))
        def throw(batch: list[str | bytes]) -> None:
            closed: ConnectionClosed | None = None
            with connect(url, open_timeout=seconds(5), max_size=None) as ws:
                try:
                    for frame in batch:
                        ws.send(frame)
                    ws.send(json.dumps({"type": "ping", "ref": "end"}))
                    # A hang fails the example: recv raises TimeoutError.
                    while not _pong(ws.recv(timeout=seconds(10))):
                        pass
                except ConnectionClosed as exc:
                    closed = exc
            if closed is not None:
                assert closed.rcvd is not None, "closed without a close frame"
                assert closed.rcvd.code in INPUT_CLOSES, closed.rcvd

        throw()

        async def write() -> None:
            connection = await asyncpg.connect(database_url)
            try:
                await connection.execute("INSERT INTO rows (id, table_id) VALUES ('after', 't1')")
            finally:
                await connection.close()

        asyncio.run(write())
        while True:
            message = json.loads(witness.recv(timeout=seconds(10)))
            if message.get("type") == "change":
                assert message["row"]["id"] == "after"
                break
    assert threaded.errors == []
