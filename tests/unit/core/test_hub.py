"""Unit tests for broadcaster.core.hub: subscriptions by table_id, fan-out and batches."""

from __future__ import annotations

import logging
from collections.abc import Callable

import pytest

from broadcaster.core.changes import Change
from broadcaster.core.hub import EVERY_TABLE, Batch, Hub

CURSOR = "v1:7316243112858025123:16384:100:105:101"
CURSOR_0 = "v1:7316243112858025123:16384:90:95:"


def change(table_id: str, row_id: str, version: int) -> Change:
    return Change("UPDATE", table_id, row_id, version, f'{{"id":"{row_id}","version":{version}}}')


class Recorder:
    """A subscriber that records what it is given, optionally in a shared log."""

    def __init__(self, name: str = "", log: list[tuple[str, Batch]] | None = None) -> None:
        self.name = name
        self.batches: list[Batch] = []
        self._log = log

    def deliver(self, batch: Batch) -> None:
        self.batches.append(batch)
        if self._log is not None:
            self._log.append((self.name, batch))

    def __repr__(self) -> str:
        return f"<Recorder {self.name}>"


class Exploding:
    def __init__(self) -> None:
        self.calls = 0

    def deliver(self, batch: Batch) -> None:
        self.calls += 1
        raise RuntimeError("subscriber bug")

    def __repr__(self) -> str:
        return "<Exploding>"


class Leaver(Recorder):
    """Unsubscribes itself while being delivered to, like a dropped slow consumer."""

    def __init__(self, hub: Hub, name: str = "leaver") -> None:
        super().__init__(name)
        self._hub = hub

    def deliver(self, batch: Batch) -> None:
        super().deliver(batch)
        self._hub.unsubscribe(batch.table_id, self)


@pytest.fixture
def hub() -> Hub:
    return Hub()


def test_new_hub_is_empty(hub: Hub) -> None:
    assert hub.tables == 0
    assert hub.subscribers("t1") == 0
    assert hub.publish(Batch("t1", [change("t1", "r1", 1)], CURSOR, since=CURSOR)) == 0


def test_is_subscribed_follows_subscriptions(hub: Hub) -> None:
    first, second = Recorder("a"), Recorder("b")
    assert not hub.is_subscribed("t1")

    hub.subscribe("t1", first)
    hub.subscribe("t1", second)
    assert hub.is_subscribed("t1")
    assert not hub.is_subscribed("t2")

    hub.unsubscribe("t1", first)
    assert hub.is_subscribed("t1")
    hub.unsubscribe("t1", second)
    assert not hub.is_subscribed("t1")


def test_is_subscribed_is_false_after_the_last_subscriber_leaves_during_publish(
    hub: Hub,
) -> None:
    hub.subscribe("t1", Leaver(hub))

    hub.publish(Batch("t1", [], CURSOR, since=CURSOR))

    assert not hub.is_subscribed("t1")


def test_subscriber_gets_the_published_batch(hub: Hub) -> None:
    subscriber = Recorder()
    hub.subscribe("t1", subscriber)
    published = Batch("t1", [change("t1", "r1", 1)], CURSOR, since=CURSOR)

    assert hub.publish(published) == 1
    assert subscriber.batches == [published]
    assert subscriber.batches[0] is published


def test_a_subscriber_of_every_table_gets_every_tables_batches(hub: Hub) -> None:
    log: list[tuple[str, Batch]] = []
    everything, one = Recorder("every", log), Recorder("t1", log)
    hub.subscribe(EVERY_TABLE, everything)
    hub.subscribe("t1", one)
    first = Batch("t1", [change("t1", "r1", 1)], CURSOR, since=CURSOR)
    second = Batch("t2", [change("t2", "r2", 2)], CURSOR, since=CURSOR)

    assert hub.publish(first) == 2
    assert hub.publish(second) == 1

    assert log == [("t1", first), ("every", first), ("every", second)]
    assert hub.is_subscribed(EVERY_TABLE)
    assert not hub.is_subscribed("t2")
    hub.unsubscribe(EVERY_TABLE, everything)
    assert not hub.is_subscribed(EVERY_TABLE)


