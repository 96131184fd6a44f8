"""Unit tests for broadcaster.core.wakeups: decoding the NOTIFY wake-ups of triggers.sql."""

from __future__ import annotations

import pytest

from broadcaster.core.feed import Feed
from broadcaster.core.tables import EVERY_TABLE
from broadcaster.core.wakeups import decode


def test_a_wake_up_of_any_table_makes_the_feed_read() -> None:
    # The read loop hands what decode() returns to Feed.wake(): a wake-up of
    # every table must be the feed's word for every table.
    feed = Feed()
    feed.wake(decode("t9"))
    assert not feed.due  # nobody reads t9
    feed.wake(decode(""))
    assert feed.due


def test_a_payload_is_the_table_id_that_changed() -> None:
    assert decode("t1") == "t1"


def test_the_empty_payload_wakes_every_table() -> None:
    # A TRUNCATE, or a table_id too long for NOTIFY's 8000 bytes.
    assert decode("") is EVERY_TABLE


@pytest.mark.parametrize(
    "table_id",
    [
        pytest.param(" ", id="space"),
        pytest.param(" t1 ", id="padded"),
        pytest.param("\n", id="newline"),
        pytest.param("tablé", id="non-ascii"),
        pytest.param("表😀", id="wide"),
        pytest.param("0", id="zero"),
        pytest.param("null", id="null"),
        pytest.param('{"op": "INSERT", "table_id": "t1"}', id="v1-header"),
        pytest.param('{"op":"UPDATE"}\n{"id":"r1"}', id="v1-payload"),
        pytest.param("x" * 7899, id="longest-sent"),
    ],
)
def test_any_other_payload_is_a_table_id_verbatim(table_id: str) -> None:
    # Never stripped, parsed or refused: subscribers match table_ids exactly,
    # and a payload for a table nobody subscribes to is simply ignored.
    decoded = decode(table_id)

    assert decoded == table_id
    assert decoded is not EVERY_TABLE
