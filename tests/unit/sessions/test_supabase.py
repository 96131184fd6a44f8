"""broadcaster.sessions.supabase: one Supabase Realtime connection over a fake transport.

The session runs on the real event loop with a real Hub, Broadcasts and
Presences; a FakeJoiner stands in for the feed (the test answers joins), a
FakeStore for Postgres (broadcast, track, untrack, presence_state), and a
FakeVerifier for the JWT verifier. Client frames are built as realtime-js
builds them, for both ``vsn``.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator
from typing import Any

import pytest

from broadcaster.auth.authorization import ClaimAuthorizer
from broadcaster.auth.identity import Identity
from broadcaster.core import broadcasts as broadcasts_module
from broadcaster.core import presence
from broadcaster.core.changes import Change
from broadcaster.core.checks import RowCheck
from broadcaster.core.published import Column, PublishedTable
from broadcaster.protocols.phoenix import VSN_1, VSN_2, Message
from broadcaster.protocols.supabase import COLUMNS, Binding
from broadcaster.sessions import base
from tests.support.phoenix import push_frame
from tests.support.sessions import (
    CLAIM,
    COMMITTED_AT,
    DATABASE_FAILURES,
    Entry,
    FakeStore,
    FakeVerifier,
    SupabaseWorld,
    batch,
    binding,
    change,
    identity,
    old_row,
    row,
    unframe,
)
from tests.support.timeouts import eventually, within

TOPIC = "realtime:room"
OTHER = "realtime:other"


class RecordingAuthorizer:
    """Allows everything; records whom it was asked about."""

    def __init__(self) -> None:
        self.asked: list[tuple[Identity | None, str]] = []
        self.bindings: list[str | None] = []

    def allowed(self, identity: Identity | None, table_id: str, binding: str | None = None) -> bool:
        self.asked.append((identity, table_id))
        self.bindings.append(binding)
        return True


@pytest.fixture
async def world() -> AsyncIterator[SupabaseWorld]:
    world = SupabaseWorld()
    yield world
    for session in world.sessions:
        session.close()
    # Untracking on close outlives the session: let it finish.
    await eventually(lambda: not base._UNTRACKING)


@pytest.fixture(params=[VSN_1, VSN_2])
def vsn(request: pytest.FixtureRequest) -> str:
    return str(request.param)


# Framing on the wire


async def test_heartbeat_is_answered_ok(world: SupabaseWorld, vsn: str) -> None:
    client = world.connect(vsn)
    client.send(Message("phoenix", "heartbeat", {}, "7"))
    assert client.messages == [
        Message("phoenix", "phx_reply", {"status": "ok", "response": {}}, "7", None)
    ]


async def test_vsn1_frames_carry_join_ref_only_when_set(world: SupabaseWorld) -> None:
    client = world.connect(VSN_1)
    client.send(Message("phoenix", "heartbeat", {}, "7"))
    ref = client.join(TOPIC, [binding("table_id=eq.a")])
    await eventually(lambda: world.joiner.pending)
    world.joiner.answer_all()
    await eventually(lambda: len(client.transport.sent) >= 3)
    heartbeat, reply, system = (json.loads(unframe(f)) for f in client.transport.sent[:3])
    assert heartbeat == {
        "topic": "phoenix",
        "event": "phx_reply",
        "payload": {"status": "ok", "response": {}},
        "ref": "7",
    }
    assert set(reply) == {"topic", "event", "payload", "ref", "join_ref"}
    assert (reply["ref"], reply["join_ref"]) == (ref, ref)
    assert set(system) == {"topic", "event", "payload", "ref"}
    assert system["ref"] is None


async def test_vsn2_frames_are_arrays(world: SupabaseWorld) -> None:
    client = world.connect(VSN_2)
    client.send(Message("phoenix", "heartbeat", {}, "7"))
    assert json.loads(unframe(client.transport.sent[0])) == [
        None,
        "7",
        "phoenix",
        "phx_reply",
        {"status": "ok", "response": {}},
    ]


async def test_unknown_events_are_answered_with_an_error(world: SupabaseWorld, vsn: str) -> None:
    client = world.connect(vsn)
    ref = client.push(TOPIC, "shout", {})
    reply = client.reply(ref)
    assert reply is not None
    assert reply.payload["status"] == "error"
    assert "shout" in reply.payload["response"]["reason"]


@pytest.mark.parametrize("data", [b"not json", b"{}", b"[1, 2]", b'{"topic": 1, "event": "x"}'])
async def test_malformed_text_frames_are_ignored(world: SupabaseWorld, data: bytes) -> None:
    client = world.connect(VSN_2)
    client.session.receive_text(data)
    await asyncio.sleep(0)
    assert client.messages == []


@pytest.mark.parametrize("data", [b"", b"\x01\x00", push_frame(kind=0), push_frame(body=b"{bad")])
async def test_malformed_binary_frames_are_ignored(world: SupabaseWorld, data: bytes) -> None:
    client = world.connect(VSN_2)
    client.session.receive_binary(data)
    await asyncio.sleep(0)
    assert client.messages == []


async def test_a_binary_frame_with_metadata_not_an_object_is_ignored(world: SupabaseWorld) -> None:
    client = world.connect(VSN_2)
    client.session.receive_binary(push_frame(topic=TOPIC, metadata="[1]", body=b"{}"))
    await asyncio.sleep(0)
    assert client.messages == []


async def test_a_message_over_the_limit_is_refused_with_a_system_error(
    world: SupabaseWorld,
) -> None:
    client = world.connect(VSN_2, max_message_bytes=200)
    client.push(TOPIC, "broadcast", {"type": "broadcast", "event": "e", "payload": "x" * 300})
    [message] = client.messages
    assert message.event == "system"
    assert message.payload["status"] == "error"
    assert "200 bytes" in message.payload["message"]
    assert world.store.sent == []


# Joining


async def test_join_replies_only_once_every_table_is_live(world: SupabaseWorld, vsn: str) -> None:
    client = world.connect(vsn)
    inserts = binding("table_id=eq.a", "INSERT")
    # No event key: the echo must not add one.
    listed = {"schema": "public", "table": "rows", "filter": 'table_id=in.(b, "c")'}
    ref = client.join(TOPIC, [inserts, listed])
    await eventually(lambda: len(world.joiner.pending) == 3)
    joins = {join.table_id: join for join in world.joiner.pending}
    assert set(joins) == {"a", "b", "c"}
    assert client.messages == []

    world.joiner.answer(joins["a"])
    world.joiner.answer(joins["c"])
    await asyncio.sleep(0)
    assert client.messages == []
    assert world.hub.is_subscribed("a")
    assert world.hub.is_subscribed("c")
    assert not world.hub.is_subscribed("b")

    world.joiner.answer(joins["b"])
    await eventually(lambda: len(client.messages) == 3)
    reply, system, state = client.messages
    assert reply == Message(
        TOPIC,
        "phx_reply",
        {
            "status": "ok",
            "response": {
                "postgres_changes": [
                    {**inserts, "id": Binding.parse(inserts).id},
                    {**listed, "id": Binding.parse(listed).id},
                ]
            },
        },
        ref,
        ref,
    )
    echoed = reply.payload["response"]["postgres_changes"]
    assert [list(entry) for entry in echoed] == [[*inserts, "id"], [*listed, "id"]]
    assert system == Message(
        TOPIC,
        "system",
        {
            "extension": "postgres_changes",
            "status": "ok",
            "message": "Subscribed to PostgreSQL",
            "channel": "room",
        },
    )
    assert state == Message(TOPIC, "presence_state", {})
    assert client.session.tables == {"a": None, "b": None, "c": None}
    assert all(world.hub.is_subscribed(t) for t in "abc")


async def test_a_channel_without_bindings_replies_at_once_without_system_message(
    world: SupabaseWorld,
) -> None:
    client = world.connect()
    ref = client.join(TOPIC)
    reply = await client.wait_reply(ref)
    assert reply.payload == {"status": "ok", "response": {"postgres_changes": []}}
    await eventually(lambda: "presence_state" in client.events())
    assert client.events() == ["phx_reply", "presence_state"]
    assert world.joiner.joins == []


async def test_a_table_another_channel_made_live_replies_at_once(world: SupabaseWorld) -> None:
    client = world.connect()
    await world.live(client, TOPIC, [binding("table_id=eq.a")])
    client.clear()

    ref = client.join(OTHER, [binding("table_id=eq.a", "UPDATE")])
    reply = await client.wait_reply(ref)
    assert reply.payload["status"] == "ok"
    assert world.joiner.joins == []
    assert world.hub.subscribers("a") == 1


async def test_channels_waiting_on_the_same_table_reply_together(world: SupabaseWorld) -> None:
    client = world.connect()
    first = client.join(TOPIC, [binding("table_id=eq.a")])
    await eventually(lambda: len(world.joiner.pending) == 1)
    second = client.join(OTHER, [binding("table_id=in.(a,b)")])
    await eventually(lambda: len(world.joiner.pending) == 2)
    assert sorted((j.table_id for j in world.joiner.pending), key=str) == ["a", "b"]

    [join_a] = [j for j in world.joiner.pending if j.table_id == "a"]
    world.joiner.answer(join_a)
    assert client.reply(first) is not None
    assert client.reply(second) is None

    world.joiner.answer_all()
    assert client.reply(second) is not None


async def test_a_refused_filter_sends_a_system_error_then_an_error_reply(
    world: SupabaseWorld, vsn: str
) -> None:
    client = world.connect(vsn)
    ref = client.join(TOPIC, [binding("table_id=eq.a"), binding("data=lt.7")])
    reply = await client.wait_reply(ref)
    system, answered = client.messages
    assert answered == reply
    assert system.topic == TOPIC
    assert system.event == "system"
    assert system.payload["extension"] == "postgres_changes"
    assert system.payload["status"] == "error"
    assert system.payload["channel"] == "room"
    reason = system.payload["message"]
    assert "uses lt on data (jsonb): use eq, neq, in" in reason
    assert reply.payload == {"status": "error", "response": {"reason": reason}}
    assert (reply.ref, reply.join_ref) == (ref, ref)
    assert world.joiner.joins == []
    assert client.session.tables == {}


class DenyingEveryTable(RecordingAuthorizer):
    def allowed(self, identity: Identity | None, table_id: str, binding: str | None = None) -> bool:
        super().allowed(identity, table_id, binding)
        return table_id != "*"


async def test_a_binding_on_another_column_joins_every_table_and_filters_rows(
    world: SupabaseWorld, vsn: str
) -> None:
    authorizer = RecordingAuthorizer()
    client = world.connect(vsn, authorizer=authorizer)
    reply = await world.live(client, TOPIC, [binding("id=eq.r1", "UPDATE")])

    assert world.hub.is_subscribed(None)
    assert [table_id for _, table_id in authorizer.asked] == ["*"]
    (entry,) = reply.payload["response"]["postgres_changes"]
    client.clear()
    world.hub.publish(batch("ta", change("UPDATE", "ta", "r1", 2), change("UPDATE", "ta", "r2", 3)))
    world.hub.publish(batch("tb", change("INSERT", "tb", "r1", 4), change("UPDATE", "tb", "r1", 5)))

    changes = [m.payload for m in client.on(TOPIC) if m.event == "postgres_changes"]
    assert [
        (p["ids"], p["data"]["record"]["table_id"], p["data"]["record"]["version"]) for p in changes
    ] == [
        ([entry["id"]], "ta", 2),
        ([entry["id"]], "tb", 5),
    ]
    client.session.close()
    assert not world.hub.is_subscribed(None)


async def test_every_table_needs_the_authorizer_to_grant_star(world: SupabaseWorld) -> None:
    client = world.connect(authorizer=DenyingEveryTable())
    ref = client.join(TOPIC, [binding("version=gt.3")])

    reply = await client.wait_reply(ref)

    assert reply.payload["status"] == "error"
    assert "reads every table" in reply.payload["response"]["reason"]
    assert world.joiner.joins == []


async def test_a_join_with_an_event_that_is_not_a_string_is_refused_with_a_reason(
    world: SupabaseWorld,
) -> None:
    client = world.connect()
    ref = client.join(TOPIC, [{**binding("table_id=eq.a", None), "event": ["INSERT"]}])
    await eventually(lambda: client.reply(ref) is not None or "phx_error" in client.events())
    # A phx_error would make supabase-js rejoin with the same bindings, forever.
    assert client.events() == ["system", "phx_reply"]
    reply = client.reply(ref)
    assert reply is not None
    assert reply.payload["status"] == "error"
    assert "event must be one of" in reply.payload["response"]["reason"]


async def test_postgres_changes_must_be_a_list(world: SupabaseWorld) -> None:
    client = world.connect()
    ref = str(99)
    client.send(Message(TOPIC, "phx_join", {"config": {"postgres_changes": {"a": 1}}}, ref, ref))
    reply = await client.wait_reply(ref)
    assert reply.payload == {
        "status": "error",
        "response": {"reason": "config.postgres_changes must be a list"},
    }


async def test_too_many_tables_are_refused(world: SupabaseWorld) -> None:
    client = world.connect(max_subscriptions=2)
    ref = client.join(TOPIC, [binding("table_id=in.(a,b,c)")])
    reply = await client.wait_reply(ref)
    assert reply.payload["status"] == "error"
    assert "too many subscriptions" in reply.payload["response"]["reason"]
    assert world.joiner.joins == []


async def test_joining_a_topic_again_replaces_the_channel(world: SupabaseWorld) -> None:
    client = world.connect()
    await world.live(client, TOPIC, [binding("table_id=eq.a")])
    await world.live(client, TOPIC, [binding("table_id=eq.b")])
    assert set(client.session.tables) == {"b"}
    assert not world.hub.is_subscribed("a")
    assert world.hub.is_subscribed("b")


# Authentication and authorization


async def test_a_table_the_token_does_not_grant_is_forbidden(world: SupabaseWorld) -> None:
    verifier = FakeVerifier({"user": identity(("a",))})
    client = world.connect(verifier=verifier, authorizer=ClaimAuthorizer("table_ids"))
    ref = client.join(TOPIC, [binding("table_id=in.(a,b)")], access_token="user")
    reply = await client.wait_reply(ref)
    assert reply.payload["status"] == "error"
    reason = reply.payload["response"]["reason"]
    assert reason.startswith("forbidden")
    assert "'b'" in reason
    assert world.joiner.joins == []
    assert client.session.tables == {}


async def test_granted_tables_are_joined(world: SupabaseWorld) -> None:
    verifier = FakeVerifier({"user": identity(("a", "b"))})
    client = world.connect(verifier=verifier, authorizer=ClaimAuthorizer("table_ids"))
    await world.live(client, TOPIC, [binding("table_id=in.(a,b)")], access_token="user")
    assert client.session.identity == identity(("a", "b"))


async def test_the_claim_authorizer_refuses_anonymous_joins(world: SupabaseWorld) -> None:
    client = world.connect(authorizer=ClaimAuthorizer("table_ids"))
    ref = client.join(TOPIC, [binding("table_id=eq.a")])
    reply = await client.wait_reply(ref)
    assert reply.payload["response"]["reason"].startswith("forbidden")


async def test_the_access_token_of_the_join_wins_over_the_apikey(world: SupabaseWorld) -> None:
    verifier = FakeVerifier({"user": identity(), "anon": identity(role="anon")})
    authorizer = RecordingAuthorizer()
    client = world.connect(verifier=verifier, authorizer=authorizer, apikey="anon")
    await world.live(client, TOPIC, [binding("table_id=eq.a")], access_token="user")
    assert verifier.calls == ["user"]
    assert authorizer.asked == [(identity(), "a")]


async def test_without_an_access_token_the_apikey_is_verified(world: SupabaseWorld) -> None:
    anon = identity(role="anon")
    verifier = FakeVerifier({"anon": anon})
    authorizer = RecordingAuthorizer()
    client = world.connect(verifier=verifier, authorizer=authorizer, apikey="anon")
    await world.live(client, TOPIC, [binding("table_id=eq.a")])
    assert verifier.calls == ["anon"]
    assert authorizer.asked == [(anon, "a")]


async def test_a_publishable_key_authenticates_as_its_role(world: SupabaseWorld) -> None:
    verifier = FakeVerifier({})
    authorizer = RecordingAuthorizer()
    client = world.connect(
        verifier=verifier,
        authorizer=authorizer,
        apikey="sb_publishable_abc",
        publishable_keys={"sb_publishable_abc": "anon"},
    )
    await world.live(client, TOPIC, [binding("table_id=eq.a")])
    assert verifier.calls == []
    [(who, table_id)] = authorizer.asked
    assert table_id == "a"
    assert who is not None
    assert dict(who.claims) == {"role": "anon"}
    assert (who.expires_at, who.subject) == (None, None)


async def test_no_token_at_all_is_refused(world: SupabaseWorld) -> None:
    client = world.connect(verifier=FakeVerifier({}))
    ref = client.join(TOPIC, [binding("table_id=eq.a")])
    reply = await client.wait_reply(ref)
    assert reply.payload == {
        "status": "error",
        "response": {"reason": "unauthorized: no access_token and no JWT apikey"},
    }
    assert world.joiner.joins == []


async def test_a_refused_token_is_refused_with_its_reason(world: SupabaseWorld) -> None:
    verifier = FakeVerifier({})
    client = world.connect(verifier=verifier)
    ref = client.join(TOPIC, [binding("table_id=eq.a")], access_token="forged")
    reply = await client.wait_reply(ref)
    assert reply.payload["response"]["reason"] == "unauthorized: unknown token"
    assert verifier.calls == ["forged"]


async def test_a_fresh_access_token_replaces_the_identity(world: SupabaseWorld) -> None:
    fresh = identity(("a",), sub="u2")
    verifier = FakeVerifier({"old": identity(("a",)), "fresh": fresh})
    client = world.connect(verifier=verifier)
    await world.live(client, TOPIC, [binding("table_id=eq.a")], access_token="old")
    client.clear()
    client.push(TOPIC, "access_token", {"access_token": "fresh"})
    await eventually(lambda: client.session.identity == fresh)
    assert client.messages == []


async def test_a_refused_access_token_closes_the_channel(world: SupabaseWorld) -> None:
    verifier = FakeVerifier({"old": identity(("a",))})
    client = world.connect(verifier=verifier)
    await world.live(client, TOPIC, [binding("table_id=eq.a")], access_token="old")
    join_ref = client.join_refs[TOPIC]
    client.clear()
    client.push(TOPIC, "access_token", {"access_token": "bad"})
    await eventually(lambda: "phx_close" in client.events())
    system, close = client.messages
    assert system.event == "system"
    assert system.payload["status"] == "error"
    # Supabase's shutdown_response: the channel ends, so the extension is "system".
    assert system.payload["extension"] == "system"
    assert close == Message(TOPIC, "phx_close", {}, join_ref, join_ref)
    assert not world.hub.is_subscribed("a")
    assert client.session.tables == {}


async def test_a_fresh_access_token_that_grants_less_closes_the_channel(
    world: SupabaseWorld,
) -> None:
    verifier = FakeVerifier({"old": identity(("a", "b")), "narrow": identity(("b",))})
    client = world.connect(verifier=verifier, authorizer=ClaimAuthorizer(CLAIM))
    await world.live(client, TOPIC, [binding("table_id=eq.a")], access_token="old")
    await world.live(client, OTHER, [binding("table_id=eq.b")], access_token="old")
    client.clear()

    client.push(TOPIC, "access_token", {"access_token": "narrow"})
    client.push(OTHER, "access_token", {"access_token": "narrow"})

    await eventually(lambda: "phx_close" in client.events(TOPIC))
    system, _ = client.on(TOPIC)
    assert system.payload["message"] == "forbidden: the new token may not read 'a'"
    assert system.payload["extension"] == "system"
    assert not world.hub.is_subscribed("a")
    assert world.hub.is_subscribed("b")
    assert client.events(OTHER) == []


# Leaving


async def test_leave_replies_ok_and_drops_tables_no_other_channel_uses(
    world: SupabaseWorld, vsn: str
) -> None:
    client = world.connect(vsn)
    await world.live(client, TOPIC, [binding("table_id=in.(a,b)")])
    await world.live(client, OTHER, [binding("table_id=eq.b")])
    client.clear()

    ref = client.push(TOPIC, "phx_leave", {})
    assert client.messages == [
        Message(TOPIC, "phx_reply", {"status": "ok", "response": {}}, ref, client.join_refs[TOPIC])
    ]
    assert not world.hub.is_subscribed("a")
    assert world.hub.is_subscribed("b")
    assert set(client.session.tables) == {"b"}

    client.clear()
    world.hub.publish(batch("b", change("INSERT", "b", "r1", 1)))
    assert [m.topic for m in client.messages] == [OTHER]


async def test_leave_cancels_a_pending_join(world: SupabaseWorld) -> None:
    client = world.connect()
    client.join(TOPIC, [binding("table_id=eq.a")])
    await eventually(lambda: world.joiner.pending)
    [join] = world.joiner.pending
    client.push(TOPIC, "phx_leave", {})
    assert world.joiner.cancels == [join]
    assert client.session.tables == {}
    # An answer that comes anyway changes nothing.
    world.joiner.answer(join)
    assert not world.hub.is_subscribed("a")
    assert [m.event for m in client.messages] == ["phx_reply"]


async def test_leave_of_an_unknown_topic_replies_ok(world: SupabaseWorld) -> None:
    client = world.connect()
    ref = client.push("realtime:never", "phx_leave", {})
    reply = client.reply(ref)
    assert reply is not None
    assert reply.payload == {"status": "ok", "response": {}}


async def test_close_leaves_everything(world: SupabaseWorld) -> None:
    client = world.connect()
    await world.live(client, TOPIC, [binding("table_id=eq.a")])
    client.join(OTHER, [binding("table_id=eq.b")])
    await eventually(lambda: world.joiner.pending)
    [pending] = world.joiner.pending
    client.session.close()
    assert client.session.closed
    assert not world.hub.is_subscribed("a")
    assert world.joiner.cancels == [pending]
    assert client.session.tables == {}
    client.clear()
    client.send(Message("phoenix", "heartbeat", {}, "1"))
    assert client.messages == []


# Delivering changes


async def test_clients_of_one_change_get_the_same_data_under_their_own_topics(
    world: SupabaseWorld, vsn: str
) -> None:
    """A change's data is encoded once per batch, the whole old row of a deletion included."""
    first, second = world.connect(vsn), world.connect(vsn)
    await world.live(first, TOPIC, [binding("table_id=eq.a")])
    await world.live(second, OTHER, [binding("table_id=eq.a", "DELETE")])
    first.clear()
    second.clear()
    world.hub.publish(batch("a", change("DELETE", "a", "r3", 9)))
    (one,), (other,) = first.messages, second.messages
    assert (one.topic, other.topic) == (TOPIC, OTHER)
    assert one.payload["data"] == other.payload["data"]
    assert one.payload["data"]["old_record"] == old_row("a", "r3", 9)


