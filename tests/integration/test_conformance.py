"""RFC 6455 conformance of both WebSocket endpoints, case by case, on a real server.

The cases follow RFC 6455 sections 4 to 8 and the Autobahn testsuite's
categories (its case numbers are in the test names' comments): framing,
pings, reserved bits and opcodes, fragmentation, UTF-8, close handling, and
our documented limits. Each runs against the native endpoint and the Supabase
one in both serialisations, with frames built byte by byte by
:mod:`tests.support.rawws`. After a bad frame the connection must be closed
with the code the RFC (or ``docs/security.md``) names, its close frame the
last thing sent; after anything else it must still answer a ping frame and a
message. One server serves the whole module.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import pytest
import pytest_asyncio

from broadcaster.net.server import Server
from broadcaster.net.websocket import MAX_FRAMES_PER_MESSAGE
from broadcaster.protocols.client_json import MAX_DEPTH
from broadcaster.sessions.native import NativeSession
from broadcaster.sessions.supabase import SupabaseSession
from tests.support.database import Databases
from tests.support.phoenix import push_frame
from tests.support.rawws import (
    BINARY,
    CLOSE,
    CONT,
    PING,
    PONG,
    TEXT,
    RawClient,
    Received,
    close_payload,
    connected,
    frame,
    http_exchange,
    upgrade_request,
)
from tests.support.server import running_server
from tests.support.timeouts import seconds, within

pytestmark = pytest.mark.asyncio(loop_scope="module")

MAX_MESSAGE_BYTES = 64 * 1024
MAX_FRAME_BYTES = 128 * 1024
HANDSHAKE_TIMEOUT = 1.0


@dataclass(frozen=True)
class Endpoint:
    """A WebSocket endpoint and the message that makes it answer with a given ref."""

    path: str
    vsn: str | None = None  # None: the native protocol

    def probe(self, ref: str, pad: int = 0) -> bytes:
        """A message answered with ``ref``, padded with ``pad`` spaces (JSON whitespace)."""
        message: Any
        if self.vsn is None:
            message = {"type": "ping", "ref": ref}
        elif self.vsn == "2.0.0":
            message = [None, ref, "phoenix", "heartbeat", {}]
        else:
            message = {"topic": "phoenix", "event": "heartbeat", "payload": {}, "ref": ref}
        return json.dumps(message, ensure_ascii=False).encode() + b" " * pad

    def answer(self, payload: bytes) -> str | None:
        """The ref of a probe's answer, or None if ``payload`` is something else."""
        message = json.loads(payload)
        if self.vsn is None:
            return message["ref"] if message.get("type") == "pong" else None
        if self.vsn == "2.0.0":
            _, ref, topic, event, reply = message
        else:
            fields = ("ref", "topic", "event", "payload")
            ref, topic, event, reply = (message.get(field) for field in fields)
        if (topic, event, reply.get("status")) == ("phoenix", "phx_reply", "ok"):
            return str(ref)
        return None

    def too_large(self, payload: bytes) -> bool:
        """Is this the answer to a message over ``max_message_bytes``?"""
        if self.vsn is None:
            answer: dict[str, Any] = json.loads(payload)
            return answer.get("code") == "too_large"
        return b'"system"' in payload and b"bytes ignored" in payload


ENDPOINTS = [
    pytest.param(Endpoint("/ws"), id="native"),
    pytest.param(Endpoint("/realtime/v1/websocket?vsn=2.0.0", "2.0.0"), id="supabase-2.0.0"),
    pytest.param(Endpoint("/realtime/v1/websocket?vsn=1.0.0", "1.0.0"), id="supabase-1.0.0"),
]


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def server(databases: Databases, migrated_template: str) -> AsyncIterator[Server]:
    dsn = await asyncio.to_thread(databases.create, migrated_template)
    try:
        async with running_server(
            dsn,
            max_message_bytes=MAX_MESSAGE_BYTES,
            max_frame_bytes=MAX_FRAME_BYTES,
            handshake_timeout=HANDSHAKE_TIMEOUT,
            # Cases send a few bad messages on purpose; none may trip 4003.
            max_errors=1000,
        ) as s:
            yield s
    finally:
        await databases.drop(dsn)


