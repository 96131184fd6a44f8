"""broadcaster.sessions.supabase: token expiry, the auth timeout and the limits of a session.

They mirror tests/unit/sessions/test_native_access.py on Supabase's protocol,
with the texts Supabase's own server sends. A fake verifier stands in for the
JWT one (optionally holding each verification), fake clocks drive the rate
limit, the error budget and the expiry arithmetic, and the real event loop
runs the auth and expiry timers, kept short. The transport closes the session
when asked to close, as the WebSocket adapter does.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import warnings
from collections.abc import AsyncIterator
from typing import Any

import pytest

from broadcaster.auth.authorization import ClaimAuthorizer, OpenAuthorizer
from broadcaster.core import broadcasts, presence
from broadcaster.exceptions import AuthenticationError
from broadcaster.protocols import native, supabase
from broadcaster.protocols.phoenix import Message
from broadcaster.sessions import base
from tests.support.clocks import FakeClock
from tests.support.phoenix import push_frame
from tests.support.sessions import (
    CLAIM,
    FakeVerifier,
    SupabaseClient,
    SupabaseWorld,
    batch,
    binding,
    change,
    identity,
)
from tests.support.timeouts import eventually, seconds

TOPIC = "realtime:room"
OTHER = "realtime:other"
# Unix time the fake wall clock shows: tokens expire relative to it.
WALL = 1_700_000_000.0
SHORT = seconds(0.05)
# Long enough for a join to go live first, however loaded the machine.
SECOND = seconds(1)


async def settle() -> None:
    """Let every ready task and callback run (bounded: no waiting on a clock)."""
    for _ in range(20):
        await asyncio.sleep(0)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(1_000.0)


@pytest.fixture
def wall() -> FakeClock:
    return FakeClock(WALL)


@pytest.fixture
def verifier() -> FakeVerifier:
    return FakeVerifier(
        {
            "token-hour": identity(("a", "b"), WALL + 3_600),
            "token-two-hours": identity(("a", "b"), WALL + 7_200),
            "token-soon": identity(("a", "b"), WALL + SHORT),
            "token-second": identity(("a", "b"), WALL + SECOND),
            "token-no-exp": identity(("a", "b"), None),
            # Accepted although past its exp, as a verifier's leeway allows.
            "token-past": identity(("a", "b"), WALL - 3),
            "token-bad": AuthenticationError(native.UNAUTHORIZED, "the signature is invalid"),
        }
    )


class World(SupabaseWorld):
    """Connections on the fake clocks, asking the claim authorizer."""

    def __init__(self, clock: FakeClock, wall: FakeClock, verifier: FakeVerifier) -> None:
        super().__init__()
        self.clock = clock
        self.wall = wall
        self.verifier = verifier

    def client(self, **options: Any) -> SupabaseClient:
        settings: dict[str, Any] = {
            "verifier": self.verifier,
            "authorizer": ClaimAuthorizer(CLAIM),
            "clock": self.clock,
            "wall_clock": self.wall,
            **options,
        }
        return self.connect(**settings)


@pytest.fixture
async def world(clock: FakeClock, wall: FakeClock, verifier: FakeVerifier) -> AsyncIterator[World]:
    world = World(clock, wall, verifier)
    yield world
    for session in world.sessions:
        session.close()
    await settle()
    await eventually(lambda: not base._UNTRACKING)


def expired(topic: str, seconds_ago: int = 0) -> Message:
    """Supabase's word to a channel whose token expired."""
    return supabase.system(topic, "error", f"Token has expired {seconds_ago} seconds ago", "system")


def phx_close(client: SupabaseClient, topic: str) -> Message:
    return Message(topic, "phx_close", {}, client.join_refs[topic], client.join_refs[topic])


def error_reply(ref: str, reason: str, client: SupabaseClient, topic: str = TOPIC) -> Message:
    return Message(
        topic,
        "phx_reply",
        {"status": "error", "response": {"reason": reason}},
        ref,
        client.join_refs.get(topic),
    )