async def test_channels_of_the_same_shape_share_the_frames_of_a_batch(
    world: SupabaseWorld, vsn: str
) -> None:
    """Every tab on a sheet joins the same topic with the same binding: one encoding."""
    first, second, other = world.connect(vsn), world.connect(vsn), world.connect(vsn)
    await world.live(first, TOPIC, [binding("table_id=eq.a")])
    await world.live(second, TOPIC, [binding("table_id=eq.a")])
    await world.live(other, TOPIC, [binding("table_id=eq.a", "UPDATE")])
    for client in (first, second, other):
        client.clear()
    world.hub.publish(batch("a", change("INSERT", "a", "r1", 1), change("UPDATE", "a", "r2", 2)))
    (sent,), (shared,), (own,) = (c.transport.sent for c in (first, second, other))
    assert shared is sent
    assert [m.payload["data"]["type"] for m in first.messages] == ["INSERT", "UPDATE"]
    assert [m.payload["data"]["type"] for m in other.messages] == ["UPDATE"]
    assert own is not sent


async def test_deliver_sends_supabase_payloads_to_matching_bindings(
    world: SupabaseWorld, vsn: str
) -> None:
    client = world.connect(vsn)
    inserts = binding("table_id=eq.a", "INSERT")
    updates = binding("table_id=eq.a", "UPDATE")
    every = binding("table_id=in.(a,b)", "*")
    deletes_b = binding("table_id=eq.b", "DELETE")
    await world.live(client, TOPIC, [inserts, updates, every, deletes_b])
    await eventually(lambda: "presence_state" in client.events())
    client.clear()
    id_insert, id_update, id_every, id_delete_b = (
        Binding.parse(entry).id for entry in (inserts, updates, every, deletes_b)
    )

    world.hub.publish(
        batch(
            "a",
            change("INSERT", "a", "r1", 1),
            change("UPDATE", "a", "r2", 5),
            change("DELETE", "a", "r3", 9),
        )
    )
    inserted, updated, deleted = client.messages
    assert all(m.topic == TOPIC and m.event == "postgres_changes" for m in client.messages)
    assert all(m.ref is None and m.join_ref is None for m in client.messages)

    assert inserted.payload == {
        "ids": [id_insert, id_every],
        "data": {
            "schema": "public",
            "table": "rows",
            "commit_timestamp": COMMITTED_AT,
            "type": "INSERT",
            "columns": COLUMNS,
            "record": row("a", "r1", 1),
            "errors": None,
        },
    }
    assert updated.payload == {
        "ids": [id_update, id_every],
        "data": {
            "schema": "public",
            "table": "rows",
            "commit_timestamp": COMMITTED_AT,
            "type": "UPDATE",
            "columns": COLUMNS,
            "record": row("a", "r2", 5),
            "old_record": old_row("a", "r2", 5),
            "errors": None,
        },
    }
    data = deleted.payload["data"]
    assert deleted.payload["ids"] == [id_every]
    assert set(data) == {
        "schema",
        "table",
        "commit_timestamp",
        "type",
        "columns",
        "old_record",
        "errors",
    }
    assert data["type"] == "DELETE"
    assert data["old_record"] == old_row("a", "r3", 9)
    assert (data["schema"], data["table"], data["errors"]) == ("public", "rows", None)
    assert data["commit_timestamp"] == COMMITTED_AT

    client.clear()
    world.hub.publish(batch("b", change("INSERT", "b", "r4", 1), change("DELETE", "b", "r5", 2)))
    assert [m.payload["ids"] for m in client.messages] == [[id_every], [id_every, id_delete_b]]


