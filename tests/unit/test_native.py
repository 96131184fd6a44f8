"""Unit tests for broadcaster.native: one native-protocol session over a fake transport."""

from __future__ import annotations

import json
from typing import Any

import pytest
from websockets.frames import Frame, Opcode
from websockets.streams import StreamReader

from broadcaster import protocol
from broadcaster.frames import text_frame
from broadcaster.hub import Batch, Hub
from broadcaster.native import NativeSession
from broadcaster.payloads import Change

MAX_SUBSCRIPTIONS = 3
MAX_MESSAGE_BYTES = 256


class FakeTransport:
    """Records every frame sent and every close requested."""

    def __init__(self) -> None:
        self.sent: list[bytes] = []
        self.closes: list[tuple[int, str]] = []

    def send(self, frame: bytes) -> None:
        self.sent.append(frame)

    def close(self, code: int, reason: str) -> None:
        self.closes.append((code, reason))


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def unframe(frame_bytes: bytes) -> bytes:
    """The payload of one complete, final, unmasked text frame."""
    reader = StreamReader()
    reader.feed_data(frame_bytes)
    reader.feed_eof()
    parser = Frame.parse(reader.read_exact, mask=False, max_size=None)
    try:
        next(parser)
    except StopIteration as done:
        frame: Frame = done.value
    else:
        pytest.fail("incomplete frame")
    assert reader.at_eof(), "bytes left over after the frame"
    assert frame.opcode is Opcode.TEXT
    assert frame.fin
    return bytes(frame.data)


def decode_frame(frame_bytes: bytes) -> Any:
    """A sent frame's message, as strict JSON in UTF-8."""
    return json.loads(unframe(frame_bytes).decode("utf-8"), parse_constant=_reject_constant)


def messages(transport: FakeTransport) -> list[Any]:
    return [decode_frame(frame) for frame in transport.sent]


def send(session: NativeSession, message: dict[str, Any]) -> None:
    session.receive_text(json.dumps(message).encode())


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


def new_session(hub: Hub, transport: FakeTransport) -> NativeSession:
    return NativeSession(
        hub,
        transport,
        max_subscriptions=MAX_SUBSCRIPTIONS,
        max_message_bytes=MAX_MESSAGE_BYTES,
    )


@pytest.fixture
def session(hub: Hub, transport: FakeTransport) -> NativeSession:
    return new_session(hub, transport)


def test_new_session_holds_nothing(session: NativeSession, hub: Hub) -> None:
    assert session.tables == {}
    assert not session.closed
    assert hub.tables == 0


def test_ping_gets_pong(session: NativeSession, transport: FakeTransport) -> None:
    send(session, {"type": "ping", "ref": 1})
    send(session, {"type": "ping"})

    assert transport.sent == [
        text_frame(b'{"type":"pong","ref":1}'),
        text_frame(b'{"type":"pong","ref":null}'),
    ]
    assert transport.closes == []


def test_subscribe_gets_subscribed(
    session: NativeSession, transport: FakeTransport, hub: Hub
) -> None:
    send(session, {"type": "subscribe", "ref": "a", "table_id": "t1"})

    assert messages(transport) == [{"type": "subscribed", "ref": "a", "table_id": "t1"}]
    assert list(session.tables) == ["t1"]
    assert hub.subscribers("t1") == 1


def test_resubscribe_is_idempotent(
    session: NativeSession, transport: FakeTransport, hub: Hub
) -> None:
    send(session, {"type": "subscribe", "ref": 1, "table_id": "t1"})
    send(session, {"type": "subscribe", "ref": 2, "table_id": "t1"})

    assert messages(transport) == [
        {"type": "subscribed", "ref": 1, "table_id": "t1"},
        {"type": "subscribed", "ref": 2, "table_id": "t1"},
    ]
    assert hub.subscribers("t1") == 1
    transport.sent.clear()
    hub.publish(Batch("t1", [change("t1", "r1", 1)]))
    assert len(transport.sent) == 1


def test_unsubscribe_gets_unsubscribed(
    session: NativeSession, transport: FakeTransport, hub: Hub
) -> None:
    send(session, {"type": "subscribe", "ref": 1, "table_id": "t1"})
    send(session, {"type": "unsubscribe", "ref": 2, "table_id": "t1"})

    assert messages(transport)[-1] == {"type": "unsubscribed", "ref": 2, "table_id": "t1"}
    assert session.tables == {}
    assert hub.tables == 0
    transport.sent.clear()
    assert hub.publish(Batch("t1", [change("t1", "r1", 1)])) == 0
    assert transport.sent == []


def test_unsubscribe_of_an_unknown_table_still_answers(
    session: NativeSession, transport: FakeTransport, hub: Hub
) -> None:
    send(session, {"type": "subscribe", "table_id": "t1"})
    send(session, {"type": "unsubscribe", "ref": 9, "table_id": "never"})

    assert messages(transport)[-1] == {"type": "unsubscribed", "ref": 9, "table_id": "never"}
    assert list(session.tables) == ["t1"]
    assert hub.subscribers("t1") == 1
    assert hub.tables == 1