def heartbeat(client: SupabaseClient) -> str:
    return client.push("phoenix", "heartbeat", {})


def broadcast_payload() -> dict[str, Any]:
    return {"type": "broadcast", "event": "cursor", "payload": {"x": 1}}


# Token expiry


async def test_an_expired_token_ends_its_channel_as_supabase_does(
    world: World, caplog: pytest.LogCaptureFixture
) -> None:
    client = world.client()
    await world.live(client, TOPIC, [binding("table_id=eq.a")], access_token="token-second")
    await eventually(lambda: "presence_state" in client.events())
    client.clear()

    with caplog.at_level(logging.INFO, logger="broadcaster.sessions.supabase"):
        await eventually(lambda: "phx_close" in client.events())

    assert client.messages == [expired(TOPIC), phx_close(client, TOPIC)]
    assert not world.hub.is_subscribed("a")
    assert client.session.tables == {}
    # The channel ends, not the connection.
    assert client.transport.closes == []
    assert not client.session.closed
    [record] = [r for r in caplog.records if r.name == "broadcaster.sessions.supabase"]
    assert "expired" in record.getMessage()
    assert TOPIC in record.getMessage()


async def test_only_the_channel_of_the_expired_token_ends(world: World) -> None:
    client = world.client()
    await world.live(client, TOPIC, [binding("table_id=eq.a")], access_token="token-second")
    await world.live(client, OTHER, [binding("table_id=eq.b")], access_token="token-hour")

    await eventually(lambda: "phx_close" in client.events(TOPIC))
    client.clear()
    world.hub.publish(batch("b", change("INSERT", "b", "r1", 1)))

    assert [(m.topic, m.event) for m in client.messages] == [(OTHER, "postgres_changes")]
    assert "phx_close" not in client.events(OTHER)
    assert world.hub.is_subscribed("b")


async def test_nothing_is_delivered_past_expiry_even_before_the_timer_runs(
    world: World, wall: FakeClock
) -> None:
    client = world.client()
    await world.live(client, TOPIC, [binding("table_id=eq.a")], access_token="token-hour")
    await eventually(lambda: "presence_state" in client.events())
    client.clear()

    wall.advance(3_600)  # the timer is an hour away on the loop's clock
    world.hub.publish(batch("a", change("INSERT", "a", "r1", 1)))

    assert client.messages == [expired(TOPIC), phx_close(client, TOPIC)]
    assert not world.hub.is_subscribed("a")


@pytest.mark.parametrize("what", ["broadcast", "presence"])
async def test_no_broadcast_or_presence_is_delivered_past_expiry(
    world: World, wall: FakeClock, what: str
) -> None:
    client = world.client()
    await world.live(client, TOPIC, access_token="token-hour")
    await eventually(lambda: "presence_state" in client.events())
    client.clear()

    wall.advance(3_601)
    if what == "broadcast":
        world.broadcasts.notified(broadcasts.encode(TOPIC, "cursor", broadcast_payload(), "x:1"))
    else:
        world.presences.notified(presence.diff(TOPIC, [("ada", "r1", {})], []))

    assert client.messages == [expired(TOPIC, 1), phx_close(client, TOPIC)]


@pytest.mark.parametrize("fresh", ["token-two-hours", "token-no-exp"])
async def test_an_access_token_before_expiry_moves_the_deadline(
    world: World, wall: FakeClock, fresh: str
) -> None:
    client = world.client()
    await world.live(client, TOPIC, [binding("table_id=eq.a")], access_token="token-hour")
    client.push(TOPIC, "access_token", {"access_token": fresh})
    await eventually(lambda: client.session.identity is world.verifier.outcomes[fresh])
    await eventually(lambda: "presence_state" in client.events())
    client.clear()

    wall.advance(3_700)
    world.hub.publish(batch("a", change("INSERT", "a", "r1", 1)))

    assert client.events() == ["postgres_changes"]


