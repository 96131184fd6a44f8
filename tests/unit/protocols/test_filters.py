"""Unit tests for broadcaster.protocols.filters: Supabase postgres_changes filters on rows."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from typing import Any

import pytest

from broadcaster.exceptions import BroadcasterError, FilterError
from broadcaster.protocols.filters import RowFilter, parse_filters, row_values

T0 = "2026-11-26T10:00:00.123456Z"
T0_AT = datetime(2026, 11, 26, 10, 0, 0, 123456, tzinfo=UTC)


def instant(moment: datetime) -> tuple[int, int]:
    """A timestamp filter's value: microseconds since 1970 UTC, ranked among the infinities."""
    return (0, (moment - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(microseconds=1))


def row(**overrides: Any) -> dict[str, Any]:
    """A row as clients see it; keyword ``None`` sets a JSON null."""
    base: dict[str, Any] = {
        "id": "r2",
        "table_id": "t2",
        "data": {"name": "x"},
        "enriching_columns": ["a"],
        "version": 2,
        "created_at": T0,
        "updated_at": T0,
    }
    base.update(overrides)
    return base


def without(key: str) -> dict[str, Any]:
    r = row()
    del r[key]
    return r


def refused(text: str) -> str:
    with pytest.raises(FilterError) as caught:
        RowFilter.parse(text)
    return str(caught.value)


# Parsing


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("id=eq.r1", RowFilter("id", "eq", ("r1",))),
        ("table_id=neq.t1", RowFilter("table_id", "neq", ("t1",))),
        ("version=lt.10", RowFilter("version", "lt", (10,))),
        ("version=lte.-3", RowFilter("version", "lte", (-3,))),
        ("version=gt.+7", RowFilter("version", "gt", (7,))),
        ("created_at=gte." + T0, RowFilter("created_at", "gte", (instant(T0_AT),))),
        ("updated_at=in.(" + T0 + ")", RowFilter("updated_at", "in", (instant(T0_AT),))),
        ("version=in.(1,2,3)", RowFilter("version", "in", (1, 2, 3))),
    ],
)
def test_parse_converts_values_to_the_column_type(text: str, expected: RowFilter) -> None:
    assert RowFilter.parse(text) == expected


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("id=eq.a.b", "a.b"),
        ("id=eq.", ""),
        ("id=eq.a=b", "a=b"),
        ("id=eq. padded ", " padded "),
        ("id=eq.(a,b)", "(a,b)"),
        ('id=eq."q"', '"q"'),
        ("id=lt.é", "é"),
    ],
)
def test_a_single_value_is_everything_after_the_operator_dot(text: str, value: str) -> None:
    assert RowFilter.parse(text).values == (value,)


