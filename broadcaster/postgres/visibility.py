"""Row-level security checks in Postgres, as a subscriber: which rows it sees, which columns.

:meth:`RowSecurity.visible` runs one statement per call, for one
:class:`~broadcaster.core.visibility.Viewer` and every key a read needs
checked (:func:`broadcaster.core.visibility.plan`): ``broadcaster_visible()``
of triggers.sql switches to the viewer's role and claims, selects the rows
by key and switches back. Call it outside a transaction (autocommit, as
asyncpg runs a statement on a connection not in one): whatever happens, the
role and claims then end with the statement. :meth:`RowSecurity.selectable_columns`
says which columns a role may select; the caller caches it.

A check that fails because of the viewer or the table (its role does not
exist or the server's login may not switch to it, it may not select the
table, a policy failed on its claims: SQLSTATE classes 22, 42 and P0)
leaves that viewer seeing nothing and is logged once. Any other failure (the
connection, a timeout) raises :class:`~broadcaster.exceptions.DatabaseError`.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Protocol

import asyncpg

from ..core.published import PublishedTable
from ..core.visibility import Viewer
from .errors import raises_database_error

__all__ = ["RowSecurity", "Statements"]

logger = logging.getLogger(__name__)

# SQLSTATE classes of a check's failure that are the viewer's or the table's,
# not the database's. 22, data exception: a policy cast a claim that does not
# parse; a role that does not exist (22023). 42, syntax error or access rule
# violation: the login may not switch to the role, the role may not select
# the table or its key, a policy names what does not exist. P0: a function of
# a policy raised.
_VIEWER_ERROR_CLASSES = frozenset({"22", "42", "P0"})
_NO_SUCH_ROLE = "create the role, or mint tokens whose role claim names one that exists"
_ADVICE = {
    # set_config('role', ...) and has_column_privilege() about a role that does not exist.
    "22023": _NO_SUCH_ROLE,
    "42704": _NO_SUCH_ROLE,
    "42501": (
        "grant the role to the server's login role (GRANT <role> TO <login>), and the role"
        " USAGE on the table's schema and SELECT on its key columns"
    ),
}

# How many refusals are remembered so as to log each once; past that, forgotten.
_MAX_REMEMBERED = 1024

_VISIBLE = "SELECT broadcaster_visible($1, $2, $3::text[], $4::text[], $5, $6, $7::text[])"

_SELECTABLE = """
SELECT coalesce(array_agg(a.attname::text), '{}')
FROM pg_attribute AS a
WHERE a.attrelid = format('%I.%I', $1::text, $2::text)::regclass
  AND a.attnum > 0 AND NOT a.attisdropped
  AND has_column_privilege($3::text, a.attrelid, a.attnum, 'SELECT')
"""


class Statements(Protocol):
    """What runs the checks: an asyncpg connection, a pool, or the read session."""

    async def fetch(self, query: str, *args: object) -> list[asyncpg.Record]: ...


class RowSecurity:
    """Runs the checks; logs each failure that is a viewer's once per role, table and SQLSTATE."""

    def __init__(self) -> None:
        self._logged: set[tuple[str, str, str]] = set()

    @raises_database_error
    async def visible(
        self, connection: Statements, table: PublishedTable, viewer: Viewer, keys: Sequence[str]
    ) -> set[int]:
        """The indices of ``keys`` whose rows of ``table`` ``viewer`` may see now.

        One statement, none for no keys. Keys are as the capture trigger logs
        them (:func:`broadcaster.core.visibility.plan`). Raises
        :class:`ValueError` for a table without a key, or whose key is not
        among its columns: such a table cannot be published.
        """
        if not keys:
            return set()
        if not table.key:
            raise ValueError(f"{table.table_id} has no primary key: its rows cannot be checked")
        types = []
        for name in table.key:
            column = table.column(name)
            if column is None:
                raise ValueError(f"{table.table_id}: key column {name!r} is not among its columns")
            types.append(column.type)
        try:
            ((indices,),) = await connection.fetch(
                _VISIBLE,
                table.schema,
                table.name,
                list(table.key),
                types,
                viewer.role,
                viewer.claims,
                list(keys),
            )
        except asyncpg.PostgresError as exc:
            if not _viewers(exc):
                raise
            self._log_once(exc, viewer.role, table)
            return set()
        return set(indices)

    @raises_database_error
    async def selectable_columns(
        self, connection: Statements, table: PublishedTable, role: str
    ) -> frozenset[str]:
        """The columns of ``table`` that ``role`` may select; none for a role that is refused."""
        try:
            ((names,),) = await connection.fetch(_SELECTABLE, table.schema, table.name, role)
        except asyncpg.PostgresError as exc:
            if not _viewers(exc):
                raise
            self._log_once(exc, role, table)
            return frozenset()
        return frozenset(names)

    def _log_once(self, exc: asyncpg.PostgresError, role: str, table: PublishedTable) -> None:
        sqlstate = exc.sqlstate or ""
        key = (role, table.table_id, sqlstate)
        if key in self._logged:
            return
        if len(self._logged) >= _MAX_REMEMBERED:
            self._logged.clear()
        self._logged.add(key)
        logger.warning(
            "row-level security: subscribers with role %r get no change of %s that needs a"
            " check (%s: %s); %s. See docs/security.md#row-level-security",
            role,
            table.table_id,
            sqlstate,
            exc,
            _ADVICE.get(sqlstate, "fix the table's policies, or the claims of the tokens"),
            exc_info=exc,
        )


def _viewers(exc: asyncpg.PostgresError) -> bool:
    """Is the failure the viewer's or the table's, rather than the database's?"""
    return (exc.sqlstate or "")[:2] in _VIEWER_ERROR_CLASSES
