"""What iterating a subscription yields: :class:`Change` and :class:`Reset`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final, Literal, TypeAlias

__all__ = ["INTERRUPTED", "Change", "Event", "Op", "Reset"]

Op: TypeAlias = Literal["INSERT", "UPDATE", "DELETE"]

INTERRUPTED: Final = "interrupted"
"""The reason of a :class:`Reset` the client makes itself: a snapshot was cut
short by a lost connection and starts over."""


@dataclass(frozen=True, slots=True)
class Change:
    """One change of one row, as the server sent it.

    ``id`` is the row's key: ``rows``' id, or a published table's primary key
    as text (``42``) or, for a composite key, JSON array text (``[5, 1]``).
    ``row`` is the whole row after the change (``docs/protocol.md``): for
    ``rows``, ``id``, ``table_id``, ``data``...; for a published table, its own
    columns; ``version`` in both. For a ``DELETE`` it holds only ``id``,
    ``table_id`` and ``version``. ``old`` is
    the whole row before an ``UPDATE`` or ``DELETE`` (``None`` for an
    ``INSERT``, and for rows of a snapshot). ``cursor`` is set on live changes
    and ``None`` on catch-up (snapshot or resume) changes. A cursor covers the
    whole batch it came with; to save a resume point, prefer
    :attr:`Subscription.cursor`, which covers exactly what was yielded.
    """

    table_id: str
    op: Op
    id: str
    version: int
    row: dict[str, Any]
    cursor: str | None = None
    old: dict[str, Any] | None = None


@dataclass(frozen=True, slots=True)
class Reset:
    """Drop everything held for ``table_id``: its snapshot follows.

    ``reason`` is the server's (``malformed_cursor``, ``foreign_cursor``,
    ``history_pruned``) or :data:`INTERRUPTED` when the client restarts a
    snapshot that a lost connection cut short.
    """

    table_id: str
    reason: str


Event: TypeAlias = Change | Reset
"""What iterating a :class:`Subscription` yields."""
