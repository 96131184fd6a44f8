"""The fan-out hub: who is subscribed to which ``table_id``, and delivery to them.

The hub knows nothing of wire protocols or sockets. It hands each subscriber of a
table the same :class:`Batch`; a subscriber encodes it with :meth:`Batch.memo`,
so every subscriber speaking the same protocol shares one encoding. Delivery must
not block: a subscriber queues bytes and returns (see ``docs/protocol.md`` for
what happens to a client that cannot keep up).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any, Protocol, TypeVar

from .payloads import Change

__all__ = ["Batch", "Hub", "Subscriber", "group_by_table"]

logger = logging.getLogger(__name__)

T = TypeVar("T")


class Batch:
    """Consecutive changes of one table, in commit order, delivered together."""

    __slots__ = ("_memo", "changes", "table_id")

    def __init__(self, table_id: str, changes: Sequence[Change]) -> None:
        self.table_id = table_id
        self.changes = changes
        self._memo: dict[object, Any] = {}

    def memo(self, key: object, build: Callable[[Batch], T]) -> T:
        """``build(self)``, computed once per ``key``: one encoding per protocol."""
        try:
            value: T = self._memo[key]
        except KeyError:
            value = self._memo[key] = build(self)
        return value

    def __repr__(self) -> str:
        return f"<Batch {self.table_id!r} of {len(self.changes)}>"


class Subscriber(Protocol):
    def deliver(self, batch: Batch) -> None:
        """Queue ``batch`` for sending; never block, never raise."""


class Hub:
    """Subscriptions by ``table_id``."""

    def __init__(self) -> None:
        # dicts as ordered sets: delivery order is subscription order.
        self._tables: dict[str, dict[Subscriber, None]] = {}

    def subscribe(self, table_id: str, subscriber: Subscriber) -> None:
        self._tables.setdefault(table_id, {})[subscriber] = None

    def unsubscribe(self, table_id: str, subscriber: Subscriber) -> None:
        subscribers = self._tables.get(table_id)
        if subscribers is None:
            return
        subscribers.pop(subscriber, None)
        if not subscribers:
            del self._tables[table_id]

    def subscribers(self, table_id: str) -> int:
        return len(self._tables.get(table_id, ()))

    @property
    def tables(self) -> int:
        return len(self._tables)

    def publish(self, batch: Batch) -> int:
        """Deliver ``batch`` to every subscriber of its table; return how many."""
        subscribers = self._tables.get(batch.table_id)
        if not subscribers:
            return 0
        # A subscriber may unsubscribe itself while we iterate (a slow consumer
        # being dropped), so iterate over a snapshot.
        snapshot = tuple(subscribers)
        for subscriber in snapshot:
            try:
                subscriber.deliver(batch)
            except Exception:
                logger.exception("subscriber %r failed to take %r", subscriber, batch)
        return len(snapshot)


def group_by_table(changes: Sequence[Change]) -> list[Batch]:
    """Split changes into per-table batches, keeping commit order within each table."""
    tables: dict[str, list[Change]] = {}
    for change in changes:
        tables.setdefault(change.table_id, []).append(change)
    return [Batch(table_id, grouped) for table_id, grouped in tables.items()]
