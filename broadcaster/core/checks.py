"""What Postgres decides once per read for the subscribers of published tables.

Sans-I/O. Two kinds of check, each a hashable key under which a batch holds,
for each of its changes, whether the change passed
(:attr:`Batch.checks <broadcaster.core.hub.Batch>`):

* :class:`FilterCheck`: a filter (``room_id=eq.5``) on a published table, a
  Supabase binding's or a native subscription's, checked on the row a change
  leaves, or for a ``DELETE`` on the row it removed; its
  :class:`LeftFilter` answer says whether an UPDATE's row passed before it
  (a row leaving the filter). Every subscriber with the same filter on a
  table shares one; Postgres checks all of a table's in one statement
  (``broadcaster/postgres/filtering.py``).
* :class:`RowCheck`: on a table with row-level security, whether a viewer
  (a role and claims, :mod:`broadcaster.core.visibility`) may see the row;
  one statement per viewer (``broadcaster/postgres/visibility.py``).

Sessions :meth:`~HeldChecks.add` the checks their channels hold; before a
read's changes are published, the read loop takes :meth:`HeldChecks.pending`,
has Postgres answer them, and hangs the answers on the batches
(:meth:`Pending.attach`).
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from .changes import Change
from .hashing import cached_hash
from .hub import Batch
from .published import PublishedTable
from .visibility import Viewer

__all__ = ["Check", "FilterCheck", "HeldChecks", "LeftFilter", "Pending", "RowCheck", "passed"]


@dataclass(frozen=True)
class FilterCheck:
    """A filter's text on a published table, as a binding gave it."""

    __hash__ = cached_hash

    table: PublishedTable
    filter: str


@dataclass(frozen=True)
class RowCheck:
    """Whether ``viewer`` may see the rows of ``table`` (row-level security)."""

    __hash__ = cached_hash

    table: PublishedTable
    viewer: Viewer


@dataclass(frozen=True)
class LeftFilter:
    """Whether an UPDATE's row, before it, passed ``check``: with the row after it
    failing, the row left the filter's rows (a native filtered subscription gets
    it as a DELETE). False for any other change."""

    check: FilterCheck


Check = FilterCheck | RowCheck


@dataclass
class Pending:
    """One table's checks to answer on some of a read's changes, each change once."""

    table: PublishedTable
    filters: tuple[FilterCheck, ...]
    rows: tuple[RowCheck, ...]
    changes: tuple[Change, ...]
    answers: dict[Hashable, Sequence[bool]] = field(default_factory=dict)
    """Each check's answer for each of ``changes``, once given (and each filter's
    :class:`LeftFilter`)."""

    @property
    def images(self) -> list[str]:
        """The rows the filters are checked on, as JSON text: each change's (the row
        it leaves, or for a DELETE the row it removed), then each UPDATE's row
        before it."""
        return [_image(change) for change in self.changes] + [old for _, old in self._updated()]

    def answer_filters(self, passed: Sequence[Sequence[bool]]) -> None:
        """``passed``: for each of :attr:`images`, whether it passed each of :attr:`filters`."""
        count = len(self.changes)
        updated = [index for index, _ in self._updated()]
        for column, check in enumerate(self.filters):
            self.answers[check] = [row[column] for row in passed[:count]]
            before = [False] * count
            for index, row in zip(updated, passed[count:], strict=True):
                before[index] = row[column]
            self.answers[LeftFilter(check)] = before

    def _updated(self) -> list[tuple[int, str]]:
        return [
            (index, change.old_json)
            for index, change in enumerate(self.changes)
            if change.op == "UPDATE" and change.old_json is not None
        ]

    def answer(self, check: Check, passed: Sequence[bool]) -> None:
        """``passed``: for each change, whether it passed ``check``."""
        self.answers[check] = passed

    def attach(self, batches: Iterable[Batch]) -> None:
        """Hang the answers on the batches of this table."""
        for batch in batches:
            if batch.table_id == self.table.table_id and batch.changes:
                batch.checks = {**batch.checks, **self.answers_for(batch.changes)}

    def answers_for(self, changes: Sequence[Change]) -> dict[Hashable, Sequence[bool]]:
        """Each check's answer for each of ``changes`` (this table's, among those asked
        about): for a batch, or a joining subscriber's catch-up or snapshot."""
        at = {_identity(change): index for index, change in enumerate(self.changes)}
        indices = [at[_identity(change)] for change in changes]
        return {
            check: [passed[index] for index in indices] for check, passed in self.answers.items()
        }


class HeldChecks:
    """The checks subscribers hold, counted, by the table_id they are on."""

    def __init__(self) -> None:
        self._held: dict[str, dict[Check, int]] = {}

    def add(self, check: Check) -> None:
        held = self._held.setdefault(check.table.table_id, {})
        held[check] = held.get(check, 0) + 1

    def remove(self, check: Check) -> None:
        held = self._held.get(check.table.table_id)
        if held is None or check not in held:
            return
        if held[check] > 1:
            held[check] -= 1
            return
        del held[check]
        if not held:
            del self._held[check.table.table_id]

    def on(self, table_id: str) -> tuple[Check, ...]:
        """The checks held on ``table_id``, in the order they were first added."""
        return tuple(self._held.get(table_id, ()))

    def pending(self, changes: Iterable[Change]) -> list[Pending]:
        """What to ask Postgres about ``changes`` (a read's): one :class:`Pending` per
        table with checks, each change once."""
        found: dict[str, dict[tuple[int, str], Change]] = {}
        for change in changes:
            if change.table_id in self._held:
                found.setdefault(change.table_id, {}).setdefault(_identity(change), change)
        pending = []
        for table_id, by_version in found.items():
            checks = self.on(table_id)
            pending.append(
                Pending(
                    checks[0].table,
                    tuple(c for c in checks if isinstance(c, FilterCheck)),
                    tuple(c for c in checks if isinstance(c, RowCheck)),
                    tuple(by_version.values()),
                )
            )
        return pending


def passed(checks: Mapping[Hashable, Sequence[bool]], check: Hashable, index: int) -> bool:
    """Did the batch's change at ``index`` pass ``check``? A check added after the read
    asked Postgres has no answer: its channel was not live yet (docs/supabase.md)."""
    found = checks.get(check)
    return found is not None and found[index]


def _identity(change: Change) -> tuple[int, str]:
    # A change's version is its own, but every row of a snapshot has version 0.
    return change.version, change.id


def _image(change: Change) -> str:
    if change.op == "DELETE":
        return change.old_json or change.row_json
    return change.row_json