@pytest.mark.parametrize(
    ("text", "values"),
    [
        ("id=in.(a)", ("a",)),
        ("id=in.(a,b,c)", ("a", "b", "c")),
        ("id=in.( a , b )", ("a", "b")),
        ("id=in.(a.b,c=d)", ("a.b", "c=d")),
        ('id=in.("a,b",c)', ("a,b", "c")),
        ('id=in.("a,b","c)")', ("a,b", "c)")),
        ('id=in.( "a,b" , c )', ("a,b", "c")),
        ('id=in.(" spaced ")', (" spaced ",)),
        ('id=in.("say \\"hi\\"")', ('say "hi"',)),
        ('id=in.("back\\\\slash")', ("back\\slash",)),
        ('id=in.("\\x")', ("x",)),
        ('id=in.("")', ("",)),
        ('id=in.("",a)', ("", "a")),
        ("id=in.(back\\slash)", ("back\\slash",)),
        ("id=in.(a,a)", ("a", "a")),
        ("version=in.( 1 ,2)", (1, 2)),
        ('version=in.("3")', (3,)),
    ],
)
def test_in_lists_values_with_postgrest_quoting(text: str, values: tuple[str, ...]) -> None:
    assert RowFilter.parse(text).values == values


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("2026-11-26T10:00:00.123456Z", T0_AT),
        ("2026-11-26T10:00:00.123456+00:00", T0_AT),
        ("2026-11-26T12:00:00.123456+02:00", T0_AT),
        ("2026-11-26T05:30:00.123456-0430", T0_AT),
        ("2026-11-26T12:00:00.123456+02", T0_AT),
        ("2026-11-26T10:00:00.123456", T0_AT),
        ("2026-11-26 10:00:00.123456", T0_AT),
        ("2026-11-26 10:00:00.123456Z", T0_AT),
        ("2026-11-26T10:00:00.1Z", T0_AT.replace(microsecond=100_000)),
        ("2026-11-26T10:00:00Z", T0_AT.replace(microsecond=0)),
        ("2026-11-26T10:00", T0_AT.replace(microsecond=0)),
        ("2026-11-26", datetime(2026, 11, 26, tzinfo=UTC)),
    ],
)
def test_timestamps_are_iso_8601_and_utc_without_an_offset(value: str, expected: datetime) -> None:
    (parsed,) = RowFilter.parse("created_at=eq." + value).values

    assert parsed == instant(expected)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        # As to_jsonb writes what Python's datetime cannot hold, and Postgres orders it.
        ("10000-01-01T00:00:00+00:00", (0, 253_402_300_800_000_000)),
        ("1970-01-01T00:00:00+00:00 BC", (0, -124_302_816_000_000_000)),
        ("0001-12-31T23:59:59.999999+00:00 BC", (0, -62_135_596_800_000_001)),
        ("1900-01-01T00:19:32+00:19:32", instant(datetime(1900, 1, 1, tzinfo=UTC))),
        ("infinity", (1, 0)),
        ("-infinity", (-1, 0)),
    ],
)
def test_every_instant_a_timestamptz_holds_is_a_value(
    value: str, expected: tuple[int, int]
) -> None:
    (parsed,) = RowFilter.parse("created_at=eq." + value).values

    assert parsed == expected


def test_a_filter_is_a_frozen_value() -> None:
    parsed = RowFilter.parse("id=eq.r1")

    assert parsed == RowFilter.parse("id=eq.r1")
    assert hash(parsed) == hash(RowFilter("id", "eq", ("r1",)))
    with pytest.raises(dataclasses.FrozenInstanceError):
        parsed.op = "neq"  # type: ignore[misc]


