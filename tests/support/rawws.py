"""A raw WebSocket client: every bit of every frame chosen by the test, every frame read back.

The conformance tests (RFC 6455 sections 4 to 8, the Autobahn testsuite's
cases) need frames no real client library will send: reserved bits and
opcodes, unmasked or fragmented control frames, invalid UTF-8, a million
one-byte fragments. This client builds frames byte by byte, masked as a client
must unless told otherwise, writes them over a plain asyncio socket, and reads
the server's frames as they come, close frame and end of stream included.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import os
import socket
import struct
import time
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass

from tests.support.timeouts import within

__all__ = [
    "BINARY",
    "CLOSE",
    "CONT",
    "PING",
    "PONG",
    "TEXT",
    "RawClient",
    "Received",
    "close_payload",
    "connected",
    "frame",
    "http_exchange",
    "upgrade_request",
]

CONT, TEXT, BINARY, CLOSE, PING, PONG = 0x0, 0x1, 0x2, 0x8, 0x9, 0xA

_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
ABNORMAL = 1006
"""What a client sees when the connection ends without a close frame."""


def frame(
    opcode: int,
    payload: bytes = b"",
    *,
    fin: bool = True,
    rsv: int = 0,
    masked: bool = True,
    length: int | None = None,
) -> bytes:
    """One frame's bytes; ``length`` overrides the declared payload length."""
    declared = len(payload) if length is None else length
    first = (0x80 if fin else 0) | (rsv << 4) | opcode
    mask_bit = 0x80 if masked else 0
    if declared < 126:
        header = bytes((first, mask_bit | declared))
    elif declared < 1 << 16:
        header = struct.pack("!BBH", first, mask_bit | 126, declared)
    else:
        header = struct.pack("!BBQ", first, mask_bit | 127, declared)
    if not masked:
        return header + payload
    key = os.urandom(4)
    return header + key + _mask(payload, key)


