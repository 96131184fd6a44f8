"""Promises to read tables unasked, so that writers may skip their wake-up.

Sans-I/O. A transaction that sends a NOTIFY takes a cluster-wide lock at
commit and holds it through its WAL flush, so notifying writers commit one at
a time. Writers therefore skip the NOTIFY while every server process that reads
their table has *promised* to read it anyway: each process registers the tables
it serves in ``broadcaster_listeners`` with ``polling_until``, and the trigger
(in ``READ COMMITTED``, where each of its statements sees the latest commits)
notifies only if some registered process's ``polling_until`` has passed.

A promise made at local time ``at`` for ``window`` seconds binds this process to:

1. read the table every ``interval`` seconds until ``until = at + window``
   (``at`` is taken after the database confirmed the promise, so ``until`` is
   never earlier than the ``polling_until`` writers saw);
2. then take a *horizon* after ``until``: a fresh xid, above every xid assigned
   before it; wait for a snapshot in which every xid below the horizon has
   ended, and read the table once more.

A writer that skipped its wake-up checked the promise after its transaction
got its xid and before ``until``, so that xid is below the horizon: its change
is read once it commits, however long it stays open. (A snapshot's ``xip``
alone would not do: it lists only transactions below its ``xmax``, one past the
latest *completed* xid, so a transaction newer than that is in no list.)

A table is registered without a promise (``polling_until`` in the past: its
writers notify); a wake-up makes the promise, renewed while the table stays
busy (a wake-up arrived, or a read found changes), so writers of a busy table
stop notifying and an idle table costs no polls. Only while the process sees
at least ``min_rate`` changes a second (wake-ups, and the changes its reads
find), averaged over the last second or so: a poll every ``interval`` costs a
read whether or not anything changed, which below that rate is more reads
than the wake-ups would cause, while notifying writers are too few to queue
on NOTIFY's lock. Step 2 follows a registration
too, since a writer that checked just before it saw no row and skipped; it
follows :data:`REMEMBERED_FOR` after the registration rather than at once,
because a writer's session remembers what it saw that long (triggers.sql), so
a writer may skip on a memory older than the registration until then.

Subscribers of every table register as
:data:`~broadcaster.core.tables.EVERY_TABLE`, which is never promised (writers
keep notifying while one exists anywhere); the final read after its
registration is a read of every table.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass

from .cursors import Snapshot
from .tables import EVERY_TABLE, ordered

__all__ = ["RATE_PERIOD", "Promises"]

RATE_PERIOD = 1.0
"""Seconds the rate of changes is averaged over (an exponential moving sum)."""

REMEMBERED_FOR = 0.1
"""Seconds a writer's session acts on a lookup of the promises (``interval '100 ms'``
in triggers.sql): the final read after a registration waits that long."""


@dataclass
class _Promise:
    until: float
    """The final read follows a horizon taken after it."""
    polls_until: float = float("-inf")
    """Read every interval until then (a promise; a registration alone makes none)."""
    horizon: int | None = None
    """After ``until``: every xid below it must end before the final read."""
    busy: bool = False
    check_at: float = 0.0
    check_every: float = 0.0


class Promises:
    """The promises of one server process, and the reads they call for."""

    def __init__(
        self,
        *,
        window: float,
        interval: float,
        max_check_interval: float = 1.0,
        remembered_for: float = REMEMBERED_FOR,
        min_rate: float = 0.0,
    ) -> None:
        self.window = window
        self.interval = interval
        self.min_rate = min_rate
        # Changes seen, decayed with time constant RATE_PERIOD: about the
        # changes of the last RATE_PERIOD seconds, without keeping them.
        self._changes = 0.0
        self._changes_at = 0.0
        self._remembered_for = remembered_for
        self._max_check_interval = max(max_check_interval, interval)
        self.registered: set[str | None] = set()
        self._promises: dict[str | None, _Promise] = {}
        self._renew: set[str] = set()
        self._polled_at = float("-inf")
        self.epoch = 0
        """Changes whenever the registrations must be compared with the tables served."""

    def changes(
        self, wanted: Collection[str | None], now: float
    ) -> tuple[list[str | None], list[str], list[str | None]]:
        """Tables to register (new ones), to promise (renewals due), and to unregister."""
        drop = ordered(self.registered.difference(wanted))
        register = ordered(set(wanted).difference(self.registered))
        promise = [t for t in self.renewals(now) if t in wanted]
        return register, promise, drop

    def renewals(self, now: float) -> list[str]:
        """Registered tables whose promise is due for renewal: woken, or busy and half spent.

        Cheap (no comparison with the tables served) for the loop's every turn.
        """
        due = set(self._renew)
        if self.worth_polling(now):
            for table_id, state in self._promises.items():
                if (
                    state.busy
                    and state.polls_until - now < self.window / 2
                    and table_id is not EVERY_TABLE
                ):
                    due.add(table_id)
        return sorted(due.intersection(self.registered))

    def worth_polling(self, now: float) -> bool:
        """Does this process see at least ``min_rate`` changes a second (see the module)?"""
        return self.min_rate <= 0 or self._decayed(now) >= self.min_rate * RATE_PERIOD

    def _polled(self, table_id: str | None, now: float) -> bool:
        state = self._promises.get(table_id)
        return state is not None and now < state.polls_until

    def _count(self, changes: int, now: float) -> None:
        self._changes = self._decayed(now) + changes
        self._changes_at = max(now, self._changes_at)

    def _decayed(self, now: float) -> float:
        if now <= self._changes_at:
            return self._changes
        return self._changes * math.exp((self._changes_at - now) / RATE_PERIOD)

    def made(
        self,
        registered: Iterable[str | None],
        promised: Iterable[str],
        at: float,
        *,
        confirmed: bool = True,
    ) -> None:
        """The database holds these registrations and promises, made at ``at`` or before.

        A registration promises no polls (its writers keep notifying), only the
        final read after a horizon, for writers that checked before it existed
        or remembered an earlier check. Not ``confirmed``: the statement
        failed, yet may have committed; what it would have promised is kept,
        and it is made again.
        """
        if not confirmed:
            self.epoch += 1
        for table_id in registered:
            if confirmed:
                self.registered.add(table_id)
            self._extend(table_id, at + self._remembered_for, float("-inf"))
        for table_id in promised:
            if confirmed:
                self._renew.discard(table_id)
            self._extend(table_id, at + self.window, at + self.window)

    def _extend(self, table_id: str | None, until: float, polls_until: float) -> None:
        """Start a promise (or a registration's wait) that keeps what ran before it."""
        old = self._promises.get(table_id)
        if old is not None:
            until = max(until, old.until)
            polls_until = max(polls_until, old.polls_until)
        self._promises[table_id] = _Promise(until, polls_until)

    def dropped(self, tables: Iterable[str | None]) -> None:
        for table_id in tables:
            self.registered.discard(table_id)
            self._renew.discard(table_id)
            self._promises.pop(table_id, None)

    def reset(self) -> None:
        """The registrations may be gone (the database restarted): make them all again."""
        self.registered.clear()
        self.epoch += 1

    def woken(self, table_id: str | None, now: float) -> None:
        """A writer notified: the table is busy and its promise ran out; renew it
        if this process is busy enough to poll."""
        self._count(1, now)
        if table_id is not EVERY_TABLE and table_id in self.registered and self.worth_polling(now):
            self._renew.add(table_id)

    def to_poll(self, now: float) -> list[str | None]:
        """The tables to read now because of a promise still running (every ``interval``)."""
        if now < self._polled_at + self.interval:
            return []
        tables = [t for t, state in self._promises.items() if now < state.polls_until]
        if tables:
            self._polled_at = now
        return tables

    def needs_horizon(self, now: float) -> bool:
        """Has a promise ended that has no horizon yet?"""
        return any(now >= s.until and s.horizon is None for s in self._promises.values())

    def needs_snapshot(self, now: float) -> bool:
        """Does a promise past its end need a fresh snapshot (or a horizon)?"""
        return any(
            now >= state.until and (state.horizon is None or now >= state.check_at)
            for state in self._promises.values()
        )

    def next_deadline(self, now: float) -> float | None:
        """When something is next due (a poll, a check or a renewal); ``None``: nothing is."""
        deadlines = []
        for state in self._promises.values():
            if now < state.polls_until:
                deadlines.append(max(now, self._polled_at + self.interval))
                if state.busy:
                    deadlines.append(state.polls_until - self.window / 2)
            elif state.horizon is None:
                deadlines.append(state.until)
            else:
                deadlines.append(state.check_at)
        return min(deadlines) if deadlines else None

    def observe(
        self,
        snapshot: str,
        issued_at: float,
        read: Collection[str | None],
        found: Collection[str | None],
        horizon: int | None = None,
        *,
        changes: Mapping[str, int] | None = None,
    ) -> list[str | None]:
        """A statement issued at ``issued_at`` returned ``snapshot`` (and, if it took one,
        ``horizon``) after reading ``read`` and finding changes of ``found`` (``changes``
        of each, when known); return the tables whose final read is now due."""
        if changes:
            # Changes of a table not polled were counted as its wake-ups.
            self._count(sum(n for t, n in changes.items() if self._polled(t, issued_at)), issued_at)
        # Parsed only for a promise past its end: most reads have none.
        parsed: Snapshot | None = None
        final: list[str | None] = []
        for table_id, state in list(self._promises.items()):
            if table_id in found:
                state.busy = True
            if issued_at < state.until:
                continue
            if state.horizon is None:
                if horizon is None:
                    continue
                state.horizon = horizon
            if parsed is None:
                parsed = Snapshot.parse(snapshot)
            if not _ended_below(parsed, state.horizon):
                state.check_every = min(
                    self._max_check_interval, max(self.interval, state.check_every * 2)
                )
                state.check_at = issued_at + state.check_every
                continue
            del self._promises[table_id]
            if table_id not in read or table_id is EVERY_TABLE:
                final.append(table_id)
        return final


def _ended_below(snapshot: Snapshot, horizon: int) -> bool:
    """Had every xid below ``horizon`` ended when ``snapshot`` was taken?

    Xids from ``xmax`` up are in no list, running or not: only below it is
    ``xip`` the complete list of those still running.
    """
    return snapshot.xmax >= horizon and all(xid >= horizon for xid in snapshot.xip)
