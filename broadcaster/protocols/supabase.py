"""Supabase Realtime's ``postgres_changes``, sans-I/O: bindings, change payloads, server texts.

A channel's join lists ``postgres_changes`` bindings; :class:`Binding` parses
one and tells which changes fire it. A batch's messages are built once per
channel :class:`Shape` (protocol version, topic, bindings) and written as the
same bytes to every channel of that shape; each change's ``data`` is built
once per batch, whatever the shape. The texts Supabase's own server sends
(``realtime_channel.ex``) are here too, so a client sees the same words.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import zlib
from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final, TypeAlias

from ..core.changes import Change, with_version
from ..core.checks import RowCheck, passed
from ..core.hashing import cached_hash
from ..core.hub import Batch
from ..core.members import members, only_members
from ..core.published import PublishedTable
from ..core.visibility import visible_columns
from ..exceptions import FilterError
from . import phoenix
from .filters import RowFilter, parse_filters, row_values
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


Checks: TypeAlias = Callable[[Hashable], bool]
"""Whether a change passed the filter Postgres checked under a key (:attr:`Binding.check`)."""


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
    """One ``postgres_changes`` entry of a join, with the id the client matches on.

    A binding on ``public.rows`` routes by its ``table_id`` filters and checks
    the others here. A binding on another table names it in ``relation``
    (``*`` for every published table of the schema, or of every schema)
    until the session :meth:`resolve` s it to the published tables; its
    filter (``filter``, unparsed) is then checked by Postgres, once per read
    for every subscriber with the same filter on that table, and the result
    is found in the batch under ``check``.
    """

    __hash__ = cached_hash

    id: int
    event: str
    tables: tuple[str, ...] | None
    """The table_ids it routes to; ``None``: every table."""
    filters: tuple[RowFilter, ...] = ()
    relation: tuple[str, str] | None = None
    """``(schema, table)`` of a binding on a table other than ``public.rows``."""
    filter: str = ""
    published: tuple[PublishedTable, ...] | None = None
    check: Hashable | None = None
    spec: str = ""
    """The entry as the client gave it, as canonical JSON (what an authorizer is shown)."""

    @classmethod
    def parse(cls, entry: object) -> Binding:
        if not isinstance(entry, dict):
            raise FilterError("each postgres_changes entry is an object")
        event = entry.get("event", "*")
        if not isinstance(event, str) or event not in _EVENTS:
            raise FilterError(f"event must be one of *, INSERT, UPDATE, DELETE, not {event!r}")
        schema, table = entry.get("schema", SCHEMA), entry.get("table")
        if not isinstance(schema, str) or not isinstance(table, str) or not schema or not table:
            raise FilterError(
                "schema and table must be names, such as schema: 'public', table: 'messages'"
            )
        text = entry.get("filter")
        if text is not None and not isinstance(text, str):
            raise FilterError("filter must be a string such as id=eq.5")
        if text and "*" in (schema, table):
            raise FilterError(
                f"a filter needs one table, not {schema}.{table}: bind the table by its name"
            )
        if schema == "*" and table != "*":
            raise FilterError(f"*.{table}: name the table's schema, or bind *.* for every table")
        # Deterministic, so every client with the same bindings gets the same
        # ids (as Supabase's hash of the parameters); never 0, which the client
        # treats as unset.
        canonical = json.dumps(entry, sort_keys=True, separators=(",", ":"))
        binding_id = zlib.crc32(canonical.encode()) & 0x7FFFFFFF or 1
        if (schema, table) != (SCHEMA, TABLE):
            return cls(
                binding_id,
                event,
                None,
                relation=(schema, table),
                filter=text or "",
                spec=canonical,
            )
        filters = parse_filters(text) if text else ()
        tables: tuple[str, ...] | None = None
        for row_filter in filters:
            routes = row_filter.tables
            if routes is not None:
                tables = routes if tables is None else tuple(t for t in tables if t in routes)
        if tables == ():
            raise FilterError(f"filter {text!r} matches no table_id")
        return cls(binding_id, event, tables, filters, spec=canonical)

    def resolve(self, published: Sequence[PublishedTable], check: Hashable | None) -> Binding:
        """This binding on ``published``, the tables its ``relation`` names; ``check``:
        where a batch holds its filter's results (``None``: it has no filter)."""
        return dataclasses.replace(
            self,
            tables=tuple(table.table_id for table in published),
            published=tuple(published),
            check=check,
        )

    def matches(self, change: Change, row: Mapping[str, Any], passed: Checks | None = None) -> bool:
        """Does ``change`` (``row``: its record, or for a DELETE the old row) fire this binding?

        ``passed(check)`` tells whether the change passed a filter Postgres
        checked; without it, such a filter is not passed.
        """
        if self.event not in ("*", change.op) or (self.relation and self.published is None):
            return False
        if self.tables is not None and change.table_id not in self.tables:
            return False
        if self.check is not None:
            return passed is not None and passed(self.check)
        return all(row_filter.matches(row) for row_filter in self.filters)


