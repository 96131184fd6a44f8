"""No input makes a connection hold more than a small constant times the limits, or slow others.

The server runs in this process, so tracemalloc sees what it allocates while
a raw client (:mod:`tests.support.rawws`) floods it, and the connection's own
count of what it holds (``buffered_bytes``: unparsed input, the parser's
buffer, the message being assembled, unsent output) can be sampled. The
floods are built before tracing starts, so the client's own share of the
traced memory is a few writes' worth.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import statistics
import tracemalloc
from collections.abc import AsyncIterator, Callable, Iterator

import pytest

from broadcaster.net.server import Server
from broadcaster.net.websocket import MAX_FRAMES_PER_MESSAGE, WebSocketConnection
from tests.support.rawws import CONT, PING, PONG, TEXT, RawClient, connected, frame
from tests.support.server import running_server
from tests.support.timeouts import seconds, within

pytestmark = pytest.mark.asyncio

MAX_FRAME_BYTES = 256 * 1024
MAX_MESSAGE_BYTES = 64 * 1024
MAX_BUFFER_BYTES = 64 * 1024
HANDSHAKE_TIMEOUT = 1.0
READ_BYTES = 256 * 1024
"""The most asyncio reads from a socket at once: a connection may hold one read."""

BOUND = 4 * (MAX_FRAME_BYTES + MAX_BUFFER_BYTES + READ_BYTES)
"""A small constant times what the limits allow a connection to hold: 2.25 MiB."""


@pytest.fixture
async def server(database_url: str) -> AsyncIterator[Server]:
    async with running_server(
        database_url,
        max_frame_bytes=MAX_FRAME_BYTES,
        max_message_bytes=MAX_MESSAGE_BYTES,
        max_buffer_bytes=MAX_BUFFER_BYTES,
        handshake_timeout=HANDSHAKE_TIMEOUT,
    ) as s:
        yield s


@contextlib.contextmanager
def traced() -> Iterator[Callable[[], int]]:
    """The peak of traced memory above what was allocated when tracing began."""
    gc.collect()
    tracemalloc.start()
    start, _ = tracemalloc.get_traced_memory()
    try:
        yield lambda: tracemalloc.get_traced_memory()[1] - start
    finally:
        tracemalloc.stop()


def server_side(server: Server, client: RawClient) -> WebSocketConnection:
    """The server's connection object for ``client``."""
    host, port = client.writer.get_extra_info("sockname")[:2]
    connections = [
        c
        for c in server._uvicorn.server_state.connections
        if isinstance(c, WebSocketConnection) and c._peer == f"{host}:{port}"
    ]
    assert len(connections) == 1
    connection = connections[0]
    assert isinstance(connection, WebSocketConnection)
    return connection


async def flood(client: RawClient, data: bytes, stalled: float = 1.0) -> int:
    """Write ``data`` in 64 KiB writes until done, the server stops reading or closes.

    Returns the bytes written. A write that does not drain within ``stalled``
    units means the server stopped reading: the flood ends there.
    """
    writer = client.writer
    sent = 0
    with contextlib.suppress(ConnectionError, TimeoutError):
        for start in range(0, len(data), 64 * 1024):
            if writer.transport.is_closing():
                break
            writer.write(data[start : start + 64 * 1024])
            await within(writer.drain(), stalled)
            sent = start + 64 * 1024
    return min(sent, len(data))


async def test_a_message_in_one_byte_fragments_closes_with_1008_holding_little(
    server: Server,
) -> None:
    """A million one-byte continuations held 64 MB (a bytes object and a list slot each)."""
    data = frame(TEXT, b"[", fin=False) + frame(CONT, b" ", fin=False) * (MAX_FRAME_BYTES - 1)
    async with connected(server.port) as client:
        with traced() as peak:
            await flood(client, data)
            code, _ = await client.closed()
            grown = peak()
    assert code == 1008
    assert grown < BOUND, f"{grown} bytes allocated"


async def test_empty_continuations_close_with_1008(server: Server) -> None:
    """They count against no size limit: without a frame limit, one message never ends."""
    data = frame(TEXT, b"[", fin=False) + frame(CONT, b"", fin=False) * 1_000_000
    async with connected(server.port) as client:
        with traced() as peak:
            await flood(client, data)
            code, _ = await client.closed()
            grown = peak()
    assert code == 1008
    assert grown < BOUND, f"{grown} bytes allocated"