def test_too_many_subscriptions(session: NativeSession, transport: FakeTransport, hub: Hub) -> None:
    for n in range(MAX_SUBSCRIPTIONS):
        send(session, {"type": "subscribe", "table_id": f"t{n}"})
    transport.sent.clear()

    send(session, {"type": "subscribe", "ref": "over", "table_id": "one-more"})

    [error] = messages(transport)
    assert error["type"] == "error"
    assert error["code"] == "too_many_subscriptions"
    assert error["ref"] == "over"
    assert str(MAX_SUBSCRIPTIONS) in error["message"]
    assert "one-more" not in session.tables
    assert hub.subscribers("one-more") == 0
    assert len(session.tables) == MAX_SUBSCRIPTIONS


def test_resubscribe_at_the_limit_is_not_too_many(
    session: NativeSession, transport: FakeTransport
) -> None:
    for n in range(MAX_SUBSCRIPTIONS):
        send(session, {"type": "subscribe", "table_id": f"t{n}"})
    transport.sent.clear()

    send(session, {"type": "subscribe", "ref": 1, "table_id": "t0"})

    assert messages(transport) == [{"type": "subscribed", "ref": 1, "table_id": "t0"}]


def test_unsubscribing_frees_a_subscription(
    session: NativeSession, transport: FakeTransport, hub: Hub
) -> None:
    for n in range(MAX_SUBSCRIPTIONS):
        send(session, {"type": "subscribe", "table_id": f"t{n}"})
    send(session, {"type": "unsubscribe", "table_id": "t0"})
    transport.sent.clear()

    send(session, {"type": "subscribe", "ref": 1, "table_id": "new"})

    assert messages(transport) == [{"type": "subscribed", "ref": 1, "table_id": "new"}]
    assert hub.subscribers("new") == 1


def test_message_over_max_message_bytes_is_too_large(
    session: NativeSession, transport: FakeTransport, hub: Hub
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


def test_message_of_exactly_max_message_bytes_is_handled(
    session: NativeSession, transport: FakeTransport
) -> None:
    message = {"type": "subscribe", "ref": 1, "table_id": ""}
    size = len(json.dumps(message).encode())
    message["table_id"] = "x" * (MAX_MESSAGE_BYTES - size)
    data = json.dumps(message).encode()
    assert len(data) == MAX_MESSAGE_BYTES

    session.receive_text(data)

    assert messages(transport)[0]["type"] == "subscribed"


def test_limit_counts_bytes_not_characters(
    session: NativeSession, transport: FakeTransport
) -> None:
    # 100 two-byte characters: under the limit in characters, over it in bytes.
    text = json.dumps({"type": "ping", "ref": "é" * 150}, ensure_ascii=False)
    assert len(text) < MAX_MESSAGE_BYTES < len(text.encode())

    session.receive_text(text.encode())

    assert messages(transport)[0]["code"] == "too_large"


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(b"\xff", id="invalid-byte"),
        pytest.param(b'{"type": "ping", "ref": "\xc3"}', id="truncated-sequence"),
        pytest.param(b'{"type": "ping", "ref": "\xed\xa0\x80"}', id="encoded-surrogate"),
    ],
)
def test_invalid_utf8_closes_with_1007(
    session: NativeSession, transport: FakeTransport, data: bytes
) -> None:
    session.receive_text(data)

    assert transport.sent == []
    assert len(transport.closes) == 1
    code, reason = transport.closes[0]
    assert code == protocol.CLOSE_INVALID_DATA == 1007
    assert reason


def test_binary_is_not_supported(session: NativeSession, transport: FakeTransport) -> None:
    session.receive_binary()

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
        ('{"type": "ping", "ref": true}', "bad_message", None),
        ('{"type": "ping", "ref": {"a": 1}}', "bad_message", None),
        ('{"type": "frobnicate", "ref": "z"}', "unknown_type", "z"),
    ],
)
def test_protocol_errors_are_answered(
    session: NativeSession, transport: FakeTransport, text: str, code: str, ref: Any
) -> None:
    session.receive_text(text.encode())

    [error] = messages(transport)
    assert error["type"] == "error"
    assert error["code"] == code
    assert error.get("ref") == ref
    assert ("ref" in error) is (ref is not None)
    assert transport.closes == []
    assert not session.closed


def test_session_keeps_working_after_an_error(
    session: NativeSession, transport: FakeTransport
) -> None:
    session.receive_text(b"{nope")
    send(session, {"type": "ping", "ref": 1})

    assert messages(transport)[-1] == {"type": "pong", "ref": 1}


def test_deliver_sends_one_change_as_one_message(
    session: NativeSession, transport: FakeTransport, hub: Hub
) -> None:
    send(session, {"type": "subscribe", "table_id": "t1"})
    transport.sent.clear()
    the_change = change("t1", "r1", 7)

    hub.publish(Batch("t1", [the_change]))

    assert transport.sent == [text_frame(protocol.encode_change(the_change))]
    assert messages(transport) == [
        {"type": "change", "table_id": "t1", "op": "UPDATE", "row": json.loads(row("t1", "r1", 7))}
    ]