async def test_changes_no_binding_wants_send_nothing(world: SupabaseWorld) -> None:
    client = world.connect()
    await world.live(client, TOPIC, [binding("table_id=eq.a", "INSERT")])
    await eventually(lambda: "presence_state" in client.events())
    client.clear()
    world.hub.publish(batch("a", change("UPDATE", "a", "r", 2), change("DELETE", "a", "r", 3)))
    world.hub.publish(batch("a"))
    assert client.messages == []


async def test_nothing_is_sent_for_another_table(world: SupabaseWorld) -> None:
    client = world.connect()
    await world.live(client, TOPIC, [binding("table_id=eq.a")])
    await world.live(client, OTHER, [binding("table_id=eq.b")])
    await eventually(lambda: client.events().count("presence_state") == 2)
    client.clear()
    client.session.deliver(batch("zzz", change("INSERT", "zzz", "r", 1)))
    assert client.messages == []
    world.hub.publish(batch("a", change("INSERT", "a", "r", 1)))
    assert [(m.topic, m.event) for m in client.messages] == [(TOPIC, "postgres_changes")]


async def test_a_channel_not_live_yet_receives_nothing(world: SupabaseWorld) -> None:
    client = world.connect()
    await world.live(client, TOPIC, [binding("table_id=eq.a")])
    await eventually(lambda: "presence_state" in client.events())
    ref = client.join(OTHER, [binding("table_id=in.(a,b)")])
    await eventually(lambda: world.joiner.pending)
    client.clear()
    world.hub.publish(batch("a", change("INSERT", "a", "r", 1)))
    assert [m.topic for m in client.messages] == [TOPIC]
    assert client.reply(ref) is None


