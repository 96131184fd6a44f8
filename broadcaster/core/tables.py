"""The one name for "every table", and the database's spelling of it.

A subscription, a join, a wake-up or a registration concerns one table_id, or
:data:`EVERY_TABLE`. The database spells it ``''`` (triggers.sql: the NOTIFY
payload of a wake-up for every table, and the ``broadcaster_listeners`` row of a
process serving every table); :func:`to_database` and :func:`from_database`
convert at that boundary. The authorizers spell it ``'*'``
(:data:`broadcaster.auth.authorization.EVERY_TABLE_ID`).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Final

__all__ = ["EVERY_TABLE", "from_database", "ordered", "to_database"]

EVERY_TABLE: Final = None
"""The table_id that stands for every table."""

_IN_DATABASE: Final = ""


def to_database(table_id: str | None) -> str:
    """``table_id`` as the database spells it."""
    return _IN_DATABASE if table_id is EVERY_TABLE else table_id


def from_database(table_id: str) -> str | None:
    """A table_id as the database spells it, here (:data:`EVERY_TABLE` for ``''``)."""
    return EVERY_TABLE if table_id == _IN_DATABASE else table_id


def ordered(table_ids: Iterable[str | None]) -> list[str | None]:
    """``table_ids`` sorted, :data:`EVERY_TABLE` first."""
    return sorted(table_ids, key=to_database)
