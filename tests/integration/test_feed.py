"""Nothing lost: cursors, catch-up, snapshots and resets against a real server and Postgres."""

from __future__ import annotations

import asyncio
import json
import random
from collections.abc import AsyncIterator

import asyncpg
import pytest

from broadcaster.net.server import Server
from tests.support.server import client, running_server
from tests.support.timeouts import eventually, seconds, within
from tests.support.view import ResumingClient, TableView, database_rows

pytestmark = pytest.mark.asyncio


@pytest.fixture
async def server(database_url: str) -> AsyncIterator[Server]:
    async with running_server(database_url) as s:
        yield s


@pytest.fixture
async def db(database_url: str) -> AsyncIterator[asyncpg.Connection]:
    connection = await asyncpg.connect(database_url)
    yield connection
    await connection.close()


async def test_changes_carry_the_cursor_and_synced_comes_first(
    server: Server, db: asyncpg.Connection
) -> None:
    async with client(server) as c:
        synced = await c.subscribe("t1")
        assert synced.cursor.startswith("v1:")
        await db.execute("INSERT INTO rows (id, table_id) VALUES ('r', 't1')")
        (change,) = await c.changes(1)
        assert change["cursor"] != synced.cursor


async def test_the_lower_xid_committing_last_is_not_lost(
    server: Server, db: asyncpg.Connection, database_url: str
) -> None:
    """The trap: a cursor handed out while an older transaction is still open covers it not."""
    slow = await asyncpg.connect(database_url)
    try:
        async with client(server) as c:
            await c.subscribe("t1")
            open_transaction = slow.transaction()
            await open_transaction.start()
            # The lower xid: taken first, committed last.
            await slow.execute("INSERT INTO rows (id, table_id) VALUES ('early', 't1')")
            await db.execute("INSERT INTO rows (id, table_id) VALUES ('late', 't1')")
            (late,) = await c.changes(1)
            assert late["row"]["id"] == "late"
            cursor = late["cursor"]
        # The client is gone when the older transaction commits.
        await open_transaction.commit()
        async with client(server) as resumed:
            synced = await resumed.subscribe("t1", cursor=cursor)
            assert synced.reset is None
            assert [m["row"]["id"] for m in synced.changes] == ["early"]
    finally:
        await slow.close()


async def test_both_transactions_arrive_when_the_client_was_away_for_both(
    server: Server, db: asyncpg.Connection, database_url: str
) -> None:
    slow = await asyncpg.connect(database_url)
    try:
        async with client(server) as c:
            cursor = (await c.subscribe("t1")).cursor
        async with slow.transaction():
            await slow.execute("INSERT INTO rows (id, table_id) VALUES ('first', 't1')")
            await db.execute("INSERT INTO rows (id, table_id) VALUES ('second', 't1')")
        async with client(server) as resumed:
            synced = await resumed.subscribe("t1", cursor=cursor)
            assert sorted(m["row"]["id"] for m in synced.changes) == ["first", "second"]
    finally:
        await slow.close()


async def test_resume_carries_only_what_changed_since_the_cursor(
    server: Server, db: asyncpg.Connection
) -> None:
    await db.execute(
        "INSERT INTO rows (id, table_id, data) "
        "SELECT 'r' || g, 't1', jsonb_build_object('n', g) FROM generate_series(1, 200) g"
    )
    view = TableView("t1")
    async with client(server) as c:
        synced = await c.subscribe("t1", snapshot=True)
        assert len(synced.changes) == 200
        assert {m["op"] for m in synced.changes} == {"INSERT"}
        for message in synced.changes:
            view.apply(message)
        view.cursor = synced.cursor
    await db.execute("UPDATE rows SET data = '{\"n\": 0}' WHERE id IN ('r1','r2','r3','r4')")
    await db.execute("DELETE FROM rows WHERE id IN ('r5', 'r6')")
    await db.execute("INSERT INTO rows (id, table_id) VALUES ('new', 't1')")
    async with client(server) as resumed:
        catch_up = await resumed.subscribe("t1", cursor=view.cursor)
    ops = sorted((m["op"], m["row"]["id"]) for m in catch_up.changes)
    assert ops == [
        ("DELETE", "r5"),
        ("DELETE", "r6"),
        ("INSERT", "new"),
        ("UPDATE", "r1"),
        ("UPDATE", "r2"),
        ("UPDATE", "r3"),
        ("UPDATE", "r4"),
    ]
    for message in catch_up.changes:
        view.apply(message)
    assert view.snapshot() == await database_rows(db, "t1")


async def test_a_row_deleted_and_reinserted_while_away_ends_as_the_new_row(
    server: Server, db: asyncpg.Connection
) -> None:
    await db.execute("INSERT INTO rows (id, table_id, data) VALUES ('r', 't1', '{\"v\": 1}')")
    view = TableView("t1")
    async with client(server) as c:
        synced = await c.subscribe("t1", snapshot=True)
        for message in synced.changes:
            view.apply(message)
    await db.execute("DELETE FROM rows WHERE id = 'r'")
    await db.execute("INSERT INTO rows (id, table_id, data) VALUES ('r', 't1', '{\"v\": 2}')")
    async with client(server) as resumed:
        catch_up = await resumed.subscribe("t1", cursor=synced.cursor)
    # Whatever order they come in, versions decide.
    for message in reversed(catch_up.changes):
        view.apply(message)
    assert view.rows["r"]["data"] == {"v": 2}
    assert view.snapshot() == await database_rows(db, "t1")