async def test_each_change_is_parsed_once_for_every_session(world: SupabaseWorld) -> None:
    one, two = world.connect(VSN_1), world.connect(VSN_2)
    await world.live(one, TOPIC, [binding("table_id=eq.a")])
    await world.live(two, TOPIC, [binding("table_id=eq.a")])
    await eventually(lambda: "presence_state" in one.events() and "presence_state" in two.events())
    one.clear()
    two.clear()
    the_batch = batch("a", change("INSERT", "a", "r", 1))
    assert world.hub.publish(the_batch) == 2
    assert [m.payload for m in one.messages] == [m.payload for m in two.messages]
    assert len(one.messages) == 1


# Broadcast


def broadcast_payload(event: str = "cursor", payload: Any = None) -> dict[str, Any]:
    return {
        "type": "broadcast",
        "event": event,
        "payload": {"x": 1} if payload is None else payload,
    }


async def test_broadcast_needs_a_joined_channel(world: SupabaseWorld, vsn: str) -> None:
    client = world.connect(vsn)
    ref = client.push(TOPIC, "broadcast", broadcast_payload())
    reply = await client.wait_reply(ref)
    assert reply.payload == {
        "status": "error",
        "response": {"reason": "join the channel before broadcasting"},
    }
    assert world.store.sent == []


