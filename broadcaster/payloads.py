"""Decoding of the NOTIFY payloads that ``triggers.sql`` sends: the one decoder.

A payload is a header line, optionally followed by the row::

    {"op": "UPDATE", "table_id": "t1", "id": "r1", "version": 42}
    {"id": "r1", "table_id": "t1", "data": {...}, ...}

Without the row line it is a *reference*: the row did not fit in NOTIFY's
8000 bytes, and the server fetches it by id before delivering it. The row line
is kept as the JSON text Postgres produced; it is spliced into outgoing messages
without being parsed.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from .exceptions import PayloadError

__all__ = ["OPS", "Change", "decode"]

OPS = frozenset({"INSERT", "UPDATE", "DELETE"})


@dataclass(frozen=True, slots=True)
class Change:
    """One committed change of one row, decoded once and shared by every subscriber.

    ``row_json`` is the row as clients receive it, or ``None`` while a
    reference has not been fetched (:attr:`needs_fetch`).
    """

    op: str
    table_id: str
    id: str
    version: int
    row_json: str | None

    @property
    def needs_fetch(self) -> bool:
        """True for a reference whose row must be read from the database."""
        return self.row_json is None


def decode(payload: str) -> Change:
    """Decode one NOTIFY payload; raise :class:`PayloadError` if it is malformed."""
    header_text, newline, row_json = payload.partition("\n")
    try:
        header = json.loads(header_text)
    except ValueError as exc:
        raise PayloadError(f"payload header is not JSON: {header_text[:80]!r}") from exc
    if not isinstance(header, dict):
        raise PayloadError("payload header is not a JSON object")
    op = header.get("op")
    table_id = header.get("table_id")
    row_id = header.get("id")
    version = header.get("version")
    if not isinstance(op, str) or op not in OPS:
        raise PayloadError(f"payload has an unknown op: {op!r}")
    if not isinstance(table_id, str) or not isinstance(row_id, str):
        raise PayloadError("payload table_id and id must be strings")
    if not isinstance(version, int) or isinstance(version, bool):
        raise PayloadError(f"payload version must be an integer: {version!r}")
    if newline and not row_json:
        raise PayloadError("payload has an empty row line")
    if not newline and op == "DELETE":
        # The deleted row is gone and cannot be fetched: its key is the row.
        row_json = json.dumps(
            {"id": row_id, "table_id": table_id, "version": version}, ensure_ascii=False
        )
        newline = "\n"
    return Change(op, table_id, row_id, version, row_json if newline else None)
