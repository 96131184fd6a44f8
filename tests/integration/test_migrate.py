"""``broadcaster.migrate.migrate()`` against real databases.

Covers a fresh database, a second run, adopting a ``rows`` table that predates
the broadcaster, reinstalling changed triggers, concurrent runs, and the
property servers rely on to migrate at every start: on a current schema it
never waits for a writer of ``rows``.
"""

from __future__ import annotations

import asyncio
import hashlib
import importlib.util
import json
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from types import ModuleType
from typing import Any

import asyncpg
import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import Connection
from sqlalchemy.ext.asyncio import create_async_engine
from sqlalchemy.pool import NullPool

from broadcaster.exceptions import MigrationError
from broadcaster.migrate import MigrationReport, migrate
from broadcaster.resources import schema_dir, triggers_sql
from tests.support.database import with_database
from tests.support.timeouts import seconds, within

REPO_ROOT = Path(__file__).resolve().parents[2]
CHANNEL = "broadcaster_changes"
TRIGGERS = {"broadcaster_before_write", "broadcaster_after_write", "broadcaster_after_update"}
COLUMNS = {
    "id": "text",
    "table_id": "text",
    "data": "jsonb",
    "enriching_columns": "text[]",
    "version": "bigint",
    "created_at": "timestamp with time zone",
    "updated_at": "timestamp with time zone",
}
FRESH = MigrationReport(applied_revisions=["0001"], triggers_installed=True)
CURRENT = MigrationReport(applied_revisions=[], triggers_installed=False)
# Waits for a line on stdin once imported, so that the runs start together.
MIGRATE_IN_A_PROCESS = """
import dataclasses, json, sys
from broadcaster.migrate import migrate
print("ready", flush=True)
sys.stdin.readline()
print(json.dumps(dataclasses.asdict(migrate(sys.argv[1]))))
"""


@pytest.fixture
async def db(empty_database_url: str) -> AsyncIterator[asyncpg.Connection]:
    """A connection to the database of ``empty_database_url``."""
    conn = await asyncpg.connect(empty_database_url)
    yield conn
    await conn.close()


async def run_migrate(url: str) -> MigrationReport:
    return await within(asyncio.to_thread(migrate, url), units=30)


async def columns(db: asyncpg.Connection) -> dict[str, str]:
    records = await db.fetch(
        "SELECT attname, format_type(atttypid, atttypmod) FROM pg_attribute"
        " WHERE attrelid = 'rows'::regclass AND attnum > 0 AND NOT attisdropped"
    )
    return {name: type_ for name, type_ in records}


async def indexes(db: asyncpg.Connection) -> dict[str, str]:
    records = await db.fetch("SELECT indexname, indexdef FROM pg_indexes WHERE tablename = 'rows'")
    return {name: definition for name, definition in records}


async def triggers(db: asyncpg.Connection) -> dict[str, int]:
    """Name to oid of each trigger on rows; a reinstalled trigger has a new oid."""
    records = await db.fetch(
        "SELECT tgname, oid FROM pg_trigger WHERE tgrelid = 'rows'::regclass AND NOT tgisinternal"
    )
    return {name: oid for name, oid in records}


async def triggers_comment(db: asyncpg.Connection) -> str | None:
    comment: str | None = await db.fetchval(
        "SELECT obj_description(to_regprocedure('broadcaster_after_write()'), 'pg_proc')"
    )
    return comment


def expected_comment() -> str:
    return "broadcaster triggers sha256:" + hashlib.sha256(triggers_sql().encode()).hexdigest()


