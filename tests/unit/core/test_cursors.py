"""Unit tests for broadcaster.core.cursors: opaque resume points, as plain strings."""

from __future__ import annotations

from typing import Any

import pytest

from broadcaster.core import cursors
from broadcaster.core.cursors import FOREIGN, MALFORMED, Origin, Snapshot, decode, encode
from broadcaster.exceptions import BroadcasterError, CursorError

ORIGIN = Origin(7_316_243_112_858_025_123, 16_384)
PREFIX = f"v1:{ORIGIN.system_identifier}:{ORIGIN.database_oid}:"
MAX_XID = 2**64 - 1


def malformed(cursor: object, origin: Origin = ORIGIN) -> CursorError:
    with pytest.raises(CursorError) as caught:
        decode(cursor, origin)
    assert caught.value.reason == MALFORMED
    return caught.value


def unparsable(text: str) -> CursorError:
    with pytest.raises(CursorError) as caught:
        Snapshot.parse(text)
    assert caught.value.reason == MALFORMED
    return caught.value


def test_encode_tags_the_snapshot_with_version_and_origin() -> None:
    assert encode(Origin(1, 2), "10:20:12,15") == "v1:1:2:10:20:12,15"
    assert encode(ORIGIN, "10:20:") == PREFIX + "10:20:"


@pytest.mark.parametrize(
    "snapshot",
    [
        "1:1:",
        "10:20:",
        "10:20:10",
        "10:20:12",
        "10:20:10,12,19",
        f"{MAX_XID - 1}:{MAX_XID}:",
        f"{MAX_XID - 2}:{MAX_XID}:{MAX_XID - 2},{MAX_XID - 1}",
    ],
)
def test_decode_of_encode_is_the_snapshot(snapshot: str) -> None:
    decoded = decode(encode(ORIGIN, snapshot), ORIGIN)

    assert decoded == Snapshot.parse(snapshot)
    assert decoded.text == snapshot
    assert encode(ORIGIN, decoded.text) == encode(ORIGIN, snapshot)


def test_decode_returns_the_snapshot_fields() -> None:
    assert decode(PREFIX + "100:110:101,105", ORIGIN) == Snapshot(100, 110, (101, 105))
    assert decode(PREFIX + "100:110:", ORIGIN) == Snapshot(100, 110)


def test_a_long_valid_cursor_is_accepted() -> None:
    xips = ",".join(str(x) for x in range(1_000_000, 1_005_000))
    cursor = PREFIX + f"1000000:2000000:{xips}"
    assert 30_000 < len(cursor) <= 64 * 1024

    assert len(decode(cursor, ORIGIN).xip) == 5_000


# Malformed cursors


@pytest.mark.parametrize(
    "cursor",
    [None, 1, 1.5, True, b"v1:1:2:10:20:", ["v1", 1, 2, "10:20:"], {"cursor": "x"}],
    ids=repr,
)
def test_a_cursor_that_is_not_a_string_is_malformed(cursor: Any) -> None:
    malformed(cursor)


def test_a_cursor_longer_than_64_kib_is_malformed() -> None:
    xips = ",".join(str(x) for x in range(1_000_000, 1_012_000))
    cursor = PREFIX + f"1000000:2000000:{xips}"
    assert len(cursor) > 64 * 1024

    malformed(cursor)


def test_a_cursor_of_a_megabyte_is_malformed_without_being_parsed() -> None:
    malformed(PREFIX + "1:2:" + "1" * (1 << 20))


@pytest.mark.parametrize(
    "cursor",
    [
        pytest.param("", id="empty"),
        pytest.param("v2:1:2:10:20:", id="v2"),
        pytest.param("V1:1:2:10:20:", id="uppercase"),
        pytest.param("v:1:2:10:20:", id="no-number"),
        pytest.param("1:2:10:20:", id="missing"),
        pytest.param(":1:2:10:20:", id="empty-tag"),
        pytest.param(" v1:1:2:10:20:", id="leading-space"),
        pytest.param("10:20:", id="bare-snapshot"),
    ],
)
def test_a_wrong_version_tag_is_malformed(cursor: str) -> None:
    malformed(cursor)