async def test_broadcast_needs_a_live_channel(world: SupabaseWorld) -> None:
    client = world.connect()
    client.join(TOPIC, [binding("table_id=eq.a")])
    await eventually(lambda: world.joiner.pending)
    ref = client.push(TOPIC, "broadcast", broadcast_payload())
    reply = await client.wait_reply(ref)
    assert reply.payload["status"] == "error"
    assert world.store.sent == []


async def test_broadcast_is_sent_through_the_store(world: SupabaseWorld, vsn: str) -> None:
    client = world.connect(vsn)
    await world.live(client, TOPIC)
    ref = client.push(TOPIC, "broadcast", broadcast_payload())
    await eventually(lambda: world.store.sent)
    origin = world.broadcasts.origin(client.session)
    assert world.store.sent == [
        broadcasts_module.encode(TOPIC, "cursor", broadcast_payload(), origin)
    ]
    # Without ack, no reply.
    assert client.reply(ref) is None


async def test_broadcast_with_ack_is_answered_ok(world: SupabaseWorld, vsn: str) -> None:
    client = world.connect(vsn)
    await world.live(client, TOPIC, broadcast={"ack": True, "self": False})
    ref = client.push(TOPIC, "broadcast", broadcast_payload())
    reply = await client.wait_reply(ref)
    assert reply.payload == {"status": "ok", "response": {}}
    assert reply.join_ref == client.join_refs[TOPIC]
    assert len(world.store.sent) == 1


async def test_binary_broadcast_is_sent_through_the_store(world: SupabaseWorld) -> None:
    client = world.connect(VSN_2)
    await world.live(client, TOPIC, broadcast={"ack": True, "self": False})
    join_ref = client.join_refs[TOPIC]
    frame = push_frame(topic=TOPIC, event="cursor", join_ref=join_ref, ref="50", body=b'{"x":2}')
    client.session.receive_binary(frame)
    reply = await client.wait_reply("50")
    assert reply.payload["status"] == "ok"
    [sent] = world.store.sent
    assert json.loads(sent)["payload"] == {
        "type": "broadcast",
        "event": "cursor",
        "payload": {"x": 2},
    }


async def test_broadcast_over_the_notify_limit_is_refused(world: SupabaseWorld) -> None:
    client = world.connect()
    await world.live(client, TOPIC, broadcast={"ack": True, "self": False})
    big = broadcast_payload(payload="x" * broadcasts_module.MAX_PAYLOAD_BYTES)
    ref = client.push(TOPIC, "broadcast", big)
    reply = await client.wait_reply(ref)
    assert reply.payload["status"] == "error"
    assert f"{broadcasts_module.MAX_PAYLOAD_BYTES} bytes" in reply.payload["response"]["reason"]
    assert world.store.sent == []


@pytest.mark.parametrize("payload", [{"type": "broadcast"}, {"event": 3}, "text", None])
async def test_broadcast_needs_a_string_event(world: SupabaseWorld, payload: Any) -> None:
    client = world.connect()
    await world.live(client, TOPIC)
    ref = client.push(TOPIC, "broadcast", payload)
    reply = await client.wait_reply(ref)
    assert reply.payload == {
        "status": "error",
        "response": {"reason": "a broadcast needs a string event"},
    }


@pytest.mark.parametrize("failure", DATABASE_FAILURES, ids=type)
async def test_a_broadcast_the_database_refuses_is_answered_with_an_error(
    world: SupabaseWorld, failure: BaseException, caplog: pytest.LogCaptureFixture
) -> None:
    world.store.failures["broadcast"] = failure
    client = world.connect()
    await world.live(client, TOPIC)
    with caplog.at_level(logging.WARNING, logger="broadcaster.sessions.supabase"):
        ref = client.push(TOPIC, "broadcast", broadcast_payload())
        reply = await client.wait_reply(ref)
    assert reply.payload == {
        "status": "error",
        "response": {"reason": "the broadcast could not be sent"},
    }
    assert any("broadcast failed" in r.getMessage() for r in caplog.records)
    assert "phx_error" not in client.events()


async def test_deliver_broadcast_follows_the_self_rule(world: SupabaseWorld) -> None:
    client = world.connect()
    await world.live(client, TOPIC, broadcast={"ack": False, "self": False})
    await world.live(client, OTHER, broadcast={"ack": False, "self": True})
    await eventually(lambda: client.events().count("presence_state") == 2)
    client.clear()
    own = world.broadcasts.origin(client.session)
    message = broadcast_payload()

    client.session.deliver_broadcast(TOPIC, "cursor", message, own)
    assert client.messages == []

    client.session.deliver_broadcast(TOPIC, "cursor", message, "elsewhere:1")
    client.session.deliver_broadcast(OTHER, "cursor", message, own)
    client.session.deliver_broadcast(OTHER, "cursor", message, "elsewhere:1")
    client.session.deliver_broadcast("realtime:never", "cursor", message, "elsewhere:1")
    assert client.messages == [
        Message(TOPIC, "broadcast", message),
        Message(OTHER, "broadcast", message),
        Message(OTHER, "broadcast", message),
    ]


async def test_broadcast_reaches_the_other_clients_of_the_topic(world: SupabaseWorld) -> None:
    world.store.loopback = world.broadcasts
    sender, receiver, elsewhere = world.connect(VSN_1), world.connect(VSN_2), world.connect()
    await world.live(sender, TOPIC)
    await world.live(receiver, TOPIC)
    await world.live(elsewhere, OTHER)
    for client in (sender, receiver, elsewhere):
        await eventually(lambda c=client: "presence_state" in c.events())
        client.clear()

    sender.push(TOPIC, "broadcast", broadcast_payload())
    await eventually(lambda: receiver.messages)
    assert receiver.messages == [Message(TOPIC, "broadcast", broadcast_payload())]
    assert sender.messages == []
    assert elsewhere.messages == []


async def test_broadcast_with_self_reaches_the_sender_too(world: SupabaseWorld) -> None:
    world.store.loopback = world.broadcasts
    sender = world.connect()
    await world.live(sender, TOPIC, broadcast={"ack": True, "self": True})
    await eventually(lambda: "presence_state" in sender.events())
    sender.clear()
    ref = sender.push(TOPIC, "broadcast", broadcast_payload())
    await sender.wait_reply(ref)
    assert sender.events() == ["broadcast", "phx_reply"]


async def test_after_leaving_no_broadcast_arrives(world: SupabaseWorld) -> None:
    client = world.connect()
    await world.live(client, TOPIC)
    client.push(TOPIC, "phx_leave", {})
    client.clear()
    world.broadcasts.notified(broadcasts_module.encode(TOPIC, "e", broadcast_payload(), "x:1"))
    assert client.messages == []


# Presence


def presence_payload(event: str, meta: Any = None) -> dict[str, Any]:
    message: dict[str, Any] = {"type": "presence", "event": event}
    if meta is not None:
        message["payload"] = meta
    return message