@pytest_asyncio.fixture(loop_scope="module")
async def _fail_on_loop_exceptions() -> AsyncIterator[None]:
    """tests/conftest.py's check, on this module's loop, where the server runs."""
    loop = asyncio.get_running_loop()
    errors: list[dict[str, Any]] = []
    loop.set_exception_handler(lambda _loop, context: errors.append(context))
    yield
    await asyncio.sleep(0)
    loop.set_exception_handler(None)
    if errors:
        details = "; ".join(f"{ctx.get('message')}: {ctx.get('exception')!r}" for ctx in errors)
        pytest.fail(f"unhandled exceptions on the event loop: {details}")


@pytest.fixture(params=ENDPOINTS)
def endpoint(request: pytest.FixtureRequest) -> Endpoint:
    endpoint: Endpoint = request.param
    return endpoint


@pytest_asyncio.fixture(loop_scope="module")
async def ws(server: Server, endpoint: Endpoint) -> AsyncIterator[RawClient]:
    async with connected(server.port, endpoint.path) as client:
        yield client


async def answered(ws: RawClient, endpoint: Endpoint, ref: str) -> list[Received]:
    """Read until the answer carrying ``ref``; return the frames before it."""
    before: list[Received] = []
    while True:
        received = await ws.recv()
        assert received.opcode != CLOSE, f"closed ({received.close_code}) instead of answering"
        if received.opcode == TEXT and endpoint.answer(received.payload) == ref:
            return before
        before.append(received)


async def usable(ws: RawClient, endpoint: Endpoint) -> None:
    """The connection still works: a ping frame gets its pong, a message its answer."""
    await ws.ping(b"still usable")
    await ws.send(frame(TEXT, endpoint.probe("usable")))
    await answered(ws, endpoint, "usable")


async def closes(ws: RawClient, code: int) -> list[Received]:
    """The server closes with ``code``, its close frame last; return the frames before it."""
    closed_with, before = await ws.closed()
    assert closed_with == code, f"closed with {closed_with}, not {code}"
    return before


def pongs(frames: list[Received]) -> list[bytes]:
    return [f.payload for f in frames if f.opcode == PONG]


# Section 4: the opening handshake (accepted ones are checked by rawws.connected).


@pytest.mark.parametrize(
    "versions", ["8", "12", "14", "13, 8", "", "thirteen"], ids=lambda v: repr(v)
)
async def test_an_unsupported_version_gets_426_naming_13(
    server: Server, endpoint: Endpoint, versions: str
) -> None:
    request = upgrade_request(endpoint.path, headers={"Sec-WebSocket-Version": versions})
    status, headers, _ = await http_exchange(server.port, request)
    assert status == 426
    assert headers[b"sec-websocket-version"] == b"13"


async def test_an_http_1_0_upgrade_is_refused(server: Server, endpoint: Endpoint) -> None:
    status, _, body = await http_exchange(
        server.port, upgrade_request(endpoint.path, version="HTTP/1.0")
    )
    assert status == 400
    assert b"HTTP/1.1" in body


@pytest.mark.parametrize(
    "headers",
    [{"Content-Length": "5"}, {"Transfer-Encoding": "chunked"}],
    ids=["content-length", "chunked"],
)
async def test_an_upgrade_with_a_body_is_refused_at_once(
    server: Server, endpoint: Endpoint, headers: dict[str, str]
) -> None:
    # The body never comes: the refusal must not wait for it.
    status, _, body = await http_exchange(
        server.port, upgrade_request(endpoint.path, headers=headers), units=HANDSHAKE_TIMEOUT / 2
    )
    assert status == 400
    assert b"body" in body


@pytest.mark.parametrize(
    ("method", "headers", "status"),
    [
        ("POST", {}, 405),
        ("GET", {"Sec-WebSocket-Key": ""}, 400),
        ("GET", {"Sec-WebSocket-Key": "dG9vIHNob3J0"}, 400),
    ],
    ids=["post", "no-key", "short-key"],
)
async def test_an_invalid_upgrade_is_refused(
    server: Server, endpoint: Endpoint, method: str, headers: dict[str, str], status: int
) -> None:
    request = upgrade_request(endpoint.path, method=method, headers=headers)
    assert (await http_exchange(server.port, request))[0] == status