async def test_an_access_token_expiring_sooner_ends_the_channel_sooner(world: World) -> None:
    client = world.client()
    await world.live(client, TOPIC, [binding("table_id=eq.a")], access_token="token-no-exp")
    client.push(TOPIC, "access_token", {"access_token": "token-soon"})

    await eventually(lambda: "phx_close" in client.events())

    assert client.messages[-2:] == [expired(TOPIC), phx_close(client, TOPIC)]


@pytest.mark.parametrize("apikey", ["token-no-exp", "sb_publishable_abc"])
async def test_a_token_without_an_expiry_never_ends_the_channel(
    world: World, wall: FakeClock, apikey: str
) -> None:
    client = world.client(apikey=apikey, publishable_keys={"sb_publishable_abc": "anon"})
    await world.live(client, TOPIC)
    await eventually(lambda: "presence_state" in client.events())
    client.clear()

    wall.advance(10**9)
    world.broadcasts.notified(broadcasts.encode(TOPIC, "cursor", broadcast_payload(), "x:1"))

    assert client.events() == ["broadcast"]


async def test_a_token_already_past_its_expiry_ends_the_channel_before_it_is_live(
    world: World,
) -> None:
    client = world.client()
    ref = client.join(TOPIC, [binding("table_id=eq.a")], access_token="token-past")
    await eventually(lambda: "phx_close" in client.events())

    assert client.messages == [expired(TOPIC, 3), phx_close(client, TOPIC)]
    [join] = world.joiner.joins
    assert world.joiner.cancels == [join]
    world.joiner.answer(join)
    assert client.reply(ref) is None
    assert not world.hub.is_subscribed("a")


async def test_leaving_a_channel_or_closing_stops_its_expiry(world: World) -> None:
    client = world.client()
    await world.live(client, TOPIC, access_token="token-second")
    await world.live(client, OTHER, access_token="token-second")
    client.push(TOPIC, "phx_leave", {})
    client.session.close()
    client.clear()

    await asyncio.sleep(1.5 * SECOND)

    assert client.messages == []


async def test_rejoining_with_a_fresh_token_replaces_the_deadline(world: World) -> None:
    client = world.client()
    await world.live(client, TOPIC, access_token="token-second")
    await world.live(client, TOPIC, access_token="token-hour")
    client.clear()

    await asyncio.sleep(1.5 * SECOND)

    assert "phx_close" not in client.events()


# The auth timeout


async def test_no_join_with_an_accepted_token_within_the_timeout_closes_with_4001(
    world: World,
) -> None:
    client = world.client(auth_timeout=SHORT)
    ref = heartbeat(client)  # a heartbeat is not a token

    await eventually(lambda: client.transport.closes)

    assert [m.ref for m in client.messages] == [ref]
    assert client.transport.closes == [(native.CLOSE_UNAUTHORIZED, "authentication timeout")]
    assert client.session.closed


async def test_a_refused_token_does_not_stop_the_auth_timeout(world: World) -> None:
    client = world.client(auth_timeout=SHORT)
    ref = client.join(TOPIC, access_token="token-bad")

    await eventually(lambda: client.transport.closes)

    assert client.reply(ref) is not None
    assert client.transport.closes == [(native.CLOSE_UNAUTHORIZED, "authentication timeout")]


@pytest.mark.parametrize(("token", "apikey"), [("token-hour", None), (None, "sb_publishable_abc")])
async def test_an_accepted_token_stops_the_auth_timeout_even_if_the_join_is_forbidden(
    world: World, token: str | None, apikey: str | None
) -> None:
    client = world.client(
        auth_timeout=SHORT, apikey=apikey, publishable_keys={"sb_publishable_abc": "anon"}
    )
    ref = client.join(TOPIC, [binding("table_id=eq.c")], access_token=token)
    reply = await client.wait_reply(ref)
    assert reply.payload["response"]["reason"].startswith("forbidden")

    await asyncio.sleep(4 * SHORT)

    assert client.transport.closes == []
    assert client.session.authenticated


