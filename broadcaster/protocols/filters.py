"""Evaluate Supabase ``postgres_changes`` filters on ``public.rows`` rows, sans-I/O.

A supabase-js binding carries a PostgREST-style filter, ``column=op.value``
(``filter: 'id=eq.r1'``), or several joined by commas. This module reads it
with the grammar of :mod:`.filter_syntax` into :class:`RowFilter` values and
evaluates them in Python on a row as clients see it (a JSON object with the
keys id, table_id, data, enriching_columns, version, created_at and
updated_at): no round trip to Postgres, and ``table_id`` filters route. It
does no I/O and imports neither asyncpg nor starlette, so the session code and
the tests can use it alike.

Semantics:

* Operators ``eq, neq, lt, lte, gt, gte, in`` on ``id``, ``table_id`` (text),
  ``version`` (int8) and ``created_at``, ``updated_at`` (timestamptz); the
  value is everything after the operator's dot (``id=eq.a.b`` means ``a.b``).
  The grammar's other operators and ``not.`` are refused here.
* ``data`` (jsonb) takes ``eq, neq, in`` with JSON values, compared as jsonb
  compares them (key order and ``1`` against ``1.0`` do not matter, ``true`` is
  not ``1``, every digit counts: a number is read as a decimal, never a float,
  here and in the row, which must be parsed so: :func:`row_values`);
  ``enriching_columns`` (text[]) takes ``eq, neq, lt, lte, gt,
  gte`` with a Postgres array literal (``{a,"b c"}``), compared element by
  element and then by length, as Postgres compares arrays.
  ``in.(a,"b,c")`` lists up to 100 values, quoted as :mod:`.filter_syntax`
  says.
* Filter values are converted to the column's type when parsed, so a bad value
  is refused at subscribe time, never silently unmatched later.
* Text compares by code point, which is what Postgres's C collation does
  (UTF-8 byte order is code point order), not by a locale's rules.
* Timestamps compare as instants; a filter value without an offset is UTC.
  Every instant a ``timestamptz`` holds compares, as ``to_jsonb`` writes it
  in the writer's time zone: years past 9999, BC, ``infinity`` and
  ``-infinity``, offsets in seconds (Amsterdam's +00:19:32 before 1937); a
  filter value may be written so too.
* A missing key or a null never matches, even for ``neq``: in SQL a comparison
  with NULL is not true. ``data`` is the exception: it is never an SQL null
  (``NOT NULL``), so its null is JSON's, equal to ``data=eq.null``.
* ``table_id=eq.X`` and ``table_id=in.(...)`` route to those tables
  (:attr:`RowFilter.tables`); any other filter must be checked on every row.
"""

from __future__ import annotations

import json
import operator
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import date
from decimal import Decimal
from typing import Any, Final, TypeAlias

from ..core.members import members
from ..exceptions import FilterError
from . import filter_syntax

__all__ = ["RowFilter", "Value", "parse_filters", "row_values"]

# A parsed filter value: str for text columns, int for version, a canonical form for
# timestamps, jsonb and text[] (see _parse_timestamp, _jsonb and _text_array).
Value: TypeAlias = str | int | tuple[Any, ...]

_TEXT: Final = "text"
_INT8: Final = "int8"
_TIMESTAMPTZ: Final = "timestamptz"
_JSONB: Final = "jsonb"
_TEXT_ARRAY: Final = "text[]"

# The filterable columns and their types, in the order error messages list them.
_COLUMNS: Final[Mapping[str, str]] = {
    "id": _TEXT,
    "table_id": _TEXT,
    "version": _INT8,
    "created_at": _TIMESTAMPTZ,
    "updated_at": _TIMESTAMPTZ,
    "data": _JSONB,
    "enriching_columns": _TEXT_ARRAY,
}
_FILTERABLE_LIST: Final = "id, table_id, version, created_at, updated_at, data or enriching_columns"
# Operators a type does not order by here: jsonb's order (objects above arrays
# above booleans ...) means nothing to a filter; array elements have no
# unambiguous in-list syntax.
_REFUSED_OPERATORS: Final[Mapping[str, frozenset[str]]] = {
    _JSONB: frozenset({"lt", "lte", "gt", "gte"}),
    _TEXT_ARRAY: frozenset({"in"}),
}