async def test_no_extension_is_negotiated(server: Server, endpoint: Endpoint) -> None:
    offer = {"Sec-WebSocket-Extensions": "permessage-deflate; client_max_window_bits"}
    async with connected(server.port, endpoint.path, headers=offer) as ws:
        assert b"sec-websocket-extensions" not in ws.response
        # A frame with RSV1 (compressed) is then a protocol error.
        await ws.send(frame(TEXT, endpoint.probe("x"), rsv=4))
        await closes(ws, 1002)


async def test_a_request_body_that_trickles_is_cut_off_at_the_handshake_timeout(
    server: Server,
) -> None:
    """A plain request (not an upgrade) whose body never completes holds no socket.

    A byte every tenth of the timeout would reset uvicorn's own keep-alive
    timer each time: only the deadline on the whole request ends it.
    """
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    try:
        writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n")
        reading = asyncio.ensure_future(reader.read())
        deadline = asyncio.get_running_loop().time() + seconds(HANDSHAKE_TIMEOUT * 5)
        while not reading.done() and not writer.transport.is_closing():
            assert asyncio.get_running_loop().time() < deadline, "the request is still open"
            writer.write(b"x")
            await asyncio.sleep(HANDSHAKE_TIMEOUT / 10)
        with contextlib.suppress(ConnectionError):
            await within(reading, HANDSHAKE_TIMEOUT * 5)
    finally:
        writer.transport.abort()


# 1.x: framing


@pytest.mark.parametrize("size", [0, 125, 126, 127, 128, 65535, 65536])
async def test_text_messages_of_every_length_encoding_are_read(
    ws: RawClient, endpoint: Endpoint, size: int
) -> None:
    """1.1.1 to 1.1.8: 7-bit, 16-bit and 64-bit lengths, at their boundaries."""
    short = len(endpoint.probe("sized"))
    if size < short:
        # Too short for a message: JSON whitespace, refused or ignored.
        await ws.send(frame(TEXT, b" " * size))
    else:
        message = endpoint.probe("sized", pad=size - short)
        await ws.send(frame(TEXT, message), chunk=997 if size > 128 else None)
        await answered(ws, endpoint, "sized")
    await usable(ws, endpoint)


@pytest.mark.parametrize("size", [0, 125, 126, 127, 65535, 65536])
async def test_binary_messages_of_every_length_encoding_are_read(
    ws: RawClient, endpoint: Endpoint, size: int
) -> None:
    """1.2.1 to 1.2.8: a binary message is handled (or refused) and the connection goes on."""
    await ws.send(frame(BINARY, b"\xfe" * size))
    await usable(ws, endpoint)


async def test_a_message_sent_a_byte_at_a_time_is_read(ws: RawClient, endpoint: Endpoint) -> None:
    await ws.send(frame(TEXT, endpoint.probe("slow", pad=200)), chunk=1)
    await answered(ws, endpoint, "slow")


async def test_an_unmasked_client_frame_fails_the_connection(
    ws: RawClient, endpoint: Endpoint
) -> None:
    """RFC 6455, 5.1: a server must close on an unmasked frame."""
    await ws.send(frame(TEXT, endpoint.probe("unmasked"), masked=False))
    await closes(ws, 1002)


# 2.x: pings and pongs


@pytest.mark.parametrize(
    "payload",
    [b"", b"Hello, world!", bytes([0x00, 0xFF, 0xFE, 0xFD, 0xFC, 0xFB, 0x00, 0xFF]), b"\xfe" * 125],
    ids=["empty", "text", "binary", "125-bytes"],
)
async def test_a_ping_is_answered_with_its_payload(
    ws: RawClient, endpoint: Endpoint, payload: bytes
) -> None:
    """2.1 to 2.4."""
    await ws.ping(payload)


async def test_a_ping_over_125_bytes_fails_the_connection(
    ws: RawClient, endpoint: Endpoint
) -> None:
    """2.5: control frames carry at most 125 bytes."""
    await ws.send(frame(PING, b"\xfe" * 126))
    assert pongs(await closes(ws, 1002)) == []


async def test_a_ping_sent_a_byte_at_a_time_is_answered(ws: RawClient, endpoint: Endpoint) -> None:
    """2.6."""
    await ws.send(frame(PING, b"\xfe" * 125), chunk=1)
    assert (await ws.recv()) == Received(PONG, b"\xfe" * 125)


