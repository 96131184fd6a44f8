"""Unit tests for broadcaster.sessions.native: one native-protocol session over a fake transport."""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import pytest

from broadcaster.auth.authorization import OpenAuthorizer
from broadcaster.core import cursors
from broadcaster.core.changes import Change
from broadcaster.core.cursors import Origin
from broadcaster.core.feed import Feed, JoinResult, ReadResult, Request, Row
from broadcaster.core.hub import Batch, Hub
from broadcaster.protocols import native as protocol
from broadcaster.protocols.frames import text_frame
from broadcaster.sessions import native
from broadcaster.sessions.base import Joiner, Limits
from broadcaster.sessions.native import NativeSession, encode_batch
from tests.support.sessions import (
    CURSOR,
    MESSAGES,
    ORIGIN,
    FakeJoiner,
    FakePublishedTables,
    FakeTransport,
    decode_frame,
    messages,
    send,
    split_frames,
)
from tests.support.timeouts import eventually

MAX_SUBSCRIPTIONS = 3
MAX_MESSAGE_BYTES = 256

CURSOR_2 = cursors.encode(ORIGIN, "110:110:")
CURSOR_3 = cursors.encode(ORIGIN, "120:121:120")


def row(table_id: str, row_id: str, version: int) -> str:
    return json.dumps(
        {"id": row_id, "table_id": table_id, "data": {"n": version}, "version": version}
    )


def change(table_id: str, row_id: str, version: int, op: str = "UPDATE") -> Change:
    return Change(op, table_id, row_id, version, row(table_id, row_id, version))


@pytest.fixture
def hub() -> Hub:
    return Hub()


@pytest.fixture
def transport() -> FakeTransport:
    return FakeTransport()


@pytest.fixture
def joiner() -> FakeJoiner:
    return FakeJoiner()


def new_session(
    hub: Hub,
    transport: FakeTransport,
    joiner: Joiner | None = None,
    published: FakePublishedTables | None = None,
) -> NativeSession:
    return NativeSession(
        hub,
        joiner if joiner is not None else FakeJoiner(),
        transport,
        authorizer=OpenAuthorizer(),
        published=published,
        # These tests are about the protocol; limits are tested on their own.
        limits=Limits(
            max_subscriptions=MAX_SUBSCRIPTIONS,
            max_message_bytes=MAX_MESSAGE_BYTES,
            messages_per_second=1e9,
            max_errors=10**9,
        ),
    )


@pytest.fixture
def session(hub: Hub, transport: FakeTransport, joiner: FakeJoiner) -> NativeSession:
    return new_session(hub, transport, joiner)


def subscribe(session: NativeSession, joiner: FakeJoiner, table_id: str, ref: Any = None) -> None:
    """Subscribe ``session`` to ``table_id`` and answer its join: it is then live."""
    send(session, {"type": "subscribe", "ref": ref, "table_id": table_id})
    [join] = [j for j in joiner.pending if j.table_id == table_id]
    joiner.answer(join)
    joiner.joins.remove(join)
    assert session.tables[table_id] is None


def live_change(the_change: Change, cursor: str = CURSOR) -> dict[str, Any]:
    return {
        "type": "change",
        "table_id": the_change.table_id,
        "op": the_change.op,
        "id": the_change.id,
        "row": {**json.loads(the_change.row_json), "version": the_change.version},
        "cursor": cursor,
    }


def catch_up_change(the_change: Change) -> dict[str, Any]:
    message = live_change(the_change)
    del message["cursor"]
    return message


class SlowConsumerTransport(FakeTransport):
    """Closes the session once more than ``limit`` frames are queued.

    Like the WebSocket adapter with a slow consumer: its ``send`` calls its
    ``close``, which closes the session, all within the session's own ``send``.
    """

    def __init__(self, limit: int) -> None:
        super().__init__()
        self.limit = limit
        self.session: NativeSession | None = None

    def send(self, frame: bytes) -> None:
        if self.closes:
            return  # the adapter drops frames once closing
        super().send(frame)
        if len(self.sent) > self.limit:
            self.close(protocol.CLOSE_SLOW_CONSUMER, "slow consumer")

    def close(self, code: int, reason: str) -> None:
        super().close(code, reason)
        assert self.session is not None
        self.session.close()


def test_new_session_holds_nothing(session: NativeSession, hub: Hub, joiner: FakeJoiner) -> None:
    assert session.tables == {}
    assert not session.closed
    assert hub.tables == 0
    assert joiner.joins == []


def test_ping_gets_pong(session: NativeSession, transport: FakeTransport) -> None:
    send(session, {"type": "ping", "ref": 1})
    send(session, {"type": "ping"})

    assert transport.sent == [
        text_frame(b'{"type":"pong","ref":1}'),
        text_frame(b'{"type":"pong","ref":null}'),
    ]
    assert transport.closes == []


# Subscribing


def test_subscribe_hands_a_join_to_the_joiner(
    session: NativeSession, transport: FakeTransport, hub: Hub, joiner: FakeJoiner
) -> None:
    send(session, {"type": "subscribe", "ref": "a", "table_id": "t1"})

    [join] = joiner.joins
    assert (join.table_id, join.cursor, join.snapshot) == ("t1", None, False)
    assert session.tables == {"t1": join}
    assert transport.sent == []  # nothing until the join is answered
    assert hub.tables == 0
    assert joiner.cancels == []