@dataclass(frozen=True)
class Shape:
    """What decides the messages a batch brings a channel: channels of the same
    shape (each tab open on one sheet) share them. A key of :meth:`Batch.memo`
    (bindings hash: their filters' values are canonical tuples) and the
    function that builds them.

    ``row_checks`` are the channel's viewer's checks on tables with
    row-level security, the current one of a table first (after a token
    refresh, the one it replaces follows until reads answer the new one).
    ``selectable`` holds, for each published table, the columns the viewer's
    role may select: the records and ``columns`` it gets.
    """

    __hash__ = cached_hash

    vsn: str
    topic: str
    bindings: tuple[Binding, ...]
    row_checks: tuple[RowCheck, ...] = ()
    selectable: tuple[tuple[str, frozenset[str]], ...] = ()

    def __call__(self, batch: Batch) -> bytes:
        """The ``postgres_changes`` messages of ``batch``, as text frames."""
        table = next(
            (t for b in self.bindings for t in b.published or () if t.table_id == batch.table_id),
            None,
        )
        row_checks = [c for c in self.row_checks if c.table.table_id == batch.table_id]
        selectable = next((s for t, s in self.selectable if t == batch.table_id), None)
        checks = batch.checks
        frames = []
        head = tail = ""
        changes = batch.memo(
            ("supabase.changes", table, selectable),
            functools.partial(_changes, table, selectable),
        )
        for index, (change, row, data) in enumerate(changes):
            if row_checks and not _visible(checks, row_checks, index):
                continue
            ids = [
                b.id
                for b in self.bindings
                if b.matches(change, row, lambda check: passed(checks, check, index))  # noqa: B023
            ]
            if not ids:
                continue
            if not head:
                head, tail = phoenix.push_parts(self.topic, "postgres_changes", self.vsn)
            ids_json = ",".join(map(str, ids))
            frames.append(text_frame(f'{head}{{"ids":[{ids_json}],"data":{data}}}{tail}'.encode()))
        return b"".join(frames)


def _visible(
    checks: Mapping[Hashable, Sequence[bool]], row_checks: Sequence[RowCheck], index: int
) -> bool:
    # The first check a read answered decides: the current viewer's, or
    # until reads answer it, the one it replaces.
    for check in row_checks:
        found = checks.get(check)
        if found is not None:
            return found[index]
    return False


def _changes(
    table: PublishedTable | None, selectable: frozenset[str] | None, batch: Batch
) -> list[tuple[Change, dict[str, Any], str]]:
    """Each change, its row (for the bindings' filters) and its ``data`` as JSON.

    Built once per batch, table and selectable columns, and shared by every
    Supabase client it goes to. The record is the row's JSON as the read
    returned it, spliced in unparsed: for ``public.rows`` (``table`` None)
    with its ``version``, for a published table as the table has it, with
    only the columns the viewer's role may select (``selectable``; None: no
    viewer, every column).
    """
    return [_change(change, table, selectable) for change in batch.changes]


def _change(
    change: Change, table: PublishedTable | None, selectable: frozenset[str] | None
) -> tuple[Change, dict[str, Any], str]:
    # Filters see the row a change leaves, or for a DELETE the row it removed.
    record: str | None
    old_record: str | None
    if table is None:
        new = with_version(change.row_json, change.version)
        identity, old = new, change.old_json
        data_head, columns = _DATA_HEAD, _COLUMNS_JSON
    else:
        new = identity = change.row_json
        old = change.old_json
        data_head = _data_head(table.schema, table.name)
        columns = _columns_json(table, selectable)
        names = _record_columns(table, change.op, selectable)
        if names is not None:
            new = only_members(new, names)
            old = None if old is None else only_members(old, names)
    if change.op == "DELETE":
        # Its record is the row's identity only: old_record is the row it
        # removed (its identity, for a change read without one).
        record, old_record = None, old or identity
        row = row_values(old_record)
    else:
        record, old_record = new, old
        row = row_values(record)
    committed = compact_json(
        change.committed_at or datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    )
    head = f'{data_head}"commit_timestamp":{committed},"type":"{change.op}","columns":{columns},'
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


def _record_columns(
    table: PublishedTable, op: str, selectable: frozenset[str] | None
) -> frozenset[str] | None:
    """The columns of a change's images a subscriber gets; None: all of them."""
    if selectable is None:
        if table.row_security and op == "DELETE":
            return frozenset(table.key)
        return None
    return visible_columns(table, op, selectable)


def _too_large(*images: str | None) -> bool:
    texts = [image for image in images if image is not None]
    characters = sum(map(len, texts))
    # A character is one to four bytes in UTF-8: encode only when that decides.
    if characters * 4 <= MAX_RECORD_BYTES:
        return False
    return characters > MAX_RECORD_BYTES or sum(len(t.encode()) for t in texts) > MAX_RECORD_BYTES


def _small_values(image: str) -> str:
    """The image with only its values of at most 64 bytes, as Supabase cuts a large change.

    Measured as Postgres writes them (Supabase's ``octet_length(value::text)``)
    and kept as written: re-encoded, a ``numeric`` lost its digits past a
    float's, and one past a float's range became ``Infinity``, which is not JSON.
    """
    kept = [
        member
        for _, member, value in members(image)
        if len(value.encode()) <= MAX_VALUE_BYTES_WHEN_TOO_LARGE
    ]
    return "{" + ", ".join(kept) + "}"


def _data_head(schema: str, table: str) -> str:
    return f'{{"schema":{compact_json(schema)},"table":{compact_json(table)},'


@functools.lru_cache(maxsize=256)
def _columns_json(table: PublishedTable, selectable: frozenset[str] | None) -> str:
    """The table's ``columns`` as Supabase sends them: each name and its type's name
    (``int8``, ``timestamptz``, ``_text`` for an array), which supabase-js converts
    values by; only those in ``selectable``, if given."""
    return compact_json(
        [
            {"name": c.name, "type": c.type_name}
            for c in table.columns
            if selectable is None or c.name in selectable
        ]
    )


_DATA_HEAD: Final = _data_head(SCHEMA, TABLE)
_COLUMNS_JSON: Final = compact_json(COLUMNS)