_COMPARE: Final[Mapping[str, Callable[[Any, Any], bool]]] = {
    "eq": operator.eq,
    "neq": operator.ne,
    "lt": operator.lt,
    "lte": operator.le,
    "gt": operator.gt,
    "gte": operator.ge,
}
_OPERATORS: Final = (*_COMPARE, "in")

_INT8_MIN: Final = -(2**63)
_INT8_MAX: Final = 2**63 - 1
_INTEGER = re.compile(r"[+-]?[0-9]+", re.ASCII)
# Extended ISO-8601, and what to_jsonb writes beyond it (years past 9999, BC,
# offsets in seconds), so that "2026", week dates and the like are refused
# rather than read as something the user did not mean. At most 6 fraction
# digits: timestamptz keeps microseconds.
_TIMESTAMP = re.compile(
    r"([0-9]{4,6})-([0-9]{2})-([0-9]{2})"
    r"(?:[T ]([0-9]{2}):([0-9]{2})(?::([0-9]{2})(?:\.([0-9]{1,6}))?)?"
    r"(Z|[+-][0-9]{2}(?:[0-9]{2}|:[0-9]{2}(?::[0-9]{2})?)?)?)?"
    r"( BC)?",
    re.ASCII,
)
# The instants past every finite one, as (rank, microseconds since 1970 UTC).
_INFINITIES: Final = {"infinity": (1, 0), "-infinity": (-1, 0)}
_EPOCH_DAY: Final = date(1970, 1, 1).toordinal()
_DAYS_IN_400_YEARS: Final = 146_097
_MAX_OFFSET_HOURS: Final = 15  # Postgres' limit on a time zone's offset
_TIMESTAMP_EXAMPLE: Final = "2026-11-26T10:00:00Z"


@dataclass(frozen=True)
class RowFilter:
    """One parsed ``column=op.value`` filter; ``values`` has one item unless ``op`` is ``in``."""

    column: str
    op: str
    values: tuple[Value, ...]

    @classmethod
    def parse(cls, text: str) -> RowFilter:
        """The filter ``text`` names, with its values converted to the column's type."""
        return cls.from_clause(filter_syntax.parse_clause(text, _OPERATORS, negatable=False))

    @classmethod
    def from_clause(cls, clause: filter_syntax.Clause) -> RowFilter:
        """``clause`` (read with this module's operators), its values as the column's type."""
        text, column, op = clause.text, clause.column, clause.operator
        kind = _COLUMNS.get(column)
        if kind is None:
            raise FilterError(
                f"filter {text!r} names unknown column {column!r}: filter on {_FILTERABLE_LIST}"
            )
        if op in _REFUSED_OPERATORS.get(kind, ()):
            allowed = ", ".join(o for o in _OPERATORS if o not in _REFUSED_OPERATORS[kind])
            raise FilterError(f"filter {text!r} uses {op} on {column} ({kind}): use {allowed}")
        # An empty table_id names no table, so routing by it could only be a mistake.
        if column == "table_id" and op in ("eq", "in") and "" in clause.values:
            raise FilterError(f"filter {text!r} names an empty table_id: give the table's id")
        return cls(
            column, op, tuple(_convert(text, column, kind, value) for value in clause.values)
        )

    @property
    def tables(self) -> tuple[str, ...] | None:
        """The table_ids this filter routes to, or None if every table's rows must be checked."""
        if self.column != "table_id" or self.op not in ("eq", "in"):
            return None
        # dict.fromkeys: the distinct ids in the order given; joining a table twice is useless.
        return tuple(dict.fromkeys(str(value) for value in self.values))

    def matches(self, row: Mapping[str, Any]) -> bool:
        """Whether ``row`` (a row as clients see it) passes; a missing or null value never
        does, but ``data``'s null, which is JSON's."""
        if self.column not in row:
            return False
        value = _row_value(_COLUMNS[self.column], row[self.column])
        if value is None:
            return False
        if self.op == "in":
            return value in self.values
        return _COMPARE[self.op](value, self.values[0])


def parse_filters(text: str) -> tuple[RowFilter, ...]:
    """Every filter of ``text``: Supabase Realtime joins several with commas, all must match.

    Split as :func:`.filter_syntax.split` splits (commas inside brackets,
    quotes or escaped as ``\\,`` belong to a value); an empty or blank
    ``text`` has none.
    """
    return tuple(
        RowFilter.from_clause(clause)
        for clause in filter_syntax.parse(text, _OPERATORS, negatable=False)
    )


