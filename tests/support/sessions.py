"""Fakes for driving a protocol session without a socket or a database.

The transport, the joiner, the verifier and the messaging store, and helpers
that decode what a session sent.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

import asyncpg
import pytest
from websockets.frames import Frame, Opcode
from websockets.streams import StreamReader

from broadcaster.auth.tokens import Identity
from broadcaster.core import cursors
from broadcaster.core.broadcasts import Broadcasts
from broadcaster.core.changes import Change
from broadcaster.core.cursors import Origin
from broadcaster.core.feed import Join, JoinResult
from broadcaster.core.hub import Batch
from broadcaster.exceptions import AuthenticationError
from broadcaster.protocols import native as protocol
from broadcaster.sessions.native import NativeSession

ORIGIN = Origin(7_316_243_112_858_025_123, 16_384)


CURSOR = cursors.encode(ORIGIN, "100:105:101,103")


class FakeTransport:
    """Records every frame sent and every close requested."""

    def __init__(self) -> None:
        self.sent: list[bytes] = []
        self.closes: list[tuple[int, str]] = []
        self.paused = False

    def send(self, frame: bytes) -> None:
        self.sent.append(frame)

    def close(self, code: int, reason: str) -> None:
        self.closes.append((code, reason))

    def pause_reading(self) -> None:
        self.paused = True

    def resume_reading(self) -> None:
        self.paused = False


class FakeJoiner:
    """Records joins and cancels; the test answers joins itself."""

    def __init__(self) -> None:
        self.joins: list[Join] = []
        self.cancels: list[Join] = []

    def join(self, join: Join) -> None:
        self.joins.append(join)

    def cancel(self, join: Join) -> None:
        self.cancels.append(join)

    @property
    def pending(self) -> list[Join]:
        return [j for j in self.joins if j not in self.cancels]

    def answer(
        self,
        join: Join,
        changes: list[Change] | None = None,
        cursor: str = CURSOR,
        reset: str | None = None,
    ) -> None:
        join.on_joined(JoinResult(reset, changes or [], cursor))

    def answer_all(self) -> None:
        """Answer every pending join, as a read with no rows would."""
        for join in self.pending:
            self.answer(join)
        self.joins.clear()
        self.cancels.clear()


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def unframe(frame_bytes: bytes) -> bytes:
    """The payload of one complete, final, unmasked text frame."""
    reader = StreamReader()
    reader.feed_data(frame_bytes)
    reader.feed_eof()
    parser = Frame.parse(reader.read_exact, mask=False, max_size=None)
    try:
        next(parser)
    except StopIteration as done:
        frame: Frame = done.value
    else:
        pytest.fail("incomplete frame")
    assert reader.at_eof(), "bytes left over after the frame"
    assert frame.opcode is Opcode.TEXT
    assert frame.fin
    return bytes(frame.data)


def decode_frame(frame_bytes: bytes) -> Any:
    """A sent frame's message, as strict JSON in UTF-8."""
    return json.loads(unframe(frame_bytes).decode("utf-8"), parse_constant=_reject_constant)


def split_frames(data: bytes) -> list[Any]:
    """Decode several unmasked server frames written as one string of bytes."""
    decoded, at = [], 0
    while at < len(data):
        length, at = data[at + 1] & 0x7F, at + 2
        if length >= 126:
            width = 2 if length == 126 else 8
            length, at = int.from_bytes(data[at : at + width], "big"), at + width
        decoded.append(json.loads(data[at : at + length]))
        at += length
    return decoded


def messages(transport: FakeTransport) -> list[Any]:
    return [decode_frame(frame) for frame in transport.sent]


def send(session: NativeSession, message: dict[str, Any]) -> None:
    session.receive_text(json.dumps(message).encode())


CLAIM = "table_ids"


