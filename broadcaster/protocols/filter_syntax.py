"""The grammar of Supabase ``postgres_changes`` filters, sans-I/O: text in, clauses out.

A binding's ``filter`` is one or more conditions joined by commas, all of
which must hold: ``column=operator.value`` (``status=eq.done``), the operator
optionally negated with ``not.`` (``status=not.in.(a,b)``). This module splits
the text, reads each condition into a :class:`Clause` and refuses what no
table could serve, with a :class:`~broadcaster.exceptions.FilterError` saying
what to write instead. What a value means (its type, whether the column
exists) is for the table's evaluator: :mod:`.filters` on ``public.rows``,
:mod:`.filter_sql` on a published table.

The grammar, as Supabase's server reads it, and where it differs on purpose:

* Operators ``eq, neq, lt, lte, gt, gte, in, like, ilike, is, match, imatch,
  isdistinct``; ``not.`` before any of them negates it.
* A value is everything after the operator's dot, whitespace and double
  quotes included (``name=eq."a"`` compares with ``"a"``, quotes and all, as
  PostgREST does; Supabase's server strips them).
* ``in.(a,"b,c")`` lists at most 100 values: a double-quoted value may hold
  commas, ``\\"`` and ``\\\\``; ASCII whitespace around a value is dropped,
  as in a Postgres array (a no-break space is kept); an unquoted ``NULL`` is
  the text ``NULL`` (in Supabase's, an SQL null that matches nothing). An
  empty list is refused (Supabase's matches nothing).
* ``is`` takes ``null``, ``true``, ``false`` or ``unknown``.
* A ``like``/``ilike`` pattern may not end with its escape character ``\\``,
  which Postgres refuses only once a row's text reaches it.
* A comma inside parentheses, braces or brackets (an ``in`` list, an array,
  JSON), inside double quotes, or escaped as ``\\,`` belongs to a value.
  Supabase's server knows only parentheses and quotes.
* Spaces before a condition are dropped (``a=eq.1, b=eq.2``); a filter of
  spaces alone is no filter, as in Supabase's server.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Final

from ..exceptions import FilterError

__all__ = [
    "IS_VALUES",
    "MAX_IN_VALUES",
    "OPERATORS",
    "Clause",
    "parse",
    "parse_clause",
    "split",
]

OPERATORS: Final = (
    "eq",
    "neq",
    "lt",
    "lte",
    "gt",
    "gte",
    "in",
    "like",
    "ilike",
    "is",
    "match",
    "imatch",
    "isdistinct",
)
IS_VALUES: Final = ("null", "true", "false", "unknown")
MAX_IN_VALUES: Final = 100
"""Supabase's cap on an ``in`` list (``realtime.subscription_check_filters``)."""

_NEGATION: Final = "not."
_ARRAY_SPACE: Final = " \t\n\r\v\f"
"""The whitespace Postgres' array input drops around a value (``array_isspace``): ASCII only."""


@dataclass(frozen=True)
class Clause:
    """One condition of a filter.

    ``values`` holds the value as written, one unless ``operator`` is ``in``
    (then each listed value, unquoted). ``text`` is the condition as the
    client wrote it, for messages; clauses that mean the same are equal
    whatever their text.
    """

    column: str
    operator: str
    values: tuple[str, ...]
    negated: bool = False
    text: str = field(default="", compare=False)


def split(text: str) -> tuple[str, ...]:
    """The conditions of a filter, in order; none for an empty or blank filter.

    A comma inside parentheses, braces or brackets, inside double quotes
    (where a backslash escapes the next character), or escaped as ``\\,``
    belongs to a value. Spaces before each condition are dropped.
    """
    if not text.strip():
        return ()
    parts: list[str] = []
    current: list[str] = []
    depth = 0
    quoted = False
    index = 0
    while index < len(text):
        char = text[index]
        following = text[index + 1 : index + 2]
        if char == "\\" and following == ",":
            current.append(",")
            index += 2
            continue
        if quoted and char == "\\" and following:
            # An escaped quote does not end the quoted value; the value's own
            # parser reads the escape.
            current.append(char + following)
            index += 2
            continue
        if char == '"':
            quoted = not quoted
        elif not quoted and char in "([{":
            depth += 1
        elif not quoted and char in ")]}":
            depth = max(0, depth - 1)
        if char == "," and depth == 0 and not quoted:
            parts.append("".join(current).lstrip())
            current = []
        else:
            current.append(char)
        index += 1
    parts.append("".join(current).lstrip())
    return tuple(parts)


