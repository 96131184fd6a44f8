"""Unit tests for broadcaster.protocols.filter_sql: filters on published tables compiled to SQL.

What the SQL decides is tested against Postgres in tests/integration/test_filtering.py;
these tests pin what can be seen without it: quoting, parameters, statement texts.
"""

from __future__ import annotations

import pytest

from broadcaster.core.published import Column, PublishedTable
from broadcaster.exceptions import FilterError
from broadcaster.protocols.filter_sql import (
    ALWAYS,
    array_literal,
    cast_type,
    check_columns,
    evaluation,
    quote_identifier,
    validation,
)
from broadcaster.protocols.filter_syntax import parse

TODOS = PublishedTable(
    "public",
    "todos",
    (
        Column("id", "bigint", "int8"),
        Column("title", "character varying(20)", "varchar"),
        Column("tags", "text[]", "_text"),
        Column("done", "boolean", "bool"),
        Column('we"ird', "public.mood", "mood"),
    ),
    ("id",),
)


@pytest.mark.parametrize(
    ("type_name", "cast"),
    [
        ("bigint", "bigint"),
        ("text", "text"),
        ("character varying(20)", "character varying"),
        ("character varying", "character varying"),
        ("character(5)", "bpchar"),
        ("bpchar", "bpchar"),
        ('"char"', '"char"'),
        ("numeric(10,2)", "numeric"),
        ("numeric(10,2)[]", "numeric[]"),
        ("character(3)[]", "bpchar[]"),
        ("timestamp(3) with time zone", "timestamp with time zone"),
        ("time(2) without time zone", "time without time zone"),
        ("interval(2)", "interval"),
        ("interval day to second(3)", "interval"),
        ("interval year to month[]", "interval[]"),
        ("bit(3)", '"bit"'),
        ('"bit"', '"bit"'),
        ("bit varying(4)", "bit varying"),
        ("public.mood", "public.mood"),
        ('"My Schema"."My(Type)"', '"My Schema"."My(Type)"'),
        ("public.geometry(Point,4326)", "public.geometry"),
        ("text[]", "text[]"),
    ],
)
def test_a_value_is_cast_to_the_columns_type_without_its_modifier(
    type_name: str, cast: str
) -> None:
    assert cast_type(type_name) == cast


@pytest.mark.parametrize(
    ("values", "literal"),
    [
        ((), "{}"),
        (("a",), '{"a"}'),
        (("a,b", "NULL", " x ", ""), '{"a,b","NULL"," x ",""}'),
        (('say "hi"', "back\\slash", "{}"), '{"say \\"hi\\"","back\\\\slash","{}"}'),
    ],
)
def test_in_values_travel_as_an_array_literal_where_each_is_quoted(
    values: tuple[str, ...], literal: str
) -> None:
    assert array_literal(values) == literal


def test_identifiers_are_double_quoted() -> None:
    assert quote_identifier("id") == '"id"'
    assert quote_identifier('we"ird') == '"we""ird"'


def test_a_column_the_table_lacks_is_refused_with_the_columns_it_has() -> None:
    with pytest.raises(FilterError) as caught:
        check_columns(TODOS, parse("id=eq.1,titel=eq.x"))

    assert str(caught.value) == (
        "filter 'titel=eq.x' on public.todos names unknown column 'titel': "
        'public.todos has id, title, tags, done, we"ird'
    )
    with pytest.raises(FilterError, match="unknown column 'ID'"):
        validation(TODOS, parse("ID=eq.1"))
    with pytest.raises(FilterError, match="unknown column 'x'"):
        evaluation(TODOS, [parse("id=eq.1"), parse("x=eq.1")])


@pytest.mark.parametrize(
    ("text", "predicate"),
    [
        ("id=eq.1", '(v.r)."id" = ($1::text)::bigint'),
        ("id=neq.1", '(v.r)."id" <> ($1::text)::bigint'),
        ("id=lt.1", '(v.r)."id" < ($1::text)::bigint'),
        ("id=lte.1", '(v.r)."id" <= ($1::text)::bigint'),
        ("id=gt.1", '(v.r)."id" > ($1::text)::bigint'),
        ("id=gte.1", '(v.r)."id" >= ($1::text)::bigint'),
        ("id=isdistinct.1", '(v.r)."id" IS DISTINCT FROM ($1::text)::bigint'),
        ("id=in.(1,2)", '(v.r)."id" = ANY(($1::text)::text[]::bigint[])'),
        (
            "tags=in.({a})",
            '(v.r)."tags" IN (SELECT x::text[] FROM unnest(($1::text)::text[]) AS x)',
        ),
        ("title=like.a%", '(v.r)."title" LIKE ($1::text)'),
        ("title=ilike.a%", '(v.r)."title" ILIKE ($1::text)'),
        ("title=match.^a", '(v.r)."title" ~ ($1::text)'),
        ("title=imatch.^a", '(v.r)."title" ~* ($1::text)'),
        ("done=is.null", '(v.r)."done" IS NULL'),
        ("done=is.true", '(v.r)."done" IS TRUE'),
        ("done=is.false", '(v.r)."done" IS FALSE'),
        ("done=is.unknown", '(v.r)."done" IS UNKNOWN'),
        ("done=not.is.null", 'NOT ((v.r)."done" IS NULL)'),
        ("title=eq.x", '(v.r)."title" = ($1::text)::character varying'),
        ('we"ird=not.eq.ok', 'NOT ((v.r)."we""ird" = ($1::text)::public.mood)'),
    ],
)
def test_each_operator_compiles_to_its_sql_with_the_value_as_a_parameter(
    text: str, predicate: str
) -> None:
    statement = validation(TODOS, parse(text))

    assert statement.sql.startswith(f"SELECT {predicate}")
    assert statement.sql.endswith('\nFROM (SELECT NULL::"public"."todos" AS r) AS v')