async def test_no_auth_timeout_without_a_verifier(world: World) -> None:
    client = world.client(verifier=None, authorizer=OpenAuthorizer(), auth_timeout=SHORT)

    await asyncio.sleep(4 * SHORT)

    assert client.transport.closes == []
    assert client.session.authenticated


async def test_the_auth_timeout_fires_while_a_verification_is_still_pending(
    world: World,
) -> None:
    gate = world.verifier.hold()
    client = world.client(auth_timeout=SHORT)
    client.join(TOPIC, access_token="token-hour")

    await eventually(lambda: client.transport.closes)
    gate.set()
    await settle()

    assert client.transport.closes == [(native.CLOSE_UNAUTHORIZED, "authentication timeout")]
    assert world.verifier.cancelled == 1
    assert client.messages == []


# The rate limit
#
# The burst is twice the rate or a full rejoin (max_subscriptions + 2
# messages), whichever is more.


async def test_a_burst_over_twice_the_rate_gets_supabases_answer(world: World) -> None:
    client = world.client(verifier=None, messages_per_second=5, max_subscriptions=3)

    refs = [heartbeat(client) for _ in range(10)]
    over = heartbeat(client)
    join = client.join(TOPIC)
    await settle()

    assert [m.payload["status"] for m in client.messages[:10]] == ["ok"] * 10
    assert [m.ref for m in client.messages[:10]] == refs
    assert client.messages[10:] == [
        error_reply(over, supabase.TOO_MANY_MESSAGES, client, "phoenix"),
        error_reply(join, supabase.TOO_MANY_JOINS, client),
    ]
    assert supabase.TOO_MANY_MESSAGES == "Too many messages per second"
    assert world.joiner.joins == []
    assert client.transport.closes == []


async def test_the_rate_limit_refills_with_the_clock(world: World, clock: FakeClock) -> None:
    client = world.client(verifier=None, messages_per_second=5, max_subscriptions=3)

    def statuses(count: int) -> list[str]:
        before = len(client.messages)
        for _ in range(count):
            heartbeat(client)
        return [m.payload["status"] for m in client.messages[before:]]

    assert statuses(11) == ["ok"] * 10 + ["error"]
    clock.advance(0.1)  # half a message
    assert statuses(1) == ["error"]
    clock.advance(0.1)
    assert statuses(2) == ["ok", "error"]
    clock.advance(3_600)  # never more than the burst
    assert statuses(11) == ["ok"] * 10 + ["error"]


async def test_the_burst_allows_rejoining_every_channel(world: World) -> None:
    channels = 20
    client = world.client(verifier=None, messages_per_second=1, max_subscriptions=channels)

    for number in range(channels):
        client.join(f"realtime:c{number}")
    heartbeat(client)
    last = heartbeat(client)  # max_subscriptions + 2
    over = heartbeat(client)
    await eventually(lambda: client.reply(last) is not None)

    assert client.reply(over) == error_reply(over, supabase.TOO_MANY_MESSAGES, client, "phoenix")
    replies = [m for m in client.messages if m.event == "phx_reply" and m.topic != "phoenix"]
    assert [m.payload["status"] for m in replies] == ["ok"] * channels


async def test_the_rate_limit_applies_before_authentication(world: World) -> None:
    client = world.client(messages_per_second=1, max_subscriptions=1)

    for _ in range(3):
        heartbeat(client)
    ref = client.join(TOPIC, access_token="token-hour")
    await settle()

    assert client.reply(ref) == error_reply(ref, supabase.TOO_MANY_JOINS, client)
    assert world.verifier.calls == []


# The error budget


