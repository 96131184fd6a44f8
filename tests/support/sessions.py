"""Fakes for driving a protocol session without a socket or a database.

The transport, the joiner, the verifier and the messaging store, and helpers
that decode what a session sent; for the Supabase protocol, a client that
drives a session as realtime-js does, and rows of ``public.rows``.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import time
from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import Any

import asyncpg
import pytest
from websockets.frames import Frame, Opcode
from websockets.streams import StreamReader

from broadcaster.auth.authorization import Authorizer, OpenAuthorizer
from broadcaster.auth.identity import Identity
from broadcaster.core import cursors
from broadcaster.core.broadcasts import Broadcasts
from broadcaster.core.changes import Change
from broadcaster.core.checks import HeldChecks
from broadcaster.core.cursors import Origin
from broadcaster.core.feed import Join, JoinResult
from broadcaster.core.hub import Batch, Hub
from broadcaster.core.presence import Presences
from broadcaster.core.published import Column, PublishedTable
from broadcaster.exceptions import AuthenticationError, DatabaseError, FilterError
from broadcaster.protocols import native as protocol
from broadcaster.protocols.phoenix import VSN_2, Message
from broadcaster.sessions.base import Limits, Messaging, Session
from broadcaster.sessions.native import NativeSession
from broadcaster.sessions.supabase import SupabaseSession
from tests.support.timeouts import eventually

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


class AdapterTransport(FakeTransport):
    """A FakeTransport that, like the WebSocket adapter, closes the session on close().

    It also records how many frames had been sent whenever reading paused or resumed.
    """

    def __init__(self) -> None:
        super().__init__()
        self.session: Session[Any] | None = None
        self.pauses: list[int] = []
        self.resumes: list[int] = []

    def close(self, code: int, reason: str) -> None:
        super().close(code, reason)
        if self.session is not None:
            self.session.close()

    def pause_reading(self) -> None:
        super().pause_reading()
        self.pauses.append(len(self.sent))

    def resume_reading(self) -> None:
        super().resume_reading()
        self.resumes.append(len(self.sent))


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


def _database_error(cause: BaseException) -> DatabaseError:
    """What the Postgres adapters raise when the driver fails: the driver's error is the cause."""
    error = DatabaseError(str(cause))
    error.__cause__ = cause
    return error


# A failed statement and a dropped connection, as the sessions see them.
DATABASE_FAILURES = [
    _database_error(asyncpg.PostgresError("database down")),
    _database_error(OSError("connection reset")),
]


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
COMMITTED_AT = "2024-05-01T10:00:00.234567Z"


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


def old_row(table_id: str, row_id: str, version: int) -> dict[str, Any]:
    """The row before the change of ``version``, as the change log holds it (no version)."""
    old = row(table_id, row_id, version - 1)
    del old["version"]
    return old


def change(op: str, table_id: str, row_id: str, version: int) -> Change:
    """A change as a read of the change log returns it."""
    if op == "DELETE":
        body: dict[str, Any] = {"id": row_id, "table_id": table_id, "version": version}
    else:
        body = row(table_id, row_id, version)
    old = None if op == "INSERT" else json.dumps(old_row(table_id, row_id, version))
    return Change(op, table_id, row_id, version, json.dumps(body), old, COMMITTED_AT)


def batch(table_id: str, *changes: Change) -> Batch:
    return Batch(table_id, list(changes), "cursor-2", since="cursor-1")


def decode_server(sent: bytes, vsn: str) -> list[Message]:
    """The messages of what a session sent at once: one frame, or a delivery's frames."""
    return [_message(value, vsn) for value in split_frames(sent)]


def _message(value: Any, vsn: str) -> Message:
    if vsn == VSN_2:
        assert isinstance(value, list)
        assert len(value) == 5
        join_ref, ref, topic, event, payload = value
        return Message(topic, event, payload, ref, join_ref)
    assert isinstance(value, dict)
    assert set(value) <= {"topic", "event", "payload", "ref", "join_ref"}
    return Message(
        value["topic"], value["event"], value["payload"], value["ref"], value.get("join_ref")
    )


