"""Decoding of the NOTIFY payloads that ``triggers.sql`` sends: the one decoder.

A payload is a wake-up, not a change: the ``table_id`` whose rows changed, or
the empty string for every table (a TRUNCATE, or a table_id too long for a
payload). The changes themselves are read from the database
(:mod:`broadcaster.core.feed`), so no payload size limit applies to rows.
"""

from __future__ import annotations

from .tables import from_database

__all__ = ["decode"]


def decode(payload: str) -> str | None:
    """The table_id a wake-up concerns, or :data:`~broadcaster.core.tables.EVERY_TABLE`."""
    return from_database(payload)
