"""Upgrading a deployment of release 0.1.0 (the stamping design) to the change log.

From a database as that release left it: schema revision 0005 and its
triggers.sql (``fixtures/release_0.1.0_triggers.sql``), rows written through
those triggers, tombstones of deleted ones, and writers at work. ``migrate``
moves it to head in place: no row is lost, the capture trigger logs every
change from then on, writers of ``rows`` never fail and never wait more than a
moment, and a cursor issued before the upgrade gets ``reset``
(``history_pruned``) at its first read after.
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import time
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest

from broadcaster.core.cursors import PRUNED, decode, encode
from broadcaster.core.feed import Request
from broadcaster.core.tables import EVERY_TABLE
from broadcaster.postgres.migrate import MigrationReport, migrate
from broadcaster.postgres.queries import ChangeReader
from broadcaster.postgres.resources import migrations_dir
from tests.support.migrations import (
    install_release_0x_triggers,
    upgrade_to,
    upgrade_to_release_0x,
)
from tests.support.timeouts import seconds, within
from tests.support.wakeups import listening
from tests.support.writers import MOMENT, writing, written_after

UPGRADE = MigrationReport(applied_revisions=["0006", "0007"], triggers_installed=True)
# What a client sees of a row, in both designs.
VISIBLE = "id, table_id, data, enriching_columns, created_at, updated_at"
# The rows the fixture writes, and those it then deletes (leaving tombstones).
WRITTEN = 200
DELETED = 20
# Rows added for the test of writers, so that 0006 has an index to build.
BULK = 100_000


def change_log_revision() -> Any:
    """Revision 0007's module, for its lock constants."""
    path = migrations_dir() / "versions" / "0007_change_log.py"
    spec = importlib.util.spec_from_file_location("broadcaster_revision_0007", path)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def lock_retry_budget() -> float:
    """Seconds 0007 keeps retrying its lock on rows before it gives up."""
    revision = change_log_revision()
    timeout = float(revision.LOCK_TIMEOUT.removesuffix("ms")) / 1000
    attempts: int = revision.LOCK_ATTEMPTS
    return attempts * timeout + sum(0.1 * attempt for attempt in range(1, attempts))


@pytest.fixture
async def release_0x_url(empty_database_url: str) -> str:
    """A database of release 0.1.0, with rows its triggers stamped and tombstones."""
    await within(asyncio.to_thread(upgrade_to_release_0x, empty_database_url), units=30)
    db = await asyncpg.connect(empty_database_url)
    try:
        await install_release_0x_triggers(db)
        await db.execute(
            "INSERT INTO rows (id, table_id, data, enriching_columns)"
            " SELECT 'r' || i, 't' || i % 4, jsonb_build_object('n', i), ARRAY['e' || i]"
            f" FROM generate_series(1, {WRITTEN}) AS i"
        )
        await db.execute(
            "UPDATE rows SET data = data || '{\"updated\": true}' WHERE substr(id, 2)::int % 3 = 0"
        )
        await db.execute(f"DELETE FROM rows WHERE substr(id, 2)::int % {WRITTEN // DELETED} = 0")
        # As that release's triggers leave them.
        assert await db.fetchval("SELECT count(*) FROM broadcaster_tombstones") == DELETED
        assert await db.fetchval(
            "SELECT bool_and(version IS NOT NULL AND changed_xid IS NOT NULL) FROM rows"
        )
    finally:
        await db.close()
    return empty_database_url


@pytest.fixture
async def db(release_0x_url: str) -> AsyncIterator[asyncpg.Connection]:
    conn = await asyncpg.connect(release_0x_url)
    yield conn
    await conn.close()


async def visible_rows(db: asyncpg.Connection) -> list[dict[str, Any]]:
    return [dict(record) for record in await db.fetch(f"SELECT {VISIBLE} FROM rows ORDER BY id")]


async def image(db: asyncpg.Connection, row_id: str) -> Any:
    """The row as the capture trigger logs it."""
    return json.loads(await db.fetchval("SELECT to_jsonb(r) FROM rows AS r WHERE id = $1", row_id))


