"""Supabase Realtime's ``postgres_changes``, sans-I/O: bindings, change payloads, server texts.

A channel's join lists ``postgres_changes`` bindings; :class:`Binding` parses
one and tells which changes fire it. A batch's messages are built once per
channel :class:`Shape` (protocol version, topic, bindings) and written as the
same bytes to every channel of that shape; each change's ``data`` is built
once per batch, whatever the shape. The texts Supabase's own server sends
(``realtime_channel.ex``) are here too, so a client sees the same words.
"""

from __future__ import annotations

import json
import zlib
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final

from ..core.changes import Change
from ..core.hub import Batch
from ..core.members import members
from ..exceptions import FilterError
from . import phoenix
from .filters import RowFilter, parse_filters
from .frames import text_frame
from .phoenix import Message, compact_json

__all__ = [
    "COLUMNS",
    "MAX_RECORD_BYTES",
    "PAYLOAD_TOO_LARGE",
    "SCHEMA",
    "TABLE",
    "TOO_MANY_CHANNELS",
    "TOO_MANY_JOINS",
    "TOO_MANY_MESSAGES",
    "Binding",
    "Shape",
    "system",
    "token_expired",
]

SCHEMA: Final = "public"
TABLE: Final = "rows"
COLUMNS: Final = [
    {"name": "id", "type": "text"},
    {"name": "table_id", "type": "text"},
    {"name": "data", "type": "jsonb"},
    {"name": "enriching_columns", "type": "_text"},
    {"name": "version", "type": "int8"},
    {"name": "created_at", "type": "timestamptz"},
    {"name": "updated_at", "type": "timestamptz"},
]
_EVENTS: Final = {"*", "INSERT", "UPDATE", "DELETE"}
# Supabase's cap on a change (realtime.apply_rls, max_record_bytes): past it,
# record and old_record keep only the values of at most 64 bytes, and errors
# says why. Its clients rely on it: the official Python client refuses frames
# over 1 MiB and drops the connection.
MAX_RECORD_BYTES: Final = 1024 * 1024
MAX_VALUE_BYTES_WHEN_TOO_LARGE: Final = 64
PAYLOAD_TOO_LARGE: Final = "Error 413: Payload Too Large"
# Supabase's answers to a client past a limit, word for word.
TOO_MANY_MESSAGES: Final = "Too many messages per second"
TOO_MANY_JOINS: Final = "ClientJoinRateLimitReached: Too many joins per second"
TOO_MANY_CHANNELS: Final = "ChannelRateLimitReached: Too many channels"


def token_expired(overdue: float) -> str:
    """What Supabase tells a channel whose token expired ``overdue`` seconds ago."""
    return f"Token has expired {max(0, int(overdue))} seconds ago"


def system(topic: str, status: str, text: str, extension: str = "postgres_changes") -> Message:
    """A ``system`` message on ``topic``: Supabase's way to tell a channel how it fares.

    ``extension`` is ``postgres_changes`` for news of the bindings and ``system``
    for the channel itself (Supabase's ``shutdown_response``).
    """
    return Message(
        topic,
        "system",
        {
            "extension": extension,
            "status": status,
            "message": text,
            "channel": topic.removeprefix("realtime:"),
        },
    )


@dataclass(frozen=True)
class Binding:
    """One ``postgres_changes`` entry of a join, with the id the client matches on."""

    id: int
    event: str
    tables: tuple[str, ...] | None
    """The table_ids it routes to; ``None``: every table."""
    filters: tuple[RowFilter, ...] = ()

    @classmethod
    def parse(cls, entry: object) -> Binding:
        if not isinstance(entry, dict):
            raise FilterError("each postgres_changes entry is an object")
        event = entry.get("event", "*")
        if not isinstance(event, str) or event not in _EVENTS:
            raise FilterError(f"event must be one of *, INSERT, UPDATE, DELETE, not {event!r}")
        if entry.get("schema", SCHEMA) != SCHEMA or entry.get("table") != TABLE:
            raise FilterError(
                f"only {SCHEMA}.{TABLE} is published here, not "
                f"{entry.get('schema')}.{entry.get('table')}"
            )
        text = entry.get("filter")
        if text is None or text == "":
            filters: tuple[RowFilter, ...] = ()
        elif isinstance(text, str):
            filters = parse_filters(text)
        else:
            raise FilterError("filter must be a string such as table_id=eq.X")
        tables: tuple[str, ...] | None = None
        for row_filter in filters:
            routes = row_filter.tables
            if routes is not None:
                tables = routes if tables is None else tuple(t for t in tables if t in routes)
        if tables == ():
            raise FilterError(f"filter {text!r} matches no table_id")
        # Deterministic, so every client with the same bindings gets the same
        # ids (as Supabase's hash of the parameters); never 0, which the client
        # treats as unset.
        canonical = json.dumps(entry, sort_keys=True, separators=(",", ":"))
        binding_id = zlib.crc32(canonical.encode()) & 0x7FFFFFFF or 1
        return cls(binding_id, event, tables, filters)

    def matches(self, change: Change, row: Mapping[str, Any]) -> bool:
        """Does ``change`` (``row``: its record, or for a DELETE the old row) fire this binding?"""
        if self.event not in ("*", change.op):
            return False
        if self.tables is not None and change.table_id not in self.tables:
            return False
        return all(row_filter.matches(row) for row_filter in self.filters)