# Refused filters


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("data=eq.x", "compares data (jsonb) with 'x'"),
        ("data=gt.1", "uses gt on data (jsonb): use eq, neq, in"),
        ("data=eq.NaN", "give a JSON value"),
        ("data->>name=eq.x", "unknown column 'data->>name'"),
        ("enriching_columns=in.({a})", "uses in on enriching_columns (text[])"),
        ("enriching_columns=eq.a", "give an array literal"),
        ("enriching_columns=eq.{a,}", "give an array literal"),
        ("enriching_columns=cs.{a}", "unsupported operator 'cs'"),
        ("name=eq.x", "unknown column 'name'"),
        ("ID=eq.x", "unknown column 'ID'"),
        ("id =eq.x", "unknown column 'id '"),
        ("id=like.a*", "unsupported operator 'like'"),
        ("id=is.null", "unsupported operator 'is'"),
        ("id=not.eq.x", "unsupported operator 'not'"),
        ("id=EQ.x", "unsupported operator 'EQ'"),
        ("", "is not of the form column=operator.value"),
        ("id", "is not of the form column=operator.value"),
        ("id=eq", "is not of the form column=operator.value"),
        ("id=.x", "is not of the form column=operator.value"),
        ("=eq.x", "is not of the form column=operator.value"),
        ("id.eq=x", "is not of the form column=operator.value"),
        ("id=in.()", "has an empty in list"),
        ("id=in.(  )", "has an empty in list"),
        ("id=in.", "must list its values in parentheses"),
        ("id=in.a,b", "must list its values in parentheses"),
        ("id=in.(a,b", "must list its values in parentheses"),
        ("id=in.a,b)", "must list its values in parentheses"),
        ("id=in.)", "must list its values in parentheses"),
        ("id=in.(a,)", "has an empty value in its in list"),
        ("id=in.(,a)", "has an empty value in its in list"),
        ("id=in.(a,,b)", "has an empty value in its in list"),
        ("id=in.(a, ,b)", "has an empty value in its in list"),
        ('id=in.("a",)', "has an empty value in its in list"),
        ('id=in.("a)', "has an unterminated quoted value"),
        ('id=in.("a\\")', "has an unterminated quoted value"),
        ('id=in.("a"b)', "has text after a quoted value"),
        ('id=in.("a" "b")', "has text after a quoted value"),
        ('id=in.(a"b")', "has a quote inside an unquoted value"),
        ("table_id=eq.", "names an empty table_id"),
        ('table_id=in.(a,"")', "names an empty table_id"),
        ('table_id=in.("")', "names an empty table_id"),
        ("version=eq.", "compares version (int8) with ''"),
        ("version=eq.1.5", "compares version (int8) with '1.5'"),
        ("version=eq.1e3", "compares version (int8) with '1e3'"),
        ("version=eq.ten", "compares version (int8) with 'ten'"),
        ("version=eq. 1", "compares version (int8) with ' 1'"),
        ("version=eq.1_000", "compares version (int8) with '1_000'"),
        ("version=eq.٣", "compares version (int8) with '٣'"),
        ("version=gt.9223372036854775808", "compares version (int8)"),
        ("version=lt.-9223372036854775809", "compares version (int8)"),
        ("version=in.(1,two)", "compares version (int8) with 'two'"),
        ("created_at=eq.", "compares created_at (timestamptz) with ''"),
        ("created_at=eq.yesterday", "compares created_at (timestamptz) with 'yesterday'"),
        ("created_at=eq.now", "compares created_at (timestamptz)"),
        ("created_at=eq.2026", "compares created_at (timestamptz)"),
        ("created_at=eq.2026-11", "compares created_at (timestamptz)"),
        ("created_at=eq.2026-W48-4", "compares created_at (timestamptz)"),
        ("created_at=eq.20261126T100000Z", "compares created_at (timestamptz)"),
        ("created_at=eq.2026-13-01T00:00:00Z", "compares created_at (timestamptz)"),
        ("created_at=eq.2026-02-30", "compares created_at (timestamptz)"),
        ("created_at=eq.2026-11-26T24:00:00Z", "compares created_at (timestamptz)"),
        ("created_at=eq.2026-11-26T10:00:00+25:00", "compares created_at (timestamptz)"),
        ("created_at=eq.2026-11-26T10:00:00.1234567Z", "compares created_at (timestamptz)"),
        ("created_at=eq.2026-11-26T10:00:00z", "compares created_at (timestamptz)"),
        ("created_at=eq.2026-11-26T10:00:00 UTC", "compares created_at (timestamptz)"),
        ("created_at=eq.0000-01-01", "compares created_at (timestamptz)"),
        ("created_at=eq.Infinity", "compares created_at (timestamptz)"),
        ("created_at=eq.2026-11-26T10:00:00+16:00", "compares created_at (timestamptz)"),
        ("created_at=eq.2026-11-26T10:00:00+01:00:60", "compares created_at (timestamptz)"),
        ("updated_at=eq.1732615200", "compares updated_at (timestamptz) with '1732615200'"),
        ("updated_at=in.(" + T0 + ",soon)", "compares updated_at (timestamptz) with 'soon'"),
    ],
)
def test_a_filter_that_cannot_be_served_is_refused_with_the_reason(text: str, reason: str) -> None:
    message = refused(text)

    assert reason in message
    # One sentence, sent to the client as is.
    assert "\n" not in message


@pytest.mark.parametrize(
    ("text", "remedy"),
    [
        ("data=eq.x", 'give a JSON value such as {"name":"x"}'),
        (
            "name=eq.x",
            "filter on id, table_id, version, created_at, updated_at, data or enriching_columns",
        ),
        ("id=like.x", "use eq, neq, lt, lte, gt, gte or in"),
        ("id", "such as id=eq.r1"),
        ("id=in.()", "give at least one value"),
        ("id=in.a", "such as id=in.(a,b)"),
        ("version=eq.x", "give an integer"),
        ("created_at=eq.x", "give an ISO-8601 timestamp such as 2026-11-26T10:00:00Z"),
        ("table_id=eq.", "give the table's id"),
        ("id=in.(a,)", 'write "" to match an empty string'),
    ],
)
def test_the_reason_says_what_to_do(text: str, remedy: str) -> None:
    assert remedy in refused(text)


