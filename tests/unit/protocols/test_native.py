"""Unit tests for broadcaster.protocols.native: parsing client messages and encoding server ones."""

from __future__ import annotations

import json
from typing import Any

import pytest

from broadcaster.core.changes import Change
from broadcaster.exceptions import BroadcasterError, ProtocolError
from broadcaster.protocols import native as protocol
from broadcaster.protocols.native import (
    Ping,
    Subscribe,
    Unsubscribe,
    batch,
    encode_change,
    encode_changes,
    encode_cursor,
    encode_error,
    encode_pong,
    encode_reset,
    encode_subscribed,
    encode_synced,
    encode_unsubscribed,
    parse_client_message,
)

CURSOR = "v1:7316243112858025123:16384:100:105:101,103"


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def strict_json(data: bytes) -> Any:
    """``data`` decoded as RFC 8259 JSON in UTF-8: no NaN or Infinity, no lone surrogates."""
    return json.loads(data.decode("utf-8"), parse_constant=_reject_constant)


def rejected(text: str) -> ProtocolError:
    with pytest.raises(ProtocolError) as caught:
        parse_client_message(text)
    return caught.value


# Parsing


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('{"type": "ping"}', Ping(None)),
        ('{"type": "ping", "ref": null}', Ping(None)),
        ('{"type": "ping", "ref": "a"}', Ping("a")),
        ('{"type": "ping", "ref": 7}', Ping(7)),
        ('{"type": "ping", "ref": -1.5}', Ping(-1.5)),
        ('{"type": "subscribe", "table_id": "t1"}', Subscribe(None, "t1")),
        ('{"type": "subscribe", "ref": 1, "table_id": "t1"}', Subscribe(1, "t1")),
        ('{"ref": "x", "table_id": "tablé", "type": "subscribe"}', Subscribe("x", "tablé")),
        ('{"type": "unsubscribe", "table_id": "t1"}', Unsubscribe(None, "t1")),
        ('{"type": "unsubscribe", "ref": 2, "table_id": "t1"}', Unsubscribe(2, "t1")),
    ],
)
def test_parse_valid_messages(text: str, expected: protocol.ClientMessage) -> None:
    assert parse_client_message(text) == expected


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        ({}, Subscribe(1, "t1", None, False)),
        ({"cursor": CURSOR}, Subscribe(1, "t1", CURSOR, False)),
        ({"cursor": None}, Subscribe(1, "t1", None, False)),
        ({"cursor": ""}, Subscribe(1, "t1", "", False)),
        ({"cursor": "not one of ours"}, Subscribe(1, "t1", "not one of ours", False)),
        ({"snapshot": True}, Subscribe(1, "t1", None, True)),
        ({"snapshot": False}, Subscribe(1, "t1", None, False)),
        ({"cursor": CURSOR, "snapshot": True}, Subscribe(1, "t1", CURSOR, True)),
    ],
    ids=repr,
)
def test_parse_subscribe_with_cursor_and_snapshot(
    fields: dict[str, Any], expected: Subscribe
) -> None:
    message = parse_client_message(
        json.dumps({"type": "subscribe", "ref": 1, "table_id": "t1", **fields})
    )

    assert message == expected


def test_subscribe_defaults_to_no_cursor_and_no_snapshot() -> None:
    message = Subscribe("r", "t1")

    assert message.cursor is None
    assert message.snapshot is False


def test_parse_keeps_a_cursor_verbatim() -> None:
    # Cursors are opaque: the protocol does not judge them, the feed does.
    cursor = "v1:1:2:10:20: é\n"

    message = parse_client_message(
        json.dumps({"type": "subscribe", "table_id": "t1", "cursor": cursor})
    )

    assert isinstance(message, Subscribe)
    assert message.cursor == cursor


@pytest.mark.parametrize(
    "fields",
    [{"cursor": CURSOR}, {"snapshot": True}, {"cursor": 1, "snapshot": "yes"}],
    ids=repr,
)
def test_unsubscribe_and_ping_ignore_cursor_and_snapshot(fields: dict[str, Any]) -> None:
    assert parse_client_message(
        json.dumps({"type": "unsubscribe", "ref": 2, "table_id": "t1", **fields})
    ) == Unsubscribe(2, "t1")
    assert parse_client_message(json.dumps({"type": "ping", "ref": 3, **fields})) == Ping(3)


def test_parse_keeps_the_ref_type() -> None:
    message = parse_client_message('{"type": "ping", "ref": 1}')

    assert isinstance(message, Ping)
    assert type(message.ref) is int


@pytest.mark.parametrize(
    "text", ["", " ", "{", "not json", "{'type': 'ping'}", '{"type": "ping",}']
)
def test_invalid_json_is_bad_json(text: str) -> None:
    error = rejected(text)

    assert error.code == protocol.BAD_JSON == "bad_json"
    assert error.ref is None


