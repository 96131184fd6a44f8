"""One benchmark WebSocket client in the bench's own process.

``bench/run.py`` uses it where a target needs a few connections it drives
itself (the catch-up and writer targets); the many counting connections of a
load target live in ``bench/wsclient.c`` processes, which speak the same
subset of RFC 6455 for a fraction of the CPU. A connection is a bare
:class:`asyncio.Protocol`: it sends the upgrade request, then splits incoming
frames by their headers and counts them without parsing:

- against our server it counts the ``change`` messages in each text frame (a
  frame may be a JSON array of them) with ``bytes.count``;
- against a peer each text frame is one change.

A *sampled* connection also parses every frame and records, for every change,
the time it arrived minus ``row.data.t`` (the commit time the writer stamped,
epoch milliseconds): the commit-to-client latency.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import time

CHANGE = b'{"type":"change"'
SYNCED = b'"type":"synced"'
SUBSCRIBED = b'"type":"subscribed"'

__all__ = ["Client", "connect_client"]


def _masked_frame(opcode: int, payload: bytes) -> bytes:
    """A client frame: final, masked (RFC 6455 requires clients to mask)."""
    mask = os.urandom(4)
    length = len(payload)
    if length < 126:
        header = bytes((0x80 | opcode, 0x80 | length))
    elif length < 1 << 16:
        header = bytes((0x80 | opcode, 0x80 | 126)) + length.to_bytes(2, "big")
    else:
        header = bytes((0x80 | opcode, 0x80 | 127)) + length.to_bytes(8, "big")
    repeated = (mask * (length // 4 + 1))[:length]
    masked = (int.from_bytes(payload, "big") ^ int.from_bytes(repeated, "big")).to_bytes(
        length, "big"
    )
    return header + mask + masked


class Client(asyncio.Protocol):
    """One WebSocket connection subscribed to one table.

    ``ours`` selects our protocol (send ``subscribe``; ready at ``synced``;
    count ``change`` messages inside frames) over the peers' (subscribe by URL;
    ready at ``subscribed``; one change per frame).
    """

    def __init__(
        self,
        *,
        host: str,
        port: int,
        path: str,
        table_id: str,
        ours: bool,
        sample: list[float] | None = None,
        cursor: str | None = None,
    ) -> None:
        self.host = host
        self.port = port
        self.path = path
        self.table_id = table_id
        self.ours = ours
        self.sample = sample
        self.cursor = cursor
        self.ready: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.transport: asyncio.Transport | None = None
        self.upgraded = False
        self.live = False
        self.buffer = b""
        self.received = 0
        self.frames = 0
        self.closed = False
        # Before ``synced``: the changes of a catch-up, and when it ended.
        self.catch_up = 0
        self.synced_at = 0.0
        self.synced_cursor: str | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        key = base64.b64encode(os.urandom(16)).decode()
        transport.write(
            (
                f"GET {self.path} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\n"
                "Upgrade: websocket\r\nConnection: Upgrade\r\n"
                f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
            ).encode()
        )

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if not self.ready.done():
            self.ready.set_exception(ConnectionError(f"connection lost: {exc}"))

    def send_text(self, message: dict[str, str]) -> None:
        if self.transport is not None:
            self.transport.write(_masked_frame(0x1, json.dumps(message).encode()))

    def data_received(self, data: bytes) -> None:
        now = time.time() * 1000.0
        view = self.buffer + data if self.buffer else data
        start = 0
        if not self.upgraded:
            end = view.find(b"\r\n\r\n")
            if end < 0:
                self.buffer = view
                return
            status = view[: view.find(b"\r\n")]
            if b" 101 " not in status + b" ":
                if not self.ready.done():
                    self.ready.set_exception(ConnectionError(status.decode(errors="replace")))
                assert self.transport is not None
                self.transport.close()
                return
            self.upgraded = True
            start = end + 4
            if self.ours:
                message = {"type": "subscribe", "table_id": self.table_id}
                if self.cursor is not None:
                    message["cursor"] = self.cursor
                self.send_text(message)
        size = len(view)
        while size - start >= 2:
            length = view[start + 1] & 0x7F
            head = start + 2
            if length == 126:
                if size - start < 4:
                    break
                length = int.from_bytes(view[head : head + 2], "big")
                head += 2
            elif length == 127:
                if size - start < 10:
                    break
                length = int.from_bytes(view[head : head + 8], "big")
                head += 8
            end = head + length
            if end > size:
                break
            opcode = view[start] & 0x0F
            if opcode == 0x1 or opcode == 0x0:
                if self.live:
                    self.frames += 1
                    if self.ours:
                        self.received += view.count(CHANGE, head, end)
                    else:
                        self.received += 1
                    if self.sample is not None:
                        self._sample(view[head:end], now)
                else:
                    self._before_live(view[head:end])
            elif opcode == 0x9:
                assert self.transport is not None
                self.transport.write(_masked_frame(0xA, view[head:end]))
            elif opcode == 0x8:
                self.closed = True
                assert self.transport is not None
                self.transport.close()
                return
            start = end
        self.buffer = view[start:] if start < size else b""

    def _before_live(self, payload: bytes) -> None:
        if self.ours:
            self.catch_up += payload.count(CHANGE)
            if SYNCED not in payload:
                return
            decoded = json.loads(payload)
            for message in decoded if isinstance(decoded, list) else [decoded]:
                if message.get("type") == "synced":
                    self.synced_cursor = message["cursor"]
        elif SUBSCRIBED not in payload:
            return
        self.synced_at = time.perf_counter()
        self.live = True
        if not self.ready.done():
            self.ready.set_result(None)

    def _sample(self, payload: bytes, now: float) -> None:
        assert self.sample is not None
        try:
            decoded = json.loads(payload)
        except ValueError:
            return
        if self.ours:
            for message in decoded if isinstance(decoded, list) else [decoded]:
                if message.get("type") == "change":
                    stamp = message["row"]["data"].get("t")
                    if stamp is not None:
                        self.sample.append(now - float(stamp))
        elif isinstance(decoded, dict):
            stamp = decoded.get("data", {}).get("t")
            if stamp is not None:
                self.sample.append(now - float(stamp))

    def close(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(_masked_frame(0x8, (1000).to_bytes(2, "big")))
            self.transport.close()


async def connect_client(
    *,
    host: str,
    port: int,
    table_id: str,
    ours: bool,
    sample: list[float] | None = None,
    cursor: str | None = None,
    within: float = 30.0,
) -> Client:
    """Open one connection and wait until it is subscribed (``synced`` for ours)."""
    path = "/ws" if ours else f"/ws?table_id={table_id}"
    loop = asyncio.get_running_loop()
    client = Client(
        host=host, port=port, path=path, table_id=table_id, ours=ours, sample=sample, cursor=cursor
    )
    async with asyncio.timeout(within):
        await loop.create_connection(lambda: client, host, port)
        await client.ready
    return client
