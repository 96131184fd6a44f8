"""Supabase filters on a published table, checked and decided by a real Postgres.

A table of many column types holds four rows; the images the filters are
decided on are theirs as the change log holds them (``to_jsonb(row)``).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from typing import Any

import asyncpg
import pytest
import pytest_asyncio

from broadcaster.core.published import Column, PublishedTable
from broadcaster.exceptions import DatabaseError, FilterError
from broadcaster.postgres.filtering import evaluate, validate
from broadcaster.protocols.filter_sql import quote_identifier
from broadcaster.protocols.filter_syntax import Clause, parse
from tests.support.database import Databases
from tests.support.timeouts import seconds

pytestmark = pytest.mark.asyncio(loop_scope="module")

SCHEMA = """
CREATE TYPE mood AS ENUM ('sad', 'ok', 'happy');
CREATE DOMAIN positive AS int4 CHECK (VALUE > 0);
CREATE DOMAIN label AS text NOT NULL CHECK (VALUE <> '');
CREATE TABLE things (
    id int8 PRIMARY KEY,
    n int4,
    price numeric(10,2),
    done bool,
    title text,
    code varchar(5),
    ref uuid,
    at timestamptz,
    day date,
    doc jsonb,
    meta json,
    tags text[],
    nums int[],
    mood mood,
    qty positive,
    tag label
);
INSERT INTO things VALUES
    (1, 1, 1.50, true, 'Apple pie', 'abcde', '00000000-0000-0000-0000-000000000001',
     '2026-11-26 10:00:00+00', '2026-11-26', '{"a": 1, "b": [true, "x"]}', '{}',
     '{a,b}', '{1,2}', 'happy', 3, 'one'),
    (2, 2, 10.00, false, 'banana', 'xy', '00000000-0000-0000-0000-000000000002',
     '2026-11-26 12:00:00+02', '2026-11-27', '{"a": 2}', '{}',
     '{"b c"}', '{}', 'sad', 10, 'two'),
    (3, 10, 2.25, NULL, '100% a_b', 'abc', NULL,
     '2026-11-27 00:00:00+00', NULL, '"x"', NULL,
     '{}', '{3}', 'ok', 4, 'three'),
    (4, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL,
     'four');