@pytest.mark.parametrize("payload", [b"", b"unsolicited"], ids=["empty", "payload"])
async def test_an_unsolicited_pong_is_ignored(
    ws: RawClient, endpoint: Endpoint, payload: bytes
) -> None:
    """2.7 to 2.9: nothing answers a pong; a ping after it gets only its own pong."""
    await ws.send(frame(PONG, payload), frame(PING, b"after"))
    assert (await ws.recv()) == Received(PONG, b"after")
    await usable(ws, endpoint)


@pytest.mark.parametrize("chunk", [None, 1], ids=["at-once", "byte-by-byte"])
async def test_ten_pings_get_ten_pongs_in_order(
    ws: RawClient, endpoint: Endpoint, chunk: int | None
) -> None:
    """2.10, 2.11."""
    await ws.send(*(frame(PING, b"ping %d" % i) for i in range(10)), chunk=chunk)
    assert [(await ws.recv()).payload for _ in range(10)] == [b"ping %d" % i for i in range(10)]


# 3.x: reserved bits


@pytest.mark.parametrize("rsv", range(1, 8))
@pytest.mark.parametrize(
    "opcode", [TEXT, BINARY, PING, CLOSE], ids=["text", "binary", "ping", "close"]
)
async def test_a_reserved_bit_fails_the_connection(
    ws: RawClient, endpoint: Endpoint, rsv: int, opcode: int
) -> None:
    """3.1 to 3.7: with no extension, every RSV bit must be 0; nothing after it is read."""
    await ws.send(frame(TEXT, endpoint.probe("before")))
    await answered(ws, endpoint, "before")
    payload = close_payload(1000) if opcode == CLOSE else b"reserved"
    await ws.send(frame(opcode, payload, rsv=rsv), frame(PING, b"after"))
    assert pongs(await closes(ws, 1002)) == []


# 4.x: reserved opcodes


@pytest.mark.parametrize("opcode", [3, 4, 5, 6, 7, 11, 12, 13, 14, 15])
@pytest.mark.parametrize("payload", [b"", b"reserved"], ids=["empty", "payload"])
async def test_a_reserved_opcode_fails_the_connection(
    ws: RawClient, endpoint: Endpoint, opcode: int, payload: bytes
) -> None:
    """4.1.1 to 4.2.5."""
    await ws.send(frame(TEXT, endpoint.probe("before")))
    await answered(ws, endpoint, "before")
    await ws.send(frame(opcode, payload), frame(PING, b"after"))
    assert pongs(await closes(ws, 1002)) == []


# 5.x: fragmentation


@pytest.mark.parametrize("opcode", [PING, PONG, CLOSE], ids=["ping", "pong", "close"])
async def test_a_fragmented_control_frame_fails_the_connection(
    ws: RawClient, endpoint: Endpoint, opcode: int
) -> None:
    """5.1, 5.2: control frames must not be fragmented."""
    payload = close_payload(1000) if opcode == CLOSE else b"frag"
    await ws.send(frame(opcode, payload, fin=False), frame(CONT, b"ment"))
    assert pongs(await closes(ws, 1002)) == []


@pytest.mark.parametrize("chunk", [None, 1], ids=["at-once", "byte-by-byte"])
@pytest.mark.parametrize("opcode", [TEXT, BINARY], ids=["text", "binary"])
async def test_a_message_in_two_fragments_is_reassembled(
    ws: RawClient, endpoint: Endpoint, chunk: int | None, opcode: int
) -> None:
    """5.3 to 5.5."""
    if opcode == BINARY:
        await ws.send(frame(BINARY, b"\x00frag", fin=False), frame(CONT, b"ment"), chunk=chunk)
    message = endpoint.probe("two")
    await ws.send(frame(TEXT, message[:5], fin=False), frame(CONT, message[5:]), chunk=chunk)
    await answered(ws, endpoint, "two")