def test_a_published_tables_batch_goes_to_its_own_subscribers_only(hub: Hub) -> None:
    everything, own = Recorder(), Recorder()
    hub.subscribe(EVERY_TABLE, everything)
    hub.subscribe("public.todos", own)
    published = Batch("public.todos", [change("public.todos", "1", 1)], CURSOR, since=CURSOR)

    published.published = True

    assert hub.publish(published) == 1
    assert own.batches == [published]
    assert everything.batches == []


def test_a_subscriber_of_a_table_and_of_every_table_gets_a_batch_once(hub: Hub) -> None:
    subscriber = Recorder()
    hub.subscribe("t1", subscriber)
    hub.subscribe(EVERY_TABLE, subscriber)

    assert hub.publish(Batch("t1", [], CURSOR, since=CURSOR)) == 1
    assert len(subscriber.batches) == 1


def test_subscribe_counts_tables_and_subscribers(hub: Hub) -> None:
    first, second = Recorder("a"), Recorder("b")
    hub.subscribe("t1", first)
    hub.subscribe("t1", second)
    hub.subscribe("t2", first)

    assert hub.tables == 2
    assert hub.subscribers("t1") == 2
    assert hub.subscribers("t2") == 1
    assert hub.subscribers("t3") == 0


def test_subscribing_twice_delivers_once(hub: Hub) -> None:
    subscriber = Recorder()
    hub.subscribe("t1", subscriber)
    hub.subscribe("t1", subscriber)

    assert hub.subscribers("t1") == 1
    assert hub.publish(Batch("t1", [change("t1", "r1", 1)], CURSOR, since=CURSOR)) == 1
    assert len(subscriber.batches) == 1


def test_unsubscribe_stops_delivery_and_forgets_the_empty_table(hub: Hub) -> None:
    subscriber = Recorder()
    hub.subscribe("t1", subscriber)
    hub.unsubscribe("t1", subscriber)

    assert hub.tables == 0
    assert hub.subscribers("t1") == 0
    assert hub.publish(Batch("t1", [change("t1", "r1", 1)], CURSOR, since=CURSOR)) == 0
    assert subscriber.batches == []


def test_unsubscribe_leaves_other_subscribers_and_tables(hub: Hub) -> None:
    leaving, staying = Recorder("leaving"), Recorder("staying")
    hub.subscribe("t1", leaving)
    hub.subscribe("t1", staying)
    hub.subscribe("t2", leaving)

    hub.unsubscribe("t1", leaving)

    assert hub.subscribers("t1") == 1
    assert hub.subscribers("t2") == 1
    hub.publish(Batch("t1", [change("t1", "r1", 1)], CURSOR, since=CURSOR))
    assert leaving.batches == []
    assert len(staying.batches) == 1


def test_unsubscribe_of_unknown_table_or_subscriber_is_a_no_op(hub: Hub) -> None:
    subscriber, stranger = Recorder("a"), Recorder("b")
    hub.subscribe("t1", subscriber)

    hub.unsubscribe("nope", subscriber)
    hub.unsubscribe("t1", stranger)
    hub.unsubscribe("t1", subscriber)
    hub.unsubscribe("t1", subscriber)

    assert hub.tables == 0


def test_no_delivery_across_tables(hub: Hub) -> None:
    on_t1, on_t2 = Recorder("t1"), Recorder("t2")
    hub.subscribe("t1", on_t1)
    hub.subscribe("t2", on_t2)
    batch_t1 = Batch("t1", [change("t1", "r1", 1)], CURSOR, since=CURSOR)

    assert hub.publish(batch_t1) == 1
    assert on_t1.batches == [batch_t1]
    assert on_t2.batches == []


def test_table_ids_are_exact_strings(hub: Hub) -> None:
    subscriber = Recorder()
    hub.subscribe("t1", subscriber)

    for other in ("T1", "t1 ", "t", "t10"):
        assert hub.publish(Batch(other, [change(other, "r1", 1)], CURSOR, since=CURSOR)) == 0
    assert subscriber.batches == []