async def test_migrate_upgrades_in_place_keeping_every_row(
    release_0x_url: str, db: asyncpg.Connection
) -> None:
    before = await visible_rows(db)
    assert len(before) == WRITTEN - DELETED

    assert await within(asyncio.to_thread(migrate, release_0x_url), units=30) == UPGRADE

    assert await visible_rows(db) == before
    assert await db.fetchval("SELECT to_regclass('broadcaster_tombstones')") is None
    # Release 0.1.0's trigger functions went with its triggers.
    assert (
        await db.fetchval(
            "SELECT count(*) FROM pg_proc WHERE proname IN ('broadcaster_before_write',"
            " 'broadcaster_after_remove', 'broadcaster_before_truncate')"
        )
        == 0
    )
    assert await db.fetchval("SELECT count(*) FROM broadcaster_changes") == 0
    assert {
        name
        for (name,) in await db.fetch(
            "SELECT tgname FROM pg_trigger WHERE tgrelid = 'rows'::regclass AND NOT tgisinternal"
        )
    } == {"broadcaster_capture", "broadcaster_capture_truncate"}


async def test_the_capture_trigger_logs_every_change_after_the_upgrade(
    release_0x_url: str, db: asyncpg.Connection
) -> None:
    await within(asyncio.to_thread(migrate, release_0x_url), units=30)
    updated_before = await image(db, "r1")
    deleted_before = await image(db, "r2")
    # As a server with a subscriber of every table: every write wakes it.
    await db.execute(
        "INSERT INTO broadcaster_listeners (table_id, process, polling_until)"
        " VALUES ('', 'tests', '-infinity')"
    )

    async with listening(release_0x_url) as wakeups:
        async with db.transaction():
            await db.execute("INSERT INTO rows (id, table_id) VALUES ('new', 't0')")
            await db.execute("""UPDATE rows SET data = '{"n": -1}' WHERE id = 'r1'""")
            await db.execute("DELETE FROM rows WHERE id = 'r2'")
        await within(wakeups.get())

    entries = await db.fetch(
        "SELECT table_id, id, op, new, old FROM broadcaster_changes ORDER BY seq"
    )
    assert [(e["table_id"], e["id"], e["op"]) for e in entries] == [
        ("t0", "new", "INSERT"),
        ("t1", "r1", "UPDATE"),
        ("t2", "r2", "DELETE"),
    ]
    inserted, updated, deleted = entries
    assert json.loads(inserted["new"]) == await image(db, "new")
    assert json.loads(updated["new"]) == await image(db, "r1")
    # Whole rows before the change, as release 0.1.0 had written them.
    assert json.loads(updated["old"]) == updated_before
    assert json.loads(deleted["old"]) == deleted_before
    assert deleted["new"] is None


async def test_writers_never_fail_nor_wait_during_the_upgrade(
    release_0x_url: str, db: asyncpg.Connection
) -> None:
    # Enough rows for 0006's index to take a while to build.
    await db.execute(
        "INSERT INTO rows (id, table_id) SELECT 'bulk' || i, 'bulk'"
        f" FROM generate_series(1, {BULK}) AS i"
    )

    async with writing(release_0x_url, ["r1", "r3", "r5"], ["r7", "r9"], []) as writers:
        started = time.perf_counter()
        report = await within(asyncio.to_thread(migrate, release_0x_url), units=60)
        ended = time.perf_counter()
        await written_after(writers, ended)

    assert report == UPGRADE
    # They wrote all along, and no write waited more than a moment.
    assert all(writer.count(started) > writer.count(ended) for writer in writers)
    longest = max(writer.longest_wait() for writer in writers)
    assert longest < seconds(MOMENT)
    assert seconds(MOMENT) < lock_retry_budget() / 10
    # No write was lost, and those after the upgrade were logged.
    churn = writers[-1]
    assert await db.fetchval(
        "SELECT count(*) FROM broadcaster_changes WHERE table_id = 'churn'"
    ) >= churn.count(ended)
    for writer in writers:
        for row_id, n in writer.last.items():
            assert await db.fetchval("SELECT data->>'n' FROM rows WHERE id = $1", row_id) == str(n)
            assert await db.fetchval(
                "SELECT new->'data'->>'n' FROM broadcaster_changes WHERE id = $1"
                " ORDER BY seq DESC LIMIT 1",
                row_id,
            ) == str(n)


