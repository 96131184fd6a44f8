"""Unit tests for broadcaster.protocols.filter_syntax: the grammar of postgres_changes filters."""

from __future__ import annotations

import dataclasses

import pytest

from broadcaster.exceptions import FilterError
from broadcaster.protocols.filter_syntax import (
    IS_VALUES,
    MAX_IN_VALUES,
    OPERATORS,
    Clause,
    parse,
    parse_clause,
    split,
)


def refused(text: str) -> str:
    with pytest.raises(FilterError) as caught:
        parse(text)
    message = str(caught.value)
    # One sentence, sent to the client as is.
    assert "\n" not in message
    return message


def test_the_operators_are_supabases() -> None:
    assert OPERATORS == (
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
    assert IS_VALUES == ("null", "true", "false", "unknown")


@pytest.mark.parametrize("op", [o for o in OPERATORS if o not in ("in", "is")])
def test_each_operator_takes_the_rest_as_its_value(op: str) -> None:
    assert parse_clause(f"name={op}.a.b") == Clause("name", op, ("a.b",))


@pytest.mark.parametrize("op", [o for o in OPERATORS if o not in ("in", "is")])
def test_each_operator_is_negated_by_not(op: str) -> None:
    assert parse_clause(f"name=not.{op}.x") == Clause("name", op, ("x",), negated=True)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("status=in.(a,b)", Clause("status", "in", ("a", "b"))),
        ("status=not.in.(a,b)", Clause("status", "in", ("a", "b"), negated=True)),
        ('status=in.("a,b", c )', Clause("status", "in", ("a,b", "c"))),
        # As in a Postgres array, only ASCII whitespace is dropped around a value.
        ("s=in.(\ta\n,\x0bb\x0c,\r c)", Clause("s", "in", ("a", "b", "c"))),
        ("s=in.(\u00a0a\u2003, b)", Clause("s", "in", ("\u00a0a\u2003", "b"))),
        ("s=in.(\u00a0)", Clause("s", "in", ("\u00a0",))),
        ("done=is.null", Clause("done", "is", ("null",))),
        ("done=is.true", Clause("done", "is", ("true",))),
        ("done=is.false", Clause("done", "is", ("false",))),
        ("done=not.is.unknown", Clause("done", "is", ("unknown",), negated=True)),
        ("name=like.a%_b", Clause("name", "like", ("a%_b",))),
        ("name=like.100\\%", Clause("name", "like", ("100\\%",))),
        ("name=like.a\\\\", Clause("name", "like", ("a\\\\",))),
        ("name=match.^a.*(b|c)$", Clause("name", "match", ("^a.*(b|c)$",))),
        ("name=eq.", Clause("name", "eq", ("",))),
        ("name=eq. x ", Clause("name", "eq", (" x ",))),
        ('name=eq."q"', Clause("name", "eq", ('"q"',))),
        ("n=eq.a=b", Clause("n", "eq", ("a=b",))),
        ("not=eq.x", Clause("not", "eq", ("x",))),
        ("n=not.eq.not.x", Clause("n", "eq", ("not.x",), negated=True)),
    ],
)
def test_clauses(text: str, expected: Clause) -> None:
    parsed = parse_clause(text)

    assert parsed == expected
    assert parsed.text == text


def test_a_clause_is_a_frozen_value_whose_text_is_only_for_messages() -> None:
    parsed = parse_clause("id=eq.1")

    assert parsed == Clause("id", "eq", ("1",), text="other")
    assert hash(parsed) == hash(Clause("id", "eq", ("1",)))
    with pytest.raises(dataclasses.FrozenInstanceError):
        parsed.column = "x"  # type: ignore[misc]


@pytest.mark.parametrize(
    ("text", "parts"),
    [
        ("a=eq.1", ("a=eq.1",)),
        ("a=eq.1,b=eq.2", ("a=eq.1", "b=eq.2")),
        ("a=eq.1, b=eq.2", ("a=eq.1", "b=eq.2")),
        (" a=eq.1 ", ("a=eq.1 ",)),
        ("a=in.(1,2),b=eq.2", ("a=in.(1,2)", "b=eq.2")),
        ('a=in.("x,)",2),b=eq.2', ('a=in.("x,)",2)', "b=eq.2")),
        ('a=in.("x\\",y"),b=eq.2', ('a=in.("x\\",y")', "b=eq.2")),
        ('a=eq.{"k":1,"l":2},b=eq.[1,2]', ('a=eq.{"k":1,"l":2}', "b=eq.[1,2]")),
        ("a=eq.x\\,y,b=eq.2", ("a=eq.x,y", "b=eq.2")),
        ('a=eq."x,y",b=eq.2', ('a=eq."x,y"', "b=eq.2")),
        ("a=eq.x),b=eq.2", ("a=eq.x)", "b=eq.2")),
        ("a=eq.1,", ("a=eq.1", "")),
        ("", ()),
        ("   ", ()),
    ],
)
def test_split_keeps_commas_of_values(text: str, parts: tuple[str, ...]) -> None:
    assert split(text) == parts