def _mask(payload: bytes, key: bytes) -> bytes:
    if not payload:
        return b""
    # A whole-payload XOR with the key repeated: fast enough for megabytes.
    repeated = (key * (len(payload) // 4 + 1))[: len(payload)]
    return (int.from_bytes(payload, "big") ^ int.from_bytes(repeated, "big")).to_bytes(
        len(payload), "big"
    )


def close_payload(code: int, reason: bytes = b"") -> bytes:
    return struct.pack("!H", code) + reason


@dataclass(frozen=True)
class Received:
    """A frame from the server."""

    opcode: int
    payload: bytes
    fin: bool = True

    @property
    def close_code(self) -> int:
        """The close code of a close frame (1005 if it carries none)."""
        if len(self.payload) >= 2:
            code: int = struct.unpack("!H", self.payload[:2])[0]
            return code
        return 1005

    @property
    def close_reason(self) -> str:
        return self.payload[2:].decode()


class RawClient:
    """One connection past the upgrade: send bytes, read frames."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.response: dict[bytes, bytes] = {}

    async def send(self, *frames: bytes, chunk: int | None = None) -> None:
        """Write ``frames``, at once or ``chunk`` bytes at a time, each write drained.

        A server that closed meanwhile ends the writing quietly: what it sent
        is what the test checks, with :meth:`recv` or :meth:`closed`.
        """
        data = b"".join(frames)
        step = chunk or len(data) or 1
        try:
            for start in range(0, len(data), step):
                if self.writer.transport.is_closing():
                    return
                self.writer.write(data[start : start + step])
                await within(self.writer.drain(), 10)
        except ConnectionError:
            return

    async def send_all(self, frames: Iterable[bytes], batch: int = 64 * 1024) -> None:
        """Write many frames, gathered into writes of about ``batch`` bytes."""
        pending: list[bytes] = []
        size = 0
        for data in frames:
            pending.append(data)
            size += len(data)
            if size >= batch:
                await self.send(*pending)
                pending, size = [], 0
        if pending:
            await self.send(*pending)

    async def recv(self, units: float = 5) -> Received:
        """The server's next frame; EOFError if the stream ends first."""
        return await within(self._recv(), units)

    async def _recv(self) -> Received:
        head = await self.reader.readexactly(2)
        fin, rsv, opcode = head[0] & 0x80, head[0] & 0x70, head[0] & 0x0F
        if head[1] & 0x80 or rsv:
            raise AssertionError(f"a server frame must be unmasked, without RSV bits: {head!r}")
        length = head[1] & 0x7F
        if length == 126:
            (length,) = struct.unpack("!H", await self.reader.readexactly(2))
        elif length == 127:
            (length,) = struct.unpack("!Q", await self.reader.readexactly(8))
        payload = await self.reader.readexactly(length)
        return Received(opcode, payload, bool(fin))

    async def closed(self, units: float = 5) -> tuple[int, list[Received]]:
        """Read until the server closes: its close code and the frames before it.

        The code is 1006 when the stream ends without a close frame. A close
        frame is answered with its code, as a client must; after it nothing
        may come but the end of the stream.
        """
        frames: list[Received] = []
        while True:
            try:
                received = await self.recv(units)
            except (EOFError, ConnectionError):
                return ABNORMAL, frames
            if received.opcode == CLOSE:
                await self.send(frame(CLOSE, received.payload[:2]))
                try:
                    trailing = await within(self.reader.read(), units)
                except ConnectionError:
                    trailing = b""  # reset after its close frame: nothing followed it
                assert trailing == b"", f"data after the close frame: {trailing[:100]!r}"
                return received.close_code, frames
            frames.append(received)

    async def close(self, code: int = 1000, reason: bytes = b"", units: float = 5) -> int:
        """The closing handshake from this side; returns the code the server echoed."""
        await self.send(frame(CLOSE, close_payload(code, reason)))
        echoed, _ = await self.closed(units)
        return echoed

    async def ping(self, payload: bytes = b"probe", units: float = 5) -> float:
        """Seconds until the pong answering a ping with ``payload``; other frames skipped."""
        started = time.perf_counter()
        await self.send(frame(PING, payload))
        while True:
            received = await self.recv(units)
            if received.opcode == CLOSE:
                raise AssertionError(f"closed ({received.close_code}) instead of a pong")
            if received.opcode == PONG and received.payload == payload:
                return time.perf_counter() - started

    def abort(self) -> None:
        transport = self.writer.transport
        transport.abort()


def upgrade_request(
    path: str,
    *,
    method: str = "GET",
    version: str = "HTTP/1.1",
    headers: dict[str, str] | None = None,
) -> bytes:
    """An upgrade request; ``headers`` override or (with value "") remove the defaults."""
    fields = {
        "Host": "localhost",
        "Upgrade": "websocket",
        "Connection": "Upgrade",
        "Sec-WebSocket-Key": base64.b64encode(os.urandom(16)).decode(),
        "Sec-WebSocket-Version": "13",
    }
    fields.update(headers or {})
    lines = [f"{method} {path} {version}"] + [f"{k}: {v}" for k, v in fields.items() if v != ""]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


async def _open(port: int, rcvbuf: int | None) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    if rcvbuf is None:
        return await within(asyncio.open_connection("127.0.0.1", port), 5)
    # A small receive buffer set before connecting turns off the kernel's
    # autotuning, which would otherwise absorb megabytes the server sends.
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    sock.setblocking(False)
    try:
        await within(asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", port)), 5)
    except BaseException:
        sock.close()
        raise
    return await asyncio.open_connection(sock=sock)


def _parse_head(head: bytes) -> tuple[int, dict[bytes, bytes]]:
    """The status and headers (names lower-cased) of a response head."""
    status_line, *lines = head.strip().split(b"\r\n")
    fields = {}
    for line in lines:
        name, _, value = line.partition(b":")
        fields[name.strip().lower()] = value.strip()
    return int(status_line.split(b" ", 2)[1]), fields


@contextlib.asynccontextmanager
async def connected(
    port: int,
    path: str = "/ws",
    *,
    rcvbuf: int | None = None,
    headers: dict[str, str] | None = None,
) -> AsyncIterator[RawClient]:
    """A client whose upgrade the server accepted (101, with the right accept key).

    Its ``response`` holds the 101's headers, names lower-cased.
    """
    reader, writer = await _open(port, rcvbuf)
    try:
        request = upgrade_request(path, headers=headers)
        writer.write(request)
        head = await within(reader.readuntil(b"\r\n\r\n"), 5)
        status, fields = _parse_head(head)
        assert status == 101, head
        key = next(
            line.split(b":", 1)[1].strip()
            for line in request.split(b"\r\n")
            if line.startswith(b"Sec-WebSocket-Key:")
        )
        accept = base64.b64encode(hashlib.sha1(key + _GUID).digest())
        assert fields.get(b"sec-websocket-accept") == accept, head
        client = RawClient(reader, writer)
        client.response = fields
        yield client
    finally:
        writer.transport.abort()


async def http_exchange(
    port: int, request: bytes, units: float = 5
) -> tuple[int, dict[bytes, bytes], bytes]:
    """Send raw bytes; the status, headers and body the server sent before it closed.

    Status 0: the server closed without a response.
    """
    reader, writer = await _open(port, None)
    try:
        writer.write(request)
        raw = await within(reader.read(), units)
    finally:
        writer.transport.abort()
    if not raw:
        return 0, {}, b""
    head, _, body = raw.partition(b"\r\n\r\n")
    status, fields = _parse_head(head)
    return status, fields, body