@pytest.mark.parametrize(
    "holding",
    [
        """UPDATE rows SET data = '{"held": true}' WHERE id = 'r13'""",
        # Release 0.1.0's servers prune tombstones in a transaction of their own.
        "DELETE FROM broadcaster_tombstones WHERE deleted_at < now() - interval '1 day'",
    ],
    ids=["a-writer", "a-0.1.0-server-pruning"],
)
async def test_an_open_transaction_delays_the_swap_not_the_writers(
    release_0x_url: str, holding: str
) -> None:
    """0007 waits for a gap between the transactions on what it drops, a little at a time.

    From revision 0006 on (built concurrently, it never blocks writers), while
    a transaction holds its lock on ``rows`` or ``broadcaster_tombstones`` far
    longer than a moment.
    """
    await within(asyncio.to_thread(upgrade_to, release_0x_url, "0006"), units=30)
    holder = await asyncpg.connect(release_0x_url)
    try:
        async with writing(release_0x_url, ["r1", "r3"]) as writers:
            transaction = holder.transaction()
            await transaction.start()
            await holder.execute(holding)
            migration = asyncio.ensure_future(asyncio.to_thread(migrate, release_0x_url))
            try:
                done, _ = await asyncio.wait({migration}, timeout=seconds(3 * MOMENT))
            finally:
                await transaction.commit()
                report = await within(migration, units=60)
            await written_after(writers, time.perf_counter())
    finally:
        await holder.close()

    assert not done
    assert report == MigrationReport(applied_revisions=["0007"], triggers_installed=True)
    assert max(writer.longest_wait() for writer in writers) < seconds(MOMENT)


@pytest.mark.parametrize("older_transaction", [False, True], ids=["alone", "beside-an-older-one"])
async def test_a_cursor_issued_before_the_upgrade_gets_reset_history_pruned(
    release_0x_url: str, db: asyncpg.Connection, older_transaction: bool
) -> None:
    """Once: the cursor of the read that reset it goes on as usual.

    Even while a transaction that began before the upgrade (here writing
    another table) is still open, which keeps every snapshot's xmin below the
    upgrade's xid.
    """
    await db.execute("CREATE TABLE elsewhere (n int)")
    other = await asyncpg.connect(release_0x_url)
    transaction = other.transaction()
    try:
        if older_transaction:
            await transaction.start()
            await other.execute("INSERT INTO elsewhere VALUES (1)")
        async with asyncpg.create_pool(release_0x_url, min_size=1, max_size=2) as pool:
            reader = ChangeReader(pool)
            origin = await reader.origin()
            # As release 0.1.0's read gave it: the snapshot of a statement, with the origin.
            cursor = encode(origin, await db.fetchval("SELECT pg_current_snapshot()::text"))
            await db.execute("""UPDATE rows SET data = '{"n": -1}' WHERE id = 'r1'""")

            await within(asyncio.to_thread(migrate, release_0x_url), units=30)

            since = decode(cursor, origin).text
            result = await reader.read([Request(0, "t1", since), Request(1, EVERY_TABLE, since)])
            assert result.resets == {0: PRUNED, 1: PRUNED}
            # What a reset comes with: every row of the table, once, as it is.
            assert sorted((row.key, row.change.op, row.change.id) for row in result.rows) == sorted(
                (0, "INSERT", row_id)
                for (row_id,) in await db.fetch("SELECT id FROM rows WHERE table_id = 't1'")
            )

            await db.execute("""UPDATE rows SET data = '{"n": -2}' WHERE id = 'r1'""")
            again = await reader.read([Request(0, "t1", result.snapshot)])
            assert again.resets == {}
            assert [(row.change.op, row.change.id) for row in again.rows] == [("UPDATE", "r1")]
    finally:
        if older_transaction:
            await transaction.rollback()
        await other.close()
