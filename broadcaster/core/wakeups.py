"""Decoding of the NOTIFY payloads that ``triggers.sql`` sends: the one decoder.

A payload is a wake-up, not a change: the ``table_id`` whose rows changed, or
the empty string for "any table" (a TRUNCATE, or a table_id too long for a
payload). The changes themselves are read from the database
(:mod:`broadcaster.core.feed`), so no payload size limit applies to rows.
"""

from __future__ import annotations

__all__ = ["ANY_TABLE", "decode"]

ANY_TABLE = None
"""What :func:`decode` returns for a wake-up that concerns every table."""


def decode(payload: str) -> str | None:
    """The table_id a wake-up concerns, or :data:`ANY_TABLE`."""
    return payload or ANY_TABLE
