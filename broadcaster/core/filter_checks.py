"""Subscribers' filters on published tables, which Postgres decides once per read.

Sans-I/O. A Supabase binding on a published table with a filter
(``room_id=eq.5``) is a :class:`FilterCheck`: the table and the filter's text.
Sessions :meth:`~FilterChecks.add` theirs while a channel holds them; every
subscriber with the same filter on a table shares one check. Before a read's
changes are published, the read loop asks Postgres, in one statement per
table, whether each change passed each check of its table
(:meth:`FilterChecks.pending`, ``broadcaster/postgres/filtering.py``), and
hangs the answers on the batches (:meth:`FilterChecks.attach`) where the
Supabase protocol finds them (:attr:`Batch.checks <broadcaster.core.hub.Batch>`).

A change is checked on the row it leaves, or for a ``DELETE`` on the row it
removed (``docs/supabase.md``).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from .changes import Change
from .hub import Batch
from .published import PublishedTable

__all__ = ["Decided", "FilterCheck", "FilterChecks", "Pending"]


@dataclass(frozen=True)
class FilterCheck:
    """A filter's text on a published table, as a binding gave it."""

    table: PublishedTable
    filter: str


@dataclass(frozen=True)
class Pending:
    """What one table's statement decides: each of ``checks`` on each of ``changes``."""

    table: PublishedTable
    checks: tuple[FilterCheck, ...]
    changes: tuple[Change, ...]

    @property
    def images(self) -> list[str]:
        """The row each change is checked on, as JSON text."""
        return [_image(change) for change in self.changes]


Decided = Mapping[tuple[str, int], Sequence[bool]]
"""A change's (table_id, version) -> whether it passed each check of its table, in order."""


class FilterChecks:
    """The checks subscribers hold, counted, by the table_id they are on."""

    def __init__(self) -> None:
        self._held: dict[str, dict[FilterCheck, int]] = {}

    def add(self, check: FilterCheck) -> None:
        held = self._held.setdefault(check.table.table_id, {})
        held[check] = held.get(check, 0) + 1

    def remove(self, check: FilterCheck) -> None:
        held = self._held.get(check.table.table_id)
        if held is None or check not in held:
            return
        if held[check] > 1:
            held[check] -= 1
            return
        del held[check]
        if not held:
            del self._held[check.table.table_id]

    def on(self, table_id: str) -> tuple[FilterCheck, ...]:
        """The checks held on ``table_id``, in the order they were first added."""
        return tuple(self._held.get(table_id, ()))

    def pending(self, changes: Iterable[Change]) -> list[Pending]:
        """What to ask Postgres about ``changes`` (a read's): one :class:`Pending` per
        table with checks, each change once."""
        found: dict[str, dict[int, Change]] = {}
        for change in changes:
            if change.table_id in self._held:
                found.setdefault(change.table_id, {}).setdefault(change.version, change)
        pending = []
        for table_id, by_version in found.items():
            checks = self.on(table_id)
            pending.append(Pending(checks[0].table, checks, tuple(by_version.values())))
        return pending

    @staticmethod
    def decided(pending: Pending, passed: Sequence[Sequence[bool]]) -> Decided:
        """``passed`` (for each of the pending changes, each check) by change."""
        return {
            (change.table_id, change.version): row
            for change, row in zip(pending.changes, passed, strict=True)
        }

    @staticmethod
    def attach(batches: Iterable[Batch], pending: Sequence[Pending], decided: Decided) -> None:
        """Hang each check's answers on the batches of its table."""
        checks_by_table = {p.table.table_id: p.checks for p in pending}
        for batch in batches:
            checks = checks_by_table.get(batch.table_id)
            if not checks or not batch.changes:
                continue
            rows = [decided[(batch.table_id, change.version)] for change in batch.changes]
            batch.checks = {
                check: [row[index] for row in rows] for index, check in enumerate(checks)
            }


def _image(change: Change) -> str:
    if change.op == "DELETE":
        return change.old_json or change.row_json
    return change.row_json
