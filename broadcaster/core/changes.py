"""A change of one row, as read from the change log and sent to clients."""

from __future__ import annotations

from typing import NamedTuple

__all__ = ["OPS", "Change"]

OPS = frozenset({"INSERT", "UPDATE", "DELETE"})


class Change(NamedTuple):
    """One committed change of a row, decoded once and shared by every subscriber.

    A named tuple: immutable, and built at every entry a read returns in a
    third of a frozen dataclass's time.

    ``version`` is the change's place in the change log, which orders each
    row's changes as they committed (0 for a row of a snapshot load, which
    comes before any change read after it). ``row_json`` is the row as clients
    receive it, the JSON text Postgres wrote (the read builds it,
    ``broadcaster/postgres/queries.py``), with ``version`` in it; it is spliced
    into messages without being parsed. For a ``DELETE`` it holds ``id``,
    ``table_id`` and ``version``. ``old_json`` is the whole row before an
    ``UPDATE`` or ``DELETE``. ``committed_at`` is when the change committed
    (ISO 8601, UTC), where known: see ``docs/guarantees.md``.
    """

    op: str
    table_id: str
    id: str
    version: int
    row_json: str
    old_json: str | None = None
    committed_at: str | None = None