async def test_more_than_max_errors_closes_with_4003(world: World) -> None:
    client = world.client(verifier=None, max_errors=3)

    for _ in range(3):
        client.push(TOPIC, "shout", {})
    assert client.transport.closes == []
    assert len(client.messages) == 3

    client.push(TOPIC, "shout", {})

    assert client.transport.closes == [(native.CLOSE_TOO_MANY_ERRORS, "too many protocol errors")]
    assert len(client.messages) == 4  # the fourth error is still told
    assert client.session.closed
    heartbeat(client)
    assert len(client.messages) == 4


async def test_every_kind_of_client_error_counts(world: World) -> None:
    client = world.client(verifier=None, max_errors=6, max_message_bytes=400)

    client.session.receive_text(b"not json")
    client.session.receive_binary(push_frame(kind=0))
    client.session.receive_text(b"x" * 401)
    client.push(TOPIC, "shout", {})
    client.send(Message(TOPIC, "phx_join", {"config": {"postgres_changes": {"a": 1}}}, "9", "9"))
    client.join(OTHER, [binding("data=lt.7")])
    await eventually(lambda: len(client.messages) == 5)
    assert client.transport.closes == []

    client.push(TOPIC, "broadcast", broadcast_payload())  # a channel not joined

    await eventually(lambda: client.transport.closes)
    assert client.transport.closes == [(native.CLOSE_TOO_MANY_ERRORS, "too many protocol errors")]


async def test_refusals_that_are_not_the_clients_mistake_do_not_count(world: World) -> None:
    client = world.client(max_errors=2)

    refs = [
        client.join(f"realtime:r{n}", [binding("table_id=eq.c")], access_token="token-hour")
        for n in range(3)
    ]
    refs += [client.join(f"realtime:t{n}", access_token="token-bad") for n in range(3)]
    await eventually(lambda: all(client.reply(ref) is not None for ref in refs))

    assert client.transport.closes == []


async def test_the_error_window_resets_after_60_seconds(world: World, clock: FakeClock) -> None:
    client = world.client(verifier=None, max_errors=3)
    for _ in range(3):
        client.session.receive_text(b"not json")

    clock.advance(60.5)
    for _ in range(3):
        client.session.receive_text(b"not json")
    assert client.transport.closes == []

    clock.advance(59.0)
    client.session.receive_text(b"not json")
    assert [code for code, _ in client.transport.closes] == [native.CLOSE_TOO_MANY_ERRORS]


async def test_a_flood_is_rate_limited_then_cut_off(world: World) -> None:
    client = world.client(verifier=None, messages_per_second=5, max_subscriptions=3, max_errors=3)

    for _ in range(100):
        heartbeat(client)

    assert [m.payload["status"] for m in client.messages] == ["ok"] * 10 + ["error"] * 4
    assert [code for code, _ in client.transport.closes] == [native.CLOSE_TOO_MANY_ERRORS]
    assert client.session.closed


# Channels and message size


async def test_more_channels_than_max_subscriptions_are_refused(world: World) -> None:
    client = world.client(verifier=None, max_subscriptions=2)
    await world.live(client, TOPIC)
    await world.live(client, OTHER)

    ref = client.join("realtime:third")
    reply = await client.wait_reply(ref)
    assert reply.payload == {
        "status": "error",
        "response": {"reason": "ChannelRateLimitReached: Too many channels"},
    }

    # Joining a channel again replaces it: it is not one more.
    await world.live(client, OTHER)


async def test_a_binary_message_over_the_limit_is_refused(world: World) -> None:
    client = world.client(verifier=None, max_message_bytes=300)
    await world.live(client, TOPIC, broadcast={"ack": True, "self": False})
    client.clear()

    frame = push_frame(topic=TOPIC, join_ref=client.join_refs[TOPIC], ref="5", body=b"x" * 300)
    client.session.receive_binary(frame)
    await settle()

    [message] = client.messages
    assert message.event == "system"
    assert message.payload["status"] == "error"
    assert "300 bytes" in message.payload["message"]
    assert world.store.sent == []