@pytest.mark.parametrize(
    ("cursor", "reason"),
    [
        ("garbage", "malformed_cursor"),
        ("v1:1:2:3:4:", "foreign_cursor"),
        ("v1:1:2:9:3:", "malformed_cursor"),
    ],
)
async def test_a_cursor_that_cannot_be_served_gets_reset_and_a_snapshot(
    server: Server, db: asyncpg.Connection, cursor: str, reason: str
) -> None:
    await db.execute("INSERT INTO rows (id, table_id) VALUES ('a', 't1'), ('b', 't1')")
    async with client(server) as c:
        synced = await c.subscribe("t1", cursor=cursor)
        assert synced.reset == reason
        assert sorted(m["row"]["id"] for m in synced.changes) == ["a", "b"]
        assert synced.cursor.startswith("v1:")


async def test_a_cursor_from_the_future_of_this_database_is_foreign(
    server: Server, db: asyncpg.Connection
) -> None:
    async with client(server) as c:
        real = (await c.subscribe("t1")).cursor
        origin = ":".join(real.split(":")[:3])
        xmax = int(real.split(":")[4])
        # Postgres accepts a snapshot a little ahead of it; only the read sees it
        # is from the future (a restored copy of the database, say).
        synced = await c.subscribe("t1", cursor=f"{origin}:{xmax + 100_000}:{xmax + 100_000}:")
        assert synced.reset == "foreign_cursor"


async def test_a_cursor_postgres_refuses_is_reset_and_stalls_nobody(
    server: Server, db: asyncpg.Connection
) -> None:
    async with client(server) as bystander, client(server) as c:
        await bystander.subscribe("t1")
        real = (await c.subscribe("t1")).cursor
        origin = ":".join(real.split(":")[:3])
        # Well-formed, but from another xid epoch: Postgres refuses the cast.
        refused = f"{origin}:{2**40}:{2**40}:"
        synced = await c.subscribe("t1", cursor=refused)
        assert synced.reset == "malformed_cursor"
        await db.execute("INSERT INTO rows (id, table_id) VALUES ('after', 't1')")
        assert (await bystander.changes(1))[0]["row"]["id"] == "after"
        assert (await c.changes(1))[0]["row"]["id"] == "after"


async def test_a_cursor_older_than_the_history_retention_is_reset(
    database_url: str, db: asyncpg.Connection
) -> None:
    async with running_server(
        database_url, refresh_interval=0.1, history_retention=0.2
    ) as server:
        await db.execute("INSERT INTO rows (id, table_id) VALUES ('a', 't1'), ('b', 't1')")
        async with client(server) as c:
            cursor = (await c.subscribe("t1")).cursor
        await db.execute("DELETE FROM rows WHERE id = 'a'")
        # As if the deletion had been logged hours ago: its partition is pruned.
        await db.execute("UPDATE broadcaster_changes SET at = now() - interval '3 hours'")
        await eventually(lambda: db.fetchval("SELECT count(*) = 0 FROM broadcaster_changes"), 10)
        async with client(server) as resumed:
            synced = await resumed.subscribe("t1", cursor=cursor)
        assert synced.reset == "history_pruned"
        assert [m["row"]["id"] for m in synced.changes] == ["b"]


async def test_idle_tables_get_cursor_messages(database_url: str) -> None:
    async with running_server(database_url, refresh_interval=0.2) as server, client(server) as c:
        first = (await c.subscribe("t1")).cursor
        message = await c.recv(5)
        assert message["type"] == "cursor"
        assert message["table_id"] == "t1"
        assert isinstance(message["cursor"], str)
        assert first.startswith("v1:")


async def test_a_snapshot_under_concurrent_writers_converges(
    server: Server, db: asyncpg.Connection, database_url: str
) -> None:
    await db.execute(
        "INSERT INTO rows (id, table_id, data) "
        "SELECT 'r' || g, 't1', '{}' FROM generate_series(1, 100) g"
    )
    stop = asyncio.Event()

    async def writer(seed: int) -> int:
        rng = random.Random(seed)
        connection = await asyncpg.connect(database_url)
        written = 0
        try:
            while not stop.is_set():
                row_id = f"r{rng.randint(1, 100)}"
                await connection.execute(
                    "UPDATE rows SET data = $2::jsonb WHERE id = $1",
                    row_id,
                    json.dumps({"w": seed, "n": written}),
                )
                written += 1
        finally:
            await connection.close()
        return written

    writers = [asyncio.create_task(writer(seed)) for seed in range(4)]
    await asyncio.sleep(seconds(0.3))
    async with ResumingClient(lambda: server.ws_url, ["t1"]) as reader:
        await asyncio.sleep(seconds(0.5))
        stop.set()
        written = await within(asyncio.gather(*writers), 10)
        assert sum(written) > 0
        await reader.converged(db)


async def test_subscribing_to_many_tables_at_once_all_sync(
    server: Server, db: asyncpg.Connection
) -> None:
    tables = [f"t{i}" for i in range(30)]
    for table_id in tables:
        await db.execute("INSERT INTO rows (table_id) VALUES ($1)", table_id)
    async with ResumingClient(lambda: server.ws_url, tables) as reader:
        await db.execute("UPDATE rows SET data = '{\"after\": true}'")
        await reader.converged(db)


async def test_a_change_that_woke_nobody_arrives_with_the_next_refresh(
    database_url: str, db: asyncpg.Connection
) -> None:
    async with running_server(database_url, refresh_interval=0.2) as server, client(server) as c:
        await c.subscribe("t1")
        async with db.transaction():
            await db.execute("SET LOCAL broadcaster.wake = 'off'")
            await db.execute("INSERT INTO rows (id, table_id) VALUES ('quiet', 't1')")
        (change,) = await c.changes(1)
        assert change["row"]["id"] == "quiet"