async def test_a_largest_message_in_the_most_fragments_is_assembled_in_one_buffer(
    server: Server,
) -> None:
    size = MAX_FRAME_BYTES // MAX_FRAMES_PER_MESSAGE
    fragments = [frame(TEXT, b" " * size, fin=False)]
    fragments += [frame(CONT, b" " * size, fin=False)] * (MAX_FRAMES_PER_MESSAGE - 2)
    fragments.append(frame(CONT, b" " * size))
    data = b"".join(fragments) * 4
    async with connected(server.port) as client:
        with traced() as peak:
            assert await flood(client, data) == len(data)
            replies = [await client.recv() for _ in range(4)]
            grown = peak()
        # Over max_message_bytes: refused, the connection goes on.
        assert all(b"too_large" in reply.payload for reply in replies)
        await client.ping()
    assert grown < BOUND, f"{grown} bytes allocated"


async def test_largest_messages_hold_a_small_multiple_of_the_limit(server: Server) -> None:
    data = frame(TEXT, b" " * MAX_FRAME_BYTES) * 20
    async with connected(server.port) as client:
        with traced() as peak:
            await flood(client, data)
            replies = [await client.recv() for _ in range(20)]
            grown = peak()
        assert all(b"too_large" in reply.payload for reply in replies)
        await client.ping()
    assert grown < BOUND, f"{grown} bytes allocated"


async def test_pings_from_a_client_that_never_reads_count_against_the_buffer(
    server: Server,
) -> None:
    """40 MB of pings queued 37 MB of pongs: they bypassed max_buffer_bytes.

    Pongs count like any frame, so the client is closed as a slow consumer
    (4000) and the server stops reading from it; nothing follows the close
    frame, and what the connection holds stays bounded all along.
    """
    data = frame(PING, b"p" * 125) * (40 * 1024 * 1024 // 131)
    async with connected(server.port, rcvbuf=4096) as client:
        connection = server_side(server, client)
        held: list[int] = []

        async def sample() -> None:
            while True:
                held.append(connection.buffered_bytes)
                await asyncio.sleep(0.005)

        with traced() as peak:
            sampling = asyncio.ensure_future(sample())
            try:
                sent = await flood(client, data)
            finally:
                sampling.cancel()
            grown = peak()
        code, frames = await client.closed(units=10)
    assert sent < len(data), "the server read 40 MB of pings from a client that reads nothing"
    assert code == 4000
    assert {f.opcode for f in frames} <= {PONG}
    assert max(held) < MAX_BUFFER_BYTES + READ_BYTES + MAX_FRAME_BYTES, max(held)
    assert grown < BOUND, f"{grown} bytes allocated"


async def test_a_request_body_held_open_is_cut_off_and_holds_little(server: Server) -> None:
    """Slowloris on the whole request: a body that never completes, sent fast."""
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    try:
        with traced() as peak:
            writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\nContent-Length: 1000000000\r\n\r\n")
            chunk = b"x" * 64 * 1024
            with contextlib.suppress(ConnectionError):
                for _ in range(200):
                    if writer.transport.is_closing() or reader.at_eof():
                        break
                    writer.write(chunk)
                    await within(writer.drain(), HANDSHAKE_TIMEOUT * 5)
            with contextlib.suppress(ConnectionError):
                await within(reader.read(), HANDSHAKE_TIMEOUT * 5)
            grown = peak()
    finally:
        writer.transport.abort()
    assert grown < BOUND, f"{grown} bytes allocated"


async def test_a_flood_of_tiny_frames_does_not_stall_other_clients(server: Server) -> None:
    """A read of 256 KiB of empty pings was 40,000 frames handled at once: seconds of stall.

    The flooder reads its pongs, so it is never a slow consumer: it just keeps
    the server busy. Another client's ping round trips stay short throughout
    (milliseconds); the bounds are generous, each round trip was 1.4 to 2.3 s.
    """
    data = frame(PING, b"") * (6 * 1024 * 1024 // 6)
    async with connected(server.port) as witness, connected(server.port) as flooder:
        baseline = [await witness.ping(b"before") for _ in range(20)]

        async def drain_pongs() -> None:
            while await flooder.reader.read(1024 * 1024):
                pass

        draining = asyncio.ensure_future(drain_pongs())
        flooder.writer.write(data)
        flooding = asyncio.ensure_future(within(flooder.writer.drain(), 60))
        round_trips = []
        try:
            while not flooding.done():
                round_trips.append(await witness.ping(b"during", units=30))
        finally:
            draining.cancel()
        await flooding
    figures = (
        f"round trips during the flood: median {statistics.median(round_trips) * 1e3:.1f} ms, "
        f"max {max(round_trips) * 1e3:.1f} ms (before it: max {max(baseline) * 1e3:.1f} ms)"
    )
    assert len(round_trips) >= 5, figures
    assert statistics.median(round_trips) < seconds(0.1), figures
    assert max(round_trips) < seconds(1), figures
