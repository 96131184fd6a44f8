"""Unit tests for broadcaster.protocols.phoenix: Phoenix channel framing, vsn 1.0.0 and 2.0.0.

Client frames are built the way realtime-js builds them (``lib/serializer.ts``):
vsn 2.0.0 arrays ``[join_ref, ref, topic, event, payload]``, vsn 1.0.0 objects,
and the binary "user broadcast push" (kind 3) for a broadcast with a string event.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from broadcaster.exceptions import ProtocolError
from broadcaster.protocols import phoenix
from broadcaster.protocols.phoenix import VSN_1, VSN_2, Message, decode_binary, decode_text, encode
from tests.support.phoenix import JSON_ENCODING, push_frame

BINARY_ENCODING = 0


def client_text(message: Message, vsn: str) -> str:
    """A client frame for ``message`` as realtime-js serialises it."""
    if vsn == VSN_2:
        return json.dumps(
            [message.join_ref, message.ref, message.topic, message.event, message.payload]
        )
    return json.dumps(
        {
            "topic": message.topic,
            "event": message.event,
            "payload": message.payload,
            "ref": message.ref,
            "join_ref": message.join_ref,
        }
    )


MESSAGES = [
    Message("phoenix", "heartbeat", {}, "1"),
    Message("realtime:room", "phx_join", {"config": {"postgres_changes": []}}, "2", "2"),
    Message("realtime:room", "phx_reply", {"status": "ok", "response": {}}, "3", "2"),
    Message("realtime:room", "system", {"status": "ok", "message": "Subscribed"}),
    Message("realtime:café", "broadcast", {"event": "ünï", "payload": ["☃", 1, None]}, None, "9"),
]


# Encoding server messages


def test_encode_vsn1_is_an_object_without_join_ref_when_unset() -> None:
    message = Message("realtime:room", "system", {"status": "ok"}, "5")
    value = json.loads(encode(message, VSN_1))
    assert value == {
        "topic": "realtime:room",
        "event": "system",
        "payload": {"status": "ok"},
        "ref": "5",
    }
    assert "join_ref" not in value


def test_encode_vsn1_keeps_a_null_ref() -> None:
    value = json.loads(encode(Message("realtime:room", "presence_diff", {}), VSN_1))
    assert value == {"topic": "realtime:room", "event": "presence_diff", "payload": {}, "ref": None}


def test_encode_vsn1_carries_join_ref_when_set() -> None:
    message = Message("realtime:room", "phx_reply", {"status": "ok", "response": {}}, "3", "1")
    value = json.loads(encode(message, VSN_1))
    assert value == {
        "topic": "realtime:room",
        "event": "phx_reply",
        "payload": {"status": "ok", "response": {}},
        "ref": "3",
        "join_ref": "1",
    }


def test_encode_vsn2_is_an_array_in_phoenix_order() -> None:
    message = Message("realtime:room", "phx_reply", {"status": "ok", "response": {}}, "3", "1")
    assert json.loads(encode(message, VSN_2)) == [
        "1",
        "3",
        "realtime:room",
        "phx_reply",
        {"status": "ok", "response": {}},
    ]


def test_encode_vsn2_writes_unset_refs_as_null() -> None:
    message = Message("realtime:room", "postgres_changes", {"ids": [1]})
    assert json.loads(encode(message, VSN_2)) == [
        None,
        None,
        "realtime:room",
        "postgres_changes",
        {"ids": [1]},
    ]


@pytest.mark.parametrize("vsn", [VSN_1, VSN_2])
def test_encode_is_compact_utf8(vsn: str) -> None:
    message = Message("realtime:café", "broadcast", {"text": "☃"})
    data = encode(message, vsn)
    assert isinstance(data, bytes)
    assert "☃".encode() in data
    assert b"\\u" not in data
    assert b", " not in data
    assert b": " not in data


@pytest.mark.parametrize("vsn", [VSN_1, VSN_2])
@pytest.mark.parametrize(
    "payload",
    [{"ids": [1, 2], "data": {"record": {"id": "é☃", "n": None}}}, {}, [], "text", None],
)
def test_a_payload_spliced_between_push_parts_is_what_encode_writes(vsn: str, payload: Any) -> None:
    head, tail = phoenix.push_parts('realtime:café "q"', "postgres_changes", vsn)
    payload_json = json.dumps(payload, ensure_ascii=False, separators=(",", ":"))
    spliced = (head + payload_json + tail).encode()
    assert spliced == encode(Message('realtime:café "q"', "postgres_changes", payload), vsn)


# Round trips


@pytest.mark.parametrize("vsn", [VSN_1, VSN_2])
@pytest.mark.parametrize("message", MESSAGES, ids=lambda m: m.event)
def test_server_encoding_decodes_back(vsn: str, message: Message) -> None:
    assert decode_text(encode(message, vsn).decode(), vsn) == message


@pytest.mark.parametrize("vsn", [VSN_1, VSN_2])
@pytest.mark.parametrize("message", MESSAGES, ids=lambda m: m.event)
def test_client_frames_decode(vsn: str, message: Message) -> None:
    assert decode_text(client_text(message, vsn), vsn) == message


def test_vsn1_without_refs_or_payload() -> None:
    assert decode_text('{"topic":"phoenix","event":"heartbeat"}', VSN_1) == Message(
        "phoenix", "heartbeat", None
    )


def test_an_unknown_vsn_reads_objects_as_1_0_0() -> None:
    text = '{"topic":"t","event":"e","payload":{},"ref":"1"}'
    assert decode_text(text, "0.9") == decode_text(text, VSN_1)


# Refs


@pytest.mark.parametrize("vsn", [VSN_1, VSN_2])
def test_numeric_refs_are_accepted_as_strings(vsn: str) -> None:
    message = Message("realtime:room", "phx_join", {}, 12, 7)  # type: ignore[arg-type]
    decoded = decode_text(client_text(message, vsn), vsn)
    assert decoded.ref == "12"
    assert decoded.join_ref == "7"


@pytest.mark.parametrize("vsn", [VSN_1, VSN_2])
@pytest.mark.parametrize("bad", [True, 1.5, [1], {"a": 1}])
@pytest.mark.parametrize("field", ["ref", "join_ref"])
def test_other_refs_are_refused(vsn: str, bad: Any, field: str) -> None:
    refs = {"ref": "1", "join_ref": "1", field: bad}
    message = Message("realtime:room", "phx_join", {}, refs["ref"], refs["join_ref"])
    with pytest.raises(ProtocolError) as caught:
        decode_text(client_text(message, vsn), vsn)
    assert caught.value.code == "bad_message"
    assert field in caught.value.message


# Malformed text frames


@pytest.mark.parametrize("vsn", [VSN_1, VSN_2])
@pytest.mark.parametrize("text", ["", "{", "[1,2", "not json", '{"topic": "t",}'])
def test_bad_json_is_refused(vsn: str, text: str) -> None:
    with pytest.raises(ProtocolError) as caught:
        decode_text(text, vsn)
    assert caught.value.code == "bad_json"


@pytest.mark.parametrize(
    "text",
    [
        "[]",
        '[null, null, "t", "e"]',
        '[null, null, "t", "e", {}, "extra"]',
        '{"topic": "t", "event": "e", "payload": {}}',
        '"t"',
        "42",
        "null",
    ],
)
def test_vsn2_needs_a_five_element_array(text: str) -> None:
    with pytest.raises(ProtocolError) as caught:
        decode_text(text, VSN_2)
    assert caught.value.code == "bad_message"


@pytest.mark.parametrize("text", ['[null, null, "t", "e", {}]', '"t"', "42", "null", "true"])
def test_vsn1_needs_an_object(text: str) -> None:
    with pytest.raises(ProtocolError) as caught:
        decode_text(text, VSN_1)
    assert caught.value.code == "bad_message"


@pytest.mark.parametrize("vsn", [VSN_1, VSN_2])
@pytest.mark.parametrize(
    ("topic", "event"),
    [(None, "e"), ("t", None), (1, "e"), ("t", 2), (["t"], "e"), ("t", {"e": 1}), (True, "e")],
)
def test_topic_and_event_must_be_strings(vsn: str, topic: Any, event: Any) -> None:
    if vsn == VSN_2:
        text = json.dumps([None, "1", topic, event, {}])
    else:
        text = json.dumps({"topic": topic, "event": event, "payload": {}, "ref": "1"})
    with pytest.raises(ProtocolError) as caught:
        decode_text(text, vsn)
    assert caught.value.code == "bad_message"


def test_vsn1_missing_topic_is_refused() -> None:
    with pytest.raises(ProtocolError):
        decode_text('{"event": "heartbeat", "payload": {}}', VSN_1)


# Binary user broadcast push (kind 3)


def test_binary_push_with_json_payload() -> None:
    frame = push_frame(
        topic="realtime:room",
        event="cursor",
        join_ref="1",
        ref="4",
        body=json.dumps({"x": 10, "name": "ü"}).encode(),
    )
    assert decode_binary(frame) == Message(
        "realtime:room",
        "broadcast",
        {"type": "broadcast", "event": "cursor", "payload": {"x": 10, "name": "ü"}},
        "4",
        "1",
    )


def test_binary_push_without_refs_has_none() -> None:
    message = decode_binary(push_frame(body=b"[1,2]"))
    assert message.ref is None
    assert message.join_ref is None
    assert message.payload["payload"] == [1, 2]


def test_binary_push_with_binary_encoding_is_refused() -> None:
    # The server relays broadcasts as JSON text: raw bytes cannot be carried.
    frame = push_frame(event="blob", encoding=BINARY_ENCODING, body=b"\x00\xff\x10not json")
    with pytest.raises(ProtocolError, match="binary broadcast payloads"):
        decode_binary(frame)


def test_binary_push_with_metadata() -> None:
    frame = push_frame(
        ref="5",
        metadata=json.dumps({"private": True, "ack": True}),
        body=b'{"n":1}',
    )
    message = decode_binary(frame)
    # Kept apart, as realtime-js delivers it, so it cannot override the fields.
    assert message.payload == {
        "type": "broadcast",
        "event": "cursor",
        "payload": {"n": 1},
        "meta": {"private": True, "ack": True},
    }
    assert message.ref == "5"


def test_binary_push_lengths_are_utf8_bytes() -> None:
    # realtime-js (current) measures each field with TextEncoder: bytes, not chars.
    frame = push_frame(topic="realtime:café☃", event="ünï", join_ref="1", ref="2", body=b"{}")
    message = decode_binary(frame)
    assert message.topic == "realtime:café☃"
    assert message.payload["event"] == "ünï"
    assert (message.ref, message.join_ref) == ("2", "1")


@pytest.mark.parametrize("kind", [0, 1, 2, 4, 5, 255])
def test_binary_frames_of_other_kinds_are_refused(kind: int) -> None:
    with pytest.raises(ProtocolError) as caught:
        decode_binary(push_frame(kind=kind))
    assert caught.value.code == "bad_message"


@pytest.mark.parametrize("frame", [b"", b"\x03", b"\x03\x00\x00\x00\x00\x00"])
def test_short_binary_frames_are_refused(frame: bytes) -> None:
    with pytest.raises(ProtocolError) as caught:
        decode_binary(frame)
    assert caught.value.code == "bad_message"


def test_binary_push_with_bad_json_payload_is_refused() -> None:
    with pytest.raises(ProtocolError) as caught:
        decode_binary(push_frame(body=b"{not json"))
    assert caught.value.code == "bad_json"


def test_binary_push_with_bad_json_metadata_is_refused() -> None:
    with pytest.raises(ProtocolError) as caught:
        decode_binary(push_frame(metadata="{oops", body=b"{}"))
    assert caught.value.code == "bad_json"


def test_binary_push_whose_fields_overrun_the_frame_is_refused() -> None:
    # The header claims a 200-byte topic; the frame ends well before.
    frame = bytes([3, 0, 0, 200, 1, 0, JSON_ENCODING]) + b"realtime:room" + b"e"
    with pytest.raises(ProtocolError):
        decode_binary(frame)


@pytest.mark.parametrize("metadata", ["[1, 2]", '"text"', "3", "null"])
def test_binary_push_with_metadata_not_an_object_is_refused(metadata: str) -> None:
    # Any malformed frame must be a ProtocolError, which the session ignores;
    # anything else escapes receive_binary into the connection's data_received.
    with pytest.raises(ProtocolError):
        decode_binary(push_frame(metadata=metadata, body=b"{}"))


def test_module_exports() -> None:
    assert set(phoenix.__all__) == {
        "VSN_1",
        "VSN_2",
        "Message",
        "decode_binary",
        "compact_json",
        "decode_text",
        "encode",
        "push_parts",
    }