@pytest.mark.parametrize("chunk", [None, 1], ids=["at-once", "byte-by-byte"])
async def test_pings_between_fragments_are_answered_first(
    ws: RawClient, endpoint: Endpoint, chunk: int | None
) -> None:
    """5.6 to 5.8, 5.19, 5.20: control frames may come between fragments."""
    message = endpoint.probe("pinged")
    parts = [message[:3], message[3:6], message[6:9], message[9:12], message[12:]]
    frames = []
    for i, part in enumerate(parts):
        opcode = TEXT if i == 0 else CONT
        frames.append(frame(opcode, part, fin=i == len(parts) - 1))
        if i < len(parts) - 1:
            frames.append(frame(PING, b"between %d" % i))
    await ws.send(*frames, chunk=chunk)
    before = await answered(ws, endpoint, "pinged")
    assert pongs(before) == [b"between %d" % i for i in range(4)]


@pytest.mark.parametrize("fin", [True, False], ids=["fin", "not-fin"])
@pytest.mark.parametrize("chunk", [None, 1], ids=["at-once", "byte-by-byte"])
async def test_a_continuation_with_nothing_to_continue_fails_the_connection(
    ws: RawClient, endpoint: Endpoint, fin: bool, chunk: int | None
) -> None:
    """5.9 to 5.14."""
    message = endpoint.probe("never")
    await ws.send(
        frame(CONT, b"orphan", fin=fin),
        frame(TEXT, message[:5], fin=False),
        frame(CONT, message[5:]),
        chunk=chunk,
    )
    before = await closes(ws, 1002)
    assert not [f for f in before if f.opcode == TEXT and endpoint.answer(f.payload) == "never"]


async def test_a_continuation_after_a_complete_message_fails_the_connection(
    ws: RawClient, endpoint: Endpoint
) -> None:
    """5.15: the first message is answered, the stray continuation fails the connection."""
    message = endpoint.probe("first")
    await ws.send(frame(TEXT, message[:5], fin=False), frame(CONT, message[5:]))
    await answered(ws, endpoint, "first")
    await ws.send(frame(CONT, b"stray", fin=False), frame(TEXT, endpoint.probe("second")))
    await closes(ws, 1002)


@pytest.mark.parametrize("opcode", [TEXT, BINARY], ids=["text", "binary"])
async def test_a_new_message_during_fragmentation_fails_the_connection(
    ws: RawClient, endpoint: Endpoint, opcode: int
) -> None:
    """5.16 to 5.18: a data frame other than a continuation while a message is open."""
    message = endpoint.probe("interrupted")
    await ws.send(
        frame(TEXT, message[:5], fin=False), frame(opcode, b"new"), frame(CONT, message[5:])
    )
    before = await closes(ws, 1002)
    assert not [f for f in before if f.opcode == TEXT and endpoint.answer(f.payload)]


async def test_empty_fragments_are_fine(ws: RawClient, endpoint: Endpoint) -> None:
    """6.1.2, 6.1.3: empty first, middle and last fragments."""
    message = endpoint.probe("empties")
    await ws.send(
        frame(TEXT, b"", fin=False),
        frame(CONT, message, fin=False),
        frame(CONT, b"", fin=False),
        frame(CONT, b""),
    )
    await answered(ws, endpoint, "empties")


async def test_a_message_may_be_split_into_the_most_frames_allowed(
    ws: RawClient, endpoint: Endpoint
) -> None:
    message = endpoint.probe("many", pad=MAX_FRAMES_PER_MESSAGE)
    parts = [message[i : i + 1] for i in range(MAX_FRAMES_PER_MESSAGE - 1)]
    parts.append(message[MAX_FRAMES_PER_MESSAGE - 1 :])
    await ws.send_all(
        frame(TEXT if i == 0 else CONT, part, fin=i == len(parts) - 1)
        for i, part in enumerate(parts)
    )
    await answered(ws, endpoint, "many")


async def test_a_message_in_more_frames_than_allowed_closes_with_1008(
    ws: RawClient, endpoint: Endpoint
) -> None:
    """Empty continuations count against no size limit; their number is bounded."""
    await ws.send(frame(TEXT, b"[", fin=False))
    await ws.send_all(frame(CONT, b"", fin=False) for _ in range(MAX_FRAMES_PER_MESSAGE))
    await closes(ws, 1008)


# 6.x: UTF-8

VALID_TEXT = [
    "κόσμε",  # 6.2.1
    "\u0080",
    "\u07ff",
    "\u0800",
    "\ud7ff",
    "\ue000",
    "\ufffd",
    "\uffff",
    "\U00010000",
    "\U0010ffff",  # 6.5.x, boundaries of each sequence length
    "€ 😀 ﷐ 𝄞",
]