@pytest.mark.parametrize(
    ("literal", "elements"),
    [
        # Each as Postgres' array_in reads it.
        ('{"a" ,b}', ["a", "b"]),
        ("{a b , c\\ }", ["a b", "c "]),
        ("{\\NULL}", ["NULL"]),
        ('{NuLL,"NULL"}', [None, "NULL"]),
        ("{ }", []),
        (" {a} ", ["a"]),
        ("{ab\\\\}", ["ab\\"]),
        ('{"\\\\"}', ["\\"]),
        ('{NULL,\\"}', [None, '"']),
        ("{\\{x\\}}", ["{x}"]),
        ("{\\ a}", [" a"]),
        ("{a\tb}", ["a\tb"]),
        # Only ASCII whitespace is dropped.
        ("{\u00a0a}", ["\u00a0a"]),
    ],
)
def test_an_array_literal_is_read_as_postgres_reads_it(literal: str, elements: list[str]) -> None:
    assert RowFilter.parse("enriching_columns=eq." + literal).matches(
        row(enriching_columns=elements)
    )


@pytest.mark.parametrize(
    "literal",
    ['{"a"b}', '{a"b}', "{a}x", "{a, ,b}", "{a\\}", "{a,}", "{,a}", "{a{b}", "{a}b}", '{x"}'],
)
def test_an_array_literal_postgres_refuses_is_refused(literal: str) -> None:
    assert "give an array literal" in refused("enriching_columns=eq." + literal)


@pytest.mark.parametrize(
    ("text", "value", "matches"),
    [
        ('data=eq.{"a":1,"b":[true,"x"]}', {"b": [True, "x"], "a": 1.0}, True),
        ('data=eq.{"a":1}', {"a": True}, False),
        ('data=eq.{"a":1}', {"a": 1, "b": 2}, False),
        ('data=neq.{"a":1}', {"a": 2}, True),
        # data is NOT NULL: its null is JSON's, as Postgres compares it.
        ("data=eq.null", None, True),
        ("data=neq.null", None, False),
        ("data=neq.1", None, True),
        ("data=in.(1,null)", None, True),
        ('data=in.(1,"\\"x\\"")', 1.0, True),
        ('data=in.(1,"\\"x\\"")', "y", False),
        ('data=in.(1,"\\"x\\"")', "x", True),
        ("data=eq.0.1", 0.1, True),
        ('enriching_columns=eq.{a,"b c"}', ["a", "b c"], True),
        ("enriching_columns=eq.{a}", ["a", "b"], False),
        ("enriching_columns=eq.{}", [], True),
        ("enriching_columns=gt.{}", ["a"], True),
        ("enriching_columns=lt.{b}", ["a", "z"], True),
        ("enriching_columns=lt.{a}", ["a", "z"], False),
        ("enriching_columns=gte.{a,NULL}", ["a", None], True),
        ("enriching_columns=gt.{a,z}", ["a", None], True),
        ("enriching_columns=eq.{a}", None, False),
        ("enriching_columns=eq.{a}", "a", False),
    ],
)
def test_jsonb_and_text_arrays_compare_as_postgres_does(
    text: str, value: object, matches: bool
) -> None:
    assert RowFilter.parse(text).matches(row(**{_column(text): value})) is matches


def test_commas_inside_json_and_arrays_belong_to_the_value() -> None:
    assert [
        f.column for f in parse_filters('data=eq.{"a":1,"b":2},enriching_columns=eq.{a,b}')
    ] == [
        "data",
        "enriching_columns",
    ]


def test_the_error_is_a_value_error_under_the_packages_root() -> None:
    assert issubclass(FilterError, ValueError)
    assert issubclass(FilterError, BroadcasterError)


# Routing