@pytest.mark.parametrize("text", ["[]", '[{"type": "ping"}]', '"ping"', "1", "null", "true"])
def test_message_that_is_not_an_object_is_bad_message(text: str) -> None:
    error = rejected(text)

    assert error.code == protocol.BAD_MESSAGE == "bad_message"
    assert error.ref is None
    assert "object" in error.message


@pytest.mark.parametrize(
    "text",
    [
        '{"ref": 5}',
        '{"type": null, "ref": 5}',
        '{"type": 1, "ref": 5}',
        '{"type": ["ping"], "ref": 5}',
    ],
)
def test_missing_or_non_string_type_is_bad_message_with_ref(text: str) -> None:
    error = rejected(text)

    assert error.code == protocol.BAD_MESSAGE
    assert error.ref == 5


@pytest.mark.parametrize("kind", ["subscribe", "unsubscribe"])
@pytest.mark.parametrize(
    "table_id",
    ["", None, 1, 1.5, True, ["t1"], {"id": "t1"}],
    ids=repr,
)
def test_bad_table_id_is_bad_message_with_ref(kind: str, table_id: Any) -> None:
    error = rejected(json.dumps({"type": kind, "ref": "r", "table_id": table_id}))

    assert error.code == protocol.BAD_MESSAGE
    assert error.ref == "r"
    assert "table_id" in error.message


@pytest.mark.parametrize("kind", ["subscribe", "unsubscribe"])
def test_missing_table_id_is_bad_message_with_ref(kind: str) -> None:
    error = rejected(json.dumps({"type": kind, "ref": 3}))

    assert error.code == protocol.BAD_MESSAGE
    assert error.ref == 3


@pytest.mark.parametrize("cursor", [1, 0, 1.5, True, False, [CURSOR], {"cursor": CURSOR}], ids=repr)
@pytest.mark.parametrize("ref", ["r", 7, 0.5], ids=repr)
def test_non_string_cursor_is_bad_message_with_ref(cursor: Any, ref: Any) -> None:
    error = rejected(
        json.dumps({"type": "subscribe", "ref": ref, "table_id": "t1", "cursor": cursor})
    )

    assert error.code == protocol.BAD_MESSAGE
    assert error.ref == ref
    assert "cursor" in error.message


@pytest.mark.parametrize("snapshot", [1, 0, "true", "false", [], {}, [True], 1.0], ids=repr)
def test_non_bool_snapshot_is_bad_message_with_ref(snapshot: Any) -> None:
    error = rejected(
        json.dumps({"type": "subscribe", "ref": "s", "table_id": "t1", "snapshot": snapshot})
    )

    assert error.code == protocol.BAD_MESSAGE
    assert error.ref == "s"
    assert "snapshot" in error.message


def test_table_id_is_checked_before_cursor_and_snapshot() -> None:
    error = rejected(json.dumps({"type": "subscribe", "ref": 1, "cursor": 5, "snapshot": 5}))

    assert error.code == protocol.BAD_MESSAGE
    assert "table_id" in error.message


@pytest.mark.parametrize("ref", [True, False, {}, {"a": 1}, [], [1]], ids=repr)
@pytest.mark.parametrize("kind", ["ping", "subscribe", "nonsense"])
def test_ref_that_is_not_a_string_or_number_is_bad_message(ref: Any, kind: str) -> None:
    error = rejected(json.dumps({"type": kind, "ref": ref, "table_id": "t1"}))

    assert error.code == protocol.BAD_MESSAGE
    assert error.ref is None  # an invalid ref is not echoed
    assert "ref" in error.message


@pytest.mark.parametrize("ref", ["abc", 12, 0.5], ids=repr)
def test_unknown_type_is_unknown_type_with_ref(ref: Any) -> None:
    error = rejected(json.dumps({"type": "subscribe_all", "ref": ref}))

    assert error.code == protocol.UNKNOWN_TYPE == "unknown_type"
    assert error.ref == ref
    assert "subscribe_all" in error.message


def test_unknown_type_is_case_sensitive() -> None:
    assert rejected('{"type": "PING"}').code == protocol.UNKNOWN_TYPE


def test_unknown_type_message_does_not_echo_a_huge_type() -> None:
    error = rejected(json.dumps({"type": "x" * 10_000}))

    assert error.code == protocol.UNKNOWN_TYPE
    assert len(error.message) < 200


