"""Hypothesis strategies for Postgres values, each written as the type's input function reads it,
and for writing a value into a Supabase filter as docs/supabase.md "Filters" says.

The property tests of filters (tests/integration/test_*_properties.py) draw
rows and filter values from these and let Postgres itself decide what a
filter should match: every strategy yields the text of a value (``'12.5'``,
``'{a,"b c"}'``), so the test can cast it in SQL it writes itself.
"""

from __future__ import annotations

import json
import uuid
from datetime import datetime

from hypothesis import strategies as st

__all__ = [
    "ASCII_SPACE",
    "array_literals",
    "booleans",
    "dates",
    "filter_value",
    "in_list",
    "int4s",
    "int8s",
    "iso_timestamps",
    "json_texts",
    "literal",
    "numerics",
    "texts",
    "timestamps",
    "timestamps_beyond",
    "uuids",
    "writable",
]

ASCII_SPACE = " \t\n\r\v\f"
"""What Postgres' array input takes for whitespace (``array_isspace``); no other space."""

# Characters Postgres text can hold: no NUL, no lone surrogate.
_CHARACTERS = st.characters(exclude_categories=["Cs"], exclude_characters="\x00")
_SPECIAL = st.sampled_from(list("aAbB %_\\,\"'(){}é\u00a0\t"))
INTERESTING_TEXTS = (
    "",
    "a",
    "A",
    "b",
    "ab",
    "a b",
    " a",
    "a ",
    "%",
    "_",
    "\\",
    "a,b",
    '"',
    '"a"',
    "(",
    ")",
    "{}",
    "é",
    "É",
    "ß",
    "SS",
    "\u00a0a",
    "NULL",
    "null",
    "x'y",
)


def literal(text: str) -> str:
    """``text`` as an SQL string literal (standard_conforming_strings, Postgres' default)."""
    return "'" + text.replace("'", "''") + "'"


texts = st.one_of(
    st.sampled_from(INTERESTING_TEXTS),
    st.text(_CHARACTERS, max_size=6),
    st.text(_SPECIAL, max_size=6),
)
"""Text Postgres can store, biased to what filters and array literals treat specially."""

int4s = st.one_of(
    st.sampled_from([0, 1, -1, 2, 10, 2**31 - 1, -(2**31)]),
    st.integers(-(2**31), 2**31 - 1),
).map(str)
int8s = st.one_of(
    st.sampled_from([0, 1, -1, 2**53, 2**53 + 1, -(2**53) - 1, 2**63 - 1, -(2**63)]),
    st.integers(-(2**63), 2**63 - 1),
).map(str)
numerics = st.one_of(
    st.sampled_from(
        [
            "0",
            "-0",
            "1",
            "1.0",
            "1.50",
            "0.1",
            "1e3",
            "9007199254740993",
            "12345678901234567890.123456789",
            "NaN",
            "Infinity",
            "-Infinity",
        ]
    ),
    st.decimals(min_value=-(10**25), max_value=10**25, allow_nan=False, allow_infinity=False).map(
        str
    ),
)
booleans = st.sampled_from(["true", "false", "t", "f", "TRUE", "no", "on", "1", "0", " yes "])
_FIXED_UUIDS = ("00000000-0000-0000-0000-000000000001", "ffffffff-ffff-ffff-ffff-ffffffffffff")
uuids = st.builds(
    lambda value, form: {
        "plain": str(value),
        "upper": str(value).upper(),
        "hex": value.hex,
        "braces": "{" + str(value) + "}",
    }[form],
    st.one_of(st.uuids(), st.sampled_from(_FIXED_UUIDS).map(uuid.UUID)),
    st.sampled_from(["plain", "upper", "hex", "braces"]),
)
dates = st.one_of(
    st.sampled_from(["2026-11-26", "2026-11-27", "infinity", "-infinity"]),
    st.dates().map(lambda day: day.isoformat()),
)

# Offsets (in minutes) Postgres and ISO-8601 both write: whole hours and minutes.
_OFFSETS = (0, 330, -210, 840, -720)


@st.composite
def iso_timestamps(draw: st.DrawFn) -> str:
    """An extended ISO-8601 timestamp, the form docs/supabase.md gives for timestamptz filters:
    ``T`` or a space, seconds and 1 to 6 fraction digits optional, an offset (``Z``,
    ``+05``, ``+0530``, ``+05:30``) or none (UTC)."""
    moment = draw(st.datetimes(min_value=datetime(1, 1, 2), max_value=datetime(9999, 12, 30)))
    text = moment.date().isoformat()
    if draw(st.integers(0, 9)) == 0:
        return text
    text += draw(st.sampled_from(["T", " "])) + moment.strftime("%H:%M")
    seconds = draw(st.sampled_from(["", "s", "f"]))
    if seconds:
        text += moment.strftime(":%S")
    if seconds == "f":
        text += "." + f"{moment.microsecond:06d}"[: draw(st.integers(1, 6))]
    offset = draw(st.none() | st.sampled_from(_OFFSETS))
    if offset is None:
        return text
    if offset == 0 and draw(st.booleans()):
        return text + "Z"
    sign = "+" if offset >= 0 else "-"
    hours, minutes = divmod(abs(offset), 60)
    if minutes == 0 and draw(st.booleans()):
        return text + f"{sign}{hours:02d}"
    return text + f"{sign}{hours:02d}{draw(st.sampled_from(['', ':']))}{minutes:02d}"


