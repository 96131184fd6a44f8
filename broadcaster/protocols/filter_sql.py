"""Supabase filters on a published table, compiled to SQL that compares as Postgres does, sans-I/O.

A filter's clauses (:mod:`.filter_syntax`) on a
:class:`~broadcaster.core.published.PublishedTable` become predicates over a
record ``r`` of the table's row type, which Postgres builds from a logged row
image with ``jsonb_populate_record``: each value is a bind parameter of type
text cast to its column's type, so it compares as Postgres compares that type
(numbers as numbers, ``timestamptz`` as instants, ``citext`` without case,
enums in their order, jsonb and arrays as values). No value is ever written
into the SQL text; identifiers are quoted, and the type names come from the
catalog (``format_type``), never from a client.

:func:`validation` builds the statement that checks, at join, that Postgres
can run a filter (each value casts, each operator exists for its column's
type, each regular expression compiles); :func:`evaluation` the statement
that decides many filter sets on many row images at once. The adapter that
runs them is :mod:`broadcaster.postgres.filtering`.

Per operator, for a column ``c`` of type ``T`` and a value ``v``:

========================  ==========================================
``eq neq lt lte gt gte``  ``c = v::T``, ``<>``, ``<``, ``<=``, ``>``, ``>=``
``in``                    ``c = ANY(values::T[])``
``isdistinct``            ``c IS DISTINCT FROM v::T``
``like ilike``            ``c LIKE v``, ``c ILIKE v`` (``v`` as text)
``match imatch``          ``c ~ v``, ``c ~* v`` (``v`` as text)
``is``                    ``c IS NULL``, ``IS TRUE``, ``IS FALSE``, ``IS UNKNOWN``
``not.``                  ``NOT (...)``
========================  ==========================================

A clause that is NULL (a null column compared with ``eq``, or ``not.`` of
it) does not match, as in Supabase's server; a set of clauses matches when
every clause is true.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Final

from ..core.published import PublishedTable
from ..exceptions import FilterError
from .filter_syntax import Clause

__all__ = [
    "ALWAYS",
    "Evaluation",
    "Validation",
    "array_literal",
    "cast_type",
    "check_columns",
    "evaluation",
    "quote_identifier",
    "validation",
]

_COMPARISONS: Final = {"eq": "=", "neq": "<>", "lt": "<", "lte": "<=", "gt": ">", "gte": ">="}
_PATTERNS: Final = {"like": "LIKE", "ilike": "ILIKE", "match": "~", "imatch": "~*"}
# Types that, written without their modifier, mean another type: `character`
# is character(1), `bit` is bit(1); `interval day to second` keeps fields only.
_UNMODIFIED: Final = {"character": "bpchar", "bit": '"bit"'}


def quote_identifier(name: str) -> str:
    """``name`` as an SQL identifier: in double quotes, its own doubled."""
    return '"' + name.replace('"', '""') + '"'


def _qualified(table: PublishedTable) -> str:
    return f"{quote_identifier(table.schema)}.{quote_identifier(table.name)}"


def cast_type(type_name: str) -> str:
    """The type a filter value is cast to, for a column of type ``type_name`` (``format_type``'s).

    The column's type without its modifier: Postgres compares ``c = 'x'``
    with the literal typed as the bare type, so ``eq.abcdef`` must not match
    a ``varchar(5)`` holding ``abcde``, nor ``eq.1.234`` a ``numeric(10,2)``
    holding ``1.23``, as an explicit cast to the modified type would make it
    (it truncates and rounds).
    """
    kept: list[str] = []
    depth = 0
    quoted = False
    for char in type_name:
        if char == '"':
            quoted = not quoted
        elif not quoted and char == "(":
            depth += 1
            continue
        elif not quoted and char == ")":
            depth = max(0, depth - 1)
            continue
        if depth == 0:
            kept.append(char)
    name = "".join(kept).strip()
    array = name.endswith("[]")
    base = name[:-2] if array else name
    base = _UNMODIFIED.get(base, base)
    if base.startswith("interval "):
        base = "interval"
    return base + "[]" if array else base


def array_literal(values: Iterable[str]) -> str:
    """A Postgres array literal of ``values``, each quoted, so none reads as NULL or splits."""
    quoted = ('"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"' for value in values)
    return "{" + ",".join(quoted) + "}"


def check_columns(table: PublishedTable, clauses: Iterable[Clause]) -> None:
    """Raise :class:`FilterError` for the first clause on a column ``table`` does not have."""
    for clause in clauses:
        if table.column(clause.column) is None:
            names = ", ".join(column.name for column in table.columns)
            raise FilterError(
                f"filter {clause.text!r} on {table.table_id} names unknown column "
                f"{clause.column!r}: {table.table_id} has {names}"
            )


def _cast_types(table: PublishedTable) -> dict[str, str]:
    """Each column's :func:`cast_type`, by name."""
    return {column.name: cast_type(column.type) for column in table.columns}


def _takes_value(clause: Clause) -> bool:
    return clause.operator != "is"


def _parameter(clause: Clause) -> str:
    """The clause's value as one text parameter: an array literal for ``in``."""
    return array_literal(clause.values) if clause.operator == "in" else clause.values[0]


def _predicate(clause: Clause, type_: str, record: str, value: str) -> str:
    """``clause`` on ``record`` (an SQL row of the table); ``value`` an SQL text expression."""
    column = f"{record}.{quote_identifier(clause.column)}"
    op = clause.operator
    if op in _COMPARISONS:
        sql = f"{column} {_COMPARISONS[op]} ({value})::{type_}"
    elif op == "isdistinct":
        sql = f"{column} IS DISTINCT FROM ({value})::{type_}"
    elif op == "in" and type_.endswith("]"):
        # T[] of an array type T is T itself: cast each listed value instead.
        sql = f"{column} IN (SELECT x::{type_} FROM unnest(({value})::text[]) AS x)"
    elif op == "in":
        sql = f"{column} = ANY(({value})::text[]::{type_}[])"
    elif op in _PATTERNS:
        sql = f"{column} {_PATTERNS[op]} ({value})"
    else:  # is: its value is one of filter_syntax.IS_VALUES, keywords of SQL.
        sql = f"{column} IS {clause.values[0].upper()}"
    return f"NOT ({sql})" if clause.negated else sql


def _value_check(clause: Clause, type_: str, value: str) -> str | None:
    """An expression that fails, as the clause would on a row, if Postgres cannot use the value.

    The predicate alone would not: on a null column, a strict operator never
    looks at its value, and a conjunction stops at its first false clause.
    """
    op = clause.operator
    if op in _COMPARISONS or op == "isdistinct":
        return f"(({value})::{type_}) IS NULL"
    if op == "in" and type_.endswith("]"):
        return f"(SELECT count(x::{type_}) FROM unnest(({value})::text[]) AS x)"
    if op == "in":
        return f"(({value})::text[]::{type_}[]) IS NULL"
    if op in ("match", "imatch"):
        # A regular expression is compiled when first matched, not when parsed.
        return f"'' {_PATTERNS[op]} ({value})"
    # like's one failure (an escape at the end) is refused by the grammar; is takes no value.
    return None


@dataclass(frozen=True)
class Validation:
    """The statement checking a filter at join: it fails, with Postgres' reason, if it cannot."""

    sql: str
    args: tuple[str, ...]


def validation(table: PublishedTable, clauses: Sequence[Clause]) -> Validation:
    """The statement that fails if Postgres cannot run ``clauses`` on ``table``'s rows.

    Raises :class:`FilterError` for a clause on a column the table does not
    have, without a statement.
    """
    check_columns(table, clauses)
    types = _cast_types(table)
    expressions: list[str] = []
    args: list[str] = []
    for clause in clauses:
        type_ = types[clause.column]
        value = "NULL::text"
        if _takes_value(clause):
            args.append(_parameter(clause))
            value = f"${len(args)}::text"
        expressions.append(_predicate(clause, type_, "(v.r)", value))
        check = _value_check(clause, type_, value)
        if check is not None:
            expressions.append(check)
    # A null row rather than one populated from '{}', which a NOT NULL domain refuses.
    sql = (
        f"SELECT {', '.join(expressions) or 'true'}\n"
        f"FROM (SELECT NULL::{_qualified(table)} AS r) AS v"
    )
    return Validation(sql, tuple(args))


ALWAYS: Final = -1
"""In :attr:`Evaluation.sets`: a filter set without clauses, true of every image."""


@dataclass(frozen=True)
class Evaluation:
    """The statement deciding filter sets on row images, and how to read its rows.

    ``sql`` takes the images (JSON objects, as ``to_jsonb(row)`` writes them)
    as ``$1`` (``text[]``) and ``args`` after them; it returns a row
    ``(j, i)`` for each distinct set ``j`` true of image ``i`` (from 1); it
    is empty when no set has a clause, and nothing need run.
    ``sets`` maps each filter set given, in order, to its ``j`` (or
    :data:`ALWAYS`). The text depends only on the table and on the sets'
    columns, operators, negations and ``is`` values, never on their other
    values nor on how many sets share a shape, so that one
    prepared statement serves as subscribers come and go.
    """

    sql: str
    args: tuple[list[int] | list[str], ...]
    sets: tuple[int, ...]

    def decide(self, matches: Iterable[tuple[int, int]], images: int) -> list[tuple[bool, ...]]:
        """Per image, per filter set given, whether it matched, from the statement's rows."""
        # Built from the matches alone: a thousand sets on two hundred images
        # took 30 ms when each pair was looked up.
        positions: dict[int, list[int]] = {}
        for position, j in enumerate(self.sets):
            positions.setdefault(j, []).append(position)
        unmatched = [j == ALWAYS for j in self.sets]
        decided = [unmatched.copy() for _ in range(images)]
        for j, i in matches:
            row = decided[i - 1]
            for position in positions[j]:
                row[position] = True
        return [tuple(row) for row in decided]


_Shape = tuple[tuple[str, str, bool, str], ...]


def evaluation(table: PublishedTable, filter_sets: Sequence[Sequence[Clause]]) -> Evaluation:
    """The statement deciding every set of ``filter_sets`` (each a conjunction) on images.

    Sets with the same clauses (in any order) are decided once; sets of the
    same shape (columns, operators, negations, ``is`` values) share one
    branch of the statement, their values passed as arrays, so a thousand
    subscribers filtering ``user_id=eq.X`` cost one join, not a thousand
    expressions. Raises :class:`FilterError` for a clause on a column the
    table does not have.
    """
    types = _cast_types(table)
    distinct: dict[tuple[Clause, ...], int] = {}
    sets: list[int] = []
    for clauses in filter_sets:
        if any(clause.column not in types for clause in clauses):
            check_columns(table, clauses)
        key = tuple(clauses) if len(clauses) < 2 else tuple(sorted(set(clauses), key=_clause_order))
        sets.append(distinct.setdefault(key, len(distinct)) if key else ALWAYS)
    shapes: dict[_Shape, list[tuple[int, tuple[Clause, ...]]]] = {}
    for key, j in distinct.items():
        shapes.setdefault(_shape(key), []).append((j, key))
    args: list[list[int] | list[str]] = []
    branches = []
    for shape in sorted(shapes):
        members = shapes[shape]
        args.append([j for j, _ in members])
        columns = [f"${len(args) + 1}::int4[]"]
        names = ["j"]
        predicates = []
        for position, template in enumerate(members[0][1]):
            type_ = types[template.column]
            value = "NULL::text"
            if _takes_value(template):
                args.append([_parameter(clauses[position]) for _, clauses in members])
                columns.append(f"${len(args) + 1}::text[]")
                names.append(f"v{position}")
                value = f"s.v{position}"
            predicates.append(_predicate(template, type_, "(e.r)", value))
        branches.append(
            f"SELECT s.j, e.i FROM e, unnest({', '.join(columns)}) AS s({', '.join(names)})\n"
            f"WHERE {' AND '.join(predicates)}"
        )
    if not branches:
        return Evaluation("", (), tuple(sets))
    # MATERIALIZED: each image becomes a record once, whatever the number of branches.
    # The record is made in the select list, not as a function in FROM: there
    # its alias would name both the row and the table's column of that name,
    # and Postgres takes the column (a table with a column `r` failed every read).
    sql = (
        "WITH e AS MATERIALIZED (\n"
        f"    SELECT u.i, jsonb_populate_record(NULL::{_qualified(table)}, u.image::jsonb) AS r\n"
        "    FROM unnest($1::text[]) WITH ORDINALITY AS u(image, i)\n"
        ")\n" + "\nUNION ALL\n".join(branches)
    )
    return Evaluation(sql, tuple(args), tuple(sets))


def _clause_order(clause: Clause) -> tuple[str, str, bool, tuple[str, ...]]:
    return (clause.column, clause.operator, clause.negated, clause.values)


def _shape(clauses: tuple[Clause, ...]) -> _Shape:
    return tuple(
        (c.column, c.operator, c.negated, "" if _takes_value(c) else c.values[0]) for c in clauses
    )
