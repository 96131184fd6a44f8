"""A change of one row, as read from the database and sent to clients."""

from __future__ import annotations

from typing import NamedTuple

__all__ = ["OPS", "Change"]

OPS = frozenset({"INSERT", "UPDATE", "DELETE"})


class Change(NamedTuple):
    """One row's state (or its deletion), decoded once and shared by every subscriber.

    A named tuple: immutable, and built at every row a read returns in a
    third of a frozen dataclass's time.

    ``row_json`` is the row as clients receive it, the JSON text Postgres wrote
    (the read builds it, ``broadcaster/postgres/queries.py``); it is spliced into
    messages without being parsed. For a ``DELETE`` it holds ``id``,
    ``table_id`` and ``version``.
    """

    op: str
    table_id: str
    id: str
    version: int
    row_json: str