async def notification(
    url: str, db: asyncpg.Connection, statement: str
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Run ``statement`` on ``db`` and return the header and row of the change it sends."""
    listener = await asyncpg.connect(url)
    try:
        payloads: asyncio.Queue[str] = asyncio.Queue()
        await listener.add_listener(
            CHANNEL, lambda _conn, _pid, _channel, payload: payloads.put_nowait(payload)
        )
        await db.execute(statement)
        header, _, row = (await within(payloads.get())).partition("\n")
    finally:
        await listener.close()
    return json.loads(header), json.loads(row)


async def migrate_beside_open_writer(url: str, wait_units: float) -> MigrationReport | None:
    """Run migrate() while a writer's transaction holds a row of ``rows`` locked.

    Returns the report if migrate() finished within ``wait_units`` while that
    transaction was still open, None if it was still waiting. The writer then
    commits and migrate() is awaited either way, so no thread outlives the test.
    """
    writer = await asyncpg.connect(url)
    try:
        await writer.execute("INSERT INTO rows (id, table_id) VALUES ('w1', 't1')")
        transaction = writer.transaction()
        await transaction.start()
        await writer.execute("""UPDATE rows SET data = '{"n": 2}' WHERE id = 'w1'""")
        held = await writer.fetch(
            "SELECT mode FROM pg_locks WHERE pid = pg_backend_pid() AND relation = 'rows'::regclass"
        )
        assert "RowExclusiveLock" in {record["mode"] for record in held}

        migration = asyncio.ensure_future(asyncio.to_thread(migrate, url))
        try:
            done, _ = await asyncio.wait({migration}, timeout=seconds(wait_units))
        finally:
            await transaction.commit()
            report = await within(migration, units=30)
    finally:
        await writer.close()
    return report if migration in done else None


def load_models() -> ModuleType:
    """schema/models.py, loaded by path like env.py does (and shared with it)."""
    name = "broadcaster_schema_models"
    module = sys.modules.get(name)
    if module is None:
        spec = importlib.util.spec_from_file_location(name, schema_dir() / "models.py")
        assert spec is not None
        assert spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return module


async def test_empty_database_gets_table_index_sequence_and_triggers(
    empty_database_url: str, db: asyncpg.Connection
) -> None:
    assert await run_migrate(empty_database_url) == FRESH

    assert await columns(db) == COLUMNS
    assert set(await indexes(db)) == {"rows_pkey", "rows_table_id_idx"}
    assert await db.fetchval("SELECT to_regclass('broadcaster_version_seq') IS NOT NULL")
    assert set(await triggers(db)) == TRIGGERS
    assert await triggers_comment(db) == expected_comment()
    assert await db.fetchval("SELECT version_num FROM alembic_version") == "0001"


async def test_migrated_schema_matches_the_models(database_url: str) -> None:
    engine = create_async_engine(
        "postgresql+asyncpg://",
        async_creator=lambda: asyncpg.connect(database_url),
        poolclass=NullPool,
    )

    def differences(connection: Connection) -> list[Any]:
        return compare_metadata(MigrationContext.configure(connection), load_models().Base.metadata)

    try:
        async with engine.connect() as connection:
            assert await connection.run_sync(differences) == []
    finally:
        await engine.dispose()


async def test_second_run_changes_nothing(empty_database_url: str, db: asyncpg.Connection) -> None:
    await run_migrate(empty_database_url)
    installed = await triggers(db)

    assert await run_migrate(empty_database_url) == CURRENT
    assert await triggers(db) == installed


async def test_adopts_a_table_with_some_columns(
    empty_database_url: str, db: asyncpg.Connection
) -> None:
    await db.execute(
        "CREATE TABLE rows (id text PRIMARY KEY, table_id text NOT NULL, data jsonb NOT NULL)"
    )
    await db.execute(
        """INSERT INTO rows VALUES ('a', 't1', '{"n": 1}'), ('b', 't1', '{"n": 2}'),"""
        """ ('c', 't2', '{}')"""
    )
    before = await db.fetch("SELECT id, table_id, data FROM rows ORDER BY id")

    assert await run_migrate(empty_database_url) == FRESH

    assert await columns(db) == COLUMNS
    assert set(await indexes(db)) == {"rows_pkey", "rows_table_id_idx"}
    assert await db.fetch("SELECT id, table_id, data FROM rows ORDER BY id") == before
    adopted = await db.fetch("SELECT * FROM rows")
    versions = {record["version"] for record in adopted}
    assert None not in versions
    assert len(versions) == len(adopted)
    assert all(record["enriching_columns"] == [] for record in adopted)
    assert all(record["created_at"] == record["updated_at"] for record in adopted)

    header, row = await notification(
        empty_database_url, db, """UPDATE rows SET data = '{"n": 3}' WHERE id = 'a'"""
    )
    assert header["op"] == "UPDATE"
    assert header["version"] > max(versions)
    assert row["data"] == {"n": 3}
    assert row["created_at"] < row["updated_at"]
    header, row = await notification(
        empty_database_url, db, "INSERT INTO rows (table_id) VALUES ('t3')"
    )
    assert header["op"] == "INSERT"
    assert len(row["id"]) == 36


async def test_adopts_a_table_without_key_or_table_id(
    empty_database_url: str, db: asyncpg.Connection
) -> None:
    await db.execute("CREATE TABLE rows (data jsonb, version bigint)")
    await db.execute("""INSERT INTO rows VALUES ('{"n": 1}', 41), ('{"n": 2}', NULL)""")

    assert await run_migrate(empty_database_url) == FRESH

    assert await columns(db) == COLUMNS
    assert "UNIQUE INDEX rows_pkey" in (await indexes(db))["rows_pkey"]
    adopted = await db.fetch("SELECT * FROM rows ORDER BY data->>'n'")
    assert [json.loads(record["data"]) for record in adopted] == [{"n": 1}, {"n": 2}]
    assert {record["table_id"] for record in adopted} == {"default"}
    assert len({record["id"] for record in adopted}) == 2
    assert adopted[0]["version"] == 41
    assert adopted[1]["version"] > 41
    # The adoption default is for rows that predate the column, not for new ones.
    with pytest.raises(asyncpg.NotNullViolationError):
        await db.execute("INSERT INTO rows (data) VALUES ('{}')")

    header, _ = await notification(
        empty_database_url, db, "INSERT INTO rows (table_id) VALUES ('t1')"
    )
    assert header["version"] > adopted[1]["version"]


async def test_adoption_replaces_an_index_left_invalid(
    empty_database_url: str, db: asyncpg.Connection
) -> None:
    await db.execute("CREATE TABLE rows (id text PRIMARY KEY, table_id text NOT NULL)")
    await db.execute("INSERT INTO rows VALUES ('a', 't1'), ('b', 't1')")
    # A concurrent build that fails (here on the duplicate) leaves its index invalid.
    with pytest.raises(asyncpg.UniqueViolationError):
        await db.execute("CREATE UNIQUE INDEX CONCURRENTLY rows_table_id_idx ON rows (table_id)")

    assert await run_migrate(empty_database_url) == FRESH

    assert await db.fetchval(
        "SELECT indisvalid AND NOT indisunique FROM pg_index"
        " WHERE indexrelid = 'rows_table_id_idx'::regclass"
    )


async def test_refuses_a_table_with_an_incompatible_column(
    empty_database_url: str, db: asyncpg.Connection
) -> None:
    await db.execute("CREATE TABLE rows (id text PRIMARY KEY, table_id text, data json)")
    await db.execute("""INSERT INTO rows VALUES ('a', 't1', '{"n": 1}')""")

    with pytest.raises(MigrationError, match=r"rows\.data is json, not jsonb"):
        await run_migrate(empty_database_url)

    assert await columns(db) == {"id": "text", "table_id": "text", "data": "json"}
    assert await triggers(db) == {}
    # The failed revision left nothing behind, not even the version table.
    assert await db.fetchval("SELECT to_regclass('alembic_version')") is None
    assert await db.fetchval("SELECT to_regclass('broadcaster_version_seq')") is None


async def test_adopting_a_complete_table_does_not_block_writers(
    database_url: str,
) -> None:
    conn = await asyncpg.connect(database_url)
    try:
        await conn.execute("DROP TABLE alembic_version")
    finally:
        await conn.close()

    report = await migrate_beside_open_writer(database_url, wait_units=15)

    assert report == MigrationReport(applied_revisions=["0001"], triggers_installed=False)


async def test_current_schema_does_not_block_writers(database_url: str) -> None:
    report = await migrate_beside_open_writer(database_url, wait_units=15)

    assert report == CURRENT


async def test_reinstalling_triggers_waits_for_writers(database_url: str) -> None:
    """The counterpart of the test above: it would notice a migrate() that waits."""
    conn = await asyncpg.connect(database_url)
    try:
        await conn.execute("COMMENT ON FUNCTION broadcaster_after_write() IS NULL")
    finally:
        await conn.close()

    assert await migrate_beside_open_writer(database_url, wait_units=2) is None


@pytest.mark.parametrize(
    "tampering",
    [
        "COMMENT ON FUNCTION broadcaster_after_write() IS 'broadcaster triggers sha256:0000'",
        "COMMENT ON FUNCTION broadcaster_after_write() IS NULL",
        "DROP FUNCTION broadcaster_after_write() CASCADE",
    ],
    ids=["stale-hash", "no-hash", "dropped"],
)
async def test_changed_triggers_are_reinstalled(database_url: str, tampering: str) -> None:
    db = await asyncpg.connect(database_url)
    try:
        await db.execute(tampering)

        report = await run_migrate(database_url)

        assert report == MigrationReport(applied_revisions=[], triggers_installed=True)
        assert await triggers_comment(db) == expected_comment()
        assert set(await triggers(db)) == TRIGGERS
        header, _ = await notification(
            database_url, db, "INSERT INTO rows (table_id) VALUES ('t1')"
        )
        assert header["op"] == "INSERT"
        assert await run_migrate(database_url) == CURRENT
    finally:
        await db.close()


async def test_concurrent_runs_migrate_once(
    empty_database_url: str, db: asyncpg.Connection
) -> None:
    processes = [
        await asyncio.create_subprocess_exec(
            sys.executable,
            "-c",
            MIGRATE_IN_A_PROCESS,
            empty_database_url,
            cwd=REPO_ROOT,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        for _ in range(4)
    ]
    try:
        for process in processes:
            assert process.stdout is not None
            assert await within(process.stdout.readline(), units=30) == b"ready\n"
        for process in processes:
            assert process.stdin is not None
            process.stdin.write(b"go\n")
            await process.stdin.drain()
        outputs = await within(
            asyncio.gather(*(process.communicate() for process in processes)), units=60
        )
    finally:
        for process in processes:
            if process.returncode is None:
                process.kill()
                await process.wait()

    for process, (_, stderr) in zip(processes, outputs, strict=True):
        assert process.returncode == 0, stderr.decode()
    reports = sorted(
        (MigrationReport(**json.loads(stdout)) for stdout, _ in outputs),
        key=lambda report: report.applied_revisions,
    )
    assert reports == [CURRENT, CURRENT, CURRENT, FRESH]
    assert set(await triggers(db)) == TRIGGERS


async def test_unreachable_database_raises_migration_error(empty_database_url: str) -> None:
    missing = with_database(empty_database_url, "bt_no_such_database")

    with pytest.raises(MigrationError, match="connecting to the database") as raised:
        await run_migrate(missing)

    assert isinstance(raised.value.__cause__, asyncpg.InvalidCatalogNameError)


async def test_calling_from_a_running_loop_points_to_a_thread(empty_database_url: str) -> None:
    with pytest.raises(RuntimeError, match=r"asyncio\.to_thread"):
        migrate(empty_database_url)