@pytest.mark.parametrize(
    ("fields", "cursor", "snapshot"),
    [
        ({"cursor": CURSOR}, CURSOR, False),
        ({"snapshot": True}, None, True),
        ({"cursor": "not ours", "snapshot": True}, "not ours", True),
        ({"cursor": None, "snapshot": False}, None, False),
    ],
    ids=repr,
)
def test_subscribe_passes_cursor_and_snapshot_to_the_join(
    session: NativeSession,
    joiner: FakeJoiner,
    fields: dict[str, Any],
    cursor: str | None,
    snapshot: bool,
) -> None:
    send(session, {"type": "subscribe", "table_id": "t1", **fields})

    [join] = joiner.joins
    assert (join.table_id, join.cursor, join.snapshot) == ("t1", cursor, snapshot)


def test_an_answered_join_gets_subscribed_then_synced(
    session: NativeSession, transport: FakeTransport, hub: Hub, joiner: FakeJoiner
) -> None:
    send(session, {"type": "subscribe", "ref": "a", "table_id": "t1"})
    [join] = joiner.joins

    joiner.answer(join, cursor=CURSOR_2)

    assert transport.sent == [
        text_frame(protocol.encode_subscribed("a", "t1")),
        text_frame(protocol.encode_synced("t1", CURSOR_2)),
    ]
    assert messages(transport) == [
        {"type": "subscribed", "ref": "a", "table_id": "t1"},
        {"type": "synced", "table_id": "t1", "cursor": CURSOR_2},
    ]
    assert session.tables == {"t1": None}
    assert hub.subscribers("t1") == 1