def test_publish_returns_the_number_of_subscribers(hub: Hub) -> None:
    for name in "abc":
        hub.subscribe("t1", Recorder(name))
    hub.subscribe("t2", Recorder("d"))

    assert hub.publish(Batch("t1", [change("t1", "r1", 1)], CURSOR, since=CURSOR)) == 3
    assert hub.publish(Batch("t2", [change("t2", "r1", 2)], CURSOR, since=CURSOR)) == 1


def test_delivery_order_is_subscription_order(hub: Hub) -> None:
    log: list[tuple[str, Batch]] = []
    for name in ["c", "a", "b"]:
        hub.subscribe("t1", Recorder(name, log))

    hub.publish(Batch("t1", [change("t1", "r1", 1)], CURSOR, since=CURSOR))

    assert [name for name, _ in log] == ["c", "a", "b"]


def test_every_subscriber_gets_the_same_batch_object(hub: Hub) -> None:
    first, second = Recorder("a"), Recorder("b")
    hub.subscribe("t1", first)
    hub.subscribe("t1", second)
    published = Batch("t1", [change("t1", "r1", 1)], CURSOR, since=CURSOR)

    hub.publish(published)

    assert first.batches[0] is second.batches[0] is published


def test_failing_subscriber_does_not_stop_the_others(
    hub: Hub, caplog: pytest.LogCaptureFixture
) -> None:
    before, exploding, after = Recorder("before"), Exploding(), Recorder("after")
    hub.subscribe("t1", before)
    hub.subscribe("t1", exploding)
    hub.subscribe("t1", after)
    published = Batch("t1", [change("t1", "r1", 1)], CURSOR, since=CURSOR)

    with caplog.at_level(logging.ERROR, logger="broadcaster.core.hub"):
        count = hub.publish(published)

    assert count == 3
    assert before.batches == [published]
    assert after.batches == [published]
    assert exploding.calls == 1
    [record] = [r for r in caplog.records if r.name == "broadcaster.core.hub"]
    assert record.levelno == logging.ERROR
    assert record.exc_info is not None
    assert isinstance(record.exc_info[1], RuntimeError)
    assert "<Exploding>" in record.getMessage()
    # The failing subscriber stays subscribed: dropping it is its own business.
    assert hub.subscribers("t1") == 3


def test_subscriber_unsubscribing_itself_during_publish(hub: Hub) -> None:
    first, after = Recorder("first"), Recorder("after")
    leaver = Leaver(hub)
    hub.subscribe("t1", first)
    hub.subscribe("t1", leaver)
    hub.subscribe("t1", after)
    first_batch = Batch("t1", [change("t1", "r1", 1)], CURSOR, since=CURSOR)

    hub.publish(first_batch)

    assert first.batches == [first_batch]
    assert leaver.batches == [first_batch]
    assert after.batches == [first_batch]
    assert hub.subscribers("t1") == 2

    second_batch = Batch("t1", [change("t1", "r1", 2)], CURSOR, since=CURSOR)
    assert hub.publish(second_batch) == 2
    assert leaver.batches == [first_batch]
    assert after.batches == [first_batch, second_batch]


def test_last_subscriber_unsubscribing_itself_during_publish(hub: Hub) -> None:
    leaver = Leaver(hub)
    hub.subscribe("t1", leaver)

    hub.publish(Batch("t1", [change("t1", "r1", 1)], CURSOR, since=CURSOR))

    assert len(leaver.batches) == 1
    assert hub.tables == 0
    # The table can be subscribed to again afterwards.
    again = Recorder()
    hub.subscribe("t1", again)
    assert hub.publish(Batch("t1", [change("t1", "r1", 2)], CURSOR, since=CURSOR)) == 1
    assert len(again.batches) == 1


