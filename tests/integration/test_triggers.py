"""The NOTIFY payloads of triggers.sql, observed with a LISTEN on a migrated database.

Each test writes through one connection and reads ``broadcaster_changes`` on
another; the payload format is the one documented at the top of triggers.sql.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import asyncpg
import pytest

from tests.support.timeouts import within

CHANNEL = "broadcaster_changes"
ROW_KEYS = {"id", "table_id", "data", "enriching_columns", "version", "created_at", "updated_at"}
NOTIFY_LIMIT = 8000

Change = tuple[dict[str, Any], dict[str, Any] | None]


@pytest.fixture
async def db(database_url: str) -> AsyncIterator[asyncpg.Connection]:
    conn = await asyncpg.connect(database_url)
    yield conn
    await conn.close()


@pytest.fixture
async def changes(database_url: str) -> AsyncIterator[asyncio.Queue[str]]:
    """Every payload sent on the channel, in delivery order."""
    conn = await asyncpg.connect(database_url)
    queue: asyncio.Queue[str] = asyncio.Queue()
    await conn.add_listener(
        CHANNEL, lambda _conn, _pid, _channel, payload: queue.put_nowait(payload)
    )
    yield queue
    await conn.close()


async def next_change(changes: asyncio.Queue[str]) -> Change:
    """The next payload, split into its header and its row (None for a reference)."""
    payload = await within(changes.get())
    assert len(payload.encode()) < NOTIFY_LIMIT
    header, newline, row = payload.partition("\n")
    assert "\n" not in row
    return json.loads(header), (json.loads(row) if newline else None)


async def assert_nothing_sent(db: asyncpg.Connection, changes: asyncio.Queue[str]) -> None:
    """No payload was sent by the writes ``db`` committed so far.

    Notifications arrive in commit order, so a marker sent now is the next
    payload unless something was sent before it.
    """
    await db.execute(f"NOTIFY {CHANNEL}, 'marker'")
    assert await within(changes.get()) == "marker"


async def insert(db: asyncpg.Connection, row_id: str, table_id: str, data: object) -> None:
    await db.execute(
        "INSERT INTO rows (id, table_id, data) VALUES ($1, $2, $3)",
        row_id,
        table_id,
        json.dumps(data),
    )


async def stored(db: asyncpg.Connection, row_id: str) -> asyncpg.Record:
    record = await db.fetchrow("SELECT * FROM rows WHERE id = $1", row_id)
    assert record is not None
    return record


def iso_utc(timestamp: datetime) -> str:
    return timestamp.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def expected_row(record: asyncpg.Record) -> dict[str, Any]:
    """The row object clients receive for ``record``, per broadcaster_row_json()."""
    return {
        "id": record["id"],
        "table_id": record["table_id"],
        "data": json.loads(record["data"]),
        "enriching_columns": record["enriching_columns"],
        "version": record["version"],
        "created_at": iso_utc(record["created_at"]),
        "updated_at": iso_utc(record["updated_at"]),
    }


async def test_insert_sends_header_and_row(
    db: asyncpg.Connection, changes: asyncio.Queue[str]
) -> None:
    await db.execute(
        "INSERT INTO rows (id, table_id, data, enriching_columns) VALUES ($1, $2, $3, $4)",
        "r1",
        "t1",
        json.dumps({"name": "Ada", "n": 1}),
        ["owner"],
    )

    header, row = await next_change(changes)
    record = await stored(db, "r1")
    assert header == {"op": "INSERT", "table_id": "t1", "id": "r1", "version": record["version"]}
    assert row is not None
    assert set(row) == ROW_KEYS
    assert row == expected_row(record)
    assert row["data"] == {"name": "Ada", "n": 1}
    assert row["enriching_columns"] == ["owner"]
    assert row["created_at"] == row["updated_at"]


async def test_update_sends_new_row_with_newer_version(
    db: asyncpg.Connection, changes: asyncio.Queue[str]
) -> None:
    await insert(db, "r1", "t1", {"n": 1})
    _, inserted = await next_change(changes)
    assert inserted is not None

    await db.execute("""UPDATE rows SET data = '{"n": 2}' WHERE id = 'r1'""")

    header, row = await next_change(changes)
    record = await stored(db, "r1")
    assert header == {"op": "UPDATE", "table_id": "t1", "id": "r1", "version": record["version"]}
    assert row == expected_row(record)
    assert row["data"] == {"n": 2}
    assert row["version"] > inserted["version"]
    assert row["created_at"] == inserted["created_at"]
    assert row["updated_at"] > inserted["updated_at"]


async def test_delete_sends_old_row_with_a_version_of_its_own(
    db: asyncpg.Connection, changes: asyncio.Queue[str]
) -> None:
    await insert(db, "r1", "t1", {"n": 1})
    _, inserted = await next_change(changes)
    assert inserted is not None

    await db.execute("DELETE FROM rows WHERE id = 'r1'")

    header, row = await next_change(changes)
    assert header["op"] == "DELETE"
    assert header["table_id"] == "t1"
    assert header["id"] == "r1"
    assert header["version"] > inserted["version"]
    assert row == {**inserted, "version": header["version"]}


async def test_version_grows_across_delete_and_reinsert(
    db: asyncpg.Connection, changes: asyncio.Queue[str]
) -> None:
    await insert(db, "r1", "t1", {"n": 1})
    await db.execute("""UPDATE rows SET data = '{"n": 2}' WHERE id = 'r1'""")
    await db.execute("DELETE FROM rows WHERE id = 'r1'")
    await insert(db, "r1", "t1", {"n": 3})

    headers = [(await next_change(changes))[0] for _ in range(4)]
    assert [header["op"] for header in headers] == ["INSERT", "UPDATE", "DELETE", "INSERT"]
    versions = [header["version"] for header in headers]
    assert versions == sorted(set(versions))
    assert (await stored(db, "r1"))["version"] == versions[-1]


async def test_writer_cannot_set_version_or_timestamps(
    db: asyncpg.Connection, changes: asyncio.Queue[str]
) -> None:
    long_ago = datetime(2000, 1, 1, tzinfo=UTC)
    await db.execute(
        "INSERT INTO rows (id, table_id, data, version, created_at, updated_at)"
        " VALUES ('r1', 't1', '{}', -5, $1, $1)",
        long_ago,
    )
    inserted = await stored(db, "r1")
    assert inserted["version"] > 0
    assert inserted["created_at"] > long_ago
    assert inserted["updated_at"] == inserted["created_at"]

    await db.execute(
        """UPDATE rows SET data = '{"n": 2}', version = -5, created_at = $1, updated_at = $1"""
        " WHERE id = 'r1'",
        long_ago,
    )
    updated = await stored(db, "r1")
    assert updated["version"] > inserted["version"]
    assert updated["created_at"] == inserted["created_at"]
    assert updated["updated_at"] > inserted["updated_at"]

    # Only the maintained columns: nothing a client sees changes, so nothing moves.
    await db.execute(
        "UPDATE rows SET version = -5, created_at = $1, updated_at = $1 WHERE id = 'r1'",
        long_ago,
    )
    assert await stored(db, "r1") == updated

    ops = [(await next_change(changes))[0]["op"] for _ in range(2)]
    assert ops == ["INSERT", "UPDATE"]
    await assert_nothing_sent(db, changes)


async def test_update_that_changes_nothing_sends_nothing(
    db: asyncpg.Connection, changes: asyncio.Queue[str]
) -> None:
    await db.execute(
        """INSERT INTO rows (id, table_id, data, enriching_columns)"""
        """ VALUES ('r1', 't1', '{"n": 1}', '{owner}')"""
    )
    await next_change(changes)
    before = await stored(db, "r1")

    await db.execute(
        """UPDATE rows SET table_id = 't1', data = '{"n": 1}', enriching_columns = '{owner}'"""
        " WHERE id = 'r1'"
    )

    assert await stored(db, "r1") == before
    await assert_nothing_sent(db, changes)


async def test_row_too_large_to_notify_is_sent_as_reference(
    db: asyncpg.Connection, changes: asyncio.Queue[str]
) -> None:
    big = {"blob": "x" * 200_000}
    await insert(db, "big", "t1", big)
    await db.execute("UPDATE rows SET data = $1 WHERE id = 'big'", json.dumps({**big, "n": 2}))
    updated = await stored(db, "big")
    await db.execute("DELETE FROM rows WHERE id = 'big'")

    references = [await next_change(changes) for _ in range(3)]
    assert [row for _, row in references] == [None, None, None]
    headers = [header for header, _ in references]
    assert [header["op"] for header in headers] == ["INSERT", "UPDATE", "DELETE"]
    assert {(header["table_id"], header["id"]) for header in headers} == {("t1", "big")}
    assert headers[1]["version"] == updated["version"]
    assert headers[0]["version"] < headers[1]["version"] < headers[2]["version"]


@pytest.mark.parametrize(
    ("assignment", "new_table_id", "new_id"),
    [("table_id = 't2'", "t2", "r1"), ("id = 'r2'", "t1", "r2")],
    ids=["table_id", "id"],
)
async def test_moving_a_row_sends_delete_then_insert(
    db: asyncpg.Connection,
    changes: asyncio.Queue[str],
    assignment: str,
    new_table_id: str,
    new_id: str,
) -> None:
    await insert(db, "r1", "t1", {"n": 1})
    _, inserted = await next_change(changes)
    assert inserted is not None

    await db.execute(f"UPDATE rows SET {assignment} WHERE id = 'r1'")

    gone_header, gone_row = await next_change(changes)
    arrived_header, arrived_row = await next_change(changes)
    record = await stored(db, new_id)
    assert gone_header["op"] == "DELETE"
    assert (gone_header["table_id"], gone_header["id"]) == ("t1", "r1")
    assert gone_row == {**inserted, "version": gone_header["version"]}
    assert gone_header["version"] > inserted["version"]
    assert arrived_header == {
        "op": "INSERT",
        "table_id": new_table_id,
        "id": new_id,
        "version": record["version"],
    }
    assert arrived_row == expected_row(record)
    assert arrived_row["version"] > inserted["version"]
    await assert_nothing_sent(db, changes)