async def test_track_needs_a_joined_channel(world: SupabaseWorld) -> None:
    client = world.connect()
    ref = client.push(TOPIC, "presence", presence_payload("track", {"name": "Ada"}))
    reply = await client.wait_reply(ref)
    assert reply.payload == {
        "status": "error",
        "response": {"reason": "join the channel before tracking presence"},
    }
    assert world.store.tracks == []


async def test_track_stores_the_channel_key(world: SupabaseWorld, vsn: str) -> None:
    client = world.connect(vsn)
    await world.live(client, TOPIC, presence={"key": "ada"})
    ref = client.push(TOPIC, "presence", presence_payload("track", {"name": "Ada"}))
    reply = await client.wait_reply(ref)
    assert reply.payload == {"status": "ok", "response": {}}
    origin = world.broadcasts.origin(client.session)
    assert world.store.tracks == [
        (TOPIC, "ada", f"{origin}:{TOPIC}", world.broadcasts.process, {"name": "Ada"})
    ]


@pytest.mark.parametrize("presence_config", [{"key": ""}, {}, {"key": 5}])
async def test_without_a_key_the_connection_is_the_presence(
    world: SupabaseWorld, presence_config: dict[str, Any]
) -> None:
    client = world.connect()
    await world.live(client, TOPIC, presence=presence_config)
    ref = client.push(TOPIC, "presence", presence_payload("track", {"n": 1}))
    await client.wait_reply(ref)
    origin = world.broadcasts.origin(client.session)
    [(topic, key, presence_ref, _, meta)] = world.store.tracks
    assert (topic, key, presence_ref, meta) == (TOPIC, origin, f"{origin}:{TOPIC}", {"n": 1})


async def test_track_without_an_object_meta_stores_an_empty_one(world: SupabaseWorld) -> None:
    client = world.connect()
    await world.live(client, TOPIC, presence={"key": "k"})
    ref = client.push(TOPIC, "presence", presence_payload("track", [1, 2]))
    await client.wait_reply(ref)
    assert world.store.tracks[0][4] == {}


async def test_untrack_removes_the_presence(world: SupabaseWorld) -> None:
    client = world.connect()
    await world.live(client, TOPIC, presence={"key": "ada"})
    origin = world.broadcasts.origin(client.session)
    await client.wait_reply(client.push(TOPIC, "presence", presence_payload("track", {})))
    ref = client.push(TOPIC, "presence", presence_payload("untrack"))
    reply = await client.wait_reply(ref)
    assert reply.payload == {"status": "ok", "response": {}}
    assert world.store.untracks == [[f"{origin}:{TOPIC}"]]
    # Untracked: leaving removes nothing more.
    client.push(TOPIC, "phx_leave", {})
    await asyncio.sleep(0)
    assert world.store.untracks == [[f"{origin}:{TOPIC}"]]


async def test_a_meta_over_the_limit_is_refused(world: SupabaseWorld) -> None:
    client = world.connect()
    await world.live(client, TOPIC, presence={"key": "k"})
    big = {"blob": "x" * presence.MAX_META_BYTES}
    ref = client.push(TOPIC, "presence", presence_payload("track", big))
    reply = await client.wait_reply(ref)
    assert reply.payload["status"] == "error"
    assert f"{presence.MAX_META_BYTES} bytes" in reply.payload["response"]["reason"]
    assert world.store.tracks == []


async def test_other_presence_events_are_refused(world: SupabaseWorld) -> None:
    client = world.connect()
    await world.live(client, TOPIC)
    ref = client.push(TOPIC, "presence", presence_payload("wave"))
    reply = await client.wait_reply(ref)
    assert reply.payload == {
        "status": "error",
        "response": {"reason": "presence events are track and untrack"},
    }


@pytest.mark.parametrize("failure", DATABASE_FAILURES, ids=type)
async def test_a_presence_the_database_refuses_is_answered_with_an_error(
    world: SupabaseWorld, failure: BaseException
) -> None:
    world.store.failures["track"] = failure
    client = world.connect()
    await world.live(client, TOPIC)
    ref = client.push(TOPIC, "presence", presence_payload("track", {}))
    reply = await client.wait_reply(ref)
    assert reply.payload == {
        "status": "error",
        "response": {"reason": "presence could not be updated"},
    }


async def test_presence_state_follows_the_join_reply(world: SupabaseWorld, vsn: str) -> None:
    world.store.states[TOPIC] = [("ada", "r1", {"name": "Ada"}), ("bob", "r2", {})]
    client = world.connect(vsn)
    ref = client.join(TOPIC, [binding("table_id=eq.a")])
    await eventually(lambda: world.joiner.pending)
    await asyncio.sleep(0)
    assert world.store.state_reads == []
    world.joiner.answer_all()
    await eventually(lambda: "presence_state" in client.events())
    assert client.events() == ["phx_reply", "system", "presence_state"]
    assert client.messages[0].ref == ref
    assert client.messages[2] == Message(
        TOPIC,
        "presence_state",
        {
            "ada": {"metas": [{"name": "Ada", "phx_ref": "r1"}]},
            "bob": {"metas": [{"phx_ref": "r2"}]},
        },
    )
    assert world.store.state_reads == [TOPIC]


@pytest.mark.parametrize("failure", DATABASE_FAILURES, ids=type)
async def test_presence_state_the_database_refuses_is_skipped(
    world: SupabaseWorld, failure: BaseException, caplog: pytest.LogCaptureFixture
) -> None:
    world.store.failures["presence_state"] = failure
    client = world.connect()
    with caplog.at_level(logging.WARNING, logger="broadcaster.sessions.supabase"):
        await world.live(client, TOPIC)
        await eventually(lambda: world.store.state_reads)
        await asyncio.sleep(0)
    assert client.events() == ["phx_reply"]
    assert any("presence state failed" in r.getMessage() for r in caplog.records)


async def test_presence_diffs_are_forwarded_to_live_channels_of_the_topic(
    world: SupabaseWorld,
) -> None:
    client = world.connect()
    await world.live(client, TOPIC)
    await world.live(client, OTHER)
    await eventually(lambda: client.events().count("presence_state") == 2)
    client.clear()
    world.presences.notified(presence.diff(TOPIC, [("ada", "r1", {"n": 1})], [("bob", "r2", {})]))
    assert client.messages == [
        Message(
            TOPIC,
            "presence_diff",
            {
                "joins": {"ada": {"metas": [{"n": 1, "phx_ref": "r1"}]}},
                "leaves": {"bob": {"metas": [{"phx_ref": "r2"}]}},
            },
        )
    ]


async def test_presence_diffs_are_not_forwarded_before_the_reply(world: SupabaseWorld) -> None:
    client = world.connect()
    client.join(TOPIC, [binding("table_id=eq.a")])
    await eventually(lambda: world.joiner.pending)
    world.presences.notified(presence.diff(TOPIC, [("ada", "r1", {})], []))
    assert client.messages == []


async def test_leave_untracks_and_stops_diffs(world: SupabaseWorld) -> None:
    client = world.connect()
    await world.live(client, TOPIC, presence={"key": "ada"})
    await client.wait_reply(client.push(TOPIC, "presence", presence_payload("track", {})))
    origin = world.broadcasts.origin(client.session)
    client.push(TOPIC, "phx_leave", {})
    await eventually(lambda: world.store.untracks == [[f"{origin}:{TOPIC}"]])
    client.clear()
    world.presences.notified(presence.diff(TOPIC, [("x", "r", {})], []))
    assert client.messages == []