def test_the_full_subscribe_sequence(
    session: NativeSession,
    transport: FakeTransport,
    hub: Hub,
    joiner: FakeJoiner,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    every_row = [change("t1", f"r{n:04d}", n, "INSERT") for n in range(5)]
    two_per_frame = 2 * len(protocol.encode_change(every_row[0])) + 2
    monkeypatch.setattr(native, "FRAME_BYTES", two_per_frame)
    send(session, {"type": "subscribe", "ref": 7, "table_id": "t1", "cursor": "stale"})
    [join] = joiner.joins

    joiner.answer(join, every_row, CURSOR_2, reset="malformed_cursor")

    chunks = [every_row[0:2], every_row[2:4]]
    assert transport.sent == [
        text_frame(protocol.encode_subscribed(7, "t1")),
        text_frame(protocol.encode_reset("t1", "malformed_cursor")),
        *(
            text_frame(protocol.batch([protocol.encode_change(c) for c in chunk]))
            for chunk in chunks
        ),
        text_frame(protocol.encode_change(every_row[-1])),  # a last chunk of one: no array
        text_frame(protocol.encode_synced("t1", CURSOR_2)),
    ]
    sent = messages(transport)
    assert sent[0] == {"type": "subscribed", "ref": 7, "table_id": "t1"}
    assert sent[1] == {"type": "reset", "table_id": "t1", "reason": "malformed_cursor"}
    assert sent[2] == [catch_up_change(c) for c in chunks[0]]
    assert sent[3] == [catch_up_change(c) for c in chunks[1]]
    assert sent[4] == catch_up_change(every_row[-1])
    assert sent[5] == {"type": "synced", "table_id": "t1", "cursor": CURSOR_2}
    for message in [*sent[2], *sent[3], sent[4]]:
        assert "cursor" not in message  # catch-up changes carry no cursor

    # Then live: each change carries the batch's cursor.
    monkeypatch.undo()
    transport.sent.clear()
    live = [change("t1", "r0", 5000), change("t1", "r1", 5001, "DELETE")]
    assert hub.publish(Batch("t1", live, CURSOR_3, since=CURSOR_2)) == 1
    assert messages(transport) == [[live_change(c, CURSOR_3) for c in live]]


@pytest.mark.parametrize(
    ("count", "frame_sizes"),
    [(0, []), (1, [1]), (2, [2]), (3, [2, 1]), (4, [2, 2]), (5, [2, 2, 1])],
)
def test_catch_up_frames_hold_at_most_frame_bytes(
    session: NativeSession,
    transport: FakeTransport,
    joiner: FakeJoiner,
    monkeypatch: pytest.MonkeyPatch,
    count: int,
    frame_sizes: list[int],
) -> None:
    every_row = [change("t1", f"r{n:04d}", n) for n in range(count)]
    one = len(protocol.encode_change(change("t1", "r0000", 0)))
    monkeypatch.setattr(native, "FRAME_BYTES", 2 * one + 2)
    send(session, {"type": "subscribe", "table_id": "t1", "snapshot": True})

    joiner.answer(joiner.joins[0], every_row)

    sent = messages(transport)
    assert sent[0]["type"] == "subscribed"
    assert sent[-1]["type"] == "synced"
    frames = sent[1:-1]
    assert [len(f) if isinstance(f, list) else 1 for f in frames] == frame_sizes
    for frame, size in zip(frames, frame_sizes, strict=True):
        assert isinstance(frame, list) is (size > 1)
    flat = [m for f in frames for m in (f if isinstance(f, list) else [f])]
    assert flat == [catch_up_change(c) for c in every_row]


def test_a_message_larger_than_a_frame_goes_alone(
    session: NativeSession, transport: FakeTransport, joiner: FakeJoiner
) -> None:
    big = Change(
        "INSERT", "t1", "big", 1, json.dumps({"id": "big", "pad": "x" * native.FRAME_BYTES})
    )
    small = change("t1", "small", 2)
    send(session, {"type": "subscribe", "table_id": "t1", "snapshot": True})

    joiner.answer(joiner.joins[0], [small, big, small])

    frames = messages(transport)[1:-1]
    assert frames == [catch_up_change(small), catch_up_change(big), catch_up_change(small)]


def test_a_live_batch_split_into_frames_resumes_from_its_start_until_the_last(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    changes = [change("t1", f"r{n:04d}", n) for n in range(5)]
    one = len(protocol.encode_change(changes[0], CURSOR_3))
    monkeypatch.setattr(native, "FRAME_BYTES", 2 * one + 2)

    frames = split_frames(encode_batch(Batch("t1", changes, CURSOR_3, since=CURSOR_2)))

    assert frames == [
        [live_change(c, CURSOR_2) for c in changes[0:2]],
        [live_change(c, CURSOR_2) for c in changes[2:4]],
        live_change(changes[4], CURSOR_3),
    ]


def test_a_reset_with_no_rows_is_sent_before_synced(
    session: NativeSession, transport: FakeTransport, joiner: FakeJoiner
) -> None:
    send(session, {"type": "subscribe", "ref": 1, "table_id": "t1", "cursor": CURSOR})

    joiner.answer(joiner.joins[0], [], CURSOR_2, reset="history_pruned")

    assert messages(transport) == [
        {"type": "subscribed", "ref": 1, "table_id": "t1"},
        {"type": "reset", "table_id": "t1", "reason": "history_pruned"},
        {"type": "synced", "table_id": "t1", "cursor": CURSOR_2},
    ]


def test_no_live_batch_reaches_a_pending_subscription(
    session: NativeSession, transport: FakeTransport, hub: Hub, joiner: FakeJoiner
) -> None:
    send(session, {"type": "subscribe", "table_id": "t1"})

    assert hub.publish(Batch("t1", [change("t1", "r1", 1)], CURSOR, since=CURSOR)) == 0

    assert transport.sent == []


def test_subscriptions_go_live_in_the_order_their_joins_are_answered(
    session: NativeSession, transport: FakeTransport, hub: Hub, joiner: FakeJoiner
) -> None:
    send(session, {"type": "subscribe", "ref": 1, "table_id": "t1"})
    send(session, {"type": "subscribe", "ref": 2, "table_id": "t2"})
    first, second = joiner.joins

    joiner.answer(second, cursor=CURSOR_2)

    assert session.tables == {"t1": first, "t2": None}
    assert [m["type"] for m in messages(transport)] == ["subscribed", "synced"]
    assert hub.is_subscribed("t2")
    assert not hub.is_subscribed("t1")
    joiner.answer(first)
    assert session.tables == {"t1": None, "t2": None}


def test_a_second_answer_to_the_same_join_sends_nothing(
    session: NativeSession, transport: FakeTransport, hub: Hub, joiner: FakeJoiner
) -> None:
    send(session, {"type": "subscribe", "table_id": "t1"})
    [join] = joiner.joins
    joiner.answer(join)
    transport.sent.clear()

    joiner.answer(join, [change("t1", "r1", 1)], CURSOR_2)

    assert transport.sent == []
    assert hub.subscribers("t1") == 1


# Subscribing again


def test_resubscribe_while_pending_replaces_the_join(
    session: NativeSession, transport: FakeTransport, hub: Hub, joiner: FakeJoiner
) -> None:
    send(session, {"type": "subscribe", "ref": 1, "table_id": "t1", "cursor": CURSOR})
    send(session, {"type": "subscribe", "ref": 2, "table_id": "t1", "snapshot": True})
    old, new = joiner.joins

    assert joiner.cancels == [old]
    assert session.tables == {"t1": new}
    assert (new.cursor, new.snapshot) == (None, True)

    joiner.answer(old, [change("t1", "r1", 1)], CURSOR_2)
    assert transport.sent == []  # the replaced join's late answer is dropped
    assert hub.tables == 0

    joiner.answer(new, [change("t1", "r1", 1)], CURSOR_3)
    assert messages(transport) == [
        {"type": "subscribed", "ref": 2, "table_id": "t1"},
        catch_up_change(change("t1", "r1", 1)),
        {"type": "synced", "table_id": "t1", "cursor": CURSOR_3},
    ]
    assert hub.subscribers("t1") == 1


def test_resubscribe_while_live_starts_over_from_the_new_cursor(
    session: NativeSession, transport: FakeTransport, hub: Hub, joiner: FakeJoiner
) -> None:
    subscribe(session, joiner, "t1", ref=1)
    transport.sent.clear()

    send(session, {"type": "subscribe", "ref": 2, "table_id": "t1", "cursor": CURSOR})

    [join] = joiner.joins
    assert join.cursor == CURSOR
    assert session.tables == {"t1": join}
    assert joiner.cancels == []  # a live subscription has no join to cancel
    assert not hub.is_subscribed("t1")  # no live batch until the new join is answered
    assert hub.publish(Batch("t1", [change("t1", "r1", 1)], CURSOR, since=CURSOR)) == 0
    assert transport.sent == []

    joiner.answer(join, [change("t1", "r1", 1)], CURSOR_2)
    assert [m["type"] for m in messages(transport)] == ["subscribed", "change", "synced"]
    assert messages(transport)[0]["ref"] == 2
    transport.sent.clear()
    assert hub.publish(Batch("t1", [change("t1", "r1", 2)], CURSOR_3, since=CURSOR)) == 1
    assert len(transport.sent) == 1  # delivered once, not once per subscribe


# Unsubscribing


def test_unsubscribe_gets_unsubscribed(
    session: NativeSession, transport: FakeTransport, hub: Hub, joiner: FakeJoiner
) -> None:
    subscribe(session, joiner, "t1", ref=1)
    send(session, {"type": "unsubscribe", "ref": 2, "table_id": "t1"})

    assert messages(transport)[-1] == {"type": "unsubscribed", "ref": 2, "table_id": "t1"}
    assert session.tables == {}
    assert hub.tables == 0
    assert joiner.cancels == []
    transport.sent.clear()
    assert hub.publish(Batch("t1", [change("t1", "r1", 1)], CURSOR, since=CURSOR)) == 0
    assert transport.sent == []


def test_unsubscribe_while_pending_cancels_the_join(
    session: NativeSession, transport: FakeTransport, hub: Hub, joiner: FakeJoiner
) -> None:
    send(session, {"type": "subscribe", "ref": 1, "table_id": "t1", "snapshot": True})
    [join] = joiner.joins

    send(session, {"type": "unsubscribe", "ref": 2, "table_id": "t1"})

    assert joiner.cancels == [join]
    assert session.tables == {}
    assert messages(transport) == [{"type": "unsubscribed", "ref": 2, "table_id": "t1"}]
    transport.sent.clear()
    joiner.answer(join, [change("t1", "r1", 1)], CURSOR_2)  # answered anyway: too late
    assert transport.sent == []
    assert hub.tables == 0
    assert session.tables == {}


def test_unsubscribe_of_an_unknown_table_still_answers(
    session: NativeSession, transport: FakeTransport, hub: Hub, joiner: FakeJoiner
) -> None:
    subscribe(session, joiner, "t1")
    send(session, {"type": "unsubscribe", "ref": 9, "table_id": "never"})

    assert messages(transport)[-1] == {"type": "unsubscribed", "ref": 9, "table_id": "never"}
    assert list(session.tables) == ["t1"]
    assert hub.subscribers("t1") == 1
    assert hub.tables == 1
    assert joiner.cancels == []


# Limits


def test_too_many_subscriptions(
    session: NativeSession, transport: FakeTransport, hub: Hub, joiner: FakeJoiner
) -> None:
    subscribe(session, joiner, "t0")
    for n in range(1, MAX_SUBSCRIPTIONS):
        send(session, {"type": "subscribe", "table_id": f"t{n}"})  # pending ones count
    transport.sent.clear()
    pending = list(joiner.joins)

    send(session, {"type": "subscribe", "ref": "over", "table_id": "one-more"})

    [error] = messages(transport)
    assert error["type"] == "error"
    assert error["code"] == "too_many_subscriptions"
    assert error["ref"] == "over"
    assert str(MAX_SUBSCRIPTIONS) in error["message"]
    assert "one-more" not in session.tables
    assert joiner.joins == pending  # no join for it
    assert hub.subscribers("one-more") == 0
    assert len(session.tables) == MAX_SUBSCRIPTIONS


@pytest.mark.parametrize("live", [False, True], ids=["pending", "live"])
def test_resubscribe_at_the_limit_is_not_too_many(
    session: NativeSession, transport: FakeTransport, joiner: FakeJoiner, live: bool
) -> None:
    for n in range(MAX_SUBSCRIPTIONS):
        if live:
            subscribe(session, joiner, f"t{n}")
        else:
            send(session, {"type": "subscribe", "table_id": f"t{n}"})
    transport.sent.clear()

    send(session, {"type": "subscribe", "ref": 1, "table_id": "t0"})

    assert transport.sent == []
    join = session.tables["t0"]
    assert join is not None
    joiner.answer(join)
    assert messages(transport)[0] == {"type": "subscribed", "ref": 1, "table_id": "t0"}
    assert len(session.tables) == MAX_SUBSCRIPTIONS


def test_unsubscribing_frees_a_subscription(
    session: NativeSession, transport: FakeTransport, hub: Hub, joiner: FakeJoiner
) -> None:
    subscribe(session, joiner, "t0")
    for n in range(1, MAX_SUBSCRIPTIONS):
        send(session, {"type": "subscribe", "table_id": f"t{n}"})
    send(session, {"type": "unsubscribe", "table_id": "t0"})
    send(session, {"type": "unsubscribe", "table_id": "t1"})
    transport.sent.clear()

    send(session, {"type": "subscribe", "ref": 1, "table_id": "new"})
    send(session, {"type": "subscribe", "ref": 2, "table_id": "newer"})

    assert transport.sent == []  # no error
    assert sorted(session.tables) == ["new", "newer", "t2"]
    new_join = session.tables["new"]
    assert new_join is not None
    joiner.answer(new_join)
    assert messages(transport)[0] == {"type": "subscribed", "ref": 1, "table_id": "new"}
    assert hub.subscribers("new") == 1


def test_message_over_max_message_bytes_is_too_large(
    session: NativeSession, transport: FakeTransport, hub: Hub, joiner: FakeJoiner
) -> None:
    message = {"type": "subscribe", "ref": 1, "table_id": ""}
    size = len(json.dumps(message).encode())
    message["table_id"] = "x" * (MAX_MESSAGE_BYTES + 1 - size)
    data = json.dumps(message).encode()
    assert len(data) == MAX_MESSAGE_BYTES + 1

    session.receive_text(data)

    [error] = messages(transport)
    assert error["code"] == "too_large"
    assert "ref" not in error  # the message was never parsed
    assert str(MAX_MESSAGE_BYTES) in error["message"]
    assert transport.closes == []
    assert hub.tables == 0
    assert joiner.joins == []


def test_message_of_exactly_max_message_bytes_is_handled(
    session: NativeSession, transport: FakeTransport, joiner: FakeJoiner
) -> None:
    message = {"type": "subscribe", "ref": 1, "table_id": ""}
    size = len(json.dumps(message).encode())
    message["table_id"] = "x" * (MAX_MESSAGE_BYTES - size)
    data = json.dumps(message).encode()
    assert len(data) == MAX_MESSAGE_BYTES

    session.receive_text(data)

    [join] = joiner.joins
    assert join.table_id == message["table_id"]
    assert transport.sent == []


def test_limit_counts_bytes_not_characters(
    session: NativeSession, transport: FakeTransport
) -> None:
    # 150 two-byte characters: under the limit in characters, over it in bytes.
    text = json.dumps({"type": "ping", "ref": "é" * 150}, ensure_ascii=False)
    assert len(text) < MAX_MESSAGE_BYTES < len(text.encode())

    session.receive_text(text.encode())

    assert messages(transport)[0]["code"] == "too_large"


# Bad input


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(b"\xff", id="invalid-byte"),
        pytest.param(b'{"type": "ping", "ref": "\xc3"}', id="truncated-sequence"),
        pytest.param(b'{"type": "ping", "ref": "\xed\xa0\x80"}', id="encoded-surrogate"),
        pytest.param(
            b'{"type": "subscribe", "table_id": "t1", "cursor": "\xed\xa0\x80"}',
            id="encoded-surrogate-cursor",
        ),
    ],
)
def test_invalid_utf8_closes_with_1007(
    session: NativeSession, transport: FakeTransport, joiner: FakeJoiner, data: bytes
) -> None:
    session.receive_text(data)

    assert transport.sent == []
    assert len(transport.closes) == 1
    code, reason = transport.closes[0]
    assert code == protocol.CLOSE_INVALID_DATA == 1007
    assert reason
    assert joiner.joins == []


