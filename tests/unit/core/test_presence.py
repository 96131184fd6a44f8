"""broadcaster.core.presence: state and diff shapes, and the registry of listeners."""

from __future__ import annotations

import json
import logging
from typing import Any

import pytest

from broadcaster.core import presence
from broadcaster.core.presence import MAX_META_BYTES, Presences, diff, diffs, state


class Recorder:
    def __init__(self) -> None:
        self.received: list[tuple[str, Any, Any]] = []

    def deliver_presence(self, topic: str, joins: Any, leaves: Any) -> None:
        self.received.append((topic, joins, leaves))


class Failing:
    def __init__(self) -> None:
        self.calls = 0

    def deliver_presence(self, topic: str, joins: Any, leaves: Any) -> None:
        self.calls += 1
        raise RuntimeError("listener bug")


def test_state_of_nobody_is_empty() -> None:
    assert state([]) == {}


def test_state_groups_metas_by_key_with_their_refs() -> None:
    entries = [
        ("ada", "r1", {"name": "Ada", "tab": 1}),
        ("bob", "r2", {"name": "Bob"}),
        ("ada", "r3", {"name": "Ada", "tab": 2}),
    ]
    assert state(entries) == {
        "ada": {
            "metas": [
                {"name": "Ada", "tab": 1, "phx_ref": "r1"},
                {"name": "Ada", "tab": 2, "phx_ref": "r3"},
            ]
        },
        "bob": {"metas": [{"name": "Bob", "phx_ref": "r2"}]},
    }


@pytest.mark.parametrize("meta", [None, [1, 2], "text", 3])
def test_a_meta_that_is_not_an_object_keeps_only_its_ref(meta: Any) -> None:
    assert state([("k", "r", meta)]) == {"k": {"metas": [{"phx_ref": "r"}]}}


def test_the_ref_wins_over_a_phx_ref_in_the_meta() -> None:
    assert state([("k", "real", {"phx_ref": "forged"})]) == {"k": {"metas": [{"phx_ref": "real"}]}}


def test_state_does_not_change_the_metas_it_is_given() -> None:
    meta = {"name": "Ada"}
    state([("ada", "r1", meta)])
    assert meta == {"name": "Ada"}


def test_state_accepts_any_iterable() -> None:
    entries = (entry for entry in [("a", "r", dict[str, Any]())])
    assert state(entries) == {"a": {"metas": [{"phx_ref": "r"}]}}


def test_diff_is_compact_json_in_phoenix_shape() -> None:
    text = diff("realtime:room", [("ada", "r1", {"name": "Ädä"})], [("bob", "r2", {})])
    assert json.loads(text) == {
        "topic": "realtime:room",
        "joins": {"ada": {"metas": [{"name": "Ädä", "phx_ref": "r1"}]}},
        "leaves": {"bob": {"metas": [{"phx_ref": "r2"}]}},
    }
    assert "Ädä" in text
    assert ", " not in text


def test_diff_with_nothing_on_one_side() -> None:
    assert json.loads(diff("t", [], [])) == {"topic": "t", "joins": {}, "leaves": {}}


def test_a_diff_that_fits_a_notify_is_one_payload() -> None:
    joins, leaves = [("ada", "r2", {"name": "Ada L."})], [("ada", "r1", {"name": "Ada"})]
    assert diffs("t", joins, leaves) == [diff("t", joins, leaves)]


def test_a_retrack_too_large_for_one_notify_sends_its_joins_then_its_leaves() -> None:
    big = {"blob": "é" * (MAX_META_BYTES // 2 - 20)}  # MAX_META_BYTES of UTF-8, nearly
    joins, leaves = [("ada", "r2", big)], [("ada", "r1", big)]
    assert len(diff("t", joins, leaves).encode()) >= 8000
    payloads = diffs("t", joins, leaves)
    assert [json.loads(p) for p in payloads] == [
        json.loads(diff("t", joins, [])),
        json.loads(diff("t", [], leaves)),
    ]
    assert all(len(p.encode()) < 8000 for p in payloads)


def test_notified_reaches_the_followers_of_the_topic_only() -> None:
    registry = Presences()
    room, room_too, other = Recorder(), Recorder(), Recorder()
    registry.follow("realtime:room", room)
    registry.follow("realtime:room", room_too)
    registry.follow("realtime:other", other)

    registry.notified(diff("realtime:room", [("ada", "r1", {"n": 1})], []))

    expected = ("realtime:room", {"ada": {"metas": [{"n": 1, "phx_ref": "r1"}]}}, dict[str, Any]())
    assert room.received == [expected]
    assert room_too.received == [expected]
    assert other.received == []


def test_following_twice_delivers_once() -> None:
    registry = Presences()
    listener = Recorder()
    registry.follow("t", listener)
    registry.follow("t", listener)
    registry.notified(diff("t", [], []))
    assert len(listener.received) == 1


def test_stop_ends_delivery_to_that_listener_only() -> None:
    registry = Presences()
    leaving, staying = Recorder(), Recorder()
    registry.follow("t", leaving)
    registry.follow("t", staying)
    registry.stop("t", leaving)
    registry.stop("t", Recorder())
    registry.stop("never", leaving)
    registry.notified(diff("t", [], [("k", "r", {})]))
    assert leaving.received == []
    assert staying.received == [("t", {}, {"k": {"metas": [{"phx_ref": "r"}]}})]


@pytest.mark.parametrize(
    "payload",
    [
        "",
        "not json",
        "{",
        "[]",
        "7",
        "null",
        '"t"',
        json.dumps({"joins": {}, "leaves": {}}),
        json.dumps({"topic": "t", "leaves": {}}),
        json.dumps({"topic": "t", "joins": {}}),
    ],
)
def test_malformed_diffs_are_dropped_with_a_warning(
    payload: str, caplog: pytest.LogCaptureFixture
) -> None:
    registry = Presences()
    listener = Recorder()
    registry.follow("t", listener)
    with caplog.at_level(logging.WARNING, logger="broadcaster.core.presence"):
        registry.notified(payload)
    assert listener.received == []
    [record] = [r for r in caplog.records if r.name == "broadcaster.core.presence"]
    assert record.levelno == logging.WARNING
    assert "malformed presence diff" in record.getMessage()


def test_a_failing_listener_does_not_stop_the_others(caplog: pytest.LogCaptureFixture) -> None:
    registry = Presences()
    before, failing, after = Recorder(), Failing(), Recorder()
    registry.follow("t", before)
    registry.follow("t", failing)
    registry.follow("t", after)

    with caplog.at_level(logging.ERROR, logger="broadcaster.core.presence"):
        registry.notified(diff("t", [("k", "r", {})], []))

    assert failing.calls == 1
    assert len(before.received) == 1
    assert len(after.received) == 1
    [record] = [r for r in caplog.records if r.name == "broadcaster.core.presence"]
    assert record.levelno == logging.ERROR
    assert record.exc_info is not None


def test_module_exports() -> None:
    assert set(presence.__all__) == {
        "CHANNEL",
        "MAX_META_BYTES",
        "Presences",
        "Store",
        "diff",
        "diffs",
        "state",
    }