"""
CITEXT = """
ALTER TABLE things ADD COLUMN ci citext;
UPDATE things SET ci = CASE id WHEN 1 THEN 'Hello' WHEN 2 THEN 'WORLD' END;
"""
# A schema, a table, a column and a type whose names need quoting.
ODD = '''
CREATE SCHEMA "My App";
CREATE TYPE "My App"."Mood Type" AS ENUM ('up', 'down');
CREATE TABLE "My App"."Odd ""Things""" (
    "Full, Name" text PRIMARY KEY,
    "Mood" "My App"."Mood Type"
);
INSERT INTO "My App"."Odd ""Things""" VALUES ('Ann, B', 'up'), ('x"y', 'down');
'''


async def published(pool: asyncpg.Pool, schema: str, name: str) -> PublishedTable:
    """The table as the server's catalog would describe it."""
    columns = await pool.fetch(
        """SELECT a.attname, format_type(a.atttypid, a.atttypmod), t.typname
        FROM pg_attribute AS a JOIN pg_type AS t ON t.oid = a.atttypid
        WHERE a.attrelid = (quote_ident($1) || '.' || quote_ident($2))::regclass
            AND a.attnum > 0 AND NOT a.attisdropped
        ORDER BY a.attnum""",
        schema,
        name,
    )
    return PublishedTable(
        schema, name, tuple(Column(row[0], row[1], row[2]) for row in columns), (columns[0][0],)
    )


async def images(pool: asyncpg.Pool, table: PublishedTable) -> list[str]:
    """The table's rows as the change log holds them, in key order."""
    qualified = f"{quote_identifier(table.schema)}.{quote_identifier(table.name)}"
    key = quote_identifier(table.key[0])
    # t.*: a bare t would be the table's own column t, where it has one.
    rows = await pool.fetch(f"SELECT to_jsonb(t.*)::text FROM {qualified} AS t ORDER BY t.{key}")
    return [row[0] for row in rows]


async def connected(dsn: str) -> asyncpg.Pool:
    """A pool on ``dsn`` with the table made, in UTC as the server's sessions are."""
    settings = {"TimeZone": "UTC", "statement_timeout": str(int(seconds(10) * 1000))}
    pool = await asyncpg.create_pool(dsn, min_size=1, max_size=2, server_settings=settings)
    await pool.execute(SCHEMA)
    if await pool.fetchval("SELECT 1 FROM pg_available_extensions WHERE name = 'citext'"):
        await pool.execute("CREATE EXTENSION citext")
        await pool.execute(CITEXT)
    return pool


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def pool(databases: Databases) -> AsyncIterator[asyncpg.Pool]:
    """One database for the tests that only read: a database per case took 50 s."""
    dsn = await asyncio.to_thread(databases.create)
    try:
        pool = await connected(dsn)
        try:
            yield pool
        finally:
            await pool.close()
    finally:
        await databases.drop(dsn)


@pytest_asyncio.fixture(loop_scope="module")
async def own_pool(databases: Databases) -> AsyncIterator[asyncpg.Pool]:
    """A database of the test's own, which it may change."""
    dsn = await asyncio.to_thread(databases.create)
    try:
        pool = await connected(dsn)
        try:
            yield pool
        finally:
            await pool.close()
    finally:
        await databases.drop(dsn)


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def things(pool: asyncpg.Pool) -> PublishedTable:
    return await published(pool, "public", "things")


@pytest_asyncio.fixture(loop_scope="module")
async def _fail_on_loop_exceptions() -> AsyncIterator[None]:
    """tests/conftest.py's check, on this module's loop, where the pool runs."""
    loop = asyncio.get_running_loop()
    errors: list[dict[str, Any]] = []
    loop.set_exception_handler(lambda _loop, context: errors.append(context))
    yield
    await asyncio.sleep(0)
    loop.set_exception_handler(None)
    if errors:
        details = "; ".join(f"{ctx.get('message')}: {ctx.get('exception')!r}" for ctx in errors)
        pytest.fail(f"unhandled exceptions on the event loop: {details}")


async def ids_matching(pool: asyncpg.Pool, table: PublishedTable, text: str) -> list[int]:
    """The ids of the rows ``text`` matches, validated first as a join would."""
    clauses = parse(text)
    await validate(pool, table, clauses)
    rows = await pool.fetch("SELECT id, to_jsonb(t)::text FROM things AS t ORDER BY id")
    decided = await evaluate(pool, table, [clauses], [row[1] for row in rows])
    return [row[0] for row, (matched,) in zip(rows, decided, strict=True) if matched]


# Rows: 1 Apple pie, 2 banana, 3 '100% a_b', 4 all null.
CASES = [
    # int4, int8, numeric: compared as numbers.
    ("n=eq.1", [1]),
    ("n=neq.1", [2, 3]),
    ("n=lt.10", [1, 2]),
    ("n=lte.10", [1, 2, 3]),
    ("n=gt.2", [3]),
    ("n=gte.2", [2, 3]),
    ("n=in.(1,10)", [1, 3]),
    ('n=in.( 2 ,"10")', [2, 3]),
    ("id=gt.3", [4]),
    ("price=eq.1.5", [1]),
    ("price=eq.1.504", []),
    ("price=gt.2", [2, 3]),
    # Negation, and nulls: a null compared is no match, negated or not.
    ("n=not.eq.1", [2, 3]),
    ("n=not.in.(1,2)", [3]),
    ("n=not.gt.1", [1]),
    ("n=isdistinct.1", [2, 3, 4]),
    ("n=not.isdistinct.1", [1]),
    ("n=is.null", [4]),
    ("n=not.is.null", [1, 2, 3]),
    # Booleans.
    ("done=eq.true", [1]),
    ("done=eq.f", [2]),
    ("done=is.true", [1]),
    ("done=is.false", [2]),
    ("done=is.unknown", [3, 4]),
    ("done=not.is.true", [2, 3, 4]),
    ("done=not.is.unknown", [1, 2]),
    ("done=isdistinct.true", [2, 3, 4]),
    # Text: C-collation-independent operators, patterns, regular expressions.
    ("title=eq.banana", [2]),
    ("title=eq.Banana", []),
    ('title=in.("Apple pie","x,y")', [1]),
    ("title=like.%pie", [1]),
    ("title=like.b_nana", [2]),
    ("title=like.100\\%%", [3]),
    ("title=like.%a\\_b", [3]),
    ("title=like.%a_b", [3]),
    ("title=not.like.%a%", [1]),
    ("title=ilike.APPLE%", [1]),
    ("title=match.^[A-Z]", [1]),
    ("title=match.a{2}", []),
    ("title=imatch.^BAN", [2]),
    ("title=not.match.an", [1, 3]),
    ("title=is.null", [4]),
    # varchar(5): the value is not cut to the column's length.
    ("code=eq.abcde", [1]),
    ("code=eq.abcdefg", []),
    ("code=like.ab%", [1, 3]),
    ("code=in.(xy,abc)", [2, 3]),
    # uuid.
    ("ref=eq.00000000-0000-0000-0000-000000000002", [2]),
    ("ref=in.(00000000000000000000000000000001)", [1]),
    # timestamptz compares instants: 12:00+02 is 10:00 UTC.
    ("at=eq.2026-11-26T10:00:00Z", [1, 2]),
    ("at=gt.2026-11-26T11:00:00+01:00", [3]),
    ("at=lt.2026-11-26 10:00:01", [1, 2]),
    # date.
    ("day=gt.2026-11-26", [2]),
    ("day=in.(2026-11-26,2026-11-28)", [1]),
    # jsonb: equal as jsonb is (key order, 1 and 1.0), ordered as jsonb orders.
    ('doc=eq.{"b":[true,"x"],"a":1.0}', [1]),
    ('doc=in.("{\\"a\\": 2}","\\"x\\"")', [2, 3]),
    ('doc=isdistinct.{"a":2}', [1, 3, 4]),
    ('doc=neq."x"', [1, 2]),
    # Arrays: element by element, then by length; in lists arrays, each quoted.
    ("tags=eq.{a,b}", [1]),
    ('tags=eq.{"b c"}', [2]),
    ("tags=gt.{a}", [1, 2]),
    ("tags=eq.{}", [3]),
    ('tags=in.("{\\"b c\\"}","{z}")', [2]),
    ('tags=not.in.("{}")', [1, 2]),
    ("nums=eq.{}", [2]),
    ('nums=in.("{1,2}","{3}")', [1, 3]),
    ("nums=lt.{2}", [1, 2]),
    # An enum, in its declared order (sad, ok, happy).
    ("mood=eq.ok", [3]),
    ("mood=gt.sad", [1, 3]),
    ("mood=lt.happy", [2, 3]),
    ("mood=in.(sad,happy)", [1, 2]),
    # A domain over int4.
    ("qty=gt.3", [2, 3]),
    ("qty=in.(3,4)", [1, 3]),
    # A domain that refuses null (a row of nulls must not be built to check a filter).
    ("tag=eq.two", [2]),
    ("tag=like.t%", [2, 3]),
    # Several conditions, all required.
    ("n=gt.0,title=like.%a%", [2, 3]),
    ("n=gt.0, title=like.%a%,mood=not.eq.ok", [2]),
    ("id=gt.0,id=lt.3", [1, 2]),
]


@pytest.mark.parametrize(("text", "ids"), CASES)
async def test_each_operator_compares_as_postgres_does(
    pool: asyncpg.Pool, things: PublishedTable, text: str, ids: list[int]
) -> None:
    assert await ids_matching(pool, things, text) == ids


@pytest.mark.parametrize(
    ("text", "ids"),
    [
        ("ci=eq.hello", [1]),
        ("ci=in.(world,nobody)", [2]),
        ("ci=like.h%", [1]),
        ("ci=gt.HELLO", [2]),
        ("ci=match.^w", [2]),
    ],
)
async def test_citext_compares_without_case(
    pool: asyncpg.Pool, things: PublishedTable, text: str, ids: list[int]
) -> None:
    if things.column("ci") is None:
        pytest.skip("the citext extension is not available on this Postgres")
    assert await ids_matching(pool, things, text) == ids


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            "id=eq.abc",
            "filter 'id=eq.abc' on public.things: invalid input syntax for type bigint: \"abc\"",
        ),
        (
            "n=gt.1.5",
            "filter 'n=gt.1.5' on public.things: invalid input syntax for type integer: \"1.5\"",
        ),
        (
            "n=in.(1,x)",
            "filter 'n=in.(1,x)' on public.things: invalid input syntax for type integer: \"x\"",
        ),
        ("n=isdistinct.null", 'invalid input syntax for type integer: "null"'),
        ("price=eq.1,5", None),  # two conditions: '5' is not of the form column=operator.value
        ("price=lt.cheap", 'invalid input syntax for type numeric: "cheap"'),
        ("ref=eq.nope", 'invalid input syntax for type uuid: "nope"'),
        ("at=gt.soon", 'invalid input syntax for type timestamp with time zone: "soon"'),
        ("day=eq.2026-02-30", 'date/time field value out of range: "2026-02-30"'),
        ("doc=eq.{", "invalid input syntax for type json"),
        ("tags=eq.a", 'malformed array literal: "a"'),
        ('tags=in.("{a")', 'malformed array literal: "{a"'),
        ("mood=eq.angry", 'invalid input value for enum mood: "angry"'),
        ("qty=eq.0", 'value for domain positive violates check constraint "positive_check"'),
        ("done=eq.maybe", 'invalid input syntax for type boolean: "maybe"'),
        (
            "n=like.1%",
            "filter 'n=like.1%' on public.things: operator does not exist: integer ~~ text: "
            "like takes text columns (text, varchar, char, citext)",
        ),
        ("mood=ilike.h%", "operator does not exist: mood ~~* text: ilike takes text columns"),
        ("tags=match.a", "operator does not exist: text[] ~ text: match takes text columns"),
        (
            "title=is.true",
            "filter 'title=is.true' on public.things: argument of IS TRUE must be type "
            "boolean, not type text: is.true, is.false and is.unknown take boolean columns; "
            "is.null takes any",
        ),
        ("n=not.is.false", "argument of IS FALSE must be type boolean, not type integer"),
        (
            "title=match.(",
            "filter 'title=match.(' on public.things: "
            "invalid regular expression: parentheses () not balanced",
        ),
        ("title=imatch.a{2,1}", "invalid regular expression: invalid repetition count(s)"),
        (
            "meta=eq.{}",
            "filter 'meta=eq.{}' on public.things: operator does not exist: json = json: "
            "public.things.meta cannot be compared with eq",
        ),
        (
            "nope=eq.1",
            "filter 'nope=eq.1' on public.things names unknown column 'nope': public.things has "
            "id, n, price, done, title, code, ref, at, day, doc, meta, tags, nums, mood, qty, tag",
        ),
        # Of several conditions, the one Postgres refuses is named.
        (
            "id=gt.0,mood=eq.angry,n=eq.2",
            "filter 'mood=eq.angry' on public.things: invalid input value for enum mood",
        ),
        ("title=like.a%,done=is.true,n=in.(1,2,x)", "filter 'n=in.(1,2,x)' on public.things"),
    ],
)
async def test_a_filter_postgres_cannot_run_is_refused_with_its_reason(
    pool: asyncpg.Pool, things: PublishedTable, text: str, message: str | None
) -> None:
    with pytest.raises(FilterError) as caught:
        await validate(pool, things, parse(text))

    if message is not None:
        assert message in str(caught.value)
    assert "\n" not in str(caught.value)


async def test_a_value_the_column_never_holds_but_that_casts_is_accepted(
    pool: asyncpg.Pool, things: PublishedTable
) -> None:
    # As in SQL: varchar(5) and numeric(10,2) values are not cut to fit first.
    assert await ids_matching(pool, things, "code=eq.abcdefgh") == []
    assert await ids_matching(pool, things, "price=eq.123456789.123") == []


async def test_in_takes_100_values_and_no_more(pool: asyncpg.Pool, things: PublishedTable) -> None:
    values = ",".join(str(n) for n in range(100))

    assert await ids_matching(pool, things, f"n=in.({values})") == [1, 2, 3]
    with pytest.raises(FilterError, match="lists more than 100 values"):
        parse(f"n=in.({values},100)")


async def test_one_statement_decides_every_set_on_every_image(
    pool: asyncpg.Pool, things: PublishedTable
) -> None:
    statements: list[str] = []

    class Counting:
        async def fetch(self, query: str, *args: object) -> list[asyncpg.Record]:
            statements.append(query)
            return await pool.fetch(query, *args)

    sets: list[Sequence[Clause]] = [
        parse("n=eq.1"),
        parse("n=eq.2"),
        (),
        parse("title=like.%a%,n=gt.1"),
        parse("done=is.unknown"),
        parse("n=gt.1, title=like.%a%"),
        parse("n=eq.1"),
    ]
    decided = await evaluate(Counting(), things, sets, await images(pool, things))

    assert len(statements) == 1
    assert decided == [
        (True, False, True, False, False, False, True),
        (False, True, True, True, False, True, False),
        (False, False, True, True, True, True, False),
        (False, False, True, False, True, False, False),
    ]
    assert await evaluate(Counting(), things, sets, []) == []
    assert await evaluate(Counting(), things, [(), ()], ["{}"]) == [(True, True)]
    assert len(statements) == 1


async def test_the_statement_is_prepared_once_for_other_values(
    pool: asyncpg.Pool, things: PublishedTable
) -> None:
    rows = await images(pool, things)
    count = "SELECT count(*) FROM pg_prepared_statements WHERE statement LIKE 'WITH e AS%'"
    async with pool.acquire() as connection:
        first = await evaluate(connection, things, [parse("n=eq.1"), parse("mood=eq.ok")], rows)
        # The connection may have prepared it for an earlier test: count from here.
        prepared = await connection.fetchval(count)
        second = await evaluate(connection, things, [parse("mood=eq.sad"), parse("n=eq.2")], rows)
        after = await connection.fetchval(count)

    assert [row[0] for row in first] == [True, False, False, False]
    assert [row[1] for row in second] == [False, True, False, False]
    assert prepared >= 1
    assert after == prepared


async def test_names_that_need_quoting(pool: asyncpg.Pool) -> None:
    await pool.execute(ODD)
    table = await published(pool, "My App", 'Odd "Things"')
    rows = await images(pool, table)

    assert table.column("Mood") == Column("Mood", '"My App"."Mood Type"', "Mood Type")
    for text, expected in [
        ("Full\\, Name=eq.Ann\\, B", [True, False]),
        ('Full\\, Name=in.("x\\"y")', [False, True]),
        ("Mood=eq.down", [False, True]),
        ("Mood=not.in.(down)", [True, False]),
    ]:
        clauses = parse(text)
        await validate(pool, table, clauses)
        assert [row[0] for row in await evaluate(pool, table, [clauses], rows)] == expected
    with pytest.raises(FilterError) as caught:
        await validate(pool, table, parse("Mood=eq.sideways"))
    assert str(caught.value) == (
        "filter 'Mood=eq.sideways' on My App.Odd \"Things\": "
        'invalid input value for enum "My App"."Mood Type": "sideways"'
    )


async def test_columns_named_as_the_statements_aliases(own_pool: asyncpg.Pool) -> None:
    # The statements name their rows r, their images u(image, i) and their
    # values s(j, v0): a table's own columns of those names must not shadow
    # them (a column r once failed every read of the table's changes).
    await own_pool.execute(
        "CREATE TABLE shadows (id int8 PRIMARY KEY, r int4, i int4, e text, u text, v text,"
        " s text, j int4, image text, v0 text, t float8);"
        " INSERT INTO shadows VALUES (1, 10, 20, 'e1', 'u1', 'v1', 's1', 30, 'im1', 'x1', 1.5),"
        " (2, 11, 21, 'e2', 'u2', 'v2', 's2', 31, 'im2', 'x2', 2.5)"
    )
    table = await published(own_pool, "public", "shadows")
    rows = await images(own_pool, table)

    for text, expected in [
        ("r=eq.11", [False, True]),
        ("i=eq.20", [True, False]),
        ("e=eq.e2", [False, True]),
        ("u=eq.u1", [True, False]),
        ("v=eq.v2", [False, True]),
        ("s=in.(s1,s2)", [True, True]),
        ("j=gt.30", [False, True]),
        ("image=eq.im1", [True, False]),
        ("v0=eq.x2", [False, True]),
        ("t=lt.2", [True, False]),
        ("r=eq.10,image=eq.im1", [True, False]),
    ]:
        clauses = parse(text)
        await validate(own_pool, table, clauses)
        assert [row[0] for row in await evaluate(own_pool, table, [clauses], rows)] == expected, (
            text
        )


async def test_a_table_that_is_gone_is_a_database_error(own_pool: asyncpg.Pool) -> None:
    things = await published(own_pool, "public", "things")
    await own_pool.execute("DROP TABLE things")

    with pytest.raises(DatabaseError):
        await validate(own_pool, things, parse("n=eq.1"))
    with pytest.raises(DatabaseError):
        await evaluate(own_pool, things, [parse("n=eq.1")], ["{}"])


async def test_an_image_that_no_longer_fits_the_table_is_a_database_error(
    pool: asyncpg.Pool, things: PublishedTable
) -> None:
    with pytest.raises(DatabaseError, match="invalid input syntax for type bigint"):
        await evaluate(pool, things, [parse("n=eq.1")], ['{"id": "not a number"}'])