INVALID_UTF8 = [
    b"\xce\xba\xe1\xbd\xb9\xcf\x83\xce\xbc\xce\xb5\xed\xa0\x80edited",  # 6.3.1
    b"\x80",  # 6.8: a lone continuation byte
    b"\xbf",
    b"\xc0\xaf",  # 6.9: overlong
    b"\xe0\x80\xaf",
    b"\xf0\x80\x80\xaf",
    b"\xc1\xbf",
    b"\xed\xa0\x80",  # 6.19: UTF-16 surrogates
    b"\xed\xbf\xbf",
    b"\xed\xa0\x80\xed\xb0\x80",
    b"\xf4\x90\x80\x80",  # 6.6: beyond U+10FFFF
    b"\xf8\x88\x80\x80\x80",  # 6.7: five and six byte forms
    b"\xfc\x84\x80\x80\x80\x80",
    b"\xfe",  # 6.14
    b"\xff",
    b"\xc2",  # 6.10: sequences cut short at the end
    b"\xe0\xa0",
    b"\xf0\x90\x80",
    b"\xc2\x41",  # a start byte followed by ASCII
]


@pytest.mark.parametrize("text", VALID_TEXT, ids=lambda t: t.encode().hex())
@pytest.mark.parametrize("split", ["whole", "every-byte", "byte-by-byte"])
async def test_valid_utf8_is_read_whole_or_split_anywhere(
    ws: RawClient, endpoint: Endpoint, text: str, split: str
) -> None:
    """6.2.1 to 6.2.4, 6.5.x: also fragmented inside a code point."""
    message = endpoint.probe(text)
    if split == "every-byte":
        frames = [
            frame(TEXT if i == 0 else CONT, message[i : i + 1], fin=i == len(message) - 1)
            for i in range(len(message))
        ]
        await ws.send(*frames)
    else:
        await ws.send(frame(TEXT, message), chunk=1 if split == "byte-by-byte" else None)
    await answered(ws, endpoint, text)


@pytest.mark.parametrize("payload", [b"", "κόσμε".encode(), b"\xef\xbb\xbfBOM"], ids=repr)
async def test_valid_utf8_that_is_no_message_leaves_the_connection_open(
    ws: RawClient, endpoint: Endpoint, payload: bytes
) -> None:
    """6.1.1 and others: the protocol may refuse the message, the WebSocket stays."""
    await ws.send(frame(TEXT, payload))
    await usable(ws, endpoint)


@pytest.mark.parametrize("bad", INVALID_UTF8, ids=lambda b: b.hex())
@pytest.mark.parametrize("split", ["whole", "fragmented", "byte-by-byte"])
async def test_invalid_utf8_closes_with_1007(
    ws: RawClient, endpoint: Endpoint, bad: bytes, split: str
) -> None:
    """6.3 to 6.21, on both endpoints, whole or split across fragments."""
    message = b'{"ref": "' + bad + b'"}'
    if split == "fragmented":
        frames = [
            frame(TEXT if i == 0 else CONT, message[i : i + 1], fin=i == len(message) - 1)
            for i in range(len(message))
        ]
        await ws.send(*frames)
    else:
        await ws.send(frame(TEXT, message), chunk=1 if split == "byte-by-byte" else None)
    before = await closes(ws, 1007)
    assert [f for f in before if f.opcode == TEXT] == []


@pytest.mark.parametrize(
    "fragments",
    [
        [b"\xce\xba\xe1\xbd\xb9\xcf\x83\xce\xbc\xce\xb5", b"\xf4\x90\x80\x80"],  # 6.4.1
        [b"\xce\xba\xe1\xbd\xb9\xcf\x83\xce\xbc\xce\xb5\xf4", b"\x90\x80\x80"],  # 6.4.2
        [b"\xff"],
    ],
    ids=["6.4.1", "6.4.2", "first-fragment"],
)
async def test_an_invalid_fragment_fails_before_the_message_ends(
    ws: RawClient, endpoint: Endpoint, fragments: list[bytes]
) -> None:
    """6.4.x: the close comes without waiting for the last fragment, which is never sent."""
    frames = [frame(TEXT if i == 0 else CONT, f, fin=False) for i, f in enumerate(fragments)]
    await ws.send(*frames)
    await closes(ws, 1007)


