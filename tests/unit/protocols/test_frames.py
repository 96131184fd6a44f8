"""Unit tests for broadcaster.protocols.frames, checked against websockets' own sans-I/O parser."""

from __future__ import annotations

import pytest
from websockets.client import ClientProtocol
from websockets.frames import Frame, Opcode
from websockets.protocol import State
from websockets.streams import StreamReader
from websockets.uri import parse_uri

from broadcaster.protocols.frames import text_frame

# Payload lengths around each boundary of the three length encodings, with the
# header size RFC 6455 requires for each: 7-bit, 16-bit and 64-bit lengths.
LENGTHS = [
    pytest.param(0, 2, id="empty"),
    pytest.param(1, 2, id="1"),
    pytest.param(125, 2, id="125-largest-7-bit"),
    pytest.param(126, 4, id="126-smallest-16-bit"),
    pytest.param(127, 4, id="127"),
    pytest.param(65535, 4, id="65535-largest-16-bit"),
    pytest.param(65536, 10, id="65536-smallest-64-bit"),
    pytest.param(300_000, 10, id="300000"),
]


def payload_of(length: int) -> bytes:
    return bytes(ord("a") + i % 26 for i in range(length))


def parse_one(data: bytes) -> Frame:
    """The single unmasked server frame in ``data``, which must be all of it."""
    reader = StreamReader()
    reader.feed_data(data)
    reader.feed_eof()
    parser = Frame.parse(reader.read_exact, mask=False, max_size=None)
    try:
        next(parser)
    except StopIteration as done:
        frame: Frame = done.value
    else:
        pytest.fail("the frame is incomplete")
    assert reader.at_eof(), "bytes left over after the frame"
    return frame


@pytest.mark.parametrize(("length", "header_size"), LENGTHS)
def test_text_frame_decodes_to_its_payload(length: int, header_size: int) -> None:
    payload = payload_of(length)

    frame_bytes = text_frame(payload)
    frame = parse_one(frame_bytes)

    assert frame.opcode is Opcode.TEXT
    assert frame.fin
    assert (frame.rsv1, frame.rsv2, frame.rsv3) == (False, False, False)
    assert frame.data == payload
    assert len(frame_bytes) == header_size + length  # the shortest length encoding


@pytest.mark.parametrize(("length", "header_size"), LENGTHS)
def test_text_frame_header_bytes(length: int, header_size: int) -> None:
    header = text_frame(payload_of(length))[:header_size]

    assert header[0] == 0x81  # FIN, text
    assert header[1] & 0x80 == 0  # a server never masks
    if header_size == 2:
        assert header[1] == length
    elif header_size == 4:
        assert header[1] == 126
        assert int.from_bytes(header[2:4], "big") == length
    else:
        assert header[1] == 127
        assert int.from_bytes(header[2:10], "big") == length


def test_text_frame_carries_utf8_untouched() -> None:
    payload = '{"type":"pong","ref":"é😀"}'.encode()

    assert parse_one(text_frame(payload)).data == payload


def test_a_client_reads_back_to_back_frames_of_every_size() -> None:
    client = ClientProtocol(parse_uri("ws://localhost/ws"), state=State.OPEN, max_size=None)
    payloads = [payload_of(length) for length in (0, 5, 125, 126, 1000, 65535, 65536, 200_000)]
    stream = b"".join(text_frame(p) for p in payloads)

    # Fed in awkward pieces, as a socket would deliver them.
    events: list[object] = []
    for start in range(0, len(stream), 4093):
        client.receive_data(stream[start : start + 4093])
        events.extend(client.events_received())

    assert client.state is State.OPEN
    assert all(isinstance(event, Frame) for event in events)
    frames = [event for event in events if isinstance(event, Frame)]
    assert [(f.opcode, f.fin) for f in frames] == [(Opcode.TEXT, True)] * len(payloads)
    assert [f.data for f in frames] == payloads
    assert client.data_to_send() == []
