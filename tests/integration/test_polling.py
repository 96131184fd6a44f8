"""Skipped wake-ups against a real server and Postgres: promises keep every change coming."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest

from broadcaster.core.promises import REMEMBERED_FOR
from tests.support.server import client, running_server
from tests.support.timeouts import eventually, seconds
from tests.support.wakeups import listening, sent_since

pytestmark = pytest.mark.asyncio

WINDOW = 0.3
# A promise at the first wake-up, whatever the rate of changes.
EAGER: dict[str, Any] = {"poll_window": WINDOW, "poll_min_rate": 0, "refresh_interval": 60}


@pytest.fixture
async def db(database_url: str) -> AsyncIterator[asyncpg.Connection]:
    connection = await asyncpg.connect(database_url)
    yield connection
    await connection.close()


@pytest.fixture
async def wakeups(database_url: str) -> AsyncIterator[asyncio.Queue[str]]:
    """Every wake-up sent, as the LISTEN connection of a server hears it."""
    async with listening(database_url) as queue:
        yield queue


async def promised(db: asyncpg.Connection, table_id: str) -> bool:
    """Has a server promised to read ``table_id`` (for now)?"""
    return bool(
        await db.fetchval(
            "SELECT polling_until > now() FROM broadcaster_listeners WHERE table_id = $1",
            table_id,
        )
    )


async def test_writers_of_a_busy_table_skip_their_wake_ups_and_nothing_is_lost(
    database_url: str, db: asyncpg.Connection, wakeups: asyncio.Queue[str]
) -> None:
    async with (
        running_server(database_url, **EAGER) as server,
        client(server) as c,
    ):
        await c.subscribe("t1")
        # The first write wakes the server, which promises to read t1.
        await db.execute("INSERT INTO rows (id, table_id) VALUES ('r0', 't1')")
        await c.changes(1)
        await eventually(lambda: promised(db, "t1"))
        assert await sent_since(db, wakeups) == ["t1"]
        for n in range(1, 50):
            await db.execute("INSERT INTO rows (id, table_id) VALUES ($1, 't1')", f"r{n}")
        received = await c.changes(49)
        assert sorted(m["row"]["id"] for m in received) == sorted(f"r{n}" for n in range(1, 50))
        # Renewed while reads find changes; a lapse under a loaded machine may
        # let a few writers notify.
        assert len(await sent_since(db, wakeups)) < 10


async def test_a_long_transaction_that_skipped_its_wake_up_arrives_when_it_commits(
    database_url: str, db: asyncpg.Connection, wakeups: asyncio.Queue[str]
) -> None:
    slow = await asyncpg.connect(database_url)
    try:
        async with (
            running_server(database_url, **EAGER) as server,
            client(server) as c,
        ):
            await c.subscribe("t1")
            # The first write wakes the server, which promises to read t1.
            await db.execute("INSERT INTO rows (id, table_id) VALUES ('first', 't1')")
            await c.changes(1)
            await eventually(lambda: promised(db, "t1"))
            async with slow.transaction():
                await slow.execute("INSERT INTO rows (id, table_id) VALUES ('slow', 't1')")
                # Well past the promise it relied on; the refresh is a minute away.
                await asyncio.sleep(seconds(1) + 3 * WINDOW)
            (change,) = await c.changes(1)
            assert change["row"]["id"] == "slow"
            assert await sent_since(db, wakeups) == ["t1"]
    finally:
        await slow.close()


async def test_an_idle_tables_writer_wakes_the_server(
    database_url: str, db: asyncpg.Connection, wakeups: asyncio.Queue[str]
) -> None:
    async with (
        running_server(database_url, **EAGER) as server,
        client(server) as c,
    ):
        await c.subscribe("t1")
        await asyncio.sleep(seconds(1) + 2 * WINDOW)
        await db.execute("INSERT INTO rows (id, table_id) VALUES ('late', 't1')")
        (change,) = await c.changes(1)
        assert change["row"]["id"] == "late"
        assert await sent_since(db, wakeups) == ["t1"]


async def test_without_a_window_every_writer_wakes_the_server(
    database_url: str, db: asyncpg.Connection, wakeups: asyncio.Queue[str]
) -> None:
    async with (
        running_server(database_url, poll_window=0, refresh_interval=60) as server,
        client(server) as c,
    ):
        await c.subscribe("t1")
        for n in range(3):
            await db.execute("INSERT INTO rows (id, table_id) VALUES ($1, 't1')", f"r{n}")
        await c.changes(3)
        assert await sent_since(db, wakeups) == ["t1"] * 3


async def test_a_server_registers_what_it_serves_and_removes_it_when_it_stops(
    database_url: str, db: asyncpg.Connection
) -> None:
    registered = "SELECT table_id FROM broadcaster_listeners ORDER BY table_id"
    async with running_server(database_url) as server, client(server) as c:
        await c.subscribe("t1")
        await c.subscribe("t2")
        assert [r["table_id"] for r in await db.fetch(registered)] == ["t1", "t2"]
    assert await db.fetch(registered) == []


async def test_the_registrations_of_a_dead_process_are_removed_at_a_refresh(
    database_url: str, db: asyncpg.Connection
) -> None:
    await db.execute(
        "INSERT INTO broadcaster_listeners (table_id, process, polling_until, seen_at)"
        " VALUES ('t1', 'dead', now() - interval '1 hour', now() - interval '1 hour')"
    )

    async def removed() -> bool:
        return not await db.fetchval("SELECT count(*) FROM broadcaster_listeners")

    async with running_server(database_url, refresh_interval=0.2):
        await eventually(removed)


async def test_a_write_that_skipped_its_wake_up_before_the_subscription_arrives(
    database_url: str, db: asyncpg.Connection, wakeups: asyncio.Queue[str]
) -> None:
    """No server served t1 when it was written; the registration's final read finds it."""
    async with running_server(database_url, refresh_interval=60) as server, client(server) as c:
        transaction = db.transaction()
        await transaction.start()
        await db.execute("INSERT INTO rows (id, table_id) VALUES ('early', 't1')")
        await c.subscribe("t1")
        await transaction.commit()
        (change,) = await c.changes(1)
        assert change["row"]["id"] == "early"
        assert await sent_since(db, wakeups) == []