def test_binary_is_not_supported(session: NativeSession, transport: FakeTransport) -> None:
    session.receive_binary(b"\x00")

    [error] = messages(transport)
    assert error["type"] == "error"
    assert error["code"] == "binary_not_supported"
    assert "ref" not in error
    assert transport.closes == []


@pytest.mark.parametrize(
    ("text", "code", "ref"),
    [
        ("{nope", "bad_json", None),
        ("[1, 2]", "bad_message", None),
        ('{"type": "subscribe", "ref": 4}', "bad_message", 4),
        ('{"type": "subscribe", "ref": 4, "table_id": ""}', "bad_message", 4),
        ('{"type": "subscribe", "ref": 4, "table_id": "t1", "cursor": 5}', "bad_message", 4),
        ('{"type": "subscribe", "ref": "c", "table_id": "t1", "cursor": {}}', "bad_message", "c"),
        ('{"type": "subscribe", "ref": 4, "table_id": "t1", "snapshot": 1}', "bad_message", 4),
        ('{"type": "subscribe", "ref": 4, "table_id": "t1", "snapshot": "no"}', "bad_message", 4),
        ('{"type": "ping", "ref": true}', "bad_message", None),
        ('{"type": "ping", "ref": {"a": 1}}', "bad_message", None),
        ('{"type": "frobnicate", "ref": "z"}', "unknown_type", "z"),
    ],
)
def test_protocol_errors_are_answered(
    session: NativeSession,
    transport: FakeTransport,
    joiner: FakeJoiner,
    text: str,
    code: str,
    ref: Any,
) -> None:
    session.receive_text(text.encode())

    [error] = messages(transport)
    assert error["type"] == "error"
    assert error["code"] == code
    assert error.get("ref") == ref
    assert ("ref" in error) is (ref is not None)
    assert transport.closes == []
    assert not session.closed
    assert joiner.joins == []
    assert session.tables == {}


