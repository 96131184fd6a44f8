"""A live view of one table: its rows by key, kept up to date as changes arrive."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from ._events import Event, Reset
from ._stream import CLOSED, Stream

if TYPE_CHECKING:
    from ._core import Core

__all__ = ["Table"]


class Table(Stream):
    """A live view of one table: its rows by key, kept up to date.

    Get one from :meth:`Client.table`. :attr:`rows` is replaced in place as
    changes arrive; treat it as read-only. After a :class:`Reset` (see
    :attr:`resets`) it is emptied and refilled by the snapshot that follows.
    A row's key is the id its changes carry (:attr:`Change.id`): ``rows``' id,
    or a published table's primary key as text (``42``) or, for a composite
    key, JSON array text (``[5, 1]``).
    """

    def __init__(
        self,
        core: Core,
        table_id: str,
        *,
        rows: Mapping[str, Mapping[str, Any]] | None,
        cursor: str | None,
        filter: str | None = None,
    ) -> None:
        if rows and cursor is None:
            raise ValueError("rows need the cursor they were read at")
        super().__init__(core, table_id, cursor, snapshot=True, filter=filter)
        self.rows: dict[str, dict[str, Any]] = {}
        """Row key -> the row as the server sent it, ``version`` included: for
        ``rows``, ``id``, ``table_id``, ``data``...; for a published table, its columns."""
        self.resets: list[str] = []
        """The reason of every reset this view went through, oldest first."""
        for row_id, row in (rows or {}).items():
            version = row.get("version")
            if not isinstance(version, int) or isinstance(version, bool):
                raise ValueError(f"row {row_id!r} has no integer version")
            self.rows[row_id] = dict(row)
            self._versions[row_id] = version

    @property
    def cursor(self) -> str | None:
        """The cursor the view is up to date with: save it with :attr:`rows` to resume."""
        return self._received

    def get(self, row_id: str) -> dict[str, Any] | None:
        """The row whose key is ``row_id``, or ``None``."""
        return self.rows.get(row_id)

    def __len__(self) -> int:
        return len(self.rows)

    def __contains__(self, row_id: object) -> bool:
        return row_id in self.rows

    def _offer(self, event: Event) -> bool:
        if isinstance(event, Reset):
            self.rows.clear()
            self.resets.append(event.reason)
        elif event.op == "DELETE":
            self.rows.pop(event.id, None)
        else:
            self.rows[event.id] = event.row
        self._notify()
        return True

    def _committed(self, cursor: str) -> None:
        self._notify()

    async def wait_for(
        self,
        predicate: Callable[[Table], object],
        timeout: float | None = None,  # noqa: ASYNC109 (a convenience for tests)
    ) -> None:
        """Wait until ``predicate(self)`` is true; checked now and after every change.

        Raises ``TimeoutError`` after ``timeout`` seconds (``None``: no limit),
        :class:`ClientClosedError` if the view or its client closes first.
        """
        async with asyncio.timeout(timeout):
            while True:
                signal = self._signal
                if predicate(self):
                    return
                if self._state == CLOSED:
                    raise self._closed_error()
                await signal.wait()

    async def wait_for_row(
        self,
        row_id: str,
        predicate: Callable[[dict[str, Any]], object] | None = None,
        timeout: float | None = None,  # noqa: ASYNC109 (a convenience for tests)
    ) -> dict[str, Any]:
        """Wait until the row keyed ``row_id`` exists (and satisfies ``predicate``); return it."""

        def ready(table: Table) -> bool:
            row = table.rows.get(row_id)
            return row is not None and (predicate is None or bool(predicate(row)))

        await self.wait_for(ready, timeout)
        return self.rows[row_id]