async def test_binary_messages_are_not_checked_as_utf8(ws: RawClient, endpoint: Endpoint) -> None:
    await ws.send(frame(BINARY, b"\xff\xfe\xc0\xaf"))
    await usable(ws, endpoint)


# 7.x: close handling


async def test_a_message_then_a_close_gets_its_answer_then_the_echo(
    ws: RawClient, endpoint: Endpoint
) -> None:
    """7.1.1, 7.1.6: what came before the close is handled."""
    await ws.send(*(frame(TEXT, endpoint.probe(f"before {i}")) for i in range(5)))
    for i in range(5):
        await answered(ws, endpoint, f"before {i}")
    assert await ws.close(1000) == 1000


@pytest.mark.parametrize(
    "after",
    [frame(CLOSE, close_payload(1000)), frame(PING, b"after"), frame(TEXT, b'{"type": "ping"}')],
    ids=["close", "ping", "text"],
)
async def test_nothing_after_a_close_is_read(
    ws: RawClient, endpoint: Endpoint, after: bytes
) -> None:
    """7.1.2 to 7.1.4: the echo is the last frame; nothing after the close is answered."""
    await ws.send(frame(CLOSE, close_payload(1000)), after)
    assert await closes(ws, 1000) == []


async def test_a_close_in_the_middle_of_a_fragmented_message(
    ws: RawClient, endpoint: Endpoint
) -> None:
    """7.1.5: websockets answers 1002 where Autobahn expects the echo; RFC 6455 allows both."""
    await ws.send(
        frame(TEXT, b"frag", fin=False), frame(CLOSE, close_payload(1000)), frame(CONT, b"ment")
    )
    assert await closes(ws, 1002) == []


@pytest.mark.parametrize(
    ("payload", "echoed"),
    [
        (b"", 1005),  # 7.3.1: no code, echoed empty
        (close_payload(1000), 1000),  # 7.3.3
        (close_payload(1000, b"Hello World!"), 1000),  # 7.3.4
        (close_payload(1000, b"*" * 123), 1000),  # 7.3.5
    ],
    ids=["empty", "code", "reason", "123-byte-reason"],
)
async def test_a_close_is_echoed(
    ws: RawClient, endpoint: Endpoint, payload: bytes, echoed: int
) -> None:
    await ws.send(frame(CLOSE, payload))
    assert await closes(ws, echoed) == []


@pytest.mark.parametrize(
    ("payload", "code"),
    [
        (b"\x03", 1002),  # 7.3.2: one byte
        (close_payload(1000, b"*" * 124), 1002),  # 7.3.6: a 126-byte control frame
        (close_payload(1000, b"\xce\xba\xe1\xbd\xb9\xcf\x83\xce\xbc\xce\xb5\xed\xa0\x80"), 1007),
    ],
    ids=["one-byte", "124-byte-reason", "invalid-utf8-reason"],
)
async def test_an_invalid_close_payload_fails_the_connection(
    ws: RawClient, endpoint: Endpoint, payload: bytes, code: int
) -> None:
    """7.3.2, 7.3.6, 7.5.1."""
    await ws.send(frame(CLOSE, payload))
    await closes(ws, code)


@pytest.mark.parametrize(
    "code",
    [
        1000,
        1001,
        1002,
        1003,
        1007,
        1008,
        1009,
        1010,
        1011,
        1012,
        1013,
        1014,
        3000,
        3999,
        4000,
        4999,
    ],
)
async def test_a_valid_close_code_is_echoed(ws: RawClient, endpoint: Endpoint, code: int) -> None:
    """7.7.x."""
    assert await ws.close(code) == code


@pytest.mark.parametrize(
    "code", [0, 999, 1004, 1005, 1006, 1015, 1016, 1100, 2000, 2999, 5000, 65535]
)
async def test_an_invalid_close_code_fails_the_connection(
    ws: RawClient, endpoint: Endpoint, code: int
) -> None:
    """7.9.x, 7.13.x: codes that are reserved, unassigned or never sent on the wire."""
    await ws.send(frame(CLOSE, close_payload(code)))
    await closes(ws, 1002)


# 9.x, in the sense of the documented limits (docs/security.md)


