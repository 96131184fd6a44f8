"""Coalesced writes, with plain writers: what a round holds and how it writes it."""

from __future__ import annotations

import logging

import pytest

from broadcaster.core.writes import Writes


class Recorder:
    def __init__(self) -> None:
        self.written: list[bytes] = []

    def write(self, data: bytes) -> None:
        self.written.append(data)


class Broken:
    def write(self, data: bytes) -> None:
        raise RuntimeError("socket gone")


def test_outside_a_round_nothing_is_held() -> None:
    writes = Writes()
    assert not writes.holding


def test_a_round_writes_each_writer_once_in_order() -> None:
    writes = Writes()
    a, b = Recorder(), Recorder()
    with writes.round():
        assert writes.holding
        writes.hold(a, b"1")
        writes.hold(b, b"x")
        writes.hold(a, b"2")
        writes.hold(a, b"3")
        assert a.written == b.written == []
    assert not writes.holding
    assert a.written == [b"123"]
    assert b.written == [b"x"]


def test_a_single_frame_is_written_as_the_same_bytes() -> None:
    # The frame built once for a change is shared by every subscriber: no copy.
    writes = Writes()
    a = Recorder()
    frame = bytes(range(200))
    with writes.round():
        writes.hold(a, frame)
    assert a.written[0] is frame


def test_a_nested_round_writes_at_the_end_of_the_outer_one() -> None:
    writes = Writes()
    a = Recorder()
    with writes.round():
        writes.hold(a, b"1")
        with writes.round():
            writes.hold(a, b"2")
        assert a.written == []
        assert writes.holding
        writes.hold(a, b"3")
    assert a.written == [b"123"]


def test_the_next_round_starts_empty() -> None:
    writes = Writes()
    a = Recorder()
    with writes.round():
        writes.hold(a, b"1")
    with writes.round():
        writes.hold(a, b"2")
    assert a.written == [b"1", b"2"]


def test_a_failing_writer_is_logged_and_the_others_are_written(
    caplog: pytest.LogCaptureFixture,
) -> None:
    writes = Writes()
    a, b = Recorder(), Recorder()
    with caplog.at_level(logging.ERROR, logger="broadcaster.core.writes"), writes.round():
        writes.hold(a, b"1")
        writes.hold(Broken(), b"2")
        writes.hold(b, b"3")
    assert (a.written, b.written) == ([b"1"], [b"3"])
    (record,) = caplog.records
    assert record.exc_info is not None


def test_what_was_held_is_written_when_the_round_raises() -> None:
    writes = Writes()
    a = Recorder()

    def deliver() -> None:
        with writes.round():
            writes.hold(a, b"1")
            raise LookupError("a subscriber failed")

    with pytest.raises(LookupError, match="a subscriber failed"):
        deliver()
    assert a.written == [b"1"]
    assert not writes.holding