def row_values(row_json: str) -> dict[str, Any]:
    """A row's JSON text, as Postgres wrote it, as :meth:`RowFilter.matches` reads it.

    Numbers are read as decimals, so that every digit of a jsonb number
    counts. A value nested deeper than Python's parser goes (about a
    thousand levels, which jsonb allows) is left out: filters on it do not
    match (not even ``data=neq.1``: a null ``data`` would be JSON's null).
    """
    try:
        row: dict[str, Any] = json.loads(row_json, parse_float=Decimal)
    except RecursionError:
        row = {}
        for name, _, value in members(row_json):
            try:
                row[name] = json.loads(value, parse_float=Decimal)
            except RecursionError:
                continue
    return row


def _convert(text: str, column: str, kind: str, raw: str) -> Value:
    """A filter value as the column's type, or a FilterError saying what was expected."""
    if kind == _JSONB:
        try:
            return _jsonb(json.loads(raw, parse_constant=_no_constant, parse_float=Decimal))
        except ValueError:
            raise FilterError(
                f"filter {text!r} compares {column} (jsonb) with {raw!r}: give a JSON value "
                'such as {"name":"x"}'
            ) from None
    if kind == _TEXT_ARRAY:
        elements = _parse_array(raw)
        if elements is None:
            raise FilterError(
                f"filter {text!r} compares {column} (text[]) with {raw!r}: give an array "
                'literal such as {a,"b c"}'
            )
        return elements
    if kind == _INT8:
        number = int(raw) if _INTEGER.fullmatch(raw) else None
        if number is None or not _INT8_MIN <= number <= _INT8_MAX:
            raise FilterError(
                f"filter {text!r} compares {column} (int8) with {raw!r}: give an integer"
            )
        return number
    if kind == _TIMESTAMPTZ:
        instant = _parse_timestamp(raw)
        if instant is None:
            raise FilterError(
                f"filter {text!r} compares {column} (timestamptz) with {raw!r}: "
                f"give an ISO-8601 timestamp such as {_TIMESTAMP_EXAMPLE}"
            )
        return instant
    return raw


def _parse_timestamp(raw: str) -> tuple[int, int] | None:
    """The instant ``raw`` names (UTC when no offset is given), or None if it is not one.

    ``(0, microseconds since 1970-01-01 UTC)``, or ``(1, 0)`` for ``infinity``
    and ``(-1, 0)`` for ``-infinity``: ordered as Postgres orders them, over
    its whole range, which Python's datetime does not reach.
    """
    infinite = _INFINITIES.get(raw)
    if infinite is not None:
        return infinite
    match = _TIMESTAMP.fullmatch(raw)
    if match is None:
        return None
    year, month, day, hour, minute, second, fraction, offset, bc = match.groups()
    hours, minutes, seconds = int(hour or 0), int(minute or 0), int(second or 0)
    if hours > 23 or minutes > 59 or seconds > 59:
        return None
    shift = 0
    if offset and offset != "Z":
        digits = offset[1:].replace(":", "")
        parts = [int(digits[i : i + 2]) for i in range(0, len(digits), 2)]
        parts += [0] * (3 - len(parts))
        if parts[0] > _MAX_OFFSET_HOURS or parts[1] > 59 or parts[2] > 59:
            return None
        shift = (parts[0] * 3600 + parts[1] * 60 + parts[2]) * (-1 if offset[0] == "-" else 1)
    # Astronomical years: 1 BC is year 0. Days are counted in a year moved by
    # whole 400-year cycles into date's range, which repeat the calendar.
    number = int(year)
    if number == 0:
        return None
    astronomical = 1 - number if bc else number
    cycles = (astronomical - 1) // 400
    try:
        days = date(astronomical - 400 * cycles, int(month), int(day)).toordinal()
    except ValueError:  # out-of-range fields, such as month 13 or February 30
        return None
    days += _DAYS_IN_400_YEARS * cycles - _EPOCH_DAY
    total = days * 86_400 + hours * 3600 + minutes * 60 + seconds - shift
    return (0, total * 1_000_000 + int((fraction or "").ljust(6, "0")))


def _no_constant(name: str) -> None:
    raise ValueError(f"{name} is not JSON")