@pytest.mark.parametrize(
    ("text", "tables"),
    [
        ("table_id=eq.t1", ("t1",)),
        ("table_id=eq.a.b", ("a.b",)),
        ("table_id=in.(t1)", ("t1",)),
        ("table_id=in.(t1,t2)", ("t1", "t2")),
        ('table_id=in.("a,b",t2)', ("a,b", "t2")),
        ("table_id=in.(t2,t1,t2)", ("t2", "t1")),
        ("table_id=neq.t1", None),
        ("table_id=lt.t1", None),
        ("table_id=gte.t1", None),
        ("table_id=neq.", None),
        ("id=eq.t1", None),
        ("id=in.(t1,t2)", None),
        ("version=eq.1", None),
        ("created_at=gt." + T0, None),
    ],
)
def test_tables_are_routed_only_for_table_id_eq_and_in(
    text: str, tables: tuple[str, ...] | None
) -> None:
    assert RowFilter.parse(text).tables == tables


# Matching: each operator on each typed column. The row holds r2 / t2 / 2 / T0.

TEXT_CASES = [
    ("eq.r2", True),
    ("eq.r1", False),
    ("neq.r2", False),
    ("neq.r1", True),
    ("lt.r3", True),
    ("lt.r2", False),
    ("lte.r2", True),
    ("lte.r1", False),
    ("gt.r1", True),
    ("gt.r2", False),
    ("gte.r2", True),
    ("gte.r3", False),
    ("in.(r1,r2)", True),
    ("in.(r1,r3)", False),
]


@pytest.mark.parametrize(("condition", "expected"), TEXT_CASES)
def test_each_operator_on_id(condition: str, expected: bool) -> None:
    assert RowFilter.parse("id=" + condition).matches(row()) is expected


@pytest.mark.parametrize(("condition", "expected"), TEXT_CASES)
def test_each_operator_on_table_id(condition: str, expected: bool) -> None:
    text_row = row(table_id="r2")
    assert RowFilter.parse("table_id=" + condition).matches(text_row) is expected


@pytest.mark.parametrize(
    ("condition", "expected"),
    [
        ("eq.2", True),
        ("eq.3", False),
        ("neq.2", False),
        ("neq.3", True),
        ("lt.3", True),
        ("lt.2", False),
        ("lte.2", True),
        ("lte.1", False),
        ("gt.1", True),
        ("gt.2", False),
        ("gte.2", True),
        ("gte.3", False),
        ("in.(1,2)", True),
        ("in.(1,3)", False),
        # Numeric, not textual: "10" < "2" as text.
        ("lt.10", True),
        ("gt.-10", True),
        ("eq.02", True),
    ],
)
def test_each_operator_on_version(condition: str, expected: bool) -> None:
    assert RowFilter.parse("version=" + condition).matches(row()) is expected


BEFORE = "2026-11-26T10:00:00.123455Z"
AFTER = "2026-11-26T10:00:00.123457Z"
# The same instant as T0, written in another zone.
T0_ELSEWHERE = "2026-11-26T11:00:00.123456+01:00"


@pytest.mark.parametrize("column", ["created_at", "updated_at"])
@pytest.mark.parametrize(
    ("condition", "expected"),
    [
        ("eq." + T0, True),
        ("eq." + T0_ELSEWHERE, True),
        ("eq.2026-11-26 10:00:00.123456", True),
        ("eq." + AFTER, False),
        ("neq." + T0, False),
        ("neq." + AFTER, True),
        ("lt." + AFTER, True),
        ("lt." + T0, False),
        ("lte." + T0_ELSEWHERE, True),
        ("lte." + BEFORE, False),
        ("gt." + BEFORE, True),
        ("gt." + T0, False),
        ("gte." + T0, True),
        ("gte." + AFTER, False),
        ("in.(" + BEFORE + "," + T0_ELSEWHERE + ")", True),
        ("in.(" + BEFORE + "," + AFTER + ")", False),
        # As instants, not as text: 09:00-02:00 is 11:00 UTC, after T0.
        ("gt.2026-11-26T09:00:00-02:00", False),
        ("lt.2026-11-26T09:00:00-02:00", True),
        ("gt.2026-11-26", True),
        ("lt.2026-11-27", True),
    ],
)
def test_each_operator_on_timestamps(column: str, condition: str, expected: bool) -> None:
    assert RowFilter.parse(f"{column}={condition}").matches(row()) is expected