def test_a_refused_resubscribe_keeps_the_subscription(
    session: NativeSession, transport: FakeTransport, hub: Hub, joiner: FakeJoiner
) -> None:
    subscribe(session, joiner, "t1")
    transport.sent.clear()

    send(session, {"type": "subscribe", "ref": 1, "table_id": "t1", "cursor": 12})

    assert messages(transport)[0]["code"] == "bad_message"
    assert session.tables == {"t1": None}
    assert hub.subscribers("t1") == 1


def test_session_keeps_working_after_an_error(
    session: NativeSession, transport: FakeTransport
) -> None:
    session.receive_text(b"{nope")
    send(session, {"type": "ping", "ref": 1})

    assert messages(transport)[-1] == {"type": "pong", "ref": 1}


# Live delivery


def test_deliver_sends_one_change_as_one_message(
    session: NativeSession, transport: FakeTransport, hub: Hub, joiner: FakeJoiner
) -> None:
    subscribe(session, joiner, "t1")
    transport.sent.clear()
    the_change = change("t1", "r1", 7)

    hub.publish(Batch("t1", [the_change], CURSOR_2, since=CURSOR))

    assert transport.sent == [text_frame(protocol.encode_change(the_change, CURSOR_2))]
    assert messages(transport) == [
        {
            "type": "change",
            "table_id": "t1",
            "op": "UPDATE",
            "id": "r1",
            "row": json.loads(row("t1", "r1", 7)),
            "cursor": CURSOR_2,
        }
    ]


def test_deliver_shares_one_frame_between_sessions(hub: Hub) -> None:
    first_transport, second_transport = FakeTransport(), FakeTransport()
    first_joiner, second_joiner = FakeJoiner(), FakeJoiner()
    first = new_session(hub, first_transport, first_joiner)
    second = new_session(hub, second_transport, second_joiner)
    subscribe(first, first_joiner, "t1")
    subscribe(second, second_joiner, "t1")

    for the_batch in (
        Batch("t1", [change("t1", "r1", 1)], CURSOR, since=CURSOR),
        Batch("t1", [change("t1", "r1", 2), change("t1", "r2", 3)], CURSOR_2, since=CURSOR),
        Batch("t1", [], CURSOR_3, since=CURSOR),
        Batch("t1", [change("t1", "r1", 4)], CURSOR_3, "history_pruned", since=CURSOR),
    ):
        assert hub.publish(the_batch) == 2

        assert first_transport.sent[-1] is second_transport.sent[-1]  # the same bytes object
        assert first_transport.sent[-1] == encode_batch(the_batch)