@pytest.mark.parametrize(
    "cursor",
    [
        pytest.param("v1:x:2:10:20:", id="system-identifier-word"),
        pytest.param("v1::2:10:20:", id="system-identifier-empty"),
        pytest.param("v1:1.5:2:10:20:", id="system-identifier-float"),
        pytest.param("v1:1:oid:10:20:", id="oid-word"),
        pytest.param("v1:1::10:20:", id="oid-empty"),
        pytest.param("v1:1:0x10:10:20:", id="oid-hex"),
    ],
)
def test_a_non_numeric_origin_is_malformed(cursor: str) -> None:
    malformed(cursor)


@pytest.mark.parametrize(
    "cursor",
    [
        pytest.param("v1", id="tag-only"),
        pytest.param("v1:1", id="2"),
        pytest.param("v1:1:2", id="3"),
        pytest.param("v1:1:2:", id="empty-snapshot"),
        pytest.param("v1:1:2:10", id="snapshot-of-1"),
        pytest.param("v1:1:2:10:20", id="snapshot-of-2"),
        pytest.param("v1:1:2:10:20:12:13", id="snapshot-of-4"),
        pytest.param("v1:1:2:10:20:12:", id="trailing-colon"),
    ],
)
def test_a_wrong_number_of_parts_is_malformed(cursor: str) -> None:
    malformed(cursor.replace("v1:1:2", PREFIX.rstrip(":"), 1))


@pytest.mark.parametrize(
    "snapshot",
    [
        pytest.param("0:20:", id="xmin-0"),
        pytest.param("0:0:", id="both-0"),
        pytest.param("-1:20:", id="xmin-negative"),
        pytest.param("21:20:", id="xmin-above-xmax"),
        pytest.param(f"1:{MAX_XID + 1}:", id="xmax-2**64"),
        pytest.param(f"{MAX_XID + 1}:{MAX_XID + 1}:", id="both-2**64"),
    ],
)
def test_xmin_and_xmax_out_of_order_or_range_are_malformed(snapshot: str) -> None:
    malformed(PREFIX + snapshot)
    unparsable(snapshot)


@pytest.mark.parametrize(
    "snapshot",
    [
        pytest.param("10:20:9", id="below-xmin"),
        pytest.param("10:20:20", id="equal-to-xmax"),
        pytest.param("10:20:25", id="above-xmax"),
        pytest.param("10:20:-12", id="negative"),
        pytest.param("10:10:10", id="empty-range"),
        pytest.param("10:20:12,20", id="last-equal-to-xmax"),
    ],
)
def test_an_xip_outside_xmin_xmax_is_malformed(snapshot: str) -> None:
    malformed(PREFIX + snapshot)
    unparsable(snapshot)


@pytest.mark.parametrize("snapshot", ["10:20:15,12", "10:20:12,15,13", "10:20:19,10"])
def test_unsorted_xips_are_malformed(snapshot: str) -> None:
    malformed(PREFIX + snapshot)
    unparsable(snapshot)


@pytest.mark.parametrize(
    "snapshot",
    [
        pytest.param("a:20:", id="word"),
        pytest.param(":20:", id="empty-xmin"),
        pytest.param("10::", id="empty-xmax"),
        pytest.param("0x0a:20:", id="hex"),
        pytest.param("10:1e2:", id="exponent"),
        pytest.param("10.0:20:", id="float"),
        pytest.param("10:20:12.5", id="float-xip"),
        pytest.param("10:20:,", id="lone-comma"),
        pytest.param("10:20:12,,15", id="double-comma"),
        pytest.param("10:20:12;15", id="semicolon"),
        pytest.param("10:20:\ud800", id="surrogate"),
        pytest.param("10:20:" + "9" * 5000, id="5000-digits"),
    ],
)
def test_non_decimal_xids_are_malformed(snapshot: str) -> None:
    malformed(PREFIX + snapshot)
    unparsable(snapshot)