class SupabaseClient:
    """One Supabase connection as realtime-js drives it."""

    def __init__(self, session: SupabaseSession, transport: AdapterTransport, vsn: str) -> None:
        self.session = session
        self.transport = transport
        self.vsn = vsn
        self._refs = itertools.count(1)
        self.join_refs: dict[str, str] = {}

    def send(self, message: Message) -> None:
        if self.vsn == VSN_2:
            value: Any = [
                message.join_ref,
                message.ref,
                message.topic,
                message.event,
                message.payload,
            ]
        else:
            value = {
                "topic": message.topic,
                "event": message.event,
                "payload": message.payload,
                "ref": message.ref,
                "join_ref": message.join_ref,
            }
        self.session.receive_text(json.dumps(value).encode())

    def push(self, topic: str, event: str, payload: Any) -> str:
        ref = str(next(self._refs))
        self.send(Message(topic, event, payload, ref, self.join_refs.get(topic)))
        return ref

    def join(
        self,
        topic: str,
        bindings: list[Any] | None = None,
        *,
        broadcast: dict[str, Any] | None = None,
        presence: dict[str, Any] | None = None,
        access_token: str | None = None,
    ) -> str:
        config = {
            "broadcast": {"ack": False, "self": False} if broadcast is None else broadcast,
            "presence": {"key": ""} if presence is None else presence,
            "postgres_changes": [] if bindings is None else bindings,
            "private": False,
        }
        payload: dict[str, Any] = {"config": config}
        if access_token is not None:
            payload["access_token"] = access_token
        ref = str(next(self._refs))
        self.join_refs[topic] = ref
        self.send(Message(topic, "phx_join", payload, ref, ref))
        return ref

    @property
    def messages(self) -> list[Message]:
        return [m for sent in self.transport.sent for m in decode_server(sent, self.vsn)]

    def on(self, topic: str) -> list[Message]:
        return [m for m in self.messages if m.topic == topic]

    def events(self, topic: str | None = None) -> list[str]:
        return [m.event for m in self.messages if topic is None or m.topic == topic]

    def reply(self, ref: str) -> Message | None:
        replies = [m for m in self.messages if m.event == "phx_reply" and m.ref == ref]
        assert len(replies) <= 1, f"{len(replies)} replies to {ref}"
        return replies[0] if replies else None

    async def wait_reply(self, ref: str) -> Message:
        await eventually(lambda: self.reply(ref) is not None)
        reply = self.reply(ref)
        assert reply is not None
        return reply

    def clear(self) -> None:
        self.transport.sent.clear()


class FakePublishedTables:
    """Published tables by (schema, name); a filter is refused if it holds ``refused``."""

    def __init__(self, *tables: PublishedTable, refused: str = "nope") -> None:
        self.tables = {(table.schema, table.name): table for table in tables}
        self.checks = HeldChecks()
        self.refused = refused
        self.lookups = 0
        self.roles: dict[str, dict[str, frozenset[str]]] = {}
        """Roles that exist -> the columns they may select, by table_id (default: all)."""

    async def lookup(self, schema: str, name: str) -> PublishedTable | None:
        self.lookups += 1
        return self.tables.get((schema, name))

    async def lookup_id(self, table_id: str) -> PublishedTable | None:
        schema, _, name = table_id.partition(".")
        return await self.lookup(schema, name)

    async def listed(self, schema: str | None) -> list[PublishedTable]:
        return [t for t in self.tables.values() if schema in (None, t.schema)]

    async def selectable(self, table: PublishedTable, role: str) -> frozenset[str] | None:
        if role not in self.roles:
            return None
        return self.roles[role].get(table.table_id, frozenset(c.name for c in table.columns))

    async def validate(self, table: PublishedTable, filter: str) -> None:
        if self.refused in filter:
            raise FilterError(f"filter {filter!r} on {table.table_id}: refused")


MESSAGES = PublishedTable(
    "public",
    "messages",
    (Column("id", "bigint", "int8"), Column("room_id", "bigint", "int8")),
    ("id",),
)
"""A published table for session tests."""


class SupabaseWorld:
    """What the Supabase sessions of one server process share."""

    def __init__(self) -> None:
        self.hub = Hub()
        self.joiner = FakeJoiner()
        self.broadcasts = Broadcasts()
        self.presences = Presences()
        self.store = FakeStore()
        self.published = FakePublishedTables(MESSAGES)
        self.sessions: list[SupabaseSession] = []

    def connect(
        self,
        vsn: str = VSN_2,
        *,
        authorizer: Authorizer | None = None,
        verifier: FakeVerifier | None = None,
        apikey: str | None = None,
        publishable_keys: Mapping[str, str] | None = None,
        authorizer_decides_published: bool = False,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
        **limits: Any,
    ) -> SupabaseClient:
        """A connection; ``limits`` are :class:`Limits` fields, lenient unless given."""
        transport = AdapterTransport()
        options: dict[str, Any] = {
            "max_subscriptions": 10,
            "messages_per_second": 1e9,
            "max_errors": 10**9,
            "auth_timeout": 600.0,
            **limits,
        }
        session = SupabaseSession(
            self.hub,
            self.joiner,
            transport,
            vsn=vsn,
            authorizer=authorizer if authorizer is not None else OpenAuthorizer(),
            verifier=verifier,
            apikey=apikey,
            messaging=Messaging(self.broadcasts, self.presences, self.store),
            limits=Limits(**options),
            publishable_keys=publishable_keys,
            published=self.published,
            authorizer_decides_published=authorizer_decides_published,
            clock=clock,
            wall_clock=wall_clock,
        )
        transport.session = session
        self.sessions.append(session)
        return SupabaseClient(session, transport, vsn)

    async def live(
        self, client: SupabaseClient, topic: str, bindings: list[Any] | None = None, **options: Any
    ) -> Message:
        """Join ``topic``, answer the joins it asks for, and return the ok reply."""
        ref = client.join(topic, bindings, **options)
        await eventually(lambda: client.reply(ref) is not None or self.joiner.pending)
        self.joiner.answer_all()
        reply = await client.wait_reply(ref)
        assert reply.payload["status"] == "ok", reply
        return reply
