"""The native wire protocol, version 1: parsing client messages, encoding server ones.

Plain data in, plain data out; ``docs/protocol.md`` is the reference for every
message, field, error code and close code defined here. Server messages are
returned as UTF-8 JSON bytes, ready to be framed.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from ..core.changes import Change, with_version
from ..exceptions import ProtocolError
from . import client_json

__all__ = [
    "CLOSE_GOING_AWAY",
    "CLOSE_INTERNAL_ERROR",
    "CLOSE_INVALID_DATA",
    "CLOSE_MESSAGE_TOO_BIG",
    "CLOSE_POLICY_VIOLATION",
    "CLOSE_SLOW_CONSUMER",
    "CLOSE_TOKEN_EXPIRED",
    "CLOSE_TOO_MANY_ERRORS",
    "CLOSE_UNAUTHORIZED",
    "Auth",
    "Broadcast",
    "ClientMessage",
    "Ping",
    "Ref",
    "Subscribe",
    "Track",
    "Unsubscribe",
    "Untrack",
    "batch",
    "encode_authenticated",
    "encode_broadcast",
    "encode_change",
    "encode_changes",
    "encode_cursor",
    "encode_done",
    "encode_error",
    "encode_pong",
    "encode_presence_diff",
    "encode_presence_state",
    "encode_reset",
    "encode_subscribed",
    "encode_synced",
    "encode_unsubscribed",
    "parse_client_message",
]

# Error codes (the "code" of an error message), defined here only: the token
# verifier's AuthenticationError and Phoenix's ProtocolError carry them too.
BAD_JSON: Final = "bad_json"
BAD_MESSAGE: Final = "bad_message"
UNKNOWN_TYPE: Final = "unknown_type"
TOO_LARGE: Final = "too_large"
TOO_MANY_SUBSCRIPTIONS: Final = "too_many_subscriptions"
BINARY_NOT_SUPPORTED: Final = "binary_not_supported"
UNAUTHORIZED: Final = "unauthorized"
TOKEN_EXPIRED: Final = "token_expired"
FORBIDDEN: Final = "forbidden"
RATE_LIMITED: Final = "rate_limited"
NOT_SUBSCRIBED: Final = "not_subscribed"
BAD_FILTER: Final = "bad_filter"
UNAVAILABLE: Final = "unavailable"

# Close codes.
CLOSE_GOING_AWAY: Final = 1001
CLOSE_INVALID_DATA: Final = 1007
CLOSE_POLICY_VIOLATION: Final = 1008
CLOSE_MESSAGE_TOO_BIG: Final = 1009
CLOSE_INTERNAL_ERROR: Final = 1011
CLOSE_SLOW_CONSUMER: Final = 4000
CLOSE_UNAUTHORIZED: Final = 4001
CLOSE_TOKEN_EXPIRED: Final = 4002
CLOSE_TOO_MANY_ERRORS: Final = 4003

Ref = str | int | float | None
"""A client's ``ref``: any JSON string or number, echoed back verbatim."""


@dataclass(frozen=True, slots=True)
class Subscribe:
    ref: Ref
    table_id: str
    cursor: str | None = None
    snapshot: bool = False
    presence: bool = False
    filter: str | None = None
    """Supabase's filter grammar (``room_id=eq.5``), on a published table only."""


@dataclass(frozen=True, slots=True)
class Unsubscribe:
    ref: Ref
    table_id: str


@dataclass(frozen=True, slots=True)
class Ping:
    ref: Ref


@dataclass(frozen=True, slots=True)
class Auth:
    ref: Ref
    token: str = field(repr=False)


@dataclass(frozen=True, slots=True)
class Broadcast:
    ref: Ref
    table_id: str
    event: str
    payload: Any
    echo: bool = False


@dataclass(frozen=True, slots=True)
class Track:
    ref: Ref
    table_id: str
    meta: dict[str, Any]
    key: str | None = None


@dataclass(frozen=True, slots=True)
class Untrack:
    ref: Ref
    table_id: str