class FakeVerifier:
    """Verifies the tokens it was given; ``hold()`` makes verifications wait.

    An unknown token is refused as ``unauthorized``.
    """

    def __init__(self, outcomes: Mapping[str, Identity | AuthenticationError]) -> None:
        self.outcomes = dict(outcomes)
        self.calls: list[str] = []
        self.waiting = 0
        self.cancelled = 0
        self._gate: asyncio.Event | None = None

    def hold(self) -> asyncio.Event:
        """Make every verification wait until the returned event is set."""
        self._gate = asyncio.Event()
        return self._gate

    async def verify(self, token: str) -> Identity:
        self.calls.append(token)
        if self._gate is not None:
            self.waiting += 1
            try:
                await self._gate.wait()
            except asyncio.CancelledError:
                self.cancelled += 1
                raise
            finally:
                self.waiting -= 1
        outcome = self.outcomes.get(
            token, AuthenticationError(protocol.UNAUTHORIZED, "unknown token")
        )
        if isinstance(outcome, AuthenticationError):
            raise outcome
        return outcome


def identity(tables: Any = ("a", "b"), expires_at: float | None = None, **claims: Any) -> Identity:
    granted = list(tables) if isinstance(tables, tuple) else tables
    return Identity(
        claims=MappingProxyType({CLAIM: granted, **claims}),
        expires_at=expires_at,
        subject=claims.get("sub"),
    )


DATABASE_FAILURES = [asyncpg.PostgresError("database down"), OSError("connection reset")]


Entry = tuple[str, str, Any]


class FakeStore:
    """Postgres for broadcast and presence: records every call.

    ``failures[name]`` makes that method raise (after recording the call);
    ``loopback`` hands each broadcast to a Broadcasts, as the LISTEN
    connection of every process would.
    """

    def __init__(self, loopback: Broadcasts | None = None) -> None:
        self.loopback = loopback
        self.sent: list[str] = []
        self.tracks: list[tuple[str, str, str, str, Any]] = []
        self.untracks: list[list[str]] = []
        self.state_reads: list[str] = []
        self.states: dict[str, list[Entry]] = {}
        self.failures: dict[str, BaseException] = {}

    def _maybe_fail(self, name: str) -> None:
        failure = self.failures.get(name)
        if failure is not None:
            raise failure

    async def broadcast(self, payload: str) -> None:
        self.sent.append(payload)
        self._maybe_fail("broadcast")
        if self.loopback is not None:
            self.loopback.notified(payload)

    async def track(self, topic: str, key: str, ref: str, process: str, meta: Any) -> None:
        self.tracks.append((topic, key, ref, process, meta))
        self._maybe_fail("track")

    async def untrack(self, refs: Any) -> None:
        self.untracks.append(list(refs))
        self._maybe_fail("untrack")

    async def presence_state(self, topic: str) -> list[Entry]:
        self.state_reads.append(topic)
        self._maybe_fail("presence_state")
        return list(self.states.get(topic, []))


# The Supabase protocol

UPDATED_AT = "2024-05-01T10:00:00.123456+00:00"


def binding(filter: str | None, event: str | None = "*", **extra: Any) -> dict[str, Any]:
    entry: dict[str, Any] = {"schema": "public", "table": "rows", **extra}
    if event is not None:
        entry["event"] = event
    if filter is not None:
        entry["filter"] = filter
    return entry


def row(table_id: str, row_id: str, version: int) -> dict[str, Any]:
    return {
        "id": row_id,
        "table_id": table_id,
        "data": {"n": version, "text": "ü"},
        "enriching_columns": [],
        "version": version,
        "created_at": "2024-04-01T09:00:00+00:00",
        "updated_at": UPDATED_AT,
    }


def change(op: str, table_id: str, row_id: str, version: int) -> Change:
    if op == "DELETE":
        body: dict[str, Any] = {"id": row_id, "table_id": table_id, "version": version}
    else:
        body = row(table_id, row_id, version)
    return Change(op, table_id, row_id, version, json.dumps(body))


def batch(table_id: str, *changes: Change) -> Batch:
    return Batch(table_id, list(changes), "cursor-2", since="cursor-1")
