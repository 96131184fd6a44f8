"""The fan-out hub: who is subscribed to which ``table_id``, and delivery to them.

A subscription names one table_id, or
:data:`~broadcaster.core.tables.EVERY_TABLE` (``None``): the
subscriber then gets every table's batches and filters them itself (a Supabase
binding filtered on a column other than table_id).

The hub knows nothing of wire protocols or sockets. It hands each subscriber of a
table the same :class:`Batch`; a subscriber encodes it with :meth:`Batch.memo`,
so every subscriber speaking the same protocol shares one encoding. Delivery must
not block: a subscriber queues bytes and returns (see ``docs/protocol.md`` for
what happens to a client that cannot keep up).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Hashable, Mapping, Sequence
from typing import Any, Protocol, TypeAlias, TypeVar

from .changes import Change
from .tables import EVERY_TABLE

__all__ = ["EVERY_TABLE", "Batch", "Hub", "Interest", "Subscriber"]

logger = logging.getLogger(__name__)

T = TypeVar("T")


class Batch:
    """What one read found for one table, delivered to its live subscribers together.

    ``changes`` are in version order and ``cursor`` is the resume point after
    them; ``since`` is the cursor the read started from, the resume point for a
    client that got only part of the batch. A batch with no changes only
    advances the cursor. ``reset`` is set when the table's history could not be
    read from ``since``: ``changes`` then hold every row of the table.
    ``checks`` holds what Postgres decided for subscribers' filters on a
    published table: for each filter's key, whether each change passed it.
    ``published`` is whether ``table_id`` is a published table's: its batches
    do not go to subscribers of every table, which means ``rows``' tables.
    """

    __slots__ = (
        "_memo",
        "changes",
        "checks",
        "cursor",
        "published",
        "reset",
        "since",
        "table_id",
    )

    def __init__(
        self,
        table_id: str,
        changes: Sequence[Change],
        cursor: str,
        reset: str | None = None,
        *,
        since: str,
    ) -> None:
        self.table_id = table_id
        self.changes = changes
        self.cursor = cursor
        self.since = since
        self.reset = reset
        self.checks: Mapping[Hashable, Sequence[bool]] = {}
        self.published = False
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


Interest: TypeAlias = frozenset[Hashable] | None
"""The checks of which a subscriber needs one passed by some change of a batch to be
handed the batch (:attr:`Batch.checks`); None: every batch."""


class Hub:
    """Subscriptions by ``table_id`` (or :data:`EVERY_TABLE`), each with its interest.

    A subscriber whose every channel on a table is filtered (or checked for
    row-level security) declares the checks that decide what it sends: a
    batch of which no change passed any of them is not handed to it. Of a
    thousand subscribers of one table, each filtered on its own user's rows,
    a batch then visits the few it concerns rather than every one.
    """

    def __init__(self) -> None:
        # dicts as ordered sets: delivery order is subscription order.
        self._tables: dict[str | None, dict[Subscriber, Interest]] = {}

    def subscribe(
        self, table_id: str | None, subscriber: Subscriber, interest: Interest = None
    ) -> None:
        """Subscribe, or change an existing subscription's interest."""
        self._tables.setdefault(table_id, {})[subscriber] = interest

    def unsubscribe(self, table_id: str | None, subscriber: Subscriber) -> None:
        subscribers = self._tables.get(table_id)
        if subscribers is None:
            return
        subscribers.pop(subscriber, None)
        if not subscribers:
            del self._tables[table_id]

    def subscribers(self, table_id: str | None) -> int:
        return len(self._tables.get(table_id, ()))

    def is_subscribed(self, table_id: str | None) -> bool:
        """Has ``table_id`` subscribers of its own (for :data:`EVERY_TABLE`: of every table)?"""
        return table_id in self._tables

    @property
    def tables(self) -> int:
        return len(self._tables)

    def publish(self, batch: Batch) -> int:
        """Deliver ``batch`` to every subscriber of its table, and of every table unless
        it is a published table's (:attr:`Batch.published`); return how many.

        A subscriber of both gets it once.
        """
        subscribers = self._tables.get(batch.table_id)
        everything = None if batch.published else self._tables.get(EVERY_TABLE)
        if everything:
            subscribers = {**subscribers, **everything} if subscribers else everything
        if not subscribers:
            return 0
        # A subscriber may unsubscribe itself while we iterate (a slow consumer
        # being dropped), so iterate over a snapshot.
        if batch.checks and batch.changes and batch.reset is None:
            passed = {check for check, answers in batch.checks.items() if any(answers)}
            snapshot = tuple(
                subscriber
                for subscriber, interest in subscribers.items()
                if interest is None or not interest.isdisjoint(passed)
            )
        else:
            snapshot = tuple(subscribers)
        for subscriber in snapshot:
            try:
                subscriber.deliver(batch)
            except Exception:
                logger.exception("subscriber %r failed to take %r", subscriber, batch)
        return len(snapshot)