def _jsonb(value: Any) -> tuple[Any, ...]:
    """A JSON value in a form that compares equal exactly when jsonb values do."""
    if value is None:
        return ("null",)
    if isinstance(value, bool):
        return ("boolean", value)
    if isinstance(value, Decimal):
        # jsonb numbers are numerics: 1 and 1.0 are equal, 1.00000000000000000001 is not 1.
        return ("number", value)
    if isinstance(value, int | float):
        # str() keeps a float's digits.
        return ("number", Decimal(str(value)))
    if isinstance(value, str):
        return ("string", value)
    if isinstance(value, list):
        return ("array", tuple(_jsonb(item) for item in value))
    if isinstance(value, dict):
        return ("object", frozenset((key, _jsonb(item)) for key, item in value.items()))
    raise ValueError(f"not a JSON value: {value!r}")


def _text_array(elements: Sequence[str | None]) -> tuple[Any, ...]:
    """Elements in the order Postgres compares arrays: a NULL element after every string."""
    return tuple((1, "") if element is None else (0, element) for element in elements)


_ARRAY_SPACE: Final = " \t\n\r\v\f"
"""The whitespace Postgres' array input skips (``array_isspace``): ASCII only."""


def _parse_array(raw: str) -> tuple[Any, ...] | None:
    """A one-dimensional Postgres array literal (``{a,"b c",NULL}``), or None if it is not one.

    Read as Postgres' ``array_in`` reads it: whitespace around an element is
    dropped, a backslash escapes the next character in an element quoted or
    not, and only a bare ``NULL`` (any case, unescaped) is a null.
    """
    text = raw.strip(_ARRAY_SPACE)
    if len(text) < 2 or text[0] != "{" or text[-1] != "}":
        return None
    end = len(text) - 1
    if not text[1:end].strip(_ARRAY_SPACE):
        return ()
    elements: list[str | None] = []
    index = 1
    while True:
        while text[index] in _ARRAY_SPACE:
            index += 1
        element, index = (_quoted if text[index] == '"' else _bare)(text, index, end)
        if index < 0:
            return None
        elements.append(element)
        while index < end and text[index] in _ARRAY_SPACE:
            index += 1
        if index == end:
            return _text_array(elements)
        if text[index] != ",":
            return None
        index += 1


def _quoted(text: str, index: int, end: int) -> tuple[str | None, int]:
    """The double-quoted element at ``index`` and the index after it (-1: malformed)."""
    chars: list[str] = []
    index += 1
    while index < end:
        char = text[index]
        if char == '"':
            return "".join(chars), index + 1
        if char == "\\":
            index += 1
            if index == end:
                break
            char = text[index]
        chars.append(char)
        index += 1
    return None, -1


def _bare(text: str, index: int, end: int) -> tuple[str | None, int]:
    """The unquoted element at ``index`` and the index of what follows it (-1: malformed)."""
    chars: list[str] = []
    kept = 0  # up to the last character that is not trailing whitespace
    escaped = False
    while index < end and text[index] != ",":
        char = text[index]
        if char in '{}"':
            return None, -1
        if char == "\\":
            index += 1
            if index == end:
                return None, -1
            chars.append(text[index])
            escaped = True
            kept = len(chars)
        else:
            chars.append(char)
            if char not in _ARRAY_SPACE:
                kept = len(chars)
        index += 1
    if kept == 0:
        return None, -1
    element = "".join(chars[:kept])
    return (None if not escaped and element.upper() == "NULL" else element), index


def _row_value(kind: str, raw: object) -> Value | None:
    """A row's JSON value as the column's type; None (never matching) if null or mistyped.

    ``data`` is never an SQL null (``NOT NULL``): a null there is the jsonb
    ``null``, which ``data=eq.null`` matches, as Postgres' ``=`` does.
    """
    if kind == _JSONB:
        return _jsonb(raw)
    if kind == _TEXT_ARRAY:
        if not isinstance(raw, list) or not all(e is None or isinstance(e, str) for e in raw):
            return None
        return _text_array(raw)
    if kind == _INT8:
        # bool is an int to Python, never to JSON's version column.
        return raw if isinstance(raw, int) and not isinstance(raw, bool) else None
    if not isinstance(raw, str):
        return None
    if kind == _TIMESTAMPTZ:
        return _parse_timestamp(raw)
    return raw