def test_a_burst_is_one_json_array_frame(
    session: NativeSession, transport: FakeTransport, hub: Hub, joiner: FakeJoiner
) -> None:
    subscribe(session, joiner, "t1")
    transport.sent.clear()
    burst = [
        change("t1", "r1", 1, "INSERT"),
        change("t1", "r1", 2),
        change("t1", "r1", 3, "DELETE"),
    ]

    hub.publish(Batch("t1", burst, CURSOR_2, since=CURSOR))

    assert len(transport.sent) == 1
    [array] = messages(transport)
    assert array == [live_change(c, CURSOR_2) for c in burst]
    assert transport.sent[0] == text_frame(
        protocol.batch([protocol.encode_change(c, CURSOR_2) for c in burst])
    )


def test_a_live_reset_is_delivered(
    session: NativeSession, transport: FakeTransport, hub: Hub, joiner: FakeJoiner
) -> None:
    subscribe(session, joiner, "t1")
    transport.sent.clear()
    every_row = [change("t1", "r1", 1, "INSERT"), change("t1", "r2", 2, "INSERT")]

    hub.publish(Batch("t1", every_row, CURSOR_2, "history_pruned", since=CURSOR))

    assert messages(transport) == [
        [
            {"type": "reset", "table_id": "t1", "reason": "history_pruned"},
            *(live_change(c, CURSOR_2) for c in every_row),
        ]
    ]


def test_a_cursor_only_batch_is_a_cursor_message(
    session: NativeSession, transport: FakeTransport, hub: Hub, joiner: FakeJoiner
) -> None:
    subscribe(session, joiner, "t1")
    transport.sent.clear()

    hub.publish(Batch("t1", [], CURSOR_2, since=CURSOR))

    assert messages(transport) == [{"type": "cursor", "table_id": "t1", "cursor": CURSOR_2}]


# encode_batch


def test_encode_batch_of_one_change_is_one_message_with_the_cursor() -> None:
    the_change = change("t1", "r1", 1)

    assert encode_batch(Batch("t1", [the_change], CURSOR, since=CURSOR)) == text_frame(
        protocol.encode_change(the_change, CURSOR)
    )


def test_encode_batch_puts_the_reset_first_then_the_changes() -> None:
    changes = [change("t1", "r1", 1, "INSERT"), change("t1", "r2", 2, "INSERT")]

    frame = encode_batch(Batch("t1", changes, CURSOR, "history_pruned", since=CURSOR))

    assert frame == text_frame(
        protocol.batch(
            [
                protocol.encode_reset("t1", "history_pruned"),
                protocol.encode_change(changes[0], CURSOR),
                protocol.encode_change(changes[1], CURSOR),
            ]
        )
    )


def test_encode_batch_without_changes_is_a_single_cursor_message() -> None:
    frame = encode_batch(Batch("t1", [], CURSOR, since=CURSOR))

    assert frame == text_frame(protocol.encode_cursor("t1", CURSOR))
    assert decode_frame(frame) == {"type": "cursor", "table_id": "t1", "cursor": CURSOR}


def test_encode_batch_escapes_the_table_id() -> None:
    table_id = 'a"b\\c\né'

    assert decode_frame(encode_batch(Batch(table_id, [], CURSOR, since=CURSOR))) == {
        "type": "cursor",
        "table_id": table_id,
        "cursor": CURSOR,
    }


# Closing


def test_close_cancels_pending_joins_and_leaves_live_tables(
    session: NativeSession, transport: FakeTransport, hub: Hub, joiner: FakeJoiner
) -> None:
    other_joiner = FakeJoiner()
    other = new_session(hub, FakeTransport(), other_joiner)
    subscribe(other, other_joiner, "t1")
    subscribe(session, joiner, "t1")
    subscribe(session, joiner, "t2")
    send(session, {"type": "subscribe", "table_id": "t3"})
    send(session, {"type": "subscribe", "table_id": "t4", "snapshot": True})
    pending = list(joiner.joins)
    transport.sent.clear()

    session.close()

    assert session.closed
    assert session.tables == {}
    assert joiner.cancels == pending
    assert hub.subscribers("t1") == 1  # only the other session
    assert hub.subscribers("t2") == hub.subscribers("t3") == 0
    assert hub.tables == 1
    for join in pending:  # answered anyway: too late
        assert join.table_id is not None
        joiner.answer(join, [change(join.table_id, "r1", 1)])
    hub.publish(Batch("t1", [change("t1", "r1", 1)], CURSOR, since=CURSOR))
    hub.publish(Batch("t2", [change("t2", "r2", 2)], CURSOR, since=CURSOR))
    assert transport.sent == []
    assert transport.closes == []  # the session does not close its transport
    assert hub.tables == 1


def test_close_is_idempotent(session: NativeSession, hub: Hub, joiner: FakeJoiner) -> None:
    subscribe(session, joiner, "t1")
    send(session, {"type": "subscribe", "table_id": "t2"})

    session.close()
    session.close()

    assert session.closed
    assert hub.tables == 0
    assert len(joiner.cancels) == 1


def test_a_slow_consumer_closed_during_delivery_leaves_the_hub(hub: Hub) -> None:
    transport, joiner = SlowConsumerTransport(limit=5), FakeJoiner()
    session = new_session(hub, transport, joiner)
    transport.session = session
    subscribe(session, joiner, "t1")
    subscribe(session, joiner, "t2")
    assert len(transport.sent) == 4
    for n in range(3):
        hub.publish(Batch("t1", [change("t1", "r1", n)], CURSOR, since=CURSOR))

    assert transport.closes == [(protocol.CLOSE_SLOW_CONSUMER, "slow consumer")]
    assert session.closed
    assert session.tables == {}
    assert hub.tables == 0


