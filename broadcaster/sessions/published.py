"""What sessions need to know of the tables published besides ``rows``.

A protocol, implemented over Postgres by :class:`broadcaster.postgres.directory.Directory`:
the tables (looked up when a client names one), the filters and columns
Postgres decides on them, and the checks subscribers hold
(:mod:`broadcaster.core.checks`).
"""

from __future__ import annotations

from typing import Protocol

from ..core.checks import HeldChecks
from ..core.published import PublishedTable
from ..exceptions import FilterError

__all__ = ["NO_PUBLISHED_TABLES", "PublishedTables"]


class PublishedTables(Protocol):
    """The tables published besides ``rows``, and the filters Postgres checks on them."""

    checks: HeldChecks

    async def lookup(self, schema: str, name: str) -> PublishedTable | None:
        """The published table ``schema.name``; None if it is not published.
        Raises DatabaseError."""
        ...

    async def lookup_id(self, table_id: str) -> PublishedTable | None:
        """The published table logged under ``table_id``; None if it names none.
        Raises DatabaseError."""
        ...

    async def listed(self, schema: str | None) -> list[PublishedTable]:
        """The tables published in ``schema`` (None: in every schema), ``rows`` aside.
        Raises DatabaseError."""
        ...

    async def validate(self, table: PublishedTable, filter: str) -> None:
        """Raise FilterError, saying why, if Postgres cannot check ``filter`` on ``table``."""
        ...

    async def selectable(self, table: PublishedTable, role: str) -> frozenset[str] | None:
        """The columns of ``table`` that ``role`` may select; None if there is no such
        role. Raises DatabaseError."""
        ...


class _NoPublishedTables:
    """Where only ``rows`` is served."""

    def __init__(self) -> None:
        self.checks = HeldChecks()

    async def lookup(self, schema: str, name: str) -> PublishedTable | None:
        return None

    async def lookup_id(self, table_id: str) -> PublishedTable | None:
        return None

    async def listed(self, schema: str | None) -> list[PublishedTable]:
        return []

    async def validate(self, table: PublishedTable, filter: str) -> None:
        raise FilterError(f"filters on {table.table_id} are not served here")

    async def selectable(self, table: PublishedTable, role: str) -> frozenset[str] | None:
        return None


NO_PUBLISHED_TABLES: PublishedTables = _NoPublishedTables()
