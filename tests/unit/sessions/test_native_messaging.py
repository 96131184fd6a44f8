"""Unit tests for broadcaster.sessions.native: broadcast and presence on the native protocol.

A NativeSession with :class:`~broadcaster.sessions.native.Messaging` over a fake
transport, a FakeJoiner (the test answers joins), a FakeStore standing in for
Postgres, and the real Hub, Broadcasts and Presences.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator
from typing import Any

import pytest

from broadcaster.auth.authorization import OpenAuthorizer
from broadcaster.core import broadcasts, presence
from broadcaster.core.broadcasts import Broadcasts
from broadcaster.core.hub import Hub
from broadcaster.core.presence import Presences
from broadcaster.sessions import base
from broadcaster.sessions.base import Limits, Messaging
from broadcaster.sessions.native import NativeSession
from tests.support.sessions import (
    DATABASE_FAILURES,
    FakeJoiner,
    FakeStore,
    FakeTransport,
    messages,
    send,
)
from tests.support.timeouts import eventually

NOT_SUBSCRIBED = {
    "type": "error",
    "code": "not_subscribed",
    "message": "subscribe to the table (and wait for synced) first",
}


class World:
    def __init__(self) -> None:
        self.hub = Hub()
        self.joiner = FakeJoiner()
        self.broadcasts = Broadcasts()
        self.presences = Presences()
        self.store = FakeStore()
        self.sessions: list[NativeSession] = []

    def connect(self, *, messaging: bool = True) -> Client:
        transport = FakeTransport()
        session = NativeSession(
            self.hub,
            self.joiner,
            transport,
            authorizer=OpenAuthorizer(),
            limits=Limits(
                max_subscriptions=10,
                messages_per_second=1e9,
                max_errors=10**9,
            ),
            messaging=Messaging(self.broadcasts, self.presences, self.store) if messaging else None,
        )
        self.sessions.append(session)
        return Client(self, session, transport)


class Client:
    def __init__(self, world: World, session: NativeSession, transport: FakeTransport) -> None:
        self.world = world
        self.session = session
        self.transport = transport

    @property
    def origin(self) -> str:
        return self.world.broadcasts.origin(self.session)

    def ref(self, table_id: str) -> str:
        """The presence ref this connection tracks ``table_id`` under."""
        return f"{self.origin}:native:{table_id}"

    def send(self, message: dict[str, Any]) -> None:
        send(self.session, message)

    @property
    def messages(self) -> list[Any]:
        return messages(self.transport)

    def types(self) -> list[str]:
        return [m["type"] for m in self.messages]

    def clear(self) -> None:
        self.transport.sent.clear()

    def subscribe(self, table_id: str, ref: Any = None, **options: Any) -> None:
        """Subscribe without answering the join."""
        self.send({"type": "subscribe", "ref": ref, "table_id": table_id, **options})

    def synced(self, table_id: str, ref: Any = None, **options: Any) -> None:
        """Subscribe and answer the join: the table is then live."""
        self.subscribe(table_id, ref, **options)
        [join] = [j for j in self.world.joiner.pending if j.table_id == table_id]
        self.world.joiner.answer(join)
        self.world.joiner.joins.remove(join)
        assert self.session.tables[table_id] is None

    async def wait_for(self, kind: str, ref: Any = None) -> dict[str, Any]:
        def found() -> list[dict[str, Any]]:
            return [
                m for m in self.messages if m["type"] == kind and (ref is None or m["ref"] == ref)
            ]

        await eventually(found)
        [message] = found()
        return message


@pytest.fixture
async def world() -> AsyncIterator[World]:
    world = World()
    yield world
    for session in world.sessions:
        session.close()
    await eventually(lambda: not base._UNTRACKING)


def broadcast(table_id: str = "t1", ref: Any = 4, **extra: Any) -> dict[str, Any]:
    return {
        "type": "broadcast",
        "ref": ref,
        "table_id": table_id,
        "event": "cursor",
        "payload": {"x": 10},
        **extra,
    }


def track(table_id: str = "t1", ref: Any = 5, **extra: Any) -> dict[str, Any]:
    return {"type": "track", "ref": ref, "table_id": table_id, "meta": {"name": "Ada"}, **extra}


def untrack(table_id: str = "t1", ref: Any = 6) -> dict[str, Any]:
    return {"type": "untrack", "ref": ref, "table_id": table_id}


REQUESTS = [broadcast(), track(), untrack()]


def store_calls(store: FakeStore) -> int:
    return len(store.sent) + len(store.tracks) + len(store.untracks)


# Not subscribed


@pytest.mark.parametrize("request_", REQUESTS, ids=lambda r: r["type"])
async def test_before_subscribing_is_not_subscribed(world: World, request_: dict[str, Any]) -> None:
    client = world.connect()
    client.send(request_)
    assert client.messages == [{**NOT_SUBSCRIBED, "ref": request_["ref"]}]
    assert store_calls(world.store) == 0


@pytest.mark.parametrize("request_", REQUESTS, ids=lambda r: r["type"])
async def test_before_synced_is_not_subscribed(world: World, request_: dict[str, Any]) -> None:
    client = world.connect()
    client.subscribe("t1", ref=1)
    assert world.joiner.pending
    client.send(request_)
    assert client.messages == [{**NOT_SUBSCRIBED, "ref": request_["ref"]}]
    assert store_calls(world.store) == 0


@pytest.mark.parametrize("request_", REQUESTS, ids=lambda r: r["type"])
async def test_another_table_is_not_subscribed(world: World, request_: dict[str, Any]) -> None:
    client = world.connect()
    client.synced("t2")
    client.clear()
    client.send(request_)
    assert client.messages == [{**NOT_SUBSCRIBED, "ref": request_["ref"]}]
    assert store_calls(world.store) == 0


@pytest.mark.parametrize("request_", REQUESTS, ids=lambda r: r["type"])
async def test_after_unsubscribing_is_not_subscribed(
    world: World, request_: dict[str, Any]
) -> None:
    client = world.connect()
    client.synced("t1")
    client.send({"type": "unsubscribe", "ref": 2, "table_id": "t1"})
    client.clear()
    client.send(request_)
    assert client.messages == [{**NOT_SUBSCRIBED, "ref": request_["ref"]}]
    assert store_calls(world.store) == 0


@pytest.mark.parametrize("request_", REQUESTS, ids=lambda r: r["type"])
async def test_without_messaging_is_not_subscribed(world: World, request_: dict[str, Any]) -> None:
    client = world.connect(messaging=False)
    client.synced("t1")
    client.clear()
    client.send(request_)
    assert client.messages == [{**NOT_SUBSCRIBED, "ref": request_["ref"]}]


# Broadcast


async def test_broadcast_goes_through_the_store_and_is_answered_sent(world: World) -> None:
    client = world.connect()
    client.synced("t1")
    client.clear()
    client.send(broadcast())
    reply = await client.wait_for("sent")
    assert reply == {"type": "sent", "ref": 4, "table_id": "t1"}
    assert world.store.sent == [broadcasts.encode("native:t1", "cursor", {"x": 10}, client.origin)]


async def test_broadcast_with_self_carries_an_origin_nobody_has(world: World) -> None:
    client = world.connect()
    client.synced("t1")
    client.send(broadcast(self=True))
    await client.wait_for("sent")
    [sent] = world.store.sent
    assert json.loads(sent)["origin"] == ""


async def test_broadcast_over_the_notify_limit_is_too_large(world: World) -> None:
    client = world.connect()
    client.synced("t1")
    client.clear()
    payload = "x" * broadcasts.MAX_PAYLOAD_BYTES
    client.send({**broadcast(), "payload": payload})
    [error] = client.messages
    assert error["type"] == "error"
    assert error["code"] == "too_large"
    assert error["ref"] == 4
    assert world.store.sent == []


async def test_broadcast_reaches_other_subscribers_not_the_sender(world: World) -> None:
    world.store.loopback = world.broadcasts
    sender, receiver, elsewhere = world.connect(), world.connect(), world.connect()
    sender.synced("t1")
    receiver.synced("t1")
    elsewhere.synced("t2")
    for client in (sender, receiver, elsewhere):
        client.clear()

    sender.send(broadcast())
    await sender.wait_for("sent")
    assert receiver.messages == [
        {"type": "broadcast", "table_id": "t1", "event": "cursor", "payload": {"x": 10}}
    ]
    assert sender.messages == [{"type": "sent", "ref": 4, "table_id": "t1"}]
    assert elsewhere.messages == []


async def test_broadcast_with_self_echoes_to_the_sender(world: World) -> None:
    world.store.loopback = world.broadcasts
    sender, receiver = world.connect(), world.connect()
    sender.synced("t1")
    receiver.synced("t1")
    sender.clear()
    receiver.clear()

    sender.send(broadcast(self=True))
    await sender.wait_for("sent")
    echoed = {"type": "broadcast", "table_id": "t1", "event": "cursor", "payload": {"x": 10}}
    assert sender.messages == [echoed, {"type": "sent", "ref": 4, "table_id": "t1"}]
    assert receiver.messages == [echoed]


async def test_after_unsubscribing_broadcasts_stop(world: World) -> None:
    client = world.connect()
    client.synced("t1")
    client.send({"type": "unsubscribe", "ref": 2, "table_id": "t1"})
    client.clear()
    world.broadcasts.notified(broadcasts.encode("native:t1", "e", 1, "someone"))
    assert client.messages == []


async def test_broadcasts_are_heard_only_once_synced(world: World) -> None:
    client = world.connect()
    client.subscribe("t1")
    world.broadcasts.notified(broadcasts.encode("native:t1", "e", 1, "someone"))
    assert client.messages == []


# Presence: track and untrack


async def test_track_stores_under_the_topic_with_the_key(world: World) -> None:
    client = world.connect()
    client.synced("t1")
    client.clear()
    client.send(track(key="ada"))
    reply = await client.wait_for("tracked")
    assert reply == {"type": "tracked", "ref": 5, "table_id": "t1"}
    assert world.store.tracks == [
        ("native:t1", "ada", client.ref("t1"), world.broadcasts.process, {"name": "Ada"})
    ]


async def test_track_without_a_key_uses_the_connection(world: World) -> None:
    client = world.connect()
    client.synced("t1")
    client.send({"type": "track", "ref": 5, "table_id": "t1"})
    await client.wait_for("tracked")
    [(topic, key, ref, _, meta)] = world.store.tracks
    assert (topic, key, ref, meta) == ("native:t1", client.origin, client.ref("t1"), {})


async def test_track_over_the_notify_limit_is_too_large(world: World) -> None:
    client = world.connect()
    client.synced("t1")
    client.clear()
    client.send(track(meta={"blob": "x" * presence.MAX_META_BYTES}))
    [error] = client.messages
    assert (error["type"], error["code"], error["ref"]) == ("error", "too_large", 5)
    assert world.store.tracks == []


async def test_untrack_removes_the_presence(world: World) -> None:
    client = world.connect()
    client.synced("t1")
    client.send(track())
    await client.wait_for("tracked")
    client.send(untrack())
    reply = await client.wait_for("untracked")
    assert reply == {"type": "untracked", "ref": 6, "table_id": "t1"}
    assert world.store.untracks == [[client.ref("t1")]]
    # No longer tracked: unsubscribing removes nothing more.
    client.send({"type": "unsubscribe", "ref": 7, "table_id": "t1"})
    await asyncio.sleep(0)
    assert world.store.untracks == [[client.ref("t1")]]


async def test_unsubscribe_untracks(world: World) -> None:
    client = world.connect()
    client.synced("t1")
    client.synced("t2")
    client.send(track())
    await client.wait_for("tracked")
    client.send({"type": "unsubscribe", "ref": 7, "table_id": "t1"})
    await eventually(lambda: world.store.untracks == [[client.ref("t1")]])


async def test_close_untracks(world: World) -> None:
    client = world.connect()
    client.synced("t1")
    client.synced("t2")
    client.send(track())
    await client.wait_for("tracked")
    client.session.close()
    await eventually(lambda: world.store.untracks == [[client.ref("t1")]])


async def test_unsubscribe_without_track_untracks_nothing(world: World) -> None:
    client = world.connect()
    client.synced("t1")
    client.send({"type": "unsubscribe", "ref": 7, "table_id": "t1"})
    client.session.close()
    await asyncio.sleep(0)
    assert world.store.untracks == []


# Database errors


@pytest.mark.parametrize("failure", DATABASE_FAILURES, ids=type)
@pytest.mark.parametrize(
    ("request_", "method"),
    [(broadcast(), "broadcast"), (track(), "track"), (untrack(), "untrack")],
    ids=["broadcast", "track", "untrack"],
)
async def test_a_database_error_is_unavailable(
    world: World,
    request_: dict[str, Any],
    method: str,
    failure: BaseException,
    caplog: pytest.LogCaptureFixture,
) -> None:
    world.store.failures[method] = failure
    client = world.connect()
    client.synced("t1")
    client.clear()
    with caplog.at_level(logging.WARNING, logger="broadcaster.sessions.native"):
        client.send(request_)
        error = await client.wait_for("error")
    assert error == {
        "type": "error",
        "code": "unavailable",
        "message": "the database could not be reached",
        "ref": request_["ref"],
    }
    assert any(
        r.levelno == logging.WARNING
        for r in caplog.records
        if r.name == "broadcaster.sessions.native"
    )
    # The connection carries on.
    world.store.failures.clear()
    client.clear()
    client.send({"type": "ping", "ref": 99})
    await client.wait_for("pong")


# Presence: state and diffs


async def test_presence_option_sends_the_state_after_synced(world: World) -> None:
    world.store.states["native:t1"] = [("ada", "r1", {"name": "Ada"}), ("ada", "r2", {})]
    client = world.connect()
    client.subscribe("t1", ref=1, presence=True)
    await asyncio.sleep(0)
    assert world.store.state_reads == []
    [join] = world.joiner.pending
    world.joiner.answer(join)
    state = await client.wait_for("presence_state")
    assert client.types() == ["subscribed", "synced", "presence_state"]
    assert state == {
        "type": "presence_state",
        "table_id": "t1",
        "presences": {"ada": {"metas": [{"name": "Ada", "phx_ref": "r1"}, {"phx_ref": "r2"}]}},
    }
    assert world.store.state_reads == ["native:t1"]


async def test_presence_diffs_are_forwarded(world: World) -> None:
    client = world.connect()
    client.synced("t1", presence=True)
    await client.wait_for("presence_state")
    client.clear()
    world.presences.notified(
        presence.diff("native:t1", [("bob", "r3", {"n": 1})], [("ada", "r1", {})])
    )
    assert client.messages == [
        {
            "type": "presence_diff",
            "table_id": "t1",
            "joins": {"bob": {"metas": [{"n": 1, "phx_ref": "r3"}]}},
            "leaves": {"ada": {"metas": [{"phx_ref": "r1"}]}},
        }
    ]
    world.presences.notified(presence.diff("native:t2", [("x", "r", {})], []))
    world.presences.notified(presence.diff("realtime:t1", [("x", "r", {})], []))
    assert len(client.messages) == 1


async def test_without_the_presence_option_no_state_and_no_diffs(world: World) -> None:
    client = world.connect()
    client.synced("t1")
    client.clear()
    world.presences.notified(presence.diff("native:t1", [("bob", "r3", {})], []))
    await asyncio.sleep(0)
    assert client.messages == []
    assert world.store.state_reads == []


async def test_after_unsubscribing_diffs_stop(world: World) -> None:
    client = world.connect()
    client.synced("t1", presence=True)
    await client.wait_for("presence_state")
    client.send({"type": "unsubscribe", "ref": 2, "table_id": "t1"})
    client.clear()
    world.presences.notified(presence.diff("native:t1", [("bob", "r3", {})], []))
    assert client.messages == []


@pytest.mark.parametrize("failure", DATABASE_FAILURES, ids=type)
async def test_presence_state_the_database_refuses_is_skipped(
    world: World, failure: BaseException, caplog: pytest.LogCaptureFixture
) -> None:
    world.store.failures["presence_state"] = failure
    client = world.connect()
    with caplog.at_level(logging.WARNING, logger="broadcaster.sessions.native"):
        client.synced("t1", presence=True)
        await eventually(lambda: world.store.state_reads)
        await asyncio.sleep(0)
    assert client.types() == ["subscribed", "synced"]
    assert any("presence state failed" in r.getMessage() for r in caplog.records)


async def test_presence_state_is_dropped_if_unsubscribed_meanwhile(world: World) -> None:
    gate = asyncio.Event()

    class Slow(FakeStore):
        async def presence_state(self, topic: str) -> list[tuple[str, str, Any]]:
            self.state_reads.append(topic)
            await gate.wait()
            return [("ada", "r1", {})]

    world.store = Slow()
    client = world.connect()
    client.synced("t1", presence=True)
    await eventually(lambda: world.store.state_reads)
    client.send({"type": "unsubscribe", "ref": 2, "table_id": "t1"})
    gate.set()
    await eventually(lambda: not client.session._tasks)
    assert "presence_state" not in client.types()