def parse(
    text: str, operators: Sequence[str] = OPERATORS, *, negatable: bool = True
) -> tuple[Clause, ...]:
    """Every condition of the filter ``text``, read by :func:`parse_clause`."""
    parts = split(text)
    for part in parts:
        if not part:
            raise FilterError(f"filter {text!r} has an empty condition: remove the extra comma")
    return tuple(parse_clause(part, operators, negatable=negatable) for part in parts)


def parse_clause(
    text: str, operators: Sequence[str] = OPERATORS, *, negatable: bool = True
) -> Clause:
    """One condition, ``column=[not.]operator.value``.

    ``operators`` are those the caller serves (a subset of :data:`OPERATORS`);
    with ``negatable`` false, ``not.`` is read as an operator and refused.
    """
    column, equals, rest = text.partition("=")
    negated = negatable and rest.startswith(_NEGATION)
    if negated:
        rest = rest[len(_NEGATION) :]
    op, dot, raw = rest.partition(".")
    if not equals or not dot or not column or not op:
        raise FilterError(
            f"filter {text!r} is not of the form column=operator.value, such as id=eq.r1"
        )
    if op not in operators or op not in OPERATORS:
        served = [o for o in OPERATORS if o in operators]
        allowed = ", ".join(served[:-1]) + " or " + served[-1]
        negation = ", each negatable with not." if negatable else ""
        raise FilterError(
            f"filter {text!r} uses unsupported operator {op!r}: use {allowed}{negation}"
        )
    if op == "in":
        values = _parse_list(text, raw)
    elif op == "is":
        if raw not in IS_VALUES:
            raise FilterError(
                f"filter {text!r} compares with is.{raw}: "
                "use is.null, is.true, is.false or is.unknown"
            )
        values = (raw,)
    else:
        if op in ("like", "ilike") and _ends_with_escape(raw):
            raise FilterError(
                f"filter {text!r} ends its pattern with the escape character \\: "
                "write \\\\ to match a backslash"
            )
        values = (raw,)
    return Clause(column, op, values, negated, text)


def _ends_with_escape(pattern: str) -> bool:
    """Whether a LIKE pattern's last backslash escapes nothing."""
    index = 0
    while index < len(pattern):
        if pattern[index] == "\\":
            if index + 1 == len(pattern):
                return True
            index += 1
        index += 1
    return False


def _parse_list(text: str, raw: str) -> tuple[str, ...]:
    """The values of ``(a,"b,c")``: PostgREST's quoting, Postgres array whitespace rules."""
    if len(raw) < 2 or raw[0] != "(" or raw[-1] != ")":
        raise FilterError(
            f"filter {text!r} must list its values in parentheses, such as id=in.(a,b)"
        )
    inner = raw[1:-1]
    if not inner.strip(_ARRAY_SPACE):
        raise FilterError(f"filter {text!r} has an empty in list: give at least one value")
    values: list[str] = []
    i, end = 0, len(inner)
    while True:
        while i < end and inner[i] in _ARRAY_SPACE:
            i += 1
        if i < end and inner[i] == '"':
            i += 1
            chars: list[str] = []
            while True:
                if i >= end:
                    raise FilterError(
                        f'filter {text!r} has an unterminated quoted value: close it with "'
                    )
                char = inner[i]
                if char == '"':
                    i += 1
                    break
                if char == "\\" and i + 1 < end:
                    # PostgREST and Postgres arrays both take the next character as is.
                    i += 1
                    char = inner[i]
                chars.append(char)
                i += 1
            while i < end and inner[i] in _ARRAY_SPACE:
                i += 1
            if i < end and inner[i] != ",":
                raise FilterError(
                    f"filter {text!r} has text after a quoted value: "
                    "quote the whole value or separate values with commas"
                )
            values.append("".join(chars))
        else:
            comma = inner.find(",", i)
            stop = end if comma == -1 else comma
            value = inner[i:stop].strip(_ARRAY_SPACE)
            if not value:
                raise FilterError(
                    f"filter {text!r} has an empty value in its in list: "
                    'remove it, or write "" to match an empty string'
                )
            if '"' in value:
                raise FilterError(
                    f"filter {text!r} has a quote inside an unquoted value: "
                    'quote the whole value and escape the quote as \\"'
                )
            values.append(value)
            i = stop
        if len(values) > MAX_IN_VALUES:
            raise FilterError(
                f"filter {text!r} lists more than {MAX_IN_VALUES} values: "
                f"list at most {MAX_IN_VALUES}, or split them over several bindings"
            )
        if i >= end:
            return tuple(values)
        i += 1  # the comma