@pytest.mark.parametrize(
    "stored",
    ["2026-11-26T10:00:00.123456+00:00", "2026-11-26 11:00:00.123456+01", T0_ELSEWHERE],
)
def test_a_row_timestamp_in_another_notation_is_the_same_instant(stored: str) -> None:
    assert RowFilter.parse("updated_at=eq." + T0).matches(row(updated_at=stored))


@pytest.mark.parametrize(
    ("text", "value", "expected"),
    [
        # Code point order, as Postgres's C collation: uppercase before lowercase.
        ("id=lt.a", "Z", True),
        ("id=lt.a", "b", False),
        ("id=gt.z", "é", True),
        ("id=lt.r1", "R9", True),
        ("id=lt.r10", "r9", False),
        # Beyond the BMP: UTF-16 order would put U+10000 before U+FFFF.
        ("id=gt.\uffff", "\U00010000", True),
        ("id=eq.e\u0301", "é", False),
        ("id=eq.", "", True),
        ("id=gt.", "", False),
        ("id=eq.r1", "r1 ", False),
        ("id=eq.R1", "r1", False),
        ('id=in.("a,b")', "a,b", True),
        ('id=in.("a,b")', "a", False),
        ('id=in.("a\\"b")', 'a"b', True),
    ],
)
def test_text_compares_by_code_point(text: str, value: str, expected: bool) -> None:
    assert RowFilter.parse(text).matches(row(id=value)) is expected


NULL_FILTERS = [
    "id=eq.r2",
    "id=neq.r1",
    "id=lt.zz",
    "id=in.(r1,r2)",
    "table_id=eq.t2",
    "table_id=neq.t1",
    "table_id=gte.",
    "version=eq.2",
    "version=neq.1",
    "version=gt.-1",
    "version=in.(1,2)",
    "created_at=eq." + T0,
    "created_at=neq." + AFTER,
    "created_at=lte." + AFTER,
    "updated_at=neq." + AFTER,
    "updated_at=in.(" + T0 + ")",
]


def _column(text: str) -> str:
    return text.partition("=")[0]


@pytest.mark.parametrize("text", NULL_FILTERS)
def test_the_filters_match_the_full_row(text: str) -> None:
    # The control for the null and missing cases below.
    assert RowFilter.parse(text).matches(row())


@pytest.mark.parametrize("text", NULL_FILTERS)
def test_a_null_never_matches_not_even_neq(text: str) -> None:
    assert not RowFilter.parse(text).matches(row(**{_column(text): None}))


@pytest.mark.parametrize("text", NULL_FILTERS)
def test_a_missing_key_never_matches_not_even_neq(text: str) -> None:
    assert not RowFilter.parse(text).matches(without(_column(text)))


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("version=eq.2", "2"),
        ("version=eq.1", True),
        ("version=neq.1", 2.5),
        ("version=neq.1", [2]),
        ("id=neq.r1", 2),
        ("id=neq.r1", ["r2"]),
        ("created_at=neq." + AFTER, "not a timestamp"),
        ("created_at=neq." + AFTER, 1732615200),
        ("created_at=neq." + AFTER, T0_AT),
    ],
)
def test_a_value_of_the_wrong_json_type_never_matches(text: str, value: object) -> None:
    assert not RowFilter.parse(text).matches(row(**{_column(text): value}))


@pytest.mark.parametrize(
    ("text", "data", "matches"),
    [
        # jsonb numbers are numerics: every digit counts, past a float's too.
        ("data=eq.1.00000000000000000001", "1", False),
        ("data=eq.1.00000000000000000001", "1.000000000000000000010", True),
        ("data=eq.9007199254740993", "9007199254740992", False),
        ("data=eq.[1E+400]", "[1" + "0" * 400 + "]", True),
        ("data=eq.1e400", "1e401", False),
        ('data=in.(0.1,"{\\"a\\": 1.0}")', '{"a": 1}', True),
        ("data=neq.1.5", "1.50", False),
    ],
)
def test_jsonb_numbers_compare_with_every_digit(text: str, data: str, matches: bool) -> None:
    image = '{"id": "r1", "table_id": "t1", "data": ' + data + ', "version": 1}'

    assert RowFilter.parse(text).matches(row_values(image)) is matches