async def test_a_frame_declared_over_the_frame_limit_closes_with_1009_unread(
    ws: RawClient, endpoint: Endpoint
) -> None:
    # The header alone: the server must not wait for (or buffer) the payload.
    await ws.send(frame(TEXT, b"", length=MAX_FRAME_BYTES + 1))
    await closes(ws, 1009)


async def test_a_frame_declaring_an_absurd_length_closes_with_1009(
    ws: RawClient, endpoint: Endpoint
) -> None:
    await ws.send(frame(BINARY, b"", length=(1 << 63) - 1))
    await closes(ws, 1009)


async def test_a_fragmented_message_over_the_frame_limit_closes_with_1009(
    ws: RawClient, endpoint: Endpoint
) -> None:
    fragment = b" " * (MAX_FRAME_BYTES // 4)
    await ws.send(*(frame(TEXT if i == 0 else CONT, fragment, fin=False) for i in range(4)))
    await ws.send(frame(CONT, b" "))
    await closes(ws, 1009)


async def test_a_message_over_the_message_limit_is_refused_and_the_connection_goes_on(
    ws: RawClient, endpoint: Endpoint
) -> None:
    await ws.send(frame(TEXT, endpoint.probe("big", pad=MAX_MESSAGE_BYTES)))
    reply = await ws.recv()
    assert reply.opcode == TEXT
    assert endpoint.too_large(reply.payload), reply
    await usable(ws, endpoint)


# Robustness: bad input that the protocols, not WebSocket, must survive.


def phoenix(endpoint: Endpoint, topic: str, event: str, payload: bytes) -> bytes:
    """A Phoenix message whose payload is raw JSON text."""
    if endpoint.vsn == "2.0.0":
        return b'["1", "1", "%s", "%s", %s]' % (topic.encode(), event.encode(), payload)
    return b'{"topic": "%s", "event": "%s", "ref": "1", "payload": %s}' % (
        topic.encode(),
        event.encode(),
        payload,
    )


@pytest.mark.parametrize("depth", [MAX_DEPTH + 1, 975, 20_000])
async def test_deeply_nested_json_is_malformed_not_fatal(
    ws: RawClient, endpoint: Endpoint, depth: int
) -> None:
    """Nesting that fits under the size limit.

    Twenty thousand levels made the parsers raise RecursionError, which
    escaped data_received: no close frame, "Fatal error" in the log. Just
    under Python's recursion limit the message parsed, then a broadcast of it
    failed to encode deeper in the stack.
    """
    nested = b"[" * depth + b"]" * depth
    if endpoint.vsn is None:
        await ws.send(frame(TEXT, b'{"type": "subscribe", "ref": 1, "table_id": "deep"}'))
        await ws.send(
            frame(TEXT, nested),
            frame(
                TEXT,
                b'{"type": "broadcast", "table_id": "deep", "event": "e", "payload": '
                + nested
                + b"}",
            ),
        )
        replies = [json.loads((await ws.recv()).payload) for _ in range(4)]
        codes = [reply.get("code") for reply in replies if reply["type"] == "error"]
        assert codes == ["bad_json", "bad_json"], replies
    else:
        # The Supabase session ignores what it cannot decode.
        await ws.send(
            frame(TEXT, phoenix(endpoint, "realtime:deep", "phx_join", b'{"config": %s}' % nested)),
            frame(
                TEXT,
                phoenix(
                    endpoint,
                    "realtime:deep",
                    "broadcast",
                    b'{"type": "broadcast", "event": "e", "payload": %s}' % nested,
                ),
            ),
            frame(BINARY, push_frame(topic="realtime:deep", body=nested)),
            frame(TEXT, nested),
        )
    await usable(ws, endpoint)


async def test_an_unexpected_error_closes_with_1011_and_is_logged(
    ws: RawClient,
    endpoint: Endpoint,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    def broken(self: object, data: bytes) -> None:
        raise RuntimeError("a bug")

    session = NativeSession if endpoint.vsn is None else SupabaseSession
    monkeypatch.setattr(session, "receive_text", broken)
    with caplog.at_level(logging.ERROR, logger="broadcaster.net.websocket"):
        await ws.send(frame(TEXT, endpoint.probe("boom")))
        await closes(ws, 1011)
    (record,) = [r for r in caplog.records if r.exc_info is not None]
    assert record.exc_info is not None
    assert "a bug" in str(record.exc_info[1])