@dataclass(frozen=True)
class Shape:
    """What decides the messages a batch brings a channel: channels of the same
    shape (each tab open on one sheet) share them. A key of :meth:`Batch.memo`
    (bindings hash: their filters' values are canonical tuples) and the
    function that builds them."""

    vsn: str
    topic: str
    bindings: tuple[Binding, ...]

    def __call__(self, batch: Batch) -> bytes:
        """The ``postgres_changes`` messages of ``batch``, as text frames."""
        frames = []
        head = tail = ""
        for change, row, data in batch.memo("supabase.changes", _changes):
            ids = [b.id for b in self.bindings if b.matches(change, row)]
            if not ids:
                continue
            if not head:
                head, tail = phoenix.push_parts(self.topic, "postgres_changes", self.vsn)
            ids_json = ",".join(map(str, ids))
            frames.append(text_frame(f'{head}{{"ids":[{ids_json}],"data":{data}}}{tail}'.encode()))
        return b"".join(frames)


def _changes(batch: Batch) -> list[tuple[Change, dict[str, Any], str]]:
    """Each change, its row (for the bindings' filters) and its ``data`` as JSON.

    Built once per batch and shared by every Supabase client it goes to. The
    record is the row's JSON as the read returned it, spliced in unparsed.
    """
    return [_change(change) for change in batch.changes]


def _change(change: Change) -> tuple[Change, dict[str, Any], str]:
    # Filters see the row a change leaves, or for a DELETE the row it removed.
    record: str | None
    old_record: str | None
    if change.op == "DELETE":
        # Its record is the row's identity only: old_record is the row it
        # removed (its identity, for a change read without one).
        record, old_record = None, change.old_json or change.row_json
        row = _row(old_record)
    else:
        record, old_record = change.row_json, change.old_json
        row = _row(record)
    committed = compact_json(
        change.committed_at or datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    )
    head = (
        f'{_DATA_HEAD}"commit_timestamp":{committed},"type":"{change.op}",'
        f'"columns":{_COLUMNS_JSON},'
    )
    errors = "null"
    if _too_large(record, old_record):
        record = None if record is None else _small_values(record)
        old_record = None if old_record is None else _small_values(old_record)
        errors = compact_json([PAYLOAD_TOO_LARGE])
    data = head
    if record is not None:
        data += f'"record":{record},'
    if old_record is not None:
        data += f'"old_record":{old_record},'
    return change, row, f'{data}"errors":{errors}}}'


def _too_large(*images: str | None) -> bool:
    texts = [image for image in images if image is not None]
    characters = sum(map(len, texts))
    # A character is one to four bytes in UTF-8: encode only when that decides.
    if characters * 4 <= MAX_RECORD_BYTES:
        return False
    return characters > MAX_RECORD_BYTES or sum(len(t.encode()) for t in texts) > MAX_RECORD_BYTES


def _small_values(image: str) -> str:
    """The image with only its values of at most 64 bytes, as Supabase cuts a large change."""
    return compact_json(
        {
            key: value
            for key, value in _row(image).items()
            if len(compact_json(value).encode()) <= MAX_VALUE_BYTES_WHEN_TOO_LARGE
        }
    )


_DATA_HEAD: Final = f'{{"schema":{compact_json(SCHEMA)},"table":{compact_json(TABLE)},'
_COLUMNS_JSON: Final = compact_json(COLUMNS)


def _row(row_json: str) -> dict[str, Any]:
    """The row Postgres wrote as JSON, for the bindings' filters.

    A ``jsonb`` value may nest deeper than Python's parser goes (about a
    thousand levels): that column alone reads as null here, so filters on it
    do not match, and the change still goes to every other binding. The
    record sent is the row's own JSON, whole, either way.
    """
    try:
        row: dict[str, Any] = json.loads(row_json)
    except RecursionError:
        return {name: _value(value) for name, _, value in members(row_json)}
    return row


def _value(text: str) -> Any:
    try:
        return json.loads(text)
    except RecursionError:
        return None
