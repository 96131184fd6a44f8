"""Property: a filter on a published table matches exactly the rows Postgres says it matches.

For random rows of a table with a column of each type and a random filter
(column, operator, ``not.`` or not, values written as docs/supabase.md
"Filters" says), the server's decision (:func:`filtering.evaluate` on each
row's ``to_jsonb`` image, as the change log holds it) must be what Postgres
answers to the predicate written here by hand on the row itself (``SELECT
num < '1.5'::numeric FROM props``), true and nothing else. A filter that
``validate`` refuses must be one the docs say is refused (a pattern operator
on a column that is not text, ``is.true`` on one that is not boolean, a
regular expression Postgres does not compile); the grammar must refuse a
``like`` pattern ending with its escape character, and nothing else.

Rows are written in a session whose time zone is Amsterdam's, whose offsets
before 1937 were +00:19:32, as a writer's may be; filters are checked and
decided in UTC, as the server's sessions are.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass

import asyncpg
import pytest
import pytest_asyncio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from broadcaster.core.published import PublishedTable
from broadcaster.exceptions import FilterError
from broadcaster.postgres.catalog import relation
from broadcaster.postgres.filtering import evaluate, validate
from broadcaster.protocols.filter_syntax import IS_VALUES, OPERATORS, parse
from tests.support import pgvalues as pv
from tests.support.database import Databases
from tests.support.loops import failing_on_loop_exceptions
from tests.support.timeouts import seconds

pytestmark = pytest.mark.asyncio(loop_scope="module")

LABELS = ("sad", "ok", "happy", "a,b", "Zz", "é")
SCHEMA = f"""
CREATE TYPE mood AS ENUM ({", ".join(pv.literal(label) for label in LABELS)});
CREATE TABLE props (
    id int4 PRIMARY KEY,
    i4 int4,
    i8 int8,
    num numeric,
    txt text,
    flag bool,
    ref uuid,
    at timestamptz,
    day date,
    doc jsonb,
    tags text[],
    mood mood
);
"""

# A jsonb column holding JSON null is logged as null, as an SQL null is
# (to_jsonb cannot tell them apart): filters see an SQL null, as on Supabase
# (docs/supabase.md). Rows here hold every other JSON value.
_DOCS = pv.json_texts.filter(lambda text: text != "null")

COLUMNS: dict[str, tuple[str, st.SearchStrategy[str]]] = {
    "i4": ("int4", pv.int4s),
    "i8": ("int8", pv.int8s),
    "num": ("numeric", pv.numerics),
    "txt": ("text", pv.texts),
    "flag": ("bool", pv.booleans),
    "ref": ("uuid", pv.uuids),
    "at": ("timestamptz", pv.timestamps_beyond),
    "day": ("date", pv.dates),
    "doc": ("jsonb", _DOCS),
    "tags": ("text[]", pv.array_literals()),
    "mood": ("mood", st.sampled_from(LABELS)),
}
_COMPARISONS = {"eq": "=", "neq": "<>", "lt": "<", "lte": "<=", "gt": ">", "gte": ">="}
_PATTERNS = {"like": "LIKE", "ilike": "ILIKE", "match": "~", "imatch": "~*"}
_LIKE_PATTERNS = st.text(st.sampled_from(list("aAbé%_\\ ,")), max_size=5)
_REGEXES = st.text(st.sampled_from(list("aAbé.*+?^$[](){}|1\\,")), max_size=5)


@dataclass(frozen=True)
class Pools:
    writer: asyncpg.Pool
    reader: asyncpg.Pool
    table: PublishedTable


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def pools(databases: Databases) -> AsyncIterator[Pools]:
    dsn = await asyncio.to_thread(databases.create)
    timeout = str(int(seconds(10) * 1000))
    try:
        writer = await asyncpg.create_pool(
            dsn,
            min_size=1,
            max_size=1,
            server_settings={"TimeZone": "Europe/Amsterdam", "statement_timeout": timeout},
        )
        reader = await asyncpg.create_pool(
            dsn,
            min_size=1,
            max_size=2,
            server_settings={"TimeZone": "UTC", "statement_timeout": timeout},
        )
        try:
            await writer.execute(SCHEMA)
            found = await relation(reader, "public.props")
            assert found is not None
            yield Pools(writer, reader, found.table)
        finally:
            await writer.close()
            await reader.close()
    finally:
        await databases.drop(dsn)


@pytest_asyncio.fixture(loop_scope="module")
async def _fail_on_loop_exceptions() -> AsyncIterator[None]:
    """tests/conftest.py's check, on this module's loop, where the pools run."""
    async with failing_on_loop_exceptions():
        yield


def predicate(column: str, type_: str, op: str, values: list[str]) -> str:
    """The filter's condition as SQL, written from the operator's meaning in the docs."""
    if op in _COMPARISONS:
        return f"{column} {_COMPARISONS[op]} {pv.literal(values[0])}::{type_}"
    if op == "in":
        return f"{column} IN ({', '.join(f'{pv.literal(v)}::{type_}' for v in values)})"
    if op == "isdistinct":
        return f"{column} IS DISTINCT FROM {pv.literal(values[0])}::{type_}"
    if op in _PATTERNS:
        return f"{column} {_PATTERNS[op]} {pv.literal(values[0])}"
    return f"{column} IS {values[0].upper()}"


def ends_with_escape(pattern: str) -> bool:
    """An odd run of backslashes at the end: the last one escapes nothing."""
    return (len(pattern) - len(pattern.rstrip("\\"))) % 2 == 1


async def compiles(pool: asyncpg.Pool, op: str, regex: str) -> bool:
    try:
        await pool.fetchval(f"SELECT '' {_PATTERNS[op]} {pv.literal(regex)}")
    except asyncpg.InvalidRegularExpressionError:
        return False
    return True


_INSERT = "INSERT INTO props VALUES ($1, {})".format(
    ", ".join(f"${n}::text::{type_}" for n, (type_, _) in enumerate(COLUMNS.values(), start=2))
)
_ROWS = st.lists(
    st.fixed_dictionaries({name: st.none() | values for name, (_, values) in COLUMNS.items()}),
    min_size=1,
    max_size=4,
)


@settings(
    max_examples=400,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(data=st.data())
async def test_the_server_matches_what_postgres_matches(pools: Pools, data: st.DataObject) -> None:
    rows = data.draw(_ROWS, label="rows")
    op = data.draw(st.sampled_from(OPERATORS), label="operator")
    # Most pattern and is filters on the one column that takes them: the
    # others are refused, which takes an example but tests little.
    usual = {"like": "txt", "ilike": "txt", "match": "txt", "imatch": "txt", "is": "flag"}
    columns = list(COLUMNS) + [usual[op]] * len(COLUMNS) if op in usual else list(COLUMNS)
    column = data.draw(st.sampled_from(columns), label="column")
    negated = data.draw(st.booleans(), label="negated")
    type_, values = COLUMNS[column]
    held = [value for row in rows if (value := row[column]) is not None]
    if held:
        # Values the rows hold, so that eq, in and the like find matches.
        values = st.sampled_from(held) | values
    if op == "is":
        chosen = [data.draw(st.sampled_from(IS_VALUES), label="value")]
        written = chosen[0]
    elif op == "in":
        chosen = data.draw(st.lists(values, min_size=1, max_size=4), label="values")
        written = data.draw(pv.in_list(chosen), label="written")
    else:
        if op in ("like", "ilike"):
            values = values | _LIKE_PATTERNS
        elif op in ("match", "imatch"):
            values = values | _REGEXES
        chosen = [data.draw(values.filter(pv.writable), label="value")]
        written = pv.filter_value(chosen[0])
    text = f"{column}={'not.' if negated else ''}{op}.{written}"

    if op in ("like", "ilike") and ends_with_escape(chosen[0]):
        with pytest.raises(FilterError, match="ends its pattern with the escape character"):
            parse(text)
        return
    clauses = parse(text)
    refused = (
        (op in _PATTERNS and type_ != "text")
        or (op == "is" and chosen[0] != "null" and type_ != "bool")
        or (op in ("match", "imatch") and not await compiles(pools.reader, op, chosen[0]))
    )
    if refused:
        with pytest.raises(FilterError):
            await validate(pools.reader, pools.table, clauses)
        return
    await validate(pools.reader, pools.table, clauses)

    async with pools.writer.acquire() as connection, connection.transaction():
        await connection.execute("DELETE FROM props")
        await connection.executemany(
            _INSERT, [(key, *(row[name] for name in COLUMNS)) for key, row in enumerate(rows)]
        )
        images = [
            record[0]
            for record in await connection.fetch(
                "SELECT to_jsonb(t.*)::text FROM props AS t ORDER BY t.id"
            )
        ]
    condition = predicate(column, type_, op, chosen)
    if negated:
        condition = f"NOT ({condition})"
    expected = [
        record[0]
        for record in await pools.reader.fetch(
            f"SELECT ({condition}) IS TRUE FROM props ORDER BY id"
        )
    ]
    decided = [
        matched for (matched,) in await evaluate(pools.reader, pools.table, [clauses], images)
    ]
    assert decided == expected, (text, condition, images)
