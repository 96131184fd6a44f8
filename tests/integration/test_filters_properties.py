"""Property: a filter on ``rows``, decided in Python, matches what Postgres matches.

:mod:`broadcaster.protocols.filters` claims Postgres' semantics for the
columns of ``rows``, text compared as in the ``C`` collation. For random rows
and a random filter (column, operator, values written as docs/supabase.md
"Filters" says), :meth:`RowFilter.matches` on the row as a client gets it
(``to_jsonb(row)`` with its ``version``, read by :func:`row_values` as the
server reads it) must be what Postgres answers to the
predicate written here by hand (``r.id COLLATE "C" < 'b'``, ``r.data =
'{"a":1}'::jsonb``), true and nothing else; and the filter must parse,
unless the docs refuse it (``lt`` on ``data``, ``in`` on
``enriching_columns``, an empty ``table_id``).

Rows are written in a session whose time zone is Amsterdam's, whose offsets
before 1937 were +00:19:32, as a writer's may be; Postgres reads the filter's
timestamps in UTC, as the docs say they are read.
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

from broadcaster.core.changes import with_version
from broadcaster.exceptions import FilterError
from broadcaster.protocols.filters import parse_filters, row_values
from tests.support import pgvalues as pv
from tests.support.database import Databases
from tests.support.loops import failing_on_loop_exceptions
from tests.support.timeouts import seconds

pytestmark = pytest.mark.asyncio(loop_scope="module")

# Each filterable column: its type, its SQL in the check (text compared in
# the C collation, as the module claims), the values a row holds and those a
# filter gives.
_TEXT = ("text", pv.texts, pv.texts)
_INSTANT = ("timestamptz", pv.timestamps_beyond, pv.iso_timestamps())
COLUMNS: dict[str, tuple[str, str, st.SearchStrategy[str], st.SearchStrategy[str]]] = {
    "id": (_TEXT[0], 'r.id COLLATE "C"', _TEXT[1], _TEXT[2]),
    "table_id": (_TEXT[0], 'r.table_id COLLATE "C"', _TEXT[1], _TEXT[2]),
    "version": ("int8", "v.version", pv.int8s, pv.int8s),
    "created_at": (_INSTANT[0], "r.created_at", _INSTANT[1], _INSTANT[2]),
    "updated_at": (_INSTANT[0], "r.updated_at", _INSTANT[1], _INSTANT[2]),
    "data": ("jsonb", "r.data", pv.json_texts, pv.json_texts),
    "enriching_columns": (
        "text[]",
        'r.enriching_columns COLLATE "C"',
        pv.array_literals(),
        pv.array_literals(),
    ),
}
_COMPARISONS = {"eq": "=", "neq": "<>", "lt": "<", "lte": "<=", "gt": ">", "gte": ">="}
OPERATORS = (*_COMPARISONS, "in")


@dataclass(frozen=True)
class Pools:
    writer: asyncpg.Pool
    reader: asyncpg.Pool


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def pools(databases: Databases, migrated_template: str) -> AsyncIterator[Pools]:
    dsn = await asyncio.to_thread(databases.create, migrated_template)
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
            max_size=1,
            server_settings={"TimeZone": "UTC", "statement_timeout": timeout},
        )
        try:
            yield Pools(writer, reader)
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


def predicate(column: str, op: str, values: list[str]) -> str:
    """The filter's condition as SQL, written from the operator's meaning in the docs."""
    type_, sql = COLUMNS[column][:2]
    if op == "in":
        return f"{sql} IN ({', '.join(f'{pv.literal(v)}::{type_}' for v in values)})"
    return f"{sql} {_COMPARISONS[op]} {pv.literal(values[0])}::{type_}"


def refused(column: str, op: str, values: list[str]) -> bool:
    """Whether the docs refuse the filter: no order on data, no in on enriching_columns,
    no empty table_id to route to."""
    return (
        (column == "data" and op in ("lt", "lte", "gt", "gte"))
        or (column == "enriching_columns" and op == "in")
        or (column == "table_id" and op in ("eq", "in") and "" in values)
    )


_ROWS = st.lists(
    st.fixed_dictionaries(
        {name: spec[2] for name, spec in COLUMNS.items() if name != "version"}
        | {"version": st.integers(1, 2**63 - 1).map(str)}
    ),
    min_size=1,
    max_size=4,
    unique_by=lambda row: row["id"],
)
_INSERT = """INSERT INTO rows (id, table_id, data, enriching_columns, created_at, updated_at)
VALUES ($1, $2, $3::text::jsonb, $4::text::text[], $5::text::timestamptz, $6::text::timestamptz)"""


@settings(
    max_examples=400,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(data=st.data())
async def test_python_matches_what_postgres_matches(pools: Pools, data: st.DataObject) -> None:
    rows = data.draw(_ROWS, label="rows")
    column = data.draw(st.sampled_from(list(COLUMNS)), label="column")
    op = data.draw(st.sampled_from(OPERATORS), label="operator")
    values = COLUMNS[column][3]
    # Values the rows hold too, so that eq and in find matches.
    values = st.sampled_from([row[column] for row in rows]) | values
    if op == "in":
        chosen = data.draw(st.lists(values, min_size=1, max_size=4), label="values")
        written = data.draw(pv.in_list(chosen), label="written")
    else:
        chosen = [data.draw(values.filter(pv.writable), label="value")]
        written = pv.filter_value(chosen[0])
    text = f"{column}={op}.{written}"

    if refused(column, op, chosen):
        with pytest.raises(FilterError):
            parse_filters(text)
        return
    filters = parse_filters(text)

    ids = [row["id"] for row in rows]
    versions = [int(row["version"]) for row in rows]
    async with pools.writer.acquire() as connection, connection.transaction():
        await connection.execute("DELETE FROM rows")
        await connection.executemany(
            _INSERT,
            [
                (
                    row["id"],
                    row["table_id"],
                    row["data"],
                    row["enriching_columns"],
                    row["created_at"],
                    row["updated_at"],
                )
                for row in rows
            ],
        )
        images = {
            record[0]: record[1]
            for record in await connection.fetch("SELECT r.id, to_jsonb(r.*)::text FROM rows AS r")
        }
    expected = {
        record[0]: record[1]
        for record in await pools.reader.fetch(
            f"""SELECT r.id, ({predicate(column, op, chosen)}) IS TRUE
            FROM rows AS r JOIN unnest($1::text[], $2::int8[]) AS v(id, version) ON v.id = r.id""",
            ids,
            versions,
        )
    }
    decided = {}
    for key, version in zip(ids, versions, strict=True):
        row = row_values(with_version(images[key], version))
        decided[key] = all(row_filter.matches(row) for row_filter in filters)
    assert decided == expected, (text, images)