@pytest.mark.parametrize(
    "text",
    [
        pytest.param('{"type": "ping", "ref": 1e999}', id="overflowing-number"),
        pytest.param('{"type": "ping", "ref": -1e999}', id="overflowing-negative-number"),
        pytest.param('{"type": "ping", "ref": NaN}', id="NaN-literal"),
        pytest.param('{"type": "ping", "ref": Infinity}', id="Infinity-literal"),
    ],
)
def test_ref_that_is_not_a_finite_number_never_yields_invalid_json(text: str) -> None:
    # Either the message is refused, or the reply echoing its ref is valid JSON.
    # Python's json reads 1e999 as inf and accepts NaN/Infinity, and json.dumps
    # writes them back as the non-JSON tokens Infinity/NaN.
    try:
        message = parse_client_message(text)
    except ProtocolError as exc:
        refused: str | None = exc.code
    else:
        refused = None
        strict_json(encode_pong(message.ref))
    assert refused in (None, protocol.BAD_JSON, protocol.BAD_MESSAGE)


@pytest.mark.parametrize(
    "text",
    [
        pytest.param('{"type": "ping", "ref": "\\ud800"}', id="ref"),
        pytest.param('{"type": "subscribe", "table_id": "\\udc00x"}', id="table_id"),
        pytest.param('{"type": "subscribe", "table_id": "t1", "cursor": "\\ud800"}', id="cursor"),
    ],
)
def test_lone_surrogate_escape_never_yields_unencodable_replies(text: str) -> None:
    # JSON escapes can spell a lone surrogate, which has no UTF-8 encoding.
    try:
        message = parse_client_message(text)
    except ProtocolError as exc:
        refused: str | None = exc.code
    else:
        refused = None
        if isinstance(message, Ping):
            strict_json(encode_pong(message.ref))
        else:
            assert isinstance(message, Subscribe)
            strict_json(encode_subscribed(message.ref, message.table_id))
    assert refused in (None, protocol.BAD_JSON, protocol.BAD_MESSAGE)


def test_protocol_error_is_a_broadcaster_error() -> None:
    assert isinstance(rejected("{"), BroadcasterError)


# Encoding


def test_encode_subscribed() -> None:
    assert encode_subscribed("a", "t1") == b'{"type":"subscribed","ref":"a","table_id":"t1"}'
    assert encode_subscribed(None, "t1") == b'{"type":"subscribed","ref":null,"table_id":"t1"}'


def test_encode_unsubscribed() -> None:
    assert encode_unsubscribed(3, "t1") == b'{"type":"unsubscribed","ref":3,"table_id":"t1"}'


def test_encode_pong() -> None:
    assert encode_pong(7) == b'{"type":"pong","ref":7}'
    assert encode_pong(0.5) == b'{"type":"pong","ref":0.5}'
    assert encode_pong(None) == b'{"type":"pong","ref":null}'


def test_encoders_write_utf8_not_escapes() -> None:
    encoded = encode_subscribed("réf", "tablé")

    assert encoded == '{"type":"subscribed","ref":"réf","table_id":"tablé"}'.encode()
    assert b"\\u" not in encoded


def test_encode_error_with_ref() -> None:
    assert encode_error("bad_json", "nope", "r1") == (
        b'{"type":"error","code":"bad_json","message":"nope","ref":"r1"}'
    )
    assert encode_error("bad_json", "nope", 0) == (
        b'{"type":"error","code":"bad_json","message":"nope","ref":0}'
    )


def test_encode_error_omits_ref_when_none() -> None:
    assert encode_error("too_large", "too big") == (
        b'{"type":"error","code":"too_large","message":"too big"}'
    )
    assert encode_error("too_large", "too big", None) == encode_error("too_large", "too big")


def test_encode_error_escapes_its_message() -> None:
    encoded = encode_error("unknown_type", "unknown message type 'a\"b\\\\c'", "r")

    assert json.loads(encoded)["message"] == "unknown message type 'a\"b\\\\c'"


ROW = '{"id" : "r1",  "data" : {"b": 1, "a": 2.50}, "table_id" : "t1"}'


def test_encode_change_splices_the_row_verbatim_with_its_version_last() -> None:
    encoded = encode_change(Change("UPDATE", "t1", "r1", 42, ROW))

    assert encoded == (
        b'{"type":"change","table_id":"t1","op":"UPDATE","id":"r1","row":'
        + ROW[:-1].encode()
        + b',"version":42}}'
    )
    assert strict_json(encoded)["row"] == {**json.loads(ROW), "version": 42}


def test_encode_change_gives_version_to_an_empty_row() -> None:
    encoded = encode_change(Change("DELETE", "t1", "r1", 7, "{}"))

    assert strict_json(encoded)["row"] == {"version": 7}


@pytest.mark.parametrize("table_id", ['a"b', "a\\b", "line\nbreak", "tablé", "</script>"], ids=repr)
def test_encode_change_escapes_the_table_id(table_id: str) -> None:
    encoded = encode_change(Change("INSERT", table_id, "r1", 1, '{"id":"r1"}'))

    assert strict_json(encoded) == {
        "type": "change",
        "table_id": table_id,
        "op": "INSERT",
        "id": "r1",
        "row": {"id": "r1", "version": 1},
    }


