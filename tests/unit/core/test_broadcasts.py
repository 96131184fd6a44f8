"""Unit tests for broadcaster.core.broadcasts: the NOTIFY payload and the registry of listeners."""

from __future__ import annotations

import json
import logging
from typing import Any

import pytest

from broadcaster.core import broadcasts
from broadcaster.core.broadcasts import Broadcasts, encode


class Recorder:
    """A listener that records what it is handed."""

    def __init__(self) -> None:
        self.received: list[tuple[str, str, Any, str]] = []

    def deliver_broadcast(self, topic: str, event: str, payload: Any, origin: str) -> None:
        self.received.append((topic, event, payload, origin))


class Failing:
    def __init__(self) -> None:
        self.calls = 0

    def deliver_broadcast(self, topic: str, event: str, payload: Any, origin: str) -> None:
        self.calls += 1
        raise RuntimeError("listener bug")


def test_encode_is_compact_json_with_every_field() -> None:
    text = encode("realtime:room", "cursor", {"x": 1, "name": "ü☃"}, "p:1")
    assert json.loads(text) == {
        "topic": "realtime:room",
        "event": "cursor",
        "payload": {"x": 1, "name": "ü☃"},
        "origin": "p:1",
    }
    assert "ü☃" in text
    assert ", " not in text
    assert ": " not in text


def test_origin_names_the_process_and_the_listener() -> None:
    registry = Broadcasts()
    one, two = Recorder(), Recorder()
    assert registry.origin(one).startswith(registry.process + ":")
    assert registry.origin(one) == registry.origin(one)
    assert registry.origin(one) != registry.origin(two)


def test_each_process_has_its_own_name() -> None:
    assert Broadcasts().process != Broadcasts().process


def test_notified_reaches_the_listeners_of_the_topic_only() -> None:
    registry = Broadcasts()
    room, room_too, other = Recorder(), Recorder(), Recorder()
    registry.listen("realtime:room", room)
    registry.listen("realtime:room", room_too)
    registry.listen("realtime:other", other)

    registry.notified(encode("realtime:room", "cursor", {"x": 1}, "p:9"))

    assert room.received == [("realtime:room", "cursor", {"x": 1}, "p:9")]
    assert room_too.received == room.received
    assert other.received == []


def test_notified_for_a_topic_nobody_listens_to_is_dropped_quietly(
    caplog: pytest.LogCaptureFixture,
) -> None:
    registry = Broadcasts()
    with caplog.at_level(logging.DEBUG, logger="broadcaster.core.broadcasts"):
        registry.notified(encode("realtime:nobody", "e", 1, "p:1"))
    assert [r for r in caplog.records if r.name == "broadcaster.core.broadcasts"] == []


def test_listening_twice_delivers_once() -> None:
    registry = Broadcasts()
    listener = Recorder()
    registry.listen("t", listener)
    registry.listen("t", listener)
    registry.notified(encode("t", "e", None, "o"))
    assert len(listener.received) == 1


def test_stop_ends_delivery_to_that_listener_only() -> None:
    registry = Broadcasts()
    leaving, staying = Recorder(), Recorder()
    registry.listen("t", leaving)
    registry.listen("t", staying)
    registry.listen("u", leaving)

    registry.stop("t", leaving)
    registry.notified(encode("t", "e", 1, "o"))
    registry.notified(encode("u", "e", 2, "o"))

    assert leaving.received == [("u", "e", 2, "o")]
    assert staying.received == [("t", "e", 1, "o")]


def test_stop_of_an_unknown_topic_or_listener_is_harmless() -> None:
    registry = Broadcasts()
    listener = Recorder()
    registry.stop("t", listener)
    registry.listen("t", Recorder())
    registry.stop("t", listener)
    registry.notified(encode("t", "e", 1, "o"))
    assert listener.received == []


def test_a_payload_without_payload_is_delivered_as_none() -> None:
    registry = Broadcasts()
    listener = Recorder()
    registry.listen("t", listener)
    registry.notified(json.dumps({"topic": "t", "event": "e", "origin": "o"}))
    assert listener.received == [("t", "e", None, "o")]


@pytest.mark.parametrize(
    "payload",
    [
        "",
        "not json",
        "{",
        "[]",
        '["t", "e", 1, "o"]',
        "42",
        '"t"',
        "null",
        json.dumps({"event": "e", "payload": 1, "origin": "o"}),
        json.dumps({"topic": "t", "payload": 1, "origin": "o"}),
        json.dumps({"topic": "t", "event": "e", "payload": 1}),
    ],
)
def test_malformed_payloads_are_dropped_with_a_warning(
    payload: str, caplog: pytest.LogCaptureFixture
) -> None:
    registry = Broadcasts()
    listener = Recorder()
    registry.listen("t", listener)
    with caplog.at_level(logging.WARNING, logger="broadcaster.core.broadcasts"):
        registry.notified(payload)
    assert listener.received == []
    [record] = [r for r in caplog.records if r.name == "broadcaster.core.broadcasts"]
    assert record.levelno == logging.WARNING
    assert "malformed broadcast" in record.getMessage()


def test_a_failing_listener_does_not_stop_the_others(caplog: pytest.LogCaptureFixture) -> None:
    registry = Broadcasts()
    before, failing, after = Recorder(), Failing(), Recorder()
    registry.listen("t", before)
    registry.listen("t", failing)
    registry.listen("t", after)

    with caplog.at_level(logging.ERROR, logger="broadcaster.core.broadcasts"):
        registry.notified(encode("t", "e", 1, "o"))

    assert failing.calls == 1
    assert before.received == [("t", "e", 1, "o")]
    assert after.received == [("t", "e", 1, "o")]
    [record] = [r for r in caplog.records if r.name == "broadcaster.core.broadcasts"]
    assert record.levelno == logging.ERROR
    assert record.exc_info is not None


def test_a_listener_may_stop_while_being_delivered_to() -> None:
    registry = Broadcasts()
    other = Recorder()

    class Quitter(Recorder):
        def deliver_broadcast(self, topic: str, event: str, payload: Any, origin: str) -> None:
            super().deliver_broadcast(topic, event, payload, origin)
            registry.stop(topic, self)
            registry.stop(topic, other)

    quitter = Quitter()
    registry.listen("t", quitter)
    registry.listen("t", other)
    registry.notified(encode("t", "e", 1, "o"))
    registry.notified(encode("t", "e", 2, "o"))
    # The first broadcast went to both (a snapshot of the listeners); no second.
    assert [r[2] for r in quitter.received] == [1]
    assert [r[2] for r in other.received] == [1]


def test_module_exports() -> None:
    assert set(broadcasts.__all__) == {
        "CHANNEL",
        "MAX_PAYLOAD_BYTES",
        "BroadcastRecipient",
        "Broadcasts",
        "encode",
    }