ClientMessage = Subscribe | Unsubscribe | Ping | Auth | Broadcast | Track | Untrack


def _reject_constant(name: str) -> None:
    # Python's json accepts NaN and Infinity; JSON does not, and echoing them
    # back would send the client invalid JSON.
    raise ValueError(f"{name} is not JSON")


def _encodable(text: str) -> bool:
    # A JSON escape may produce a lone surrogate, which no reply can carry.
    try:
        text.encode()
    except UnicodeEncodeError:
        return False
    return True


def _valid_ref(ref: object) -> bool:
    if ref is None or (isinstance(ref, int) and not isinstance(ref, bool)):
        return True
    if isinstance(ref, float):
        return math.isfinite(ref)
    return isinstance(ref, str) and _encodable(ref)


def parse_client_message(text: str) -> ClientMessage:
    """Parse one text frame from a client; raise :class:`ProtocolError` if invalid."""
    try:
        message = client_json.loads(text, parse_constant=_reject_constant)
    except ValueError as exc:
        raise ProtocolError(BAD_JSON, f"message is not valid JSON: {exc}") from None
    if not isinstance(message, dict):
        raise ProtocolError(BAD_MESSAGE, "message must be a JSON object")
    ref = message.get("ref")
    if not _valid_ref(ref):
        raise ProtocolError(BAD_MESSAGE, "ref must be a string or a finite number")
    kind = message.get("type")
    if not isinstance(kind, str):
        raise ProtocolError(BAD_MESSAGE, "message needs a string type", ref)
    if kind == "ping":
        return Ping(ref)
    if kind == "auth":
        token = message.get("token")
        if not isinstance(token, str) or not token:
            raise ProtocolError(BAD_MESSAGE, "auth needs a non-empty string token", ref)
        return Auth(ref, token)
    if kind in ("subscribe", "unsubscribe", "broadcast", "track", "untrack"):
        table_id = message.get("table_id")
        if not isinstance(table_id, str) or not table_id or not _encodable(table_id):
            raise ProtocolError(BAD_MESSAGE, f"{kind} needs a non-empty string table_id", ref)
        if kind == "unsubscribe":
            return Unsubscribe(ref, table_id)
        if kind == "untrack":
            return Untrack(ref, table_id)
        if kind == "broadcast":
            event = message.get("event")
            if not isinstance(event, str) or not event or not _encodable(event):
                raise ProtocolError(BAD_MESSAGE, "broadcast needs a non-empty string event", ref)
            echo = message.get("self", False)
            if not isinstance(echo, bool):
                raise ProtocolError(BAD_MESSAGE, "self must be true or false", ref)
            return Broadcast(ref, table_id, event, message.get("payload"), echo)
        if kind == "track":
            meta = message.get("meta", {})
            key = message.get("key")
            if not isinstance(meta, dict):
                raise ProtocolError(BAD_MESSAGE, "track needs an object meta", ref)
            if key is not None and (not isinstance(key, str) or not key or not _encodable(key)):
                raise ProtocolError(BAD_MESSAGE, "key must be a non-empty string", ref)
            return Track(ref, table_id, meta, key)
        cursor = message.get("cursor")
        if cursor is not None and not isinstance(cursor, str):
            raise ProtocolError(BAD_MESSAGE, "cursor must be a string", ref)
        snapshot = message.get("snapshot")
        if snapshot is None:
            snapshot = False
        elif not isinstance(snapshot, bool):
            raise ProtocolError(BAD_MESSAGE, "snapshot must be true or false", ref)
        presence = message.get("presence")
        if presence is not None and not isinstance(presence, bool):
            raise ProtocolError(BAD_MESSAGE, "presence must be true or false", ref)
        filter = message.get("filter")
        if filter is not None and (not isinstance(filter, str) or not _encodable(filter)):
            raise ProtocolError(BAD_MESSAGE, "filter must be a string such as room_id=eq.5", ref)
        return Subscribe(ref, table_id, cursor, snapshot, presence is True, filter or None)
    raise ProtocolError(UNKNOWN_TYPE, f"unknown message type {kind[:64]!r}", ref)