async def test_a_write_that_skipped_on_a_memory_older_than_the_subscription_arrives(
    database_url: str, db: asyncpg.Connection
) -> None:
    """The writer's session saw no server serve the table just before the subscription.

    Within REMEMBERED_FOR of that, it skips its next wake-up without looking;
    the registration's final read, taken that long after the registration,
    finds the change. (A slower subscription lets the memory run out first,
    and the writer notifies: the change arrives either way.)
    """
    async with running_server(database_url, refresh_interval=60) as server, client(server) as c:
        for n in range(5):
            table_id = f"m{n}"
            insert = "INSERT INTO rows (id, table_id) VALUES ($1, $2)"
            await db.execute(insert, f"{table_id}-before", table_id)
            await c.subscribe(table_id)
            # Past a final read taken at once, within the writer's memory.
            await asyncio.sleep(REMEMBERED_FOR / 3)
            await db.execute(insert, f"{table_id}-after", table_id)
            (change,) = await c.changes(1)
            assert change["row"]["id"] == f"{table_id}-after"


async def test_below_the_minimum_rate_every_writer_wakes_the_server_and_it_polls_nothing(
    database_url: str, db: asyncpg.Connection, wakeups: asyncio.Queue[str]
) -> None:
    """A few changes a second cost a read each, not a poll every interval."""
    async with (
        running_server(database_url, poll_window=WINDOW, refresh_interval=60) as server,
        client(server) as c,
    ):
        await c.subscribe("t1")
        for n in range(5):
            await db.execute("INSERT INTO rows (id, table_id) VALUES ($1, 't1')", f"r{n}")
            await c.changes(1)
            assert not await promised(db, "t1")
        assert await sent_since(db, wakeups) == ["t1"] * 5