def test_encode_change_carries_the_key_a_published_row_does_not_hold() -> None:
    row = '{"room_id": 5, "seq": 1, "body": "hi"}'

    encoded = encode_change(Change("INSERT", "public.messages", "[5, 1]", 9, row))

    message = strict_json(encoded)
    assert (message["id"], message["row"]) == ("[5, 1]", {**json.loads(row), "version": 9})


def test_encode_change_of_a_non_ascii_row_is_utf8() -> None:
    row = '{"id":"r1","data":"é😀"}'

    encoded = encode_change(Change("INSERT", "t1", "r1", 1, row))

    assert encoded.endswith(row[:-1].encode() + b',"version":1}}')


def test_encode_change_with_a_cursor_appends_it() -> None:
    encoded = encode_change(Change("UPDATE", "t1", "r1", 42, ROW), CURSOR)

    assert encoded == (
        b'{"type":"change","table_id":"t1","op":"UPDATE","id":"r1","row":'
        + ROW[:-1].encode()
        + b',"version":42},"cursor":"'
        + CURSOR.encode()
        + b'"}'
    )
    assert strict_json(encoded) == {
        "type": "change",
        "table_id": "t1",
        "op": "UPDATE",
        "id": "r1",
        "row": {**json.loads(ROW), "version": 42},
        "cursor": CURSOR,
    }


def test_encode_changes_of_several_tables_match_each_change_encoded_alone() -> None:
    changes = [
        Change("UPDATE", "t1", "r1", 42, ROW),
        Change("INSERT", "tablé", "r2", 43, '{"id":"r2"}'),
        Change("DELETE", "t1", "r3", 44, '{"id":"r3"}'),
    ]

    for cursor in (None, CURSOR):
        assert encode_changes(changes, cursor) == [encode_change(c, cursor) for c in changes]
    assert encode_changes([]) == []


def test_encode_change_without_a_cursor_has_no_cursor_field() -> None:
    the_change = Change("DELETE", "t1", "r1", 42, '{"id":"r1","table_id":"t1","version":42}')

    assert encode_change(the_change) == encode_change(the_change, None)
    assert "cursor" not in strict_json(encode_change(the_change))


@pytest.mark.parametrize("cursor", ['a"b', "a\\b", "é", "\n"], ids=repr)
def test_encode_change_escapes_the_cursor(cursor: str) -> None:
    encoded = encode_change(Change("INSERT", "t1", "r1", 1, '{"id":"r1"}'), cursor)

    assert strict_json(encoded)["cursor"] == cursor


def test_encode_synced() -> None:
    assert encode_synced("t1", CURSOR) == (
        b'{"type":"synced","table_id":"t1","cursor":"' + CURSOR.encode() + b'"}'
    )


@pytest.mark.parametrize("reason", ["malformed_cursor", "foreign_cursor", "history_pruned"])
def test_encode_reset(reason: str) -> None:
    assert encode_reset("t1", reason) == (
        b'{"type":"reset","table_id":"t1","reason":"' + reason.encode() + b'"}'
    )


def test_encode_cursor() -> None:
    assert encode_cursor("t1", CURSOR) == (
        b'{"type":"cursor","table_id":"t1","cursor":"' + CURSOR.encode() + b'"}'
    )


@pytest.mark.parametrize("table_id", ['a"b', "a\\b", "line\nbreak", "tablé", "</script>"], ids=repr)
def test_new_encoders_escape_the_table_id_and_write_utf8(table_id: str) -> None:
    synced, reset, moved = (
        encode_synced(table_id, CURSOR),
        encode_reset(table_id, "history_pruned"),
        encode_cursor(table_id, CURSOR),
    )

    assert strict_json(synced) == {"type": "synced", "table_id": table_id, "cursor": CURSOR}
    assert strict_json(reset) == {"type": "reset", "table_id": table_id, "reason": "history_pruned"}
    assert strict_json(moved) == {"type": "cursor", "table_id": table_id, "cursor": CURSOR}
    for encoded in (synced, reset, moved):
        assert b"\\u" not in encoded


def test_batch_is_a_json_array_of_the_messages() -> None:
    first = encode_change(Change("INSERT", "t1", "r1", 1, '{"id":"r1"}'))
    second = encode_change(Change("DELETE", "t1", "r1", 2, '{"id":"r1"}'))

    encoded = batch([first, second])

    assert encoded == b"[" + first + b"," + second + b"]"
    assert strict_json(encoded) == [strict_json(first), strict_json(second)]


def test_batch_of_one_message_is_still_an_array() -> None:
    assert batch([b'{"type":"pong","ref":null}']) == b'[{"type":"pong","ref":null}]'