def test_batch_memo_builds_once_per_key() -> None:
    the_batch = Batch("t1", [change("t1", "r1", 1)], CURSOR, since=CURSOR)
    calls: list[tuple[str, Batch]] = []

    def build(key: str) -> Callable[[Batch], object]:
        def builder(b: Batch) -> object:
            calls.append((key, b))
            return object()

        return builder

    first = the_batch.memo("native", build("native"))
    second = the_batch.memo("native", build("native-again"))
    other = the_batch.memo("other", build("other"))

    assert first is second
    assert other is not first
    assert calls == [("native", the_batch), ("other", the_batch)]


def test_batch_memo_is_per_batch() -> None:
    first = Batch("t1", [change("t1", "r1", 1)], CURSOR, since=CURSOR)
    second = Batch("t1", [change("t1", "r1", 1)], CURSOR, since=CURSOR)

    assert first.memo("k", lambda b: b.changes[0].version) == 1
    assert second.memo("k", lambda b: ["built", b.table_id]) == ["built", "t1"]
    assert first.memo("k", lambda b: 99) == 1


def test_batch_memo_does_not_cache_a_failed_build() -> None:
    the_batch = Batch("t1", [change("t1", "r1", 1)], CURSOR, since=CURSOR)

    def broken(_b: Batch) -> int:
        raise RuntimeError("build failed")

    with pytest.raises(RuntimeError, match="build failed"):
        the_batch.memo("k", broken)
    assert the_batch.memo("k", lambda b: 2) == 2


def test_batch_repr() -> None:
    assert (
        repr(Batch("t1", [change("t1", "r1", 1), change("t1", "r2", 2)], CURSOR, since=CURSOR))
        == "<Batch 't1' of 2>"
    )


def test_batch_holds_its_table_changes_cursor_and_reset() -> None:
    changes = [change("t1", "r1", 1), change("t1", "r2", 2)]

    the_batch = Batch("t1", changes, CURSOR, "history_pruned", since=CURSOR_0)

    assert the_batch.table_id == "t1"
    assert the_batch.changes is changes
    assert the_batch.cursor == CURSOR
    assert the_batch.since == CURSOR_0
    assert the_batch.reset == "history_pruned"


def test_batch_reset_defaults_to_none() -> None:
    assert Batch("t1", [change("t1", "r1", 1)], CURSOR, since=CURSOR).reset is None


def test_a_batch_with_no_changes_only_advances_the_cursor(hub: Hub) -> None:
    subscriber = Recorder()
    hub.subscribe("t1", subscriber)
    cursor_only = Batch("t1", [], CURSOR, since=CURSOR)

    assert hub.publish(cursor_only) == 1

    assert subscriber.batches == [cursor_only]
    assert list(subscriber.batches[0].changes) == []
    assert repr(cursor_only) == "<Batch 't1' of 0>"


def test_batch_has_no_instance_dict() -> None:
    the_batch = Batch("t1", [], CURSOR, since=CURSOR)

    with pytest.raises(AttributeError):
        the_batch.extra = 1  # type: ignore[attr-defined]


def test_a_batch_goes_to_the_subscribers_whose_interest_some_change_passed(hub: Hub) -> None:
    everything, five, six = Recorder(), Recorder(), Recorder()
    hub.subscribe("public.todos", everything)
    hub.subscribe("public.todos", five, frozenset({"room 5"}))
    hub.subscribe("public.todos", six, frozenset({"room 6", "room 7"}))
    changed = Batch("public.todos", [change("public.todos", "1", 1)], CURSOR, since=CURSOR)
    changed.checks = {"room 5": [True], "room 6": [False]}

    assert hub.publish(changed) == 2
    assert (everything.batches, five.batches, six.batches) == ([changed], [changed], [])

    # A batch with nothing to pass (a cursor, a reset) goes to every subscriber.
    moved = Batch("public.todos", [], CURSOR, since=CURSOR)
    assert hub.publish(moved) == 3
    reset = Batch("public.todos", changed.changes, CURSOR, "history_pruned", since=CURSOR)
    reset.checks = changed.checks
    assert hub.publish(reset) == 3

    # Subscribing again changes the interest.
    hub.subscribe("public.todos", six, frozenset({"room 5"}))
    assert hub.publish(changed) == 3
