"""The read statement against a real Postgres: requests for one table and for every table."""

from __future__ import annotations

from collections.abc import AsyncIterator

import asyncpg
import pytest

from broadcaster.feed import Request
from broadcaster.queries import ChangeReader

pytestmark = pytest.mark.asyncio


@pytest.fixture
async def pool(database_url: str) -> AsyncIterator[asyncpg.Pool]:
    async with asyncpg.create_pool(database_url, min_size=1, max_size=2) as p:
        yield p


async def test_a_request_for_every_table_reads_all_but_the_excluded(pool: asyncpg.Pool) -> None:
    await pool.execute(
        "INSERT INTO rows (id, table_id) VALUES"
        " ('a1', 'ta'), ('b1', 'tb'), ('c1', 'tc'), ('d1', 'td')"
    )
    reader = ChangeReader(pool)
    since = (await reader.read([])).snapshot
    await pool.execute("UPDATE rows SET data = '{\"x\": 1}' WHERE id IN ('a1', 'b1')")
    await pool.execute("DELETE FROM rows WHERE id = 'c1'")
    await pool.execute("INSERT INTO rows (id, table_id) VALUES ('e1', 'te')")

    result = await reader.read(
        [Request(0, "ta", since), Request(1, None, since, exclude=("ta", "td"))]
    )

    found = sorted(
        (row.key, row.change.op, row.change.table_id, row.change.id) for row in result.rows
    )
    assert found == [
        (0, "UPDATE", "ta", "a1"),
        (1, "DELETE", "tc", "c1"),
        (1, "INSERT", "te", "e1"),
        (1, "UPDATE", "tb", "b1"),
    ]
    assert result.resets == {}
    again = await reader.read([Request(0, None, result.snapshot)])
    assert again.rows == []
