"""A change of one row, as read from the database and sent to clients."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["OPS", "Change"]

OPS = frozenset({"INSERT", "UPDATE", "DELETE"})


@dataclass(frozen=True, slots=True)
class Change:
    """One row's state (or its deletion), decoded once and shared by every subscriber.

    ``row_json`` is the row as clients receive it, the JSON text Postgres wrote
    (the read builds it, ``broadcaster/queries.py``); it is spliced into
    messages without being parsed. For a ``DELETE`` it holds ``id``,
    ``table_id`` and ``version``.
    """

    op: str
    table_id: str
    id: str
    version: int
    row_json: str