# Ordering: messages wait behind one that waits


async def test_messages_behind_a_pending_join_are_handled_after_it_in_order(
    world: World,
) -> None:
    gate = world.verifier.hold()
    client = world.client()
    join = client.join(TOPIC, broadcast={"ack": True, "self": False}, access_token="token-hour")
    await eventually(lambda: world.verifier.waiting == 1)
    beat = heartbeat(client)
    sent = client.push(TOPIC, "broadcast", broadcast_payload())
    left = client.push(TOPIC, "phx_leave", {})
    await settle()
    assert client.messages == []

    gate.set()
    await eventually(lambda: client.reply(left) is not None)

    replies = [m for m in client.messages if m.event == "phx_reply"]
    assert [(m.ref, m.payload["status"]) for m in replies] == [
        (join, "ok"),
        (beat, "ok"),
        (sent, "ok"),
        (left, "ok"),
    ]
    assert len(world.store.sent) == 1


async def test_waiting_messages_queue_instead_of_each_spawning_a_task(world: World) -> None:
    gate = world.verifier.hold()
    client = world.client()
    client.join(TOPIC, access_token="token-hour")
    await eventually(lambda: world.verifier.waiting == 1)
    before = len(asyncio.all_tasks())

    for _ in range(50):
        client.join(OTHER, access_token="token-hour")
        client.push(TOPIC, "access_token", {"access_token": "token-hour"})
        client.push(TOPIC, "broadcast", broadcast_payload())
        client.push(TOPIC, "presence", {"type": "presence", "event": "track", "payload": {}})
    await settle()

    assert len(asyncio.all_tasks()) == before
    assert world.verifier.calls == ["token-hour"]
    gate.set()


async def test_a_long_inbox_pauses_reading_until_it_drains(world: World) -> None:
    high, low = 64, 16  # base._INBOX_HIGH, base._INBOX_LOW
    gate = world.verifier.hold()
    client = world.client()
    client.join(TOPIC, access_token="token-hour")
    await eventually(lambda: world.verifier.waiting == 1)
    transport = client.transport

    beats = [heartbeat(client) for _ in range(high)]
    assert transport.pauses == []
    beats.append(heartbeat(client))  # one past the high-water mark
    assert transport.pauses == [0]
    assert transport.paused
    beats += [heartbeat(client) for _ in range(4)]
    assert transport.pauses == [0]

    gate.set()
    await eventually(lambda: client.reply(beats[-1]) is not None)

    assert not transport.paused
    # Reading resumed once the inbox was down to the low-water mark (the join's
    # reply went first).
    assert transport.resumes == [1 + (high + 5 - low)]
    assert [m.ref for m in client.messages if m.topic == "phoenix"] == beats


async def test_close_during_a_verification_cancels_it_and_sends_nothing(world: World) -> None:
    gate = world.verifier.hold()
    client = world.client()
    client.join(TOPIC, access_token="token-hour")
    await eventually(lambda: world.verifier.waiting == 1)
    heartbeat(client)
    client.push(TOPIC, "broadcast", broadcast_payload())

    client.session.close()
    await settle()
    assert world.verifier.cancelled == 1
    gate.set()
    await settle()

    assert client.messages == []
    assert world.joiner.joins == []
    assert world.store.sent == []


async def test_close_before_the_wait_starts_leaves_nothing_behind(world: World) -> None:
    # The client's join and its close may come in one packet: the task that
    # would have finished the join never runs.
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        client = world.client()
        client.join(TOPIC, access_token="token-hour")
        client.session.close()
        await settle()
        del client
        gc.collect()

    assert world.verifier.calls == []
    assert world.joiner.joins == []
    assert [str(w.message) for w in caught] == []