def test_a_slow_consumer_closed_during_its_catch_up_leaves_the_hub(
    hub: Hub, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A snapshot larger than the client's send buffer: the WebSocket adapter
    # closes the session (slow consumer) from inside a catch-up send. The
    # session must not then subscribe itself to the hub: close() has already
    # run and will not run again, so the closed session would stay a hub
    # subscriber for good and keep the table live in the feed.
    transport, joiner = SlowConsumerTransport(limit=2), FakeJoiner()
    session = new_session(hub, transport, joiner)
    transport.session = session
    send(session, {"type": "subscribe", "ref": 1, "table_id": "t1", "snapshot": True})
    [join] = joiner.joins
    every_row = [change("t1", f"r{n}", n) for n in range(30)]
    monkeypatch.setattr(native, "FRAME_BYTES", 512)

    joiner.answer(join, every_row, CURSOR_2)

    assert transport.closes == [(protocol.CLOSE_SLOW_CONSUMER, "slow consumer")]
    assert session.closed
    assert session.tables == {}
    assert not hub.is_subscribed("t1")
    assert hub.tables == 0


# Isolation


def test_errors_of_one_session_do_not_affect_another(hub: Hub) -> None:
    bad_transport, good_transport = FakeTransport(), FakeTransport()
    bad_joiner, good_joiner = FakeJoiner(), FakeJoiner()
    bad = new_session(hub, bad_transport, bad_joiner)
    good = new_session(hub, good_transport, good_joiner)
    subscribe(bad, bad_joiner, "t1")
    subscribe(good, good_joiner, "t1")
    good_transport.sent.clear()

    bad.receive_text(b"{nope")
    bad.receive_binary(b"\x00")
    bad.receive_text(b"x" * (MAX_MESSAGE_BYTES + 1))
    bad.receive_text(b'{"type": "subscribe", "table_id": "t1", "cursor": []}')
    bad.receive_text(b"\xff")
    for n in range(MAX_SUBSCRIPTIONS + 1):
        send(bad, {"type": "subscribe", "table_id": f"other{n}"})
    the_change = change("t1", "r1", 1)
    hub.publish(Batch("t1", [the_change], CURSOR, since=CURSOR))

    assert good_transport.closes == []
    assert good_transport.sent == [text_frame(protocol.encode_change(the_change, CURSOR))]
    assert list(good.tables) == ["t1"]
    assert good_joiner.joins == []


@pytest.mark.parametrize(
    "text",
    [
        pytest.param('{"type": "ping", "ref": 1e999}', id="ping-overflowing-ref"),
        pytest.param('{"type": "ping", "ref": NaN}', id="ping-NaN-ref"),
        pytest.param('{"type": "nope", "ref": -Infinity}', id="unknown-type-Infinity-ref"),
        pytest.param('{"type": "subscribe", "ref": NaN, "table_id": "t1"}', id="subscribe-NaN-ref"),
        pytest.param('{"type": "ping", "ref": "\\ud800"}', id="ping-surrogate-ref"),
        pytest.param('{"type": "nope", "ref": "\\udfff"}', id="unknown-type-surrogate-ref"),
        pytest.param(
            '{"type": "subscribe", "ref": 1, "table_id": "\\ud800"}', id="subscribe-surrogate"
        ),
        pytest.param(
            '{"type": "unsubscribe", "ref": 1, "table_id": "\\udbff"}', id="unsubscribe-surrogate"
        ),
        pytest.param(
            '{"type": "subscribe", "ref": 1, "table_id": "t1", "cursor": "\\ud800"}',
            id="subscribe-surrogate-cursor",
        ),
        pytest.param(
            '{"type": "subscribe", "ref": 1, "table_id": "t1", "cursor": "v1:1:2:1:1:\\ud800"}',
            id="subscribe-surrogate-in-cursor",
        ),
    ],
)
def test_every_reply_is_valid_json_in_utf8(hub: Hub, transport: FakeTransport, text: str) -> None:
    # Valid UTF-8 text, and except for NaN/Infinity valid JSON, that a client can
    # send: the session must answer it (or refuse it) with valid JSON, not raise,
    # including once a real feed has answered its join.
    feed = Feed()
    session = new_session(hub, transport, feed)
    session.receive_text(text.encode())
    read = feed.plan(ORIGIN, hub.is_subscribed)
    if read is not None:
        for join, answer in feed.complete(read, ReadResult("100:100:", {}, []))[1]:
            join.on_joined(answer)

    replies = messages(transport)  # strict JSON, in UTF-8
    assert replies
    if replies[0]["type"] == "error":
        assert hub.tables == 0  # refused: nothing subscribed behind the client's back
        assert read is None


# With a real feed as the joiner


def run_read(feed: Feed, hub: Hub, snapshot: str, rows: list[Row] | None = None) -> None:
    """What the read loop does: plan, read (here: ``rows``), publish, then answer."""
    read = feed.plan(ORIGIN, hub.is_subscribed)
    assert read is not None
    batches, answered = feed.complete(read, ReadResult(snapshot, {}, rows or []))
    for the_batch in batches:
        hub.publish(the_batch)
    for join, answer in answered:
        join.on_joined(answer)


def test_with_a_feed_a_snapshot_subscriber_then_goes_live(
    hub: Hub, transport: FakeTransport
) -> None:
    feed = Feed()
    session = new_session(hub, transport, feed)
    send(session, {"type": "subscribe", "ref": 1, "table_id": "t1", "snapshot": True})
    first = change("t1", "r1", 3, "INSERT")

    run_read(feed, hub, "100:100:", [Row(0, first)])

    assert messages(transport) == [
        {"type": "subscribed", "ref": 1, "table_id": "t1"},
        catch_up_change(first),
        {"type": "synced", "table_id": "t1", "cursor": cursors.encode(ORIGIN, "100:100:")},
    ]
    transport.sent.clear()
    feed.wake("t1")
    read = feed.plan(ORIGIN, hub.is_subscribed)
    assert read is not None
    assert read.requests == [Request(0, "t1", "100:100:")]
    feed.failed(read)
    second = change("t1", "r1", 4)
    run_read(feed, hub, "110:110:", [Row(0, second)])
    assert messages(transport) == [live_change(second, cursors.encode(ORIGIN, "110:110:"))]


def test_with_a_feed_a_foreign_cursor_gets_a_reset_then_every_row(
    hub: Hub, transport: FakeTransport
) -> None:
    feed = Feed()
    session = new_session(hub, transport, feed)
    foreign = cursors.encode(Origin(1, 2), "100:100:")
    send(session, {"type": "subscribe", "ref": 1, "table_id": "t1", "cursor": foreign})
    the_row = change("t1", "r1", 3, "INSERT")

    run_read(feed, hub, "100:100:", [Row(0, the_row)])

    assert messages(transport) == [
        {"type": "subscribed", "ref": 1, "table_id": "t1"},
        {"type": "reset", "table_id": "t1", "reason": "foreign_cursor"},
        catch_up_change(the_row),
        {"type": "synced", "table_id": "t1", "cursor": cursors.encode(ORIGIN, "100:100:")},
    ]


def test_with_a_feed_unsubscribe_during_the_read_sends_nothing_more(
    hub: Hub, transport: FakeTransport
) -> None:
    feed = Feed()
    session = new_session(hub, transport, feed)
    send(session, {"type": "subscribe", "ref": 1, "table_id": "t1", "snapshot": True})
    read = feed.plan(ORIGIN, hub.is_subscribed)
    assert read is not None

    send(session, {"type": "unsubscribe", "ref": 2, "table_id": "t1"})
    _, answered = feed.complete(read, ReadResult("100:100:", {}, [Row(0, change("t1", "r", 1))]))
    for join, answer in answered:
        join.on_joined(answer)

    assert messages(transport) == [{"type": "unsubscribed", "ref": 2, "table_id": "t1"}]
    assert hub.tables == 0
    feed.wake("t1")
    assert feed.plan(ORIGIN, hub.is_subscribed) is None  # nobody left: no longer live
    assert feed.live_tables == 0


async def test_a_published_table_without_row_security_is_subscribed_by_its_table_id(
    hub: Hub, transport: FakeTransport, joiner: FakeJoiner
) -> None:
    session = new_session(hub, transport, joiner, FakePublishedTables(MESSAGES))

    send(session, {"type": "subscribe", "ref": 1, "table_id": "public.messages"})

    await eventually(lambda: [j.table_id for j in joiner.pending] == ["public.messages"])


async def test_a_published_table_with_row_security_is_refused_with_where_to_go(
    hub: Hub, transport: FakeTransport, joiner: FakeJoiner
) -> None:
    secured = dataclasses.replace(MESSAGES, row_security=True)
    session = new_session(hub, transport, joiner, FakePublishedTables(secured))

    send(session, {"type": "subscribe", "ref": 1, "table_id": "public.messages"})

    await eventually(lambda: bool(transport.sent))
    [error] = messages(transport)
    assert error["code"] == "forbidden"
    assert error["table_id"] == "public.messages"
    assert "subscribe on the Supabase endpoint" in error["message"]
    assert joiner.pending == []


def message_change(version: int, room_id: int, op: str = "INSERT") -> Change:
    row = json.dumps({"id": version, "room_id": room_id})
    return Change(op, "public.messages", str(version), version, row)


async def test_a_filtered_subscription_gets_only_what_postgres_passed(
    hub: Hub, transport: FakeTransport, joiner: FakeJoiner
) -> None:
    published = FakePublishedTables(MESSAGES)
    session = new_session(hub, transport, joiner, published)

    send(session, {"type": "subscribe", "table_id": "public.messages", "filter": "room_id=eq.5"})
    await eventually(lambda: bool(joiner.pending))
    [check] = published.checks.on("public.messages")
    five, six = message_change(1, 5), message_change(2, 6)
    [join] = joiner.pending
    join.on_joined(JoinResult(None, [five, six], CURSOR, {check: [True, False]}))
    live = Batch(
        "public.messages", [message_change(3, 6), message_change(4, 5)], CURSOR_2, since=CURSOR
    )
    live.checks = {check: [False, True]}
    hub.publish(live)
    nothing = Batch("public.messages", [message_change(5, 6)], CURSOR_3, since=CURSOR_2)
    nothing.checks = {check: [False]}
    hub.publish(nothing)

    sent = messages(transport)
    assert [(m["type"], m.get("row", {}).get("id")) for m in sent] == [
        ("subscribed", None),
        ("change", 1),
        ("synced", None),
        ("change", 4),
    ]
    send(session, {"type": "unsubscribe", "table_id": "public.messages"})
    assert published.checks.on("public.messages") == ()


@pytest.mark.parametrize(
    ("table_id", "filter", "reason"),
    [
        ("t1", "room_id=eq.5", "filter is served on published tables"),
        ("public.todos", "room_id=eq.5", "public.todos is not a published table"),
        ("public.messages", "room_id=eq.nope", "refused"),
    ],
)
async def test_a_filter_that_cannot_be_served_is_a_bad_filter(
    hub: Hub, transport: FakeTransport, joiner: FakeJoiner, table_id: str, filter: str, reason: str
) -> None:
    session = new_session(hub, transport, joiner, FakePublishedTables(MESSAGES))

    send(session, {"type": "subscribe", "ref": 1, "table_id": table_id, "filter": filter})

    await eventually(lambda: bool(transport.sent))
    [error] = messages(transport)
    assert (error["type"], error["code"], error["ref"]) == ("error", "bad_filter", 1)
    assert reason in error["message"]
    assert joiner.pending == []