def test_deliver_shares_one_frame_between_sessions(hub: Hub) -> None:
    first_transport, second_transport = FakeTransport(), FakeTransport()
    first, second = new_session(hub, first_transport), new_session(hub, second_transport)
    send(first, {"type": "subscribe", "table_id": "t1"})
    send(second, {"type": "subscribe", "table_id": "t1"})

    assert hub.publish(Batch("t1", [change("t1", "r1", 1)])) == 2

    assert first_transport.sent[-1] is second_transport.sent[-1]  # the same bytes object


def test_a_burst_is_one_json_array_frame(
    session: NativeSession, transport: FakeTransport, hub: Hub
) -> None:
    send(session, {"type": "subscribe", "table_id": "t1"})
    transport.sent.clear()
    burst = [
        change("t1", "r1", 1, "INSERT"),
        change("t1", "r1", 2),
        change("t1", "r1", 3, "DELETE"),
    ]

    hub.publish(Batch("t1", burst))

    assert len(transport.sent) == 1
    [array] = messages(transport)
    assert array == [
        {"type": "change", "table_id": "t1", "op": c.op, "row": json.loads(row("t1", "r1", v))}
        for c, v in zip(burst, (1, 2, 3), strict=True)
    ]
    assert transport.sent[0] == text_frame(
        protocol.batch([protocol.encode_change(c) for c in burst])
    )


def test_close_unsubscribes_everything(
    session: NativeSession, transport: FakeTransport, hub: Hub
) -> None:
    other = new_session(hub, FakeTransport())
    send(other, {"type": "subscribe", "table_id": "t1"})
    for table_id in ("t1", "t2", "t3"):
        send(session, {"type": "subscribe", "table_id": table_id})
    transport.sent.clear()

    session.close()

    assert session.closed
    assert session.tables == {}
    assert hub.subscribers("t1") == 1  # only the other session
    assert hub.subscribers("t2") == hub.subscribers("t3") == 0
    assert hub.tables == 1
    hub.publish(Batch("t1", [change("t1", "r1", 1)]))
    hub.publish(Batch("t2", [change("t2", "r2", 2)]))
    assert transport.sent == []
    assert transport.closes == []  # the session does not close its transport


def test_close_is_idempotent(session: NativeSession, hub: Hub) -> None:
    send(session, {"type": "subscribe", "table_id": "t1"})

    session.close()
    session.close()

    assert session.closed
    assert hub.tables == 0


def test_errors_of_one_session_do_not_affect_another(hub: Hub) -> None:
    bad_transport, good_transport = FakeTransport(), FakeTransport()
    bad, good = new_session(hub, bad_transport), new_session(hub, good_transport)
    send(bad, {"type": "subscribe", "table_id": "t1"})
    send(good, {"type": "subscribe", "table_id": "t1"})
    good_transport.sent.clear()

    bad.receive_text(b"{nope")
    bad.receive_binary()
    bad.receive_text(b"x" * (MAX_MESSAGE_BYTES + 1))
    bad.receive_text(b"\xff")
    for n in range(MAX_SUBSCRIPTIONS + 1):
        send(bad, {"type": "subscribe", "table_id": f"other{n}"})
    the_change = change("t1", "r1", 1)
    hub.publish(Batch("t1", [the_change]))

    assert good_transport.closes == []
    assert good_transport.sent == [text_frame(protocol.encode_change(the_change))]
    assert list(good.tables) == ["t1"]


@pytest.mark.parametrize(
    "text",
    [
        pytest.param('{"type": "ping", "ref": 1e999}', id="ping-overflowing-ref"),
        pytest.param('{"type": "ping", "ref": NaN}', id="ping-NaN-ref"),
        pytest.param('{"type": "nope", "ref": -Infinity}', id="unknown-type-Infinity-ref"),
        pytest.param('{"type": "ping", "ref": "\\ud800"}', id="ping-surrogate-ref"),
        pytest.param('{"type": "nope", "ref": "\\udfff"}', id="unknown-type-surrogate-ref"),
        pytest.param(
            '{"type": "subscribe", "ref": 1, "table_id": "\\ud800"}', id="subscribe-surrogate"
        ),
        pytest.param(
            '{"type": "unsubscribe", "ref": 1, "table_id": "\\udbff"}', id="unsubscribe-surrogate"
        ),
    ],
)
def test_every_reply_is_valid_json_in_utf8(
    session: NativeSession, transport: FakeTransport, hub: Hub, text: str
) -> None:
    # Valid UTF-8 text, and except for NaN/Infinity valid JSON, that a client can
    # send: the session must answer it (or refuse it) with valid JSON, not raise.
    session.receive_text(text.encode())

    [reply] = messages(transport)
    if reply["type"] == "error":
        assert hub.tables == 0  # refused: nothing subscribed behind the client's back
