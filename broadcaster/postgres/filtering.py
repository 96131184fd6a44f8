"""Supabase filters on a published table, run by Postgres: checked at join, decided per read.

The statements are :mod:`broadcaster.protocols.filter_sql`'s; this adapter
runs them on a pool, a connection or the read session, and turns what the
driver raises into the package's errors: :class:`FilterError` when Postgres
refuses the filter itself (a value that does not cast, an operator its
column's type lacks, a regular expression that does not compile), with
Postgres' reason; :class:`DatabaseError` for anything else.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final, Protocol

import asyncpg

from ..core.published import PublishedTable
from ..exceptions import DatabaseError, FilterError
from ..protocols import filter_sql
from ..protocols.filter_syntax import Clause
from .errors import DRIVER_ERRORS

__all__ = ["Fetcher", "evaluate", "evaluate_compiled", "validate"]


class Fetcher(Protocol):
    """What runs a statement: an :class:`asyncpg.Pool`, a connection, the read session."""

    async def fetch(self, query: str, *args: object) -> list[asyncpg.Record]: ...


# Errors that are the filter's, not the database's: class 22 (data exception:
# a value that does not cast, a bad regular expression), class 23 (a domain's
# check), and an operator or IS test the column's type does not have.
_FILTER_CLASSES: Final = ("22", "23")
_FILTER_STATES: Final = frozenset(
    {
        "42883",  # undefined_function: operator does not exist
        "42804",  # datatype_mismatch: IS TRUE of a non-boolean
        "42725",  # ambiguous_function: operator is not unique
        "42846",  # cannot_coerce
    }
)
_PATTERN_OPERATORS: Final = ("like", "ilike", "match", "imatch")


def _is_filters_fault(exc: BaseException) -> bool:
    if not isinstance(exc, asyncpg.PostgresError):
        return False
    state = str(exc.sqlstate or "")
    return state[:2] in _FILTER_CLASSES or state in _FILTER_STATES


async def validate(db: Fetcher, table: PublishedTable, clauses: Sequence[Clause]) -> None:
    """Check, in one statement, that Postgres can run ``clauses`` on ``table``'s rows.

    Raises :class:`FilterError` naming the clause and Postgres' reason, such
    as ``filter 'id=eq.abc' on public.todos: invalid input syntax for type
    bigint: "abc"``, or naming the table's columns for a column it does not
    have; :class:`DatabaseError` if the database fails otherwise. Only a
    refused filter of several clauses costs a statement per clause, to find
    the one Postgres refuses.
    """
    if not clauses:
        return
    statement = filter_sql.validation(table, clauses)
    try:
        await db.fetch(statement.sql, *statement.args)
    except DRIVER_ERRORS as exc:
        if not _is_filters_fault(exc):
            raise DatabaseError(str(exc) or type(exc).__name__) from exc
        if len(clauses) == 1:
            raise _refusal(table, clauses[0], exc) from exc
        for clause in clauses:
            await validate(db, table, (clause,))
        # Each clause runs alone; Postgres refused only their combination.
        reason = exc.message if isinstance(exc, asyncpg.PostgresError) else str(exc)
        raise FilterError(f"filter on {table.table_id}: {reason}") from exc


def _refusal(table: PublishedTable, clause: Clause, exc: BaseException) -> FilterError:
    """A FilterError for ``clause``, with Postgres' reason and, for a type's mistake, the remedy."""
    state = exc.sqlstate if isinstance(exc, asyncpg.PostgresError) else None
    # The primary message: one sentence, where str() adds DETAIL and HINT lines.
    reason = exc.message if isinstance(exc, asyncpg.PostgresError) else str(exc)
    remedy = ""
    if state in _FILTER_STATES and clause.operator in _PATTERN_OPERATORS:
        remedy = f": {clause.operator} takes text columns (text, varchar, char, citext)"
    elif state in _FILTER_STATES and clause.operator == "is":
        remedy = ": is.true, is.false and is.unknown take boolean columns; is.null takes any"
    elif state in _FILTER_STATES:
        remedy = f": {table.table_id}.{clause.column} cannot be compared with {clause.operator}"
    return FilterError(f"filter {clause.text!r} on {table.table_id}: {reason}{remedy}")


async def evaluate(
    db: Fetcher,
    table: PublishedTable,
    filter_sets: Sequence[Sequence[Clause]],
    images: Sequence[str],
) -> list[tuple[bool, ...]]:
    """Per image, per filter set, whether the set (a conjunction of clauses) matches the image.

    ``images`` are rows of ``table`` as JSON objects (``to_jsonb(row)``, as
    the change log holds them). One statement decides every set on every
    image; none runs when no set has a clause or there is no image. Raises
    :class:`DatabaseError` if the statement fails (an image that no longer
    fits the table's columns fails it too), :class:`FilterError` for a clause
    on a column the table does not have.
    """
    return await evaluate_compiled(db, filter_sql.evaluation(table, filter_sets), images)


async def evaluate_compiled(
    db: Fetcher, evaluation: filter_sql.Evaluation, images: Sequence[str]
) -> list[tuple[bool, ...]]:
    """:func:`evaluate` with the statement compiled by :func:`.filter_sql.evaluation`.

    For a caller whose filter sets do not change from one read to the next:
    compiling a thousand sets takes milliseconds of Python.
    """
    if not images or not evaluation.sql:
        return evaluation.decide((), len(images))
    try:
        rows = await db.fetch(evaluation.sql, list(images), *evaluation.args)
    except DRIVER_ERRORS as exc:
        raise DatabaseError(str(exc) or type(exc).__name__) from exc
    return evaluation.decide(((row[0], row[1]) for row in rows), len(images))