# One encoder for every message: json.dumps with options builds a new one per call.
_json = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode


def _encode(message: dict[str, Any]) -> bytes:
    return _json(message).encode()


def encode_subscribed(ref: Ref, table_id: str) -> bytes:
    return _encode({"type": "subscribed", "ref": ref, "table_id": table_id})


def encode_unsubscribed(ref: Ref, table_id: str) -> bytes:
    return _encode({"type": "unsubscribed", "ref": ref, "table_id": table_id})


def encode_pong(ref: Ref) -> bytes:
    return _encode({"type": "pong", "ref": ref})


def encode_done(kind: str, ref: Ref, table_id: str) -> bytes:
    """The reply to broadcast (``sent``), track (``tracked``) or untrack (``untracked``)."""
    return _encode({"type": kind, "ref": ref, "table_id": table_id})


def encode_broadcast(table_id: str, event: str, payload: Any) -> bytes:
    return _encode({"type": "broadcast", "table_id": table_id, "event": event, "payload": payload})


def encode_presence_state(table_id: str, presences: Any) -> bytes:
    return _encode({"type": "presence_state", "table_id": table_id, "presences": presences})


def encode_presence_diff(table_id: str, joins: Any, leaves: Any) -> bytes:
    return _encode(
        {"type": "presence_diff", "table_id": table_id, "joins": joins, "leaves": leaves}
    )


def encode_authenticated(ref: Ref, expires_at: float | None) -> bytes:
    expiry = None if expires_at is None else int(expires_at)
    return _encode({"type": "authenticated", "ref": ref, "expires_at": expiry})


def encode_error(code: str, message: str, ref: Ref = None, *, table_id: str | None = None) -> bytes:
    error: dict[str, Any] = {"type": "error", "code": code, "message": message}
    if ref is not None:
        error["ref"] = ref
    if table_id is not None:
        error["table_id"] = table_id
    return _encode(error)


def encode_synced(table_id: str, cursor: str) -> bytes:
    return _encode({"type": "synced", "table_id": table_id, "cursor": cursor})


def encode_reset(table_id: str, reason: str) -> bytes:
    return _encode({"type": "reset", "table_id": table_id, "reason": reason})


def encode_cursor(table_id: str, cursor: str) -> bytes:
    return _encode({"type": "cursor", "table_id": table_id, "cursor": cursor})


def encode_change(change: Change, cursor: str | None = None) -> bytes:
    """The ``change`` message; the row's JSON is spliced in as Postgres wrote it.

    ``id`` is the row's key as the change log holds it (``rows``' id; a
    published table's primary key as text or a JSON array).

    Live changes carry the ``cursor`` to resume from; catch-up changes, sent
    before ``synced``, carry none.
    """
    return encode_changes([change], cursor)[0]


def encode_changes(changes: Sequence[Change], cursor: str | None = None) -> list[bytes]:
    """:func:`encode_change` of each change, encoding their table_id and ``cursor`` once."""
    tail = "}" if cursor is None else f',"cursor":{_json(cursor)}}}'
    heads: dict[str, str] = {}
    messages = []
    for change in changes:
        head = heads.get(change.table_id)
        if head is None:
            head = heads[change.table_id] = (
                f'{{"type":"change","table_id":{_json(change.table_id)},"op":"'
            )
        old = "" if change.old_json is None else f',"old":{change.old_json}'
        row = with_version(change.row_json, change.version)
        # The key as logged: a published table's row need not hold it under
        # one column (a composite key, a key column not named id).
        key = _json(change.id)
        messages.append(f'{head}{change.op}","id":{key},"row":{row}{old}{tail}'.encode())
    return messages


def batch(messages: list[bytes]) -> bytes:
    """Several encoded messages as one JSON array (one frame)."""
    return b"[" + b",".join(messages) + b"]"