def test_row_values_leaves_out_a_value_nested_deeper_than_the_parser_goes() -> None:
    deep = "[" * 5_000 + "]" * 5_000

    assert row_values('{"id": "r1", "data": ' + deep + ', "version": 1.5}') == {
        "id": "r1",
        "version": Decimal("1.5"),
    }


def test_a_missing_data_never_matches_though_its_null_is_json() -> None:
    assert RowFilter.parse("data=neq.1").matches(row(data=None))
    assert not RowFilter.parse("data=neq.1").matches(without("data"))
    assert not RowFilter.parse("data=eq.null").matches(without("data"))


def test_matching_ignores_the_other_columns() -> None:
    matching = row(data=None, enriching_columns=None, created_at=None)
    assert RowFilter.parse("id=eq.r2").matches(matching)
    assert RowFilter.parse("id=eq.r2").matches({"id": "r2"})


@pytest.mark.parametrize(
    ("stored", "condition"),
    [
        # Past Python's datetime: ordered as Postgres orders them, not unmatched.
        ("10000-01-01T01:00:00+01:00", "gt.9999-12-31T23:59:59.999999Z"),
        ("10000-01-01T01:00:00+01:00", "lt.9999-12-31T23:00:00-01:00:01"),
        ("10000-01-01T01:00:00+01:00", "eq.10000-01-01T00:00:00Z"),
        ("0044-03-15T00:00:00+00:19:32 BC", "lt.0001-01-01T00:00:00Z"),
        ("0044-03-15T00:00:00+00:19:32 BC", "neq.0044-03-15T00:00:00Z"),
        ("0001-12-31T23:00:00+00:00 BC", "eq.0001-01-01T05:00:00+06:00"),
        ("1900-01-01T00:19:32+00:19:32", "eq.1900-01-01T00:00:00Z"),
        ("infinity", "gt.9999-12-31"),
        ("infinity", "eq.infinity"),
        ("-infinity", "lt.0001-01-01T00:00:00 BC"),
        ("-infinity", "in.(infinity,-infinity)"),
        ("2026-11-26T10:00:00+00:00", "lt.infinity"),
    ],
)
def test_a_row_timestamp_beyond_python_compares_as_in_postgres(stored: str, condition: str) -> None:
    assert RowFilter.parse("created_at=" + condition).matches(row(created_at=stored))


def test_a_row_offset_east_of_utc_still_compares_as_an_instant() -> None:
    east = timezone(timedelta(hours=14))
    stored = T0_AT.astimezone(east).isoformat()

    assert stored.endswith("+14:00")
    assert RowFilter.parse("created_at=eq." + T0).matches(row(created_at=stored))


# The grammar shared with published tables (filter_syntax): what rows refuse or accept.


@pytest.mark.parametrize(
    "text",
    [
        "id=ilike.r%",
        "id=match.^r",
        "id=imatch.^R",
        "id=isdistinct.r1",
        "version=is.null",
        "id=not.in.(r1)",
    ],
)
def test_operators_of_published_tables_are_refused_on_rows(text: str) -> None:
    assert "use eq, neq, lt, lte, gt, gte or in" in refused(text)


def test_an_in_list_on_rows_takes_at_most_100_values() -> None:
    values = ",".join(f"r{n}" for n in range(100))

    assert len(RowFilter.parse(f"id=in.({values})").values) == 100
    assert "lists more than 100 values" in refused(f"id=in.({values},r100)")


def test_a_blank_filter_is_no_filter_and_spaces_after_commas_are_dropped() -> None:
    assert parse_filters("  ") == ()
    assert parse_filters("table_id=eq.t1, id=eq.r1") == (
        RowFilter("table_id", "eq", ("t1",)),
        RowFilter("id", "eq", ("r1",)),
    )
    with pytest.raises(FilterError, match="has an empty condition"):
        parse_filters("table_id=eq.t1,")