@pytest.mark.parametrize(
    ("text", "args"),
    [
        ("id=eq.1", ("1",)),
        ("title=eq.x'); DROP TABLE todos; --", ("x'); DROP TABLE todos; --",)),
        ('id=in.(1,"2,3")', ('{"1","2,3"}',)),
        ("done=is.true", ()),
        ("id=eq.1,title=like.a%,done=is.null,title=match.b", ("1", "a%", "b")),
    ],
)
def test_values_are_parameters_never_sql(text: str, args: tuple[str, ...]) -> None:
    statement = validation(TODOS, parse(text))

    assert statement.args == args
    assert "DROP" not in statement.sql


@pytest.mark.parametrize(
    ("text", "check"),
    [
        ("id=eq.1", "(($1::text)::bigint) IS NULL"),
        ("id=isdistinct.1", "(($1::text)::bigint) IS NULL"),
        ("id=in.(1)", "(($1::text)::text[]::bigint[]) IS NULL"),
        ("tags=in.({a})", "(SELECT count(x::text[]) FROM unnest(($1::text)::text[]) AS x)"),
        ("title=match.^a", "'' ~ ($1::text)"),
        ("title=not.imatch.^a", "'' ~* ($1::text)"),
    ],
)
def test_validation_casts_each_value_and_compiles_each_regex(text: str, check: str) -> None:
    # The predicate alone would not look at a value on a null column.
    assert f", {check}\nFROM" in validation(TODOS, parse(text)).sql


def test_validation_of_no_value_only_resolves_the_predicate() -> None:
    assert validation(TODOS, parse("done=is.true")).sql.startswith(
        'SELECT (v.r)."done" IS TRUE\nFROM'
    )
    assert validation(TODOS, parse("title=like.a")).sql.startswith(
        'SELECT (v.r)."title" LIKE ($1::text)\nFROM'
    )


def test_evaluation_shares_one_branch_per_shape_and_passes_values_as_arrays() -> None:
    statement = evaluation(
        TODOS,
        [parse("id=eq.1"), parse("id=eq.2"), parse("done=is.true"), parse("id=eq.1")],
    )

    assert statement.sql == (
        "WITH e AS MATERIALIZED (\n"
        '    SELECT u.i, jsonb_populate_record(NULL::"public"."todos", u.image::jsonb) AS r\n'
        "    FROM unnest($1::text[]) WITH ORDINALITY AS u(image, i)\n"
        ")\n"
        "SELECT s.j, e.i FROM e, unnest($2::int4[]) AS s(j)\n"
        'WHERE (e.r)."done" IS TRUE\n'
        "UNION ALL\n"
        "SELECT s.j, e.i FROM e, unnest($3::int4[], $4::text[]) AS s(j, v0)\n"
        'WHERE (e.r)."id" = (s.v0)::bigint'
    )
    assert statement.args == ([2], [0, 1], ["1", "2"])
    # The fourth set is the first: decided once.
    assert statement.sets == (0, 1, 2, 0)


def test_the_statement_text_depends_on_the_shapes_not_on_values_or_order() -> None:
    one = evaluation(TODOS, [parse("id=gt.1,title=not.in.(a,b)"), parse("done=is.false")])
    other = evaluation(
        TODOS,
        [
            parse("done=is.false"),
            parse("title=not.in.(c),id=gt.7"),
            parse("id=gt.9,title=not.in.(d)"),
        ],
    )

    assert one.sql == other.sql
    assert other.args == ([0], [1, 2], ["7", "9"], ['{"c"}', '{"d"}'])
    assert (
        evaluation(TODOS, [parse("done=is.true")]).sql
        != evaluation(TODOS, [parse("done=is.false")]).sql
    )


def test_a_set_of_the_same_clauses_in_another_order_is_the_same_set() -> None:
    statement = evaluation(TODOS, [parse("id=gt.1,id=lt.9"), parse("id=lt.9, id=gt.1")])

    assert statement.sets == (0, 0)


def test_a_set_without_clauses_matches_every_image_without_a_statement() -> None:
    statement = evaluation(TODOS, [(), ()])

    assert statement.sql == ""
    assert statement.sets == (ALWAYS, ALWAYS)
    assert statement.decide((), 2) == [(True, True), (True, True)]


def test_decide_reads_the_matches_per_image_and_set() -> None:
    statement = evaluation(TODOS, [parse("id=eq.1"), (), parse("id=eq.2"), parse("id=eq.1")])

    # Rows (j, i): set 0 (id=eq.1) matched image 1, set 1 (id=eq.2) image 3.
    assert statement.decide([(0, 1), (1, 3)], 4) == [
        (True, True, False, True),
        (False, True, False, False),
        (False, True, True, False),
        (False, True, False, False),
    ]
    assert statement.decide((), 0) == []