timestamps = st.one_of(
    st.sampled_from(["2026-11-26T10:00:00Z", "2026-11-26 12:00:00+02", "infinity", "-infinity"]),
    iso_timestamps(),
)
"""timestamptz values as a writer may store them: ISO-8601 and the infinities."""

timestamps_beyond = st.one_of(
    timestamps,
    st.sampled_from(
        [
            "1900-01-01 00:00:00+00",
            "1937-06-30 23:59:59.5+00",
            "10000-01-01 00:00:00+00",
            "0044-03-15 12:00:00+00 BC",
        ]
    ),
)
"""timestamptz values past what ISO-8601 or Python write: years past 9999, BC, and
instants a time zone gave an offset in seconds (Amsterdam's before 1937: +00:19:32)."""


def _json_string(text: str, ascii_only: bool) -> str:
    return json.dumps(text, ensure_ascii=ascii_only)


json_numbers = st.one_of(
    st.sampled_from(
        [
            "0",
            "-0",
            "1",
            "1.0",
            "1e2",
            "100",
            "1.00000000000000000001",
            "1E+400",
            "12345678901234567890",
        ]
    ),
    st.integers().map(str),
    st.floats(allow_nan=False, allow_infinity=False).map(repr),
    st.decimals(min_value=-(10**20), max_value=10**20, allow_nan=False, allow_infinity=False).map(
        str
    ),
)
json_strings = st.builds(_json_string, texts, st.booleans())
json_texts = st.recursive(
    st.one_of(st.sampled_from(["null", "true", "false"]), json_numbers, json_strings),
    lambda children: st.one_of(
        st.lists(children, max_size=3).map(lambda items: "[" + ", ".join(items) + "]"),
        st.lists(st.tuples(json_strings, children), max_size=3).map(
            lambda pairs: "{" + ",".join(f"{key}:{value}" for key, value in pairs) + "}"
        ),
    ),
    max_leaves=6,
)
"""JSON documents as text, with duplicate keys, exponents and more digits than a float keeps."""


@st.composite
def array_literals(draw: st.DrawFn, elements: st.SearchStrategy[str] = texts) -> str:
    """A one-dimensional ``text[]`` literal, each element quoted, bare, or bare with
    backslash escapes, with spaces around it at random; ``NULL`` in any case for a null."""
    items = draw(st.lists(st.none() | elements, max_size=4))
    written = []
    for item in items:
        pad = draw(st.sampled_from(["", " ", "\t "]))
        if item is None:
            written.append(pad + draw(st.sampled_from(["NULL", "null", "Null"])) + pad)
            continue
        plain = (
            item != ""
            and item.strip(ASCII_SPACE) == item
            and not any(char in item for char in '{}",\\')
            and item.upper() != "NULL"
        )
        escapable = item != "" and "," not in item and "\\" not in item
        form = draw(st.sampled_from(["quoted", "bare", "escaped"]))
        if form == "bare" and plain:
            written.append(pad + item + pad)
        elif form == "escaped" and escapable:
            # Postgres reads a backslash in a bare element as escaping the next character.
            written.append(
                pad + "".join("\\" + c if c in '{}"' + ASCII_SPACE else c for c in item) + pad
            )
        else:
            written.append(pad + '"' + item.replace("\\", "\\\\").replace('"', '\\"') + '"' + pad)
    return "{" + ",".join(written) + "}"


def filter_value(value: str) -> str:
    """``value`` as it follows an operator's dot: each comma escaped as ``\\,``.

    For a value without a backslash just before a comma, which the grammar
    gives no way to write inside double quotes (there a backslash escapes the
    next character, for the value's own parser).
    """
    return value.replace(",", "\\,")


def writable(value: str) -> bool:
    """Whether :func:`filter_value` can write ``value``."""
    return "\\," not in value


@st.composite
def in_list(draw: st.DrawFn, values: list[str]) -> str:
    """``values`` as an ``in`` list: quoted (``\\"`` and ``\\\\`` escaped) or, where
    nothing in it needs quotes, bare with ASCII spaces around it, which the list drops."""
    written = []
    for value in values:
        bare = (
            value != ""
            and value.strip(ASCII_SPACE) == value
            and not any(char in value for char in '",()[]{}\\')
        )
        if bare and draw(st.booleans()):
            pad = draw(st.sampled_from(["", " ", "  "]))
            written.append(pad + value + pad)
        else:
            written.append('"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"')
    return "(" + ",".join(written) + ")"