def test_several_conditions_are_all_kept_in_order() -> None:
    assert parse("id=gt.0, id=lt.100,status=not.in.(a,b)") == (
        Clause("id", "gt", ("0",)),
        Clause("id", "lt", ("100",)),
        Clause("status", "in", ("a", "b"), negated=True),
    )


@pytest.mark.parametrize("text", ["", " ", "\t"])
def test_a_blank_filter_has_no_conditions(text: str) -> None:
    assert parse(text) == ()


def test_in_takes_up_to_100_values() -> None:
    values = [str(n) for n in range(MAX_IN_VALUES)]

    assert MAX_IN_VALUES == 100
    assert parse_clause(f"id=in.({','.join(values)})").values == tuple(values)
    message = refused(f"id=in.({','.join([*values, '100'])})")
    assert "lists more than 100 values" in message
    assert "split them over several bindings" in message


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("id=eq.1,", "has an empty condition: remove the extra comma"),
        (",id=eq.1", "has an empty condition"),
        ("id=eq.1,,b=eq.2", "has an empty condition"),
        ("id=eq.1, ,b=eq.2", "has an empty condition"),
        ("id", "is not of the form column=operator.value, such as id=eq.r1"),
        ("=eq.1", "is not of the form"),
        ("id=eq", "is not of the form"),
        ("id=not.eq", "is not of the form"),
        ("id=not.", "is not of the form"),
        ("id=.1", "is not of the form"),
        (
            "id=foo.1",
            "uses unsupported operator 'foo': use eq, neq, lt, lte, gt, gte, in, like, ilike, "
            "is, match, imatch or isdistinct, each negatable with not.",
        ),
        ("id=EQ.1", "unsupported operator 'EQ'"),
        ("id=cs.{1}", "unsupported operator 'cs'"),
        ("id=not.not.eq.1", "unsupported operator 'not'"),
        ("id=not.foo.1", "unsupported operator 'foo'"),
        ("done=is.nil", "compares with is.nil: use is.null, is.true, is.false or is.unknown"),
        ("done=is.NULL", "compares with is.NULL"),
        ("done=is.", "compares with is."),
        ("done=not.is.1", "compares with is.1"),
        ("a=like.x\\", "ends its pattern with the escape character \\: write \\\\ to match"),
        ("a=ilike.x\\\\\\", "ends its pattern with the escape character"),
        ("a=in.()", "has an empty in list: give at least one value"),
        ("a=in.1", "must list its values in parentheses, such as id=in.(a,b)"),
        ("a=not.in.(1,)", "has an empty value in its in list"),
        ('a=in.("x)', "has an unterminated quoted value"),
        ('a=in.("x"y)', "has text after a quoted value"),
        ('a=in.(x"y")', "has a quote inside an unquoted value"),
    ],
)
def test_what_no_table_could_serve_is_refused_with_what_to_write(text: str, reason: str) -> None:
    assert reason in refused(text)


def test_the_message_quotes_the_condition_not_the_whole_filter() -> None:
    assert refused("a=eq.1,b=foo.2").startswith("filter 'b=foo.2' uses unsupported operator")


def test_a_pattern_may_end_with_an_escaped_backslash_or_percent() -> None:
    assert parse_clause("a=like.x\\\\").values == ("x\\\\",)
    assert parse_clause("a=like.x\\%").values == ("x\\%",)
    # match is a regular expression, where a trailing backslash is Postgres' to refuse.
    assert parse_clause("a=match.x\\").values == ("x\\",)


def test_a_caller_serves_some_operators_and_may_refuse_negation() -> None:
    served = ("eq", "in")

    assert parse_clause("a=in.(1)", served, negatable=False) == Clause("a", "in", ("1",))
    with pytest.raises(FilterError, match=r"unsupported operator 'like': use eq or in$"):
        parse_clause("a=like.x", served, negatable=False)
    with pytest.raises(FilterError, match=r"unsupported operator 'not': use eq or in$"):
        parse_clause("a=not.eq.x", served, negatable=False)
    with pytest.raises(FilterError, match="unsupported operator 'cs'"):
        parse_clause("a=cs.x", ("eq", "cs"))
