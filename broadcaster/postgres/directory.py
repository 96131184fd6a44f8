"""The published tables as the server's sessions look them up, and what Postgres decides on them.

An adapter for :class:`broadcaster.sessions.supabase.PublishedTables`: tables
from the catalog (:mod:`.catalog`), each remembered for a few seconds so that
a burst of joins asks once; filters checked at join
(:func:`.filtering.validate`); the columns a role may select
(:class:`.visibility.RowSecurity`), remembered as long. It also answers the
read loop's checks (:meth:`Directory.check_filters`,
:meth:`Directory.check_rows`). Every method
raises :class:`~broadcaster.exceptions.DatabaseError` when the database or
the network fails.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable, Collection, Sequence
from typing import Generic, TypeVar

import asyncpg

from ..core.checks import HeldChecks
from ..core.published import PublishedTable
from ..core.visibility import Viewer
from ..protocols import filter_sql, filter_syntax
from . import catalog, filtering
from .errors import raises_database_error
from .visibility import RowSecurity

__all__ = ["REMEMBERED_FOR", "Directory"]

REMEMBERED_FOR = 5.0
"""Seconds a looked-up table, or a role's columns, is remembered: a table published,
altered or granted since is seen by joins after that long."""

_ROLE_EXISTS = "SELECT to_regrole(quote_ident($1)) IS NOT NULL"

_K = TypeVar("_K")
_V = TypeVar("_V")


class _Remembered(Generic[_K, _V]):
    """Values by key, each until ``REMEMBERED_FOR`` seconds after it was found."""

    def __init__(self, clock: Callable[[], float]) -> None:
        self._clock = clock
        self._found: dict[_K, tuple[float, _V]] = {}

    def get(self, key: _K) -> tuple[bool, _V | None]:
        """Whether ``key``'s value is remembered, and the value."""
        found = self._found.get(key)
        if found is None or found[0] <= self._clock():
            return False, None
        return True, found[1]

    def keep(self, key: _K, value: _V) -> _V:
        if len(self._found) >= 10_000:
            # Bounded: a client naming tables or roles at random must not grow it.
            self._found.clear()
        self._found[key] = (self._clock() + REMEMBERED_FOR, value)
        return value


class Directory:
    """Published tables and their checks, for the sessions and the read loop."""

    def __init__(
        self,
        pool: asyncpg.Pool,
        *,
        checks: HeldChecks | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        # The pool, not the read session: a check's statements are planned as
        # any other (the read session forces generic plans and no seqscans,
        # for the change log's sake) and may run a table's policies.
        self._pool = pool
        self.checks = HeldChecks() if checks is None else checks
        self._row_security = RowSecurity()
        self._tables: _Remembered[tuple[str, str], PublishedTable | None] = _Remembered(clock)
        self._columns: _Remembered[tuple[PublishedTable, str], frozenset[str] | None]
        self._columns = _Remembered(clock)
        # The published tables sessions looked up, by table_id; bounded by the
        # published tables themselves.
        self._published: dict[str, PublishedTable] = {}

    async def lookup(self, schema: str, name: str) -> PublishedTable | None:
        known, table = self._tables.get((schema, name))
        if known:
            return table
        found = await catalog.published_table_at(self._pool, schema, name)
        if found is None:
            self._published.pop(f"{schema}.{name}", None)
        else:
            found = self._intern(found)
        return self._tables.keep((schema, name), found)

    def _intern(self, table: PublishedTable) -> PublishedTable:
        # The same instance for a table that did not change: the sessions'
        # checks and shapes holding it then compare by identity at every
        # delivery, not column by column.
        known = self._published.get(table.table_id)
        if known == table and known is not None:
            return known
        self._published[table.table_id] = table
        return table

    async def lookup_id(self, table_id: str) -> PublishedTable | None:
        """The published table logged under ``table_id``, if it names one."""
        schema, dot, name = table_id.partition(".")
        if not dot:
            return None
        return await self.lookup(schema, name)

    async def listed(self, schema: str | None) -> list[PublishedTable]:
        publications = await catalog.published_tables(self._pool, schema)
        return [self._intern(p.table) for p in publications if p.table_id is not None]

    def is_published(self, table_id: str) -> bool:
        """Was ``table_id`` a published table's when last looked up? (Every table_id a
        subscriber joins has been: its session looked it up.)"""
        return table_id in self._published

    async def validate(self, table: PublishedTable, filter: str) -> None:
        await filtering.validate(self._pool, table, filter_syntax.parse(filter))

    async def selectable(self, table: PublishedTable, role: str) -> frozenset[str] | None:
        known, columns = self._columns.get((table, role))
        if known:
            return columns
        found = None
        if await self._role_exists(role):
            found = await self._row_security.selectable_columns(self._pool, table, role)
        return self._columns.keep((table, role), found)

    @raises_database_error
    async def _role_exists(self, role: str) -> bool:
        return bool(await self._pool.fetchval(_ROLE_EXISTS, role))

    async def check_filters(
        self, table: PublishedTable, filters: Sequence[str], images: Sequence[str]
    ) -> Sequence[Sequence[bool]]:
        """The read loop's question: does each image pass each filter?"""
        return await filtering.evaluate_compiled(
            self._pool, _evaluation(table, tuple(filters)), images
        )

    async def check_rows(
        self, table: PublishedTable, viewer: Viewer, keys: Sequence[str]
    ) -> Collection[int]:
        """The read loop's question: which of these keys' rows may ``viewer`` see?"""
        return await self._row_security.visible(self._pool, table, viewer, keys)


@functools.lru_cache(maxsize=256)
def _evaluation(table: PublishedTable, filters: tuple[str, ...]) -> filter_sql.Evaluation:
    # A table's filters change only as subscribers come and go, and parsing and
    # compiling a thousand of them takes milliseconds: not at every read.
    return filter_sql.evaluation(table, [filter_syntax.parse(text) for text in filters])