async def test_close_untracks(world: SupabaseWorld) -> None:
    client = world.connect()
    await world.live(client, TOPIC, presence={"key": "ada"})
    await world.live(client, OTHER, presence={"key": "ada"})
    await client.wait_reply(client.push(TOPIC, "presence", presence_payload("track", {})))
    origin = world.broadcasts.origin(client.session)
    client.session.close()
    await eventually(lambda: world.store.untracks == [[f"{origin}:{TOPIC}"]])


@pytest.mark.parametrize("failure", DATABASE_FAILURES, ids=type)
async def test_an_untrack_on_leave_the_database_refuses_is_logged(
    world: SupabaseWorld, failure: BaseException, caplog: pytest.LogCaptureFixture
) -> None:
    client = world.connect()
    await world.live(client, TOPIC, presence={"key": "ada"})
    await client.wait_reply(client.push(TOPIC, "presence", presence_payload("track", {})))
    world.store.failures["untrack"] = failure
    with caplog.at_level(logging.WARNING, logger="broadcaster.sessions.supabase"):
        client.push(TOPIC, "phx_leave", {})
        await eventually(lambda: world.store.untracks)
        await eventually(lambda: not base._UNTRACKING)
    assert any("removing a presence failed" in r.getMessage() for r in caplog.records)


# A failure inside a channel


async def test_a_crash_while_reading_presence_state_sends_phx_error(
    world: SupabaseWorld, vsn: str, caplog: pytest.LogCaptureFixture
) -> None:
    world.store.failures["presence_state"] = RuntimeError("a bug")
    client = world.connect(vsn)
    with caplog.at_level(logging.ERROR, logger="broadcaster.sessions.supabase"):
        await world.live(client, TOPIC, [binding("table_id=eq.a")])
        await eventually(lambda: "phx_error" in client.events())
    assert client.events() == ["phx_reply", "system", "phx_error"]
    assert client.messages[2] == Message(TOPIC, "phx_error", {})
    [record] = [r for r in caplog.records if r.name == "broadcaster.sessions.supabase"]
    assert record.levelno == logging.ERROR
    assert TOPIC in record.getMessage()
    assert record.exc_info is not None
    assert isinstance(record.exc_info[1], RuntimeError)
    # The connection carries on.
    client.clear()
    client.send(Message("phoenix", "heartbeat", {}, "hb"))
    assert client.events() == ["phx_reply"]


async def test_a_crash_while_tracking_sends_phx_error_on_that_topic(
    world: SupabaseWorld, caplog: pytest.LogCaptureFixture
) -> None:
    client = world.connect()
    await world.live(client, TOPIC)
    await world.live(client, OTHER)
    await eventually(lambda: client.events().count("presence_state") == 2)
    client.clear()
    world.store.failures["track"] = RuntimeError("a bug")
    with caplog.at_level(logging.ERROR, logger="broadcaster.sessions.supabase"):
        ref = client.push(OTHER, "presence", presence_payload("track", {}))
        await eventually(lambda: client.messages)
    assert client.messages == [Message(OTHER, "phx_error", {})]
    assert client.reply(ref) is None
    assert any(
        r.exc_info is not None for r in caplog.records if r.name == "broadcaster.sessions.supabase"
    )


async def test_close_cancels_channel_tasks_and_sends_nothing(world: SupabaseWorld) -> None:
    gate = asyncio.Event()
    cancelled = asyncio.Event()

    class Slow(FakeStore):
        async def presence_state(self, topic: str) -> list[Entry]:
            self.state_reads.append(topic)
            try:
                await gate.wait()
            except asyncio.CancelledError:
                cancelled.set()
                raise
            raise RuntimeError("a bug")

    world.store = Slow()
    client = world.connect()
    await world.live(client, TOPIC)
    await eventually(lambda: world.store.state_reads)
    client.session.close()
    client.clear()
    gate.set()
    await within(cancelled.wait())
    await asyncio.sleep(0)
    assert client.messages == []


# Published tables


def on_messages(filter: str | None = None, event: str = "*") -> dict[str, Any]:
    entry: dict[str, Any] = {"event": event, "schema": "public", "table": "messages"}
    if filter is not None:
        entry["filter"] = filter
    return entry


def message_change(op: str, version: int, room_id: int) -> Change:
    row = json.dumps({"id": version, "room_id": room_id})
    return Change(op, "public.messages", str(version), version, row, None)


async def test_a_binding_on_a_published_table_joins_it_and_gets_its_changes_whole(
    world: SupabaseWorld,
) -> None:
    client = world.connect()
    await world.live(client, TOPIC, [on_messages()])
    client.clear()

    world.hub.publish(batch("public.messages", message_change("INSERT", 4, 5)))

    await eventually(lambda: "postgres_changes" in client.events())
    [pushed] = [m for m in client.messages if m.event == "postgres_changes"]
    data = pushed.payload["data"]
    assert (data["schema"], data["table"], data["type"]) == ("public", "messages", "INSERT")
    assert data["record"] == {"id": 4, "room_id": 5}
    assert data["columns"] == [{"name": "id", "type": "int8"}, {"name": "room_id", "type": "int8"}]


async def test_a_table_that_is_not_published_is_refused_with_how_to_publish_it(
    world: SupabaseWorld,
) -> None:
    client = world.connect()
    ref = client.join(TOPIC, [{"schema": "public", "table": "todos"}])
    reply = await client.wait_reply(ref)

    assert reply.payload["status"] == "error"
    assert "broadcaster publish public.todos" in reply.payload["response"]["reason"]
    assert world.joiner.joins == []


async def test_a_filter_postgres_refuses_is_refused_at_join(world: SupabaseWorld) -> None:
    client = world.connect()
    ref = client.join(TOPIC, [on_messages("room_id=eq.nope")])
    reply = await client.wait_reply(ref)

    assert reply.payload["status"] == "error"
    assert "refused" in reply.payload["response"]["reason"]
    assert world.published.checks.on("public.messages") == ()


async def test_a_filtered_binding_delivers_what_postgres_passed(world: SupabaseWorld) -> None:
    client = world.connect()
    await world.live(client, TOPIC, [on_messages("room_id=eq.5")])
    [check] = world.published.checks.on("public.messages")
    client.clear()
    passed, failed = message_change("INSERT", 4, 5), message_change("INSERT", 6, 7)
    delivered = batch("public.messages", passed, failed)
    delivered.checks = {check: [True, False]}

    world.hub.publish(delivered)

    await eventually(lambda: "postgres_changes" in client.events())
    pushes = [m for m in client.messages if m.event == "postgres_changes"]
    assert [m.payload["data"]["record"]["id"] for m in pushes] == [4]


async def test_a_filtered_channel_on_a_live_table_waits_for_a_read_that_checks_it(
    world: SupabaseWorld,
) -> None:
    client = world.connect()
    await world.live(client, TOPIC, [on_messages()])

    ref = client.join(OTHER, [on_messages("room_id=eq.5")])
    await eventually(lambda: len(world.joiner.pending) == 1)
    assert client.reply(ref) is None
    world.joiner.answer_all()

    reply = await client.wait_reply(ref)
    assert reply.payload["status"] == "ok"


