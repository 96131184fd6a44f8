"""Phoenix channel messages, as Supabase Realtime clients send and expect them.

Sans-I/O. Two serialisations, chosen by the ``vsn`` query parameter:

- ``1.0.0`` (the default when ``vsn`` is absent): one JSON object per text frame,
  ``{"topic", "event", "payload", "ref", "join_ref"}``;
- ``2.0.0`` (current clients' default): a JSON array
  ``[join_ref, ref, topic, event, payload]``, except a client's broadcast with a
  string ``event``, which travels as a binary frame (realtime-js
  ``lib/serializer.ts``, kind 3, "user broadcast push").
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Final

from ..exceptions import ProtocolError
from . import client_json
from .native import BAD_JSON, BAD_MESSAGE

__all__ = [
    "VSN_1",
    "VSN_2",
    "Message",
    "compact_json",
    "decode_binary",
    "decode_text",
    "encode",
    "push_parts",
]

VSN_1: Final = "1.0.0"
VSN_2: Final = "2.0.0"

compact_json = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode
"""JSON as server messages carry it: no spaces, UTF-8 unescaped. One encoder for
every message: ``json.dumps`` with options builds a new one per call."""

_USER_BROADCAST_PUSH: Final = 3
_JSON_ENCODING: Final = 1


@dataclass(frozen=True, slots=True)
class Message:
    topic: str
    event: str
    payload: Any
    ref: str | None = None
    join_ref: str | None = None


def _text_or_none(value: object, name: str) -> str | None:
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    raise ProtocolError(BAD_MESSAGE, f"{name} must be a string")


def decode_text(text: str, vsn: str) -> Message:
    """One client text frame; raise :class:`ProtocolError` if it is not a message."""
    try:
        raw = client_json.loads(text)
    except ValueError:
        raise ProtocolError(BAD_JSON, "message is not valid JSON") from None
    if vsn == VSN_2:
        if not isinstance(raw, list) or len(raw) != 5:
            raise ProtocolError(BAD_MESSAGE, "a 2.0.0 message is a five-element array")
        join_ref, ref, topic, event, payload = raw
    else:
        if not isinstance(raw, dict):
            raise ProtocolError(BAD_MESSAGE, "a 1.0.0 message is an object")
        join_ref, ref = raw.get("join_ref"), raw.get("ref")
        topic, event, payload = raw.get("topic"), raw.get("event"), raw.get("payload")
    if not isinstance(topic, str) or not isinstance(event, str):
        raise ProtocolError(BAD_MESSAGE, "topic and event must be strings")
    return Message(
        topic, event, payload, _text_or_none(ref, "ref"), _text_or_none(join_ref, "join_ref")
    )


def decode_binary(data: bytes) -> Message:
    """A binary frame: a user broadcast push (realtime-js serializer, kind 3)."""
    if len(data) < 7 or data[0] != _USER_BROADCAST_PUSH:
        raise ProtocolError(BAD_MESSAGE, "unknown binary message")
    sizes = data[1:6]
    encoding = data[6]
    if 7 + sum(sizes) > len(data):
        raise ProtocolError(BAD_MESSAGE, "binary message shorter than its header says")
    if encoding != _JSON_ENCODING:
        # Relaying raw bytes would need binary frames to every receiver.
        raise ProtocolError(BAD_MESSAGE, "binary broadcast payloads are not supported")
    offset = 7
    parts = []
    for size in sizes:
        parts.append(data[offset : offset + size].decode("utf-8", "replace"))
        offset += size
    join_ref, ref, topic, event, metadata = parts
    try:
        payload: Any = client_json.loads(data[offset:])
        meta = client_json.loads(metadata) if metadata else {}
    except ValueError:
        raise ProtocolError(BAD_JSON, "broadcast payload is not valid JSON") from None
    if not isinstance(meta, dict):
        raise ProtocolError(BAD_MESSAGE, "broadcast metadata must be a JSON object")
    message: dict[str, Any] = {"type": "broadcast", "event": event, "payload": payload}
    if meta:
        # Kept apart, as realtime-js delivers it: it must not override the fields.
        message["meta"] = meta
    return Message(topic, "broadcast", message, ref or None, join_ref or None)


def encode(message: Message, vsn: str) -> bytes:
    """A server message as the client's serialisation expects it (a text frame's bytes)."""
    if vsn == VSN_2:
        value: Any = [message.join_ref, message.ref, message.topic, message.event, message.payload]
    else:
        value = {
            "topic": message.topic,
            "event": message.event,
            "payload": message.payload,
            "ref": message.ref,
        }
        if message.join_ref is not None:
            value["join_ref"] = message.join_ref
    return compact_json(value).encode()


def push_parts(topic: str, event: str, vsn: str) -> tuple[str, str]:
    """The text of a server message before and after its payload (no ref, no join_ref).

    ``head + json(payload) + tail`` is ``encode(Message(topic, event, payload))``:
    a change bound by many clients, each under its own topic, has its payload
    encoded once and spliced into each client's message.
    """
    topic_json, event_json = compact_json(topic), compact_json(event)
    if vsn == VSN_2:
        return f"[null,null,{topic_json},{event_json},", "]"
    return f'{{"topic":{topic_json},"event":{event_json},"payload":', ',"ref":null}'