@pytest.mark.parametrize(
    "snapshot",
    [
        # Each of these is refused by Postgres 16 (`SELECT '...'::pg_snapshot`:
        # invalid input syntax), yet Python's int() reads them: it allows
        # underscores, any Unicode decimal digit and surrounding whitespace.
        pytest.param("1_0:20:", id="underscore"),
        pytest.param("10:20:1_2", id="underscore-xip"),
        pytest.param("\u0661\u0660:20:", id="arabic-indic-digits"),
        pytest.param("10 :20:", id="space-before-colon"),
        pytest.param("10:20:12 ", id="trailing-space"),
    ],
)
def test_xids_postgres_does_not_read_as_decimal_are_malformed(snapshot: str) -> None:
    # Snapshot.parse promises the checks pg_snapshot_in makes ("a snapshot holds
    # decimal xids"); a cursor holding these is not one this server returned.
    malformed(PREFIX + snapshot)
    unparsable(snapshot)


def test_malformed_reasons_carry_a_message() -> None:
    error = malformed("nope")

    assert str(error)
    assert isinstance(error, BroadcasterError)


# Foreign cursors


@pytest.mark.parametrize(
    "origin",
    [
        pytest.param(Origin(ORIGIN.system_identifier + 1, ORIGIN.database_oid), id="cluster"),
        pytest.param(Origin(ORIGIN.system_identifier, ORIGIN.database_oid + 1), id="database"),
        pytest.param(Origin(ORIGIN.database_oid, ORIGIN.system_identifier), id="swapped"),
    ],
)
def test_a_cursor_from_another_origin_is_foreign(origin: Origin) -> None:
    cursor = encode(origin, "10:20:12")

    with pytest.raises(CursorError) as caught:
        decode(cursor, ORIGIN)

    assert caught.value.reason == FOREIGN
    assert decode(cursor, origin) == Snapshot(10, 20, (12,))


# Snapshot


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("1:1:", Snapshot(1, 1)),
        ("10:20:", Snapshot(10, 20, ())),
        ("10:20:10", Snapshot(10, 20, (10,))),
        ("10:20:12,15,19", Snapshot(10, 20, (12, 15, 19))),
        (f"{MAX_XID}:{MAX_XID}:", Snapshot(MAX_XID, MAX_XID)),
    ],
)
def test_snapshot_text_round_trip(text: str, expected: Snapshot) -> None:
    parsed = Snapshot.parse(text)

    assert parsed == expected
    assert parsed.text == text
    assert Snapshot.parse(parsed.text) == parsed


def test_snapshot_accepts_duplicate_xips_as_postgres_does() -> None:
    # SELECT '10:20:12,12'::pg_snapshot is accepted (and read as 10:20:12).
    parsed = Snapshot.parse("10:20:12,12")

    assert parsed == Snapshot(10, 20, (12, 12))
    assert parsed.text == "10:20:12,12"
    assert decode(PREFIX + "10:20:12,12,15,15", ORIGIN).xip == (12, 12, 15, 15)


def test_snapshot_is_a_hashable_value() -> None:
    assert Snapshot(10, 20, (12,)) == Snapshot(10, 20, (12,))
    assert len({Snapshot(10, 20), Snapshot(10, 20, ()), Snapshot(10, 21)}) == 2
    assert Snapshot(10, 20).xip == ()


def test_origin_is_a_hashable_value() -> None:
    assert Origin(1, 2) == Origin(1, 2) != Origin(2, 1)
    assert len({Origin(1, 2), Origin(1, 2)}) == 1


def test_cursor_error_is_a_broadcaster_error_with_a_reason() -> None:
    error = CursorError(cursors.PRUNED, "too old")

    assert isinstance(error, BroadcasterError)
    assert error.reason == "history_pruned"
    assert str(error) == "too old"