async def test_leaving_releases_the_channel_checks(world: SupabaseWorld) -> None:
    client = world.connect()
    other = world.connect()
    await world.live(client, TOPIC, [on_messages("room_id=eq.5")])
    await world.live(other, TOPIC, [on_messages("room_id=eq.5")])
    [check] = world.published.checks.on("public.messages")

    client.push(TOPIC, "phx_leave", {})
    assert world.published.checks.on("public.messages") == (check,)

    other.session.close()
    await eventually(lambda: world.published.checks.on("public.messages") == ())


async def test_a_wildcard_binding_joins_the_tables_published_when_it_joins(
    world: SupabaseWorld,
) -> None:
    client = world.connect()
    await world.live(client, TOPIC, [{"event": "*", "schema": "public", "table": "*"}])

    assert set(client.session.tables) == {"public.messages"}
    world.hub.publish(batch("public.messages", message_change("INSERT", 4, 5)))
    await eventually(lambda: "postgres_changes" in client.events())


# Row-level security

NOTES = PublishedTable(
    "public",
    "notes",
    (
        Column("id", "bigint", "int8"),
        Column("owner", "text", "text"),
        Column("secret", "text", "text"),
    ),
    ("id",),
    row_security=True,
)


def note(op: str, version: int) -> Change:
    row = json.dumps({"id": version, "owner": "ada", "secret": "s"})
    old = None if op == "INSERT" else row
    return Change(op, "public.notes", str(version), version, row if op != "DELETE" else "{}", old)


def secured_world(world: SupabaseWorld) -> FakeVerifier:
    world.published.tables[("public", "notes")] = NOTES
    world.published.roles["authenticated"] = {}
    return FakeVerifier(
        {
            "ada": identity(role="authenticated", sub="ada"),
            "ada again": identity(role="authenticated", sub="ada", iat=2),
            "ghost": identity(role="ghost", sub="g"),
            "norole": identity(sub="n"),
        }
    )


def on_notes() -> list[dict[str, Any]]:
    return [{"event": "*", "schema": "public", "table": "notes"}]


@pytest.mark.parametrize(
    ("token", "reason"),
    [
        ("norole", "join with a token whose role claim names the Postgres role"),
        ("ghost", "role 'ghost' does not exist in Postgres"),
    ],
)
async def test_a_table_with_row_security_needs_a_role_to_check_rows_as(
    world: SupabaseWorld, token: str, reason: str
) -> None:
    client = world.connect(verifier=secured_world(world))
    ref = client.join(TOPIC, on_notes(), access_token=token)
    reply = await client.wait_reply(ref)

    assert reply.payload["status"] == "error"
    assert reason in reply.payload["response"]["reason"]


async def test_a_viewer_gets_only_the_rows_postgres_let_it_see(world: SupabaseWorld) -> None:
    client = world.connect(verifier=secured_world(world))
    await world.live(client, TOPIC, on_notes(), access_token="ada")
    [check] = world.published.checks.on("public.notes")
    assert isinstance(check, RowCheck)
    assert check.viewer.role == "authenticated"
    client.clear()
    delivered = batch("public.notes", note("INSERT", 1), note("UPDATE", 2), note("DELETE", 3))
    delivered.checks = {check: [False, True, True]}

    world.hub.publish(delivered)

    await eventually(lambda: len(client.events()) == 2)
    updated, deleted = (m.payload["data"] for m in client.messages)
    assert updated["record"]["id"] == 2
    # As on Supabase: a DELETE of a table with row security shows only the key.
    assert deleted["old_record"] == {"id": 3}


async def test_a_viewer_gets_only_the_columns_its_role_may_select(world: SupabaseWorld) -> None:
    client = world.connect(verifier=secured_world(world))
    world.published.roles["authenticated"] = {"public.notes": frozenset({"id", "owner"})}
    await world.live(client, TOPIC, on_notes(), access_token="ada")
    [check] = world.published.checks.on("public.notes")
    client.clear()
    delivered = batch("public.notes", note("INSERT", 1))
    delivered.checks = {check: [True]}

    world.hub.publish(delivered)

    await eventually(lambda: "postgres_changes" in client.events())
    data = client.messages[0].payload["data"]
    assert data["record"] == {"id": 1, "owner": "ada"}
    assert [c["name"] for c in data["columns"]] == ["id", "owner"]


async def test_a_refreshed_token_is_checked_as_itself_once_a_read_answers_it(
    world: SupabaseWorld,
) -> None:
    client = world.connect(verifier=secured_world(world))
    await world.live(client, TOPIC, on_notes(), access_token="ada")
    [before] = world.published.checks.on("public.notes")

    client.push(TOPIC, "access_token", {"access_token": "ada again"})
    await eventually(lambda: len(world.published.checks.on("public.notes")) == 2)
    after = next(c for c in world.published.checks.on("public.notes") if c != before)
    client.clear()
    # A read that asked only about the previous token still decides.
    old_read = batch("public.notes", note("INSERT", 1))
    old_read.checks = {before: [True]}
    world.hub.publish(old_read)
    await eventually(lambda: len(client.events()) == 1)

    new_read = batch("public.notes", note("INSERT", 2), note("INSERT", 3))
    new_read.checks = {before: [True, True], after: [False, True]}
    world.hub.publish(new_read)

    await eventually(lambda: len(client.events()) == 2)
    assert client.messages[1].payload["data"]["record"]["id"] == 3
    assert world.published.checks.on("public.notes") == (after,)


async def test_the_authorizer_is_shown_the_binding_asking(world: SupabaseWorld) -> None:
    authorizer = RecordingAuthorizer()
    client = world.connect(authorizer=authorizer)
    await world.live(client, TOPIC, [on_messages("room_id=eq.5")])

    assert [table_id for _, table_id in authorizer.asked] == ["public.messages"]
    [shown] = authorizer.bindings
    assert shown is not None
    assert json.loads(shown) == on_messages("room_id=eq.5")


async def test_the_authorizer_is_not_asked_about_a_table_with_row_security(
    world: SupabaseWorld,
) -> None:
    authorizer = RecordingAuthorizer()
    client = world.connect(verifier=secured_world(world), authorizer=authorizer)
    await world.live(client, TOPIC, on_notes(), access_token="ada")

    assert authorizer.asked == []


async def test_the_hub_hands_a_filtered_connection_only_the_batches_its_checks_passed(
    world: SupabaseWorld,
) -> None:
    client = world.connect()
    await world.live(client, TOPIC, [on_messages("room_id=eq.5")])
    [check] = world.published.checks.on("public.messages")
    client.clear()
    other = batch("public.messages", message_change("INSERT", 6, 7))
    other.checks = {check: [False]}

    assert world.hub.publish(other) == 0

    await world.live(client, OTHER, [on_messages()])
    assert world.hub.publish(other) == 1


@pytest.mark.parametrize("function", [False, True], ids=["claims", "sql function"])
async def test_a_role_that_may_select_a_published_table_is_let_in_by_its_privileges(
    world: SupabaseWorld, function: bool
) -> None:
    """As on Supabase: Postgres' rights decide, not the token's table_ids claim; a SQL
    authorizer, when there is one, still decides."""
    verifier = secured_world(world)
    authorizer = RecordingAuthorizer()
    client = world.connect(
        verifier=verifier, authorizer=authorizer, authorizer_decides_published=function
    )
    await world.live(client, TOPIC, [on_messages()], access_token="ada")

    asked = [table_id for _, table_id in authorizer.asked]
    assert asked == (["public.messages"] if function else [])
