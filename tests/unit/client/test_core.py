"""Unit tests for the client's sans-I/O core, fed by hand: its streams, subscriptions and views."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Callable
from typing import Any

import pytest

from broadcaster.client import (
    INTERRUPTED,
    BadFilterError,
    Change,
    Event,
    Reset,
    SlowConsumerError,
    Subscription,
    SubscriptionError,
    Table,
    TooManySubscriptionsError,
)
from broadcaster.client._core import Core
from broadcaster.exceptions import BroadcasterError
from tests.support.timeouts import within

pytestmark = pytest.mark.asyncio

C0, C1, C2, C3 = (f"v1:1:1:{n}:{n}:" for n in (100, 110, 120, 130))
PRUNED = {"type": "reset", "table_id": "t", "reason": "history_pruned"}


def row(row_id: str, version: int, **data: Any) -> dict[str, Any]:
    return {"id": row_id, "table_id": "t", "data": data, "version": version}


def change(
    row_id: str, version: int, op: str = "INSERT", cursor: str | None = None, table: str = "t"
) -> dict[str, Any]:
    message: dict[str, Any] = {
        "type": "change",
        "table_id": table,
        "op": op,
        "row": {**row(row_id, version), "table_id": table},
    }
    if cursor is not None:
        message["cursor"] = cursor
    return message


def published(
    key: str, version: int, op: str = "INSERT", cursor: str | None = None, **columns: Any
) -> dict[str, Any]:
    """A change of a published table, public.messages, as the server sends it:
    its key in ``id``; its row, the table's columns (a DELETE's: the key)."""
    table = "public.messages"
    deleted = {"id": key, "table_id": table}
    message: dict[str, Any] = {
        "type": "change",
        "table_id": table,
        "op": op,
        "id": key,
        "row": {**(deleted if op == "DELETE" else columns), "version": version},
    }
    if cursor is not None:
        message["cursor"] = cursor
    return message


class Harness:
    """A core with a connection that is opened, fed and lost by hand."""

    def __init__(self, retry_delay: Callable[[int], float] | None = None) -> None:
        self.woken = asyncio.Event()
        if retry_delay is None:
            self.core = Core(self.woken.set)
        else:
            self.core = Core(self.woken.set, retry_delay)

    def subscribe(self, table_id: str = "t", **options: Any) -> Subscription:
        options.setdefault("cursor", None)
        options.setdefault("snapshot", False)
        options.setdefault("queue_size", 100)
        subscription = Subscription(self.core, table_id, **options)
        self.core.add(subscription)
        return subscription

    def view(self, table_id: str = "t", **options: Any) -> Table:
        options.setdefault("rows", None)
        options.setdefault("cursor", None)
        view = Table(self.core, table_id, **options)
        self.core.add(view)
        return view

    def sent(self) -> list[dict[str, Any]]:
        messages = [json.loads(text) for text in self.core.outbox]
        self.core.outbox.clear()
        return messages

    def feed(self, *messages: dict[str, Any]) -> None:
        """One frame: a message alone, or several as an array."""
        self.core.receive(json.dumps(messages[0] if len(messages) == 1 else list(messages)))

    def answer(self, table_id: str = "t", *catch_up: dict[str, Any], cursor: str = C0) -> None:
        """Answer the subscribe just sent: subscribed, the catch-up, synced."""
        (subscribe,) = [m for m in self.sent() if m["type"] == "subscribe"]
        assert subscribe["table_id"] == table_id
        self.feed({"type": "subscribed", "ref": subscribe["ref"], "table_id": table_id})
        if catch_up:
            self.feed(*catch_up)
        self.feed({"type": "synced", "table_id": table_id, "cursor": cursor})


def drain(subscription: Subscription) -> list[Event]:
    """What is queued now, taken as the iterator would."""
    events: list[Event] = []

    async def take_all() -> None:
        while subscription.queued:
            events.append(await subscription.__anext__())

    coroutine = take_all()
    with contextlib.suppress(StopIteration):
        coroutine.send(None)
    return events


def ids(events: list[Event]) -> list[str]:
    return [e.id if isinstance(e, Change) else f"reset:{e.reason}" for e in events]


async def test_subscribes_are_sent_once_connected_with_what_was_asked() -> None:
    h = Harness()
    h.subscribe("a")
    h.subscribe("b", snapshot=True)
    h.subscribe("c", cursor=C1)
    assert h.sent() == []
    h.core.opened()
    sent = h.sent()
    assert [(m["table_id"], m.get("snapshot"), m.get("cursor")) for m in sent] == [
        ("a", None, None),
        ("b", True, None),
        ("c", None, C1),
    ]
    assert len({m["ref"] for m in sent}) == 3
    h.subscribe("d")
    assert [m["table_id"] for m in h.sent()] == ["d"]


async def test_one_subscription_per_table() -> None:
    h = Harness()
    h.subscribe("t")
    with pytest.raises(BroadcasterError, match="already subscribed"):
        h.view("t")


async def test_versions_not_newer_than_held_are_dropped() -> None:
    h = Harness()
    s = h.subscribe()
    h.core.opened()
    h.answer()
    h.feed(change("a", 1, cursor=C1), change("b", 2, cursor=C1))
    h.feed(change("a", 1, cursor=C1), change("b", 2, cursor=C1))  # a re-send
    h.feed(change("a", 3, "DELETE", cursor=C2))
    h.feed(change("a", 2, "UPDATE", cursor=C2))  # older than the delete
    assert [(e.id, e.version) for e in drain(s) if isinstance(e, Change)] == [
        ("a", 1),
        ("b", 2),
        ("a", 3),
    ]


async def test_messages_for_a_subscription_not_yet_answered_are_ignored() -> None:
    h = Harness()
    s = h.subscribe()
    h.core.opened()
    # Left over from an earlier subscription of the same table.
    h.feed(change("old", 1, cursor=C0), {"type": "synced", "table_id": "t", "cursor": C0})
    h.answer("t", change("new", 2))
    assert ids(drain(s)) == ["new"]
    assert s.cursor == C0


async def test_the_cursor_covers_exactly_what_was_yielded() -> None:
    h = Harness()
    s = h.subscribe()
    h.core.opened()
    h.answer(cursor=C0)
    assert s.cursor == C0
    h.feed(change("a", 1, cursor=C1), change("b", 2, cursor=C1))
    assert ids([await s.__anext__()]) == ["a"]
    assert s.cursor == C0, "b is not yielded yet, and C1 covers it"
    assert ids([await s.__anext__()]) == ["b"]
    assert s.cursor == C1
    h.feed({"type": "cursor", "table_id": "t", "cursor": C2})
    assert s.cursor == C2


async def test_a_cursor_message_moves_the_last_queued_change_commit() -> None:
    h = Harness()
    s = h.subscribe()
    h.core.opened()
    h.answer(cursor=C0)
    h.feed(change("a", 1, cursor=C1))
    h.feed({"type": "cursor", "table_id": "t", "cursor": C2})
    drain(s)
    assert s.cursor == C2


async def test_a_full_queue_pauses_and_resumes_from_the_last_commit() -> None:
    h = Harness()
    s = h.subscribe(queue_size=2)
    h.core.opened()
    h.answer(cursor=C0)
    h.feed(change("a", 1, cursor=C1), change("b", 2, cursor=C1), change("c", 3, cursor=C1))
    assert [m["type"] for m in h.sent()] == ["unsubscribe"]
    h.feed(change("d", 4, cursor=C2))  # in flight before the unsubscribe: dropped
    assert ids(drain(s)) == ["a", "b"]
    assert s.cursor == C0, "c was not queued: C1 does not cover what was yielded"
    (resubscribe,) = h.sent()
    assert resubscribe["cursor"] == C0
    # The catch-up re-sends a and b; only what is new is queued.
    h.core.outbox.append(json.dumps(resubscribe))
    h.answer("t", change("a", 1), change("b", 2), change("c", 3), change("d", 4), cursor=C2)
    assert h.sent() == [], "c and d fit"
    assert ids(drain(s)) == ["c", "d"]
    assert s.cursor == C2


async def test_a_first_snapshot_that_overflows_raises_slow_consumer() -> None:
    h = Harness()
    s = h.subscribe(snapshot=True, queue_size=2)
    h.core.opened()
    h.answer("t", change("a", 1), change("b", 2), change("c", 3))
    assert [m["type"] for m in h.sent()] == ["unsubscribe"]
    assert "t" not in h.core.streams
    assert ids([await s.__anext__(), await s.__anext__()]) == ["a", "b"]
    with pytest.raises(SlowConsumerError):
        await s.__anext__()
    assert s.closed


async def test_a_reset_forgets_held_versions() -> None:
    h = Harness()
    s = h.subscribe(cursor=C0)
    h.core.opened()
    h.answer("t", change("a", 5), cursor=C1)
    h.feed(
        {"type": "reset", "table_id": "t", "reason": "history_pruned"}, change("a", 5, cursor=C2)
    )
    assert drain(s) == [
        Change("t", "INSERT", "a", 5, row("a", 5)),
        Reset("t", "history_pruned"),
        Change("t", "INSERT", "a", 5, row("a", 5), C2),
    ]
    assert s.cursor == C2


async def test_an_interrupted_snapshot_starts_over_with_a_reset() -> None:
    h = Harness()
    s = h.subscribe(snapshot=True)
    h.core.opened()
    (subscribe,) = h.sent()
    h.feed({"type": "subscribed", "ref": subscribe["ref"], "table_id": "t"}, change("a", 1))
    h.core.lost()
    h.core.opened()
    h.answer("t", change("b", 2), cursor=C1)
    assert ids(drain(s)) == ["a", f"reset:{INTERRUPTED}", "b"]
    # Once synced, a reconnect resumes from the cursor.
    h.core.lost()
    h.core.opened()
    (again,) = h.sent()
    assert again["cursor"] == C1
    assert "snapshot" not in again


async def test_a_reconnect_resumes_from_the_last_cursor_seen() -> None:
    h = Harness()
    h.subscribe()
    view = h.view("v")
    h.core.opened()
    for message in h.sent():
        h.feed({"type": "subscribed", "ref": message["ref"], "table_id": message["table_id"]})
        h.feed({"type": "synced", "table_id": message["table_id"], "cursor": C0})
    h.feed(change("a", 1, cursor=C1))
    h.feed({"type": "cursor", "table_id": "v", "cursor": C2})
    h.core.lost()
    assert not view.synced
    h.core.opened()
    assert {m["table_id"]: m["cursor"] for m in h.sent()} == {"t": C1, "v": C2}


async def test_an_error_answering_a_subscribe_is_raised() -> None:
    h = Harness()
    s = h.subscribe("t")
    h.core.opened()
    (subscribe,) = h.sent()
    h.feed(
        {
            "type": "error",
            "ref": subscribe["ref"],
            "code": "too_many_subscriptions",
            "message": "a connection may hold at most 1 subscriptions",
        }
    )
    assert "t" not in h.core.streams
    with pytest.raises(TooManySubscriptionsError) as raised:
        await s.wait_synced()
    assert raised.value.code == "too_many_subscriptions"
    with pytest.raises(SubscriptionError):
        await s.__anext__()
    # An error answering nothing in particular changes nothing.
    h.feed({"type": "error", "code": "bad_json", "message": "?"})


async def test_deleted_rows_are_forgotten_at_the_second_new_cursor() -> None:
    h = Harness()
    s = h.subscribe()
    h.core.opened()
    h.answer(cursor=C0)
    h.feed(change("a", 1, cursor=C1))
    # A batch in two frames: the first carries the cursor the batch started from.
    h.feed(change("a", 2, "DELETE", cursor=C1))
    h.feed(change("b", 3, cursor=C2))
    assert s._versions == {"a": 2, "b": 3}
    h.feed({"type": "cursor", "table_id": "t", "cursor": C2})
    assert s._versions == {"a": 2, "b": 3}, "not a new cursor"
    h.feed({"type": "cursor", "table_id": "t", "cursor": C3})
    assert s._versions == {"b": 3}


async def test_a_view_applies_changes_and_resets() -> None:
    h = Harness()
    view = h.view(rows={"old": row("old", 1), "keep": row("keep", 9, v="held")}, cursor=C0)
    h.core.opened()
    h.answer("t", change("keep", 9), change("new", 10), cursor=C1)
    assert view.get("keep") == row("keep", 9, v="held")
    assert sorted(view.rows) == ["keep", "new", "old"]
    h.feed(change("old", 11, "DELETE", cursor=C2))
    assert "old" not in view
    assert view.cursor == C2
    h.feed(
        {"type": "reset", "table_id": "t", "reason": "history_pruned"}, change("x", 12, cursor=C2)
    )
    assert list(view.rows) == ["x"]
    assert view.resets == ["history_pruned"]
    with pytest.raises(ValueError, match="cursor"):
        Table(h.core, "u", rows={"a": row("a", 1)}, cursor=None)


async def test_wait_for_wakes_on_changes() -> None:
    h = Harness()
    view = h.view()
    h.core.opened()
    h.answer()
    waiter = asyncio.ensure_future(view.wait_for_row("a", lambda r: r["version"] > 1))
    h.feed(change("a", 1, cursor=C1))
    await asyncio.sleep(0)
    assert not waiter.done()
    h.feed(change("a", 2, "UPDATE", cursor=C1))
    assert (await within(waiter))["version"] == 2
    with pytest.raises(TimeoutError):
        await view.wait_for(lambda t: "b" in t, timeout=0.01)


async def test_malformed_server_messages_are_ignored(caplog: pytest.LogCaptureFixture) -> None:
    h = Harness()
    s = h.subscribe()
    h.core.opened()
    h.answer()
    h.core.receive("{not json")
    h.feed({"type": "change", "table_id": "t", "op": "INSERT", "row": {"id": "a"}})
    h.feed({"type": "something_new", "table_id": "t"})
    h.feed(change("b", 1, cursor=C1))
    assert ids(drain(s)) == ["b"]
    assert len([r for r in caplog.records if r.levelname == "ERROR"]) == 2


async def test_overflow_inside_a_live_reset_is_a_slow_consumer() -> None:
    h = Harness()
    s = h.subscribe(cursor=C0, queue_size=3)
    h.core.opened()
    h.answer("t", cursor=C1)
    # A reset batch in two frames; the first carries the cursor it started from.
    h.feed(PRUNED, change("a", 1, cursor=C1))
    assert not h.sent()
    h.feed(change("b", 2, cursor=C2), change("c", 3, cursor=C2))
    assert [m["type"] for m in h.sent()] == ["unsubscribe"]
    assert ids(drain(s)) == ["reset:history_pruned", "a", "b"]
    with pytest.raises(SlowConsumerError):
        await s.__anext__()


async def test_closing_a_subscription_drops_its_queue_and_unsubscribes() -> None:
    h = Harness()
    s = h.subscribe()
    h.core.opened()
    h.answer()
    h.feed(change("a", 1, cursor=C1), change("b", 2, cursor=C1))
    assert s.queued == 2
    async with s:
        pass
    assert [m["type"] for m in h.sent()] == ["unsubscribe"]
    assert s.closed
    assert s.queued == 0
    with pytest.raises(StopAsyncIteration):
        await s.__anext__()
    h.feed(change("c", 3, cursor=C2))  # in flight: nobody to take it
    assert "t" not in h.core.streams


async def test_a_forbidden_error_naming_a_table_ends_its_subscription() -> None:
    h = Harness()
    s = h.subscribe("t")
    other = h.subscribe("u")
    h.core.opened()
    for message in h.sent():
        h.feed({"type": "subscribed", "ref": message["ref"], "table_id": message["table_id"]})
        h.feed({"type": "synced", "table_id": message["table_id"], "cursor": C0})
    h.feed({"type": "error", "code": "forbidden", "message": "no", "table_id": "t"})
    assert "t" not in h.core.streams
    assert h.sent() == [], "the server has ended it already"
    with pytest.raises(SubscriptionError) as raised:
        await s.__anext__()
    assert raised.value.code == "forbidden"
    assert not other.closed


async def test_a_published_tables_rows_are_keyed_by_the_changes_id() -> None:
    h = Harness()
    view = h.view("public.messages", filter="room_id=eq.5")
    h.core.opened()
    h.answer(
        "public.messages",
        published("[5, 1]", 0, room_id=5, seq=1, body="a"),
        published("[5, 2]", 0, room_id=5, seq=2, body="b"),
    )
    assert sorted(view.rows) == ["[5, 1]", "[5, 2]"]
    assert view.get("[5, 1]") == {"room_id": 5, "seq": 1, "body": "a", "version": 0}
    h.feed(published("[5, 1]", 7, "UPDATE", C1, room_id=5, seq=1, body="edited"))
    h.feed(published("[5, 1]", 6, "UPDATE", C1, room_id=5, seq=1, body="older"))
    h.feed(published("[5, 2]", 8, "DELETE", C2))
    assert view.rows == {"[5, 1]": {"room_id": 5, "seq": 1, "body": "edited", "version": 7}}
    assert view._versions == {"[5, 1]": 7, "[5, 2]": 8}


async def test_the_changes_id_wins_over_a_column_named_id() -> None:
    h = Harness()
    s = h.subscribe("public.codes")
    h.core.opened()
    h.answer("public.codes")
    # Keyed by code; id is an ordinary column, and not even a string.
    message = {**published("k1", 3, cursor=C1, code="k1", id=42), "table_id": "public.codes"}
    h.feed(message)
    (event,) = drain(s)
    assert isinstance(event, Change)
    assert (event.id, event.version, event.row) == ("k1", 3, {"code": "k1", "id": 42, "version": 3})


async def test_a_change_whose_key_is_not_a_string_is_dropped(
    caplog: pytest.LogCaptureFixture,
) -> None:
    h = Harness()
    s = h.subscribe("public.messages")
    h.core.opened()
    h.answer("public.messages")
    h.feed({**published("a", 1, cursor=C1), "id": 5})
    h.feed({**published("a", 2, cursor=C1), "id": None})
    h.feed(published("b", 3, cursor=C1))
    assert ids(drain(s)) == ["b"]
    assert ["(id is not a string)" in r.getMessage() for r in caplog.records] == [True, True]


async def test_the_filter_is_sent_with_every_subscribe() -> None:
    h = Harness()
    s = h.subscribe("public.messages", snapshot=True, filter="room_id=eq.5", queue_size=1)
    h.core.opened()
    (first,) = h.sent()
    assert (first["filter"], first["snapshot"]) == ("room_id=eq.5", True)
    h.core.outbox.append(json.dumps(first))
    h.answer("public.messages", cursor=C0)
    # After a lost connection: the cursor, and the filter again.
    h.core.lost()
    h.core.opened()
    (resumed,) = h.sent()
    assert (resumed["filter"], resumed["cursor"]) == ("room_id=eq.5", C0)
    h.core.outbox.append(json.dumps(resumed))
    h.answer("public.messages", cursor=C1)
    # After a pause (the queue filled): the same.
    h.feed(published("a", 1, cursor=C2), published("b", 2, cursor=C2))
    assert [m["type"] for m in h.sent()] == ["unsubscribe"]
    drain(s)
    (unpaused,) = h.sent()
    assert (unpaused["filter"], unpaused["cursor"]) == ("room_id=eq.5", C1)
    assert s.filter == "room_id=eq.5"


@pytest.mark.parametrize("bad", ["", 5])
async def test_a_filter_must_be_a_non_empty_string(bad: Any) -> None:
    h = Harness()
    with pytest.raises(ValueError, match="non-empty string"):
        h.subscribe("public.messages", filter=bad)
    with pytest.raises(ValueError, match="non-empty string"):
        h.view("public.messages", filter=bad)


async def test_a_refused_filter_raises_bad_filter_error() -> None:
    h = Harness()
    view = h.view("public.messages", filter="nope=eq.1")
    h.core.opened()
    (subscribe,) = h.sent()
    h.feed(
        {
            "type": "error",
            "ref": subscribe["ref"],
            "code": "bad_filter",
            "message": "unknown column nope",
            "table_id": "public.messages",
        }
    )
    assert "public.messages" not in h.core.streams
    with pytest.raises(BadFilterError) as raised:
        await view.wait_synced()
    assert isinstance(raised.value, SubscriptionError)
    assert (raised.value.code, raised.value.table_id) == ("bad_filter", "public.messages")
    assert "unknown column nope" in str(raised.value)


@pytest.mark.parametrize("code", ["unavailable", "rate_limited"])
async def test_a_subscribe_refused_for_now_is_sent_again(code: str) -> None:
    refusals: list[int] = []

    def no_delay(failures: int) -> float:
        refusals.append(failures)
        return 0.0

    h = Harness(no_delay)
    s = h.subscribe("public.messages", filter="room_id=eq.5", cursor=C0)

    async def refuse() -> None:
        (subscribe,) = h.sent()
        h.woken.clear()
        h.feed({"type": "error", "ref": subscribe["ref"], "code": code, "message": "not now"})
        await within(h.woken.wait())

    h.core.opened()
    await refuse()
    await refuse()
    assert not s.closed
    assert refusals == [1, 2]
    h.answer("public.messages", cursor=C1)
    assert s.synced
    h.core.lost()
    h.core.opened()
    await refuse()
    assert refusals == [1, 2, 1], "counted again from 1 once synced"
    (again,) = h.sent()
    assert (again["filter"], again["cursor"]) == ("room_id=eq.5", C1)
