"""A change of one row, as read from the change log and sent to clients."""

from __future__ import annotations

from typing import NamedTuple

__all__ = ["OPS", "Change", "with_version"]

OPS = frozenset({"INSERT", "UPDATE", "DELETE"})


class Change(NamedTuple):
    """One committed change of a row, decoded once and shared by every subscriber.

    A named tuple: immutable, and built at every entry a read returns in a
    third of a frozen dataclass's time.

    ``version`` is the change's place in the change log, which orders each
    row's changes as they committed (0 for a row of a snapshot load, which
    comes before any change read after it). ``row_json`` is the row after the
    change, the JSON text Postgres wrote (the read builds it,
    ``broadcaster/postgres/queries.py``), spliced into messages without being
    parsed; a protocol that shows ``version`` in the row adds it with
    :func:`with_version`. For a ``DELETE`` it holds ``id`` and ``table_id``
    (the key as logged). ``old_json`` is the whole row before an
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


def with_version(row_json: str, version: int) -> str:
    """The JSON object ``row_json`` with ``version`` as its last member.

    Last, so that it is the value a JSON parser keeps if the row has a column
    of that name too (a published table's own ``version``).
    """
    if row_json == "{}":
        return f'{{"version":{version}}}'
    return f'{row_json[:-1]},"version":{version}}}'
