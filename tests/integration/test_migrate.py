"""``broadcaster.postgres.migrate.migrate()`` against real databases.

Covers a fresh database, a second run, upgrading a database of revision 0001
(that of release 0.1.0, revision 0005, has test_migrate_release_0x.py), adopting
a ``rows`` table that predates the broadcaster (and objects of later revisions
that already exist), reinstalling changed triggers, concurrent runs, the
minimum Postgres version, and the property servers rely on to migrate at every
start: on a current schema it never waits for a writer of ``rows``.

What the triggers do with the tables is test_triggers.py's subject; here they
only need to be installed and to fire.
"""

from __future__ import annotations

import asyncio
import hashlib
import importlib.util
import json
import sys
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from types import ModuleType
from typing import Any, TypeVar, cast

import asyncpg
import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import Connection
from sqlalchemy.ext.asyncio import create_async_engine
from sqlalchemy.pool import NullPool

from broadcaster.exceptions import MigrationError
from broadcaster.postgres.migrate import MigrationReport, migrate
from broadcaster.postgres.resources import schema_dir, triggers_sql
from tests.support.database import with_database
from tests.support.migrations import RELEASE_0X, upgrade_to, upgrade_to_release_0x
from tests.support.timeouts import seconds, within
from tests.support.wakeups import listening
from tests.support.writers import MOMENT, writing, written_after

T = TypeVar("T")

REPO_ROOT = Path(__file__).resolve().parents[2]
TRIGGERS = {
    "broadcaster_capture",
    "broadcaster_capture_truncate",
}
COLUMNS = {
    "id": "text",
    "table_id": "text",
    "data": "jsonb",
    "enriching_columns": "text[]",
    "created_at": "timestamp with time zone",
    "updated_at": "timestamp with time zone",
}
INDEXES = {
    "rows_pkey": "CREATE UNIQUE INDEX rows_pkey ON public.rows USING btree (id)",
    "rows_table_id_idx": "CREATE INDEX rows_table_id_idx ON public.rows USING btree (table_id)",
}
CHANGE_COLUMNS = {
    "bucket": "smallint",
    "xid": "xid8",
    "seq": "bigint",
    "at": "timestamp with time zone",
    "table_id": "text",
    "id": "text",
    "op": "text",
    "new": "jsonb",
    "old": "jsonb",
}
CHANGE_INDEXES = {
    "broadcaster_changes_xid_idx": "CREATE INDEX broadcaster_changes_xid_idx"
    " ON ONLY public.broadcaster_changes USING btree (xid)",
}
STATE_COLUMNS = {"singleton": "boolean", "pruned_below": "xid8", "logged_since": "xid8"}
# The stamping design's objects, which revision 0007 drops.
STAMPING_SEQUENCE = "broadcaster_version_seq"
# The schema of release 0.x (revision 0005), which revisions 0006 and 0007 replace.
RELEASE_0X_COLUMNS = {
    **COLUMNS,
    "version": "bigint",
    "changed_xid": "xid8",
    "inserted_xid": "xid8",
}
RELEASE_0X_STATE_COLUMNS = {"singleton": "boolean", "pruned_below": "xid8"}
RELEASE_0X_INDEXES = {
    "rows_pkey": INDEXES["rows_pkey"],
    "rows_table_id_changed_xid_idx": "CREATE INDEX rows_table_id_changed_xid_idx"
    " ON public.rows USING btree (table_id, changed_xid)",
}
TOMBSTONE_COLUMNS = {
    "table_id": "text",
    "id": "text",
    "version": "bigint",
    "xid": "xid8",
    "deleted_at": "timestamp with time zone",
    "tombstone_id": "bigint",
}
TOMBSTONE_INDEXES = {
    "broadcaster_tombstones_pkey": "CREATE UNIQUE INDEX broadcaster_tombstones_pkey"
    " ON public.broadcaster_tombstones USING btree (tombstone_id)",
    "broadcaster_tombstones_table_id_xid_idx": "CREATE INDEX"
    " broadcaster_tombstones_table_id_xid_idx"
    " ON public.broadcaster_tombstones USING btree (table_id, xid)",
    "broadcaster_tombstones_deleted_at_idx": "CREATE INDEX broadcaster_tombstones_deleted_at_idx"
    " ON public.broadcaster_tombstones USING btree (deleted_at)",
    "broadcaster_tombstones_table_id_id_idx": "CREATE INDEX broadcaster_tombstones_table_id_id_idx"
    " ON public.broadcaster_tombstones USING btree (table_id, id, version)",
}
# The change log's partitions, as revision 0007 creates them.
BUCKETS = 32
HEAD = ["0001", "0002", "0003", "0004", "0005", "0006", "0007"]
FRESH = MigrationReport(applied_revisions=HEAD, triggers_installed=True)
CURRENT = MigrationReport(applied_revisions=[], triggers_installed=False)
# Waits for a line on stdin once imported, so that the runs start together.
MIGRATE_IN_A_PROCESS = """
import dataclasses, json, sys
from broadcaster.postgres.migrate import migrate
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


async def columns(db: asyncpg.Connection, table: str = "rows") -> dict[str, str]:
    records = await db.fetch(
        "SELECT attname, format_type(atttypid, atttypmod) FROM pg_attribute"
        " WHERE attrelid = $1::regclass AND attnum > 0 AND NOT attisdropped",
        table,
    )
    return {name: type_ for name, type_ in records}


async def indexes(db: asyncpg.Connection, table: str = "rows") -> dict[str, str]:
    records = await db.fetch(
        "SELECT indexname, indexdef FROM pg_indexes WHERE tablename = $1", table
    )
    return {name: definition for name, definition in records}


async def valid_indexes(db: asyncpg.Connection) -> set[str]:
    records = await db.fetch("SELECT indexrelid::regclass::text FROM pg_index WHERE indisvalid")
    return {name for (name,) in records}


async def relations(db: asyncpg.Connection) -> dict[str, int]:
    """Name to oid of each table, index and sequence; a rebuilt one has a new oid."""
    records = await db.fetch(
        "SELECT relname, oid FROM pg_class"
        " WHERE relnamespace = 'public'::regnamespace AND relkind IN ('r', 'p', 'i', 'I', 'S')"
    )
    return {name: oid for name, oid in records}


async def exists(db: asyncpg.Connection, relation: str) -> bool:
    return bool(await db.fetchval("SELECT to_regclass($1) IS NOT NULL", relation))


async def partitions(db: asyncpg.Connection, parent: str) -> dict[str, str | None]:
    """Name of each partition of ``parent`` to its bound (or, for an index, None)."""
    records = await db.fetch(
        "SELECT c.relname, pg_get_expr(c.relpartbound, c.oid) FROM pg_inherits AS i"
        " JOIN pg_class AS c ON c.oid = i.inhrelid WHERE i.inhparent = $1::regclass",
        parent,
    )
    return {name: bound for name, bound in records}


async def assert_head_objects(db: asyncpg.Connection) -> None:
    """The objects of the head revision are all there, and the stamping design's are gone."""
    assert await columns(db) == COLUMNS
    assert await indexes(db) == INDEXES
    assert await columns(db, "broadcaster_changes") == CHANGE_COLUMNS
    assert await indexes(db, "broadcaster_changes") == CHANGE_INDEXES
    assert await partitions(db, "broadcaster_changes") == {
        f"broadcaster_changes_{bucket}": f"FOR VALUES IN ('{bucket}')" for bucket in range(BUCKETS)
    }
    assert set(await partitions(db, "broadcaster_changes_xid_idx")) == {
        f"broadcaster_changes_{bucket}_xid_idx" for bucket in range(BUCKETS)
    }
    assert await exists(db, "broadcaster_change_seq")
    assert await columns(db, "broadcaster_state") == STATE_COLUMNS
    assert await db.fetchval("SELECT count(*) FROM broadcaster_state WHERE singleton") == 1
    assert set(INDEXES) | set(CHANGE_INDEXES) <= await valid_indexes(db)
    assert not await exists(db, "broadcaster_tombstones")
    assert not await exists(db, STAMPING_SEQUENCE)


async def assert_release_0x_objects(db: asyncpg.Connection) -> None:
    """The objects of revision 0005 (release 0.x) are all there, with the single state row."""
    assert await columns(db) == RELEASE_0X_COLUMNS
    assert await indexes(db) == RELEASE_0X_INDEXES
    assert await columns(db, "broadcaster_tombstones") == TOMBSTONE_COLUMNS
    assert await indexes(db, "broadcaster_tombstones") == TOMBSTONE_INDEXES
    assert await columns(db, "broadcaster_state") == RELEASE_0X_STATE_COLUMNS
    assert [tuple(r) for r in await db.fetch("SELECT * FROM broadcaster_state")] == [(True, 1)]
    assert set(RELEASE_0X_INDEXES) | set(TOMBSTONE_INDEXES) <= await valid_indexes(db)
    assert await exists(db, STAMPING_SEQUENCE)


async def triggers(db: asyncpg.Connection) -> dict[str, int]:
    """Name to oid of each trigger on rows; a reinstalled trigger has a new oid."""
    records = await db.fetch(
        "SELECT tgname, oid FROM pg_trigger WHERE tgrelid = 'rows'::regclass AND NOT tgisinternal"
    )
    return {name: oid for name, oid in records}


async def triggers_comment(db: asyncpg.Connection) -> str | None:
    comment: str | None = await db.fetchval(
        "SELECT obj_description(to_regprocedure('broadcaster_capture()'), 'pg_proc')"
    )
    return comment


def expected_comment() -> str:
    return "broadcaster triggers sha256:" + hashlib.sha256(triggers_sql().encode()).hexdigest()


async def wakes_up(url: str, db: asyncpg.Connection, statement: str) -> None:
    """Run ``statement`` on ``db`` and wait for the wake-up it sends, whatever its payload."""
    # As a server with a subscriber of every table: every write notifies.
    await db.execute(
        "INSERT INTO broadcaster_listeners (table_id, process, polling_until)"
        " VALUES ('', 'tests', '-infinity') ON CONFLICT DO NOTHING"
    )
    async with listening(url) as payloads:
        await db.execute(statement)
        await within(payloads.get())


async def migrate_beside_open_writer(
    url: str, wait_units: float, run: Callable[[str], T]
) -> T | None:
    """Run ``run`` (migrate, or a release's upgrade) while a writer holds a row of ``rows`` locked.

    Returns what it returned if it finished within ``wait_units`` while that
    transaction was still open, None if it was still waiting. The writer then
    commits and ``run`` is awaited either way, so no thread outlives the test.
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

        migration = asyncio.ensure_future(asyncio.to_thread(run, url))
        try:
            done, _ = await asyncio.wait({migration}, timeout=seconds(wait_units))
        finally:
            await transaction.commit()
            result = await within(migration, units=30)
    finally:
        await writer.close()
    return result if migration in done else None


async def logged(db: asyncpg.Connection) -> list[tuple[str, str, str]]:
    """(table_id, id, op) of each entry of the change log, in order."""
    records = await db.fetch("SELECT table_id, id, op FROM broadcaster_changes ORDER BY seq")
    return [(table_id, id_, op) for table_id, id_, op in records]


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


async def test_empty_database_gets_tables_indexes_sequence_and_triggers(
    empty_database_url: str, db: asyncpg.Connection
) -> None:
    assert await run_migrate(empty_database_url) == FRESH

    # 0001 to 0005 built the stamping design, 0006 and 0007 replaced it.
    await assert_head_objects(db)
    assert set(await triggers(db)) == TRIGGERS
    assert await triggers_comment(db) == expected_comment()
    assert await db.fetchval("SELECT version_num FROM alembic_version") == HEAD[-1]


async def test_state_table_holds_one_row_at_most(database_url: str) -> None:
    db = await asyncpg.connect(database_url)
    try:
        with pytest.raises(asyncpg.UniqueViolationError):
            await db.execute("INSERT INTO broadcaster_state DEFAULT VALUES")
        with pytest.raises(asyncpg.CheckViolationError):
            await db.execute("INSERT INTO broadcaster_state VALUES (false)")
        # Pruning state moves forward in place.
        await db.execute("UPDATE broadcaster_state SET pruned_below = pg_current_xact_id()")
        assert await db.fetchval("SELECT count(*) FROM broadcaster_state") == 1
    finally:
        await db.close()


async def test_migrated_schema_matches_the_models(database_url: str) -> None:
    engine = create_async_engine(
        "postgresql+asyncpg://",
        async_creator=lambda: asyncpg.connect(database_url),
        poolclass=NullPool,
    )

    def differences(connection: Connection) -> list[Any]:
        models = load_models()
        # As env.py configures it: the log's partitions are not modelled one by one.
        context = MigrationContext.configure(connection, opts={"include_name": models.include_name})
        # Typed Any by alembic, documented as a list of differences.
        return cast("list[Any]", compare_metadata(context, models.Base.metadata))

    try:
        async with engine.connect() as connection:
            assert await connection.run_sync(differences) == []
    finally:
        await engine.dispose()


async def test_second_run_changes_nothing(empty_database_url: str, db: asyncpg.Connection) -> None:
    await run_migrate(empty_database_url)
    installed = await triggers(db)
    created = await relations(db)

    assert await run_migrate(empty_database_url) == CURRENT
    assert await triggers(db) == installed
    assert await relations(db) == created
    assert await db.fetchval("SELECT count(*) FROM broadcaster_state") == 1


async def test_upgrades_a_database_of_revision_0001(
    empty_database_url: str, db: asyncpg.Connection
) -> None:
    """The upgrade of the oldest deployments: their rows keep their data, and are logged."""
    await within(asyncio.to_thread(upgrade_to, empty_database_url, "0001"), units=30)
    await db.execute(
        """INSERT INTO rows (id, table_id, data) VALUES ('a', 't1', '{"n": 1}'),"""
        """ ('b', 't2', '{"n": 2}')"""
    )
    before = await db.fetch("SELECT * FROM rows ORDER BY id")
    assert "rows_table_id_idx" in await indexes(db)

    assert await run_migrate(empty_database_url) == MigrationReport(
        applied_revisions=HEAD[1:], triggers_installed=True
    )

    await assert_head_objects(db)
    after = await db.fetch("SELECT * FROM rows ORDER BY id")
    assert [dict(record) for record in after] == [
        {name: value for name, value in record.items() if name != "version"} for record in before
    ]
    assert await logged(db) == []
    await wakes_up(empty_database_url, db, """UPDATE rows SET data = '{"n": 3}' WHERE id = 'a'""")
    assert await logged(db) == [("t1", "a", "UPDATE")]


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

    await assert_head_objects(db)
    assert await db.fetch("SELECT id, table_id, data FROM rows ORDER BY id") == before
    adopted = await db.fetch("SELECT * FROM rows")
    assert all(record["enriching_columns"] == [] for record in adopted)
    assert all(record["created_at"] == record["updated_at"] for record in adopted)
    # The rows predate the log: adopting them logs nothing.
    assert await logged(db) == []

    await wakes_up(empty_database_url, db, """UPDATE rows SET data = '{"n": 3}' WHERE id = 'a'""")
    assert await logged(db) == [("t1", "a", "UPDATE")]
    await wakes_up(empty_database_url, db, "INSERT INTO rows (table_id) VALUES ('t3')")
    inserted = await db.fetchrow("SELECT * FROM rows WHERE table_id = 't3'")
    assert inserted is not None
    assert len(inserted["id"]) == 36
    assert await logged(db) == [("t1", "a", "UPDATE"), ("t3", inserted["id"], "INSERT")]


async def test_adopts_a_table_without_key_or_table_id(
    empty_database_url: str, db: asyncpg.Connection
) -> None:
    await db.execute("CREATE TABLE rows (data jsonb, version bigint)")
    await db.execute("""INSERT INTO rows VALUES ('{"n": 1}', 41), ('{"n": 2}', NULL)""")

    assert await run_migrate(empty_database_url) == FRESH

    # 0001 adopted version as the stamping design's column, which 0007 dropped.
    assert await columns(db) == COLUMNS
    assert "UNIQUE INDEX rows_pkey" in (await indexes(db))["rows_pkey"]
    adopted = await db.fetch("SELECT * FROM rows ORDER BY data->>'n'")
    assert [json.loads(record["data"]) for record in adopted] == [{"n": 1}, {"n": 2}]
    assert {record["table_id"] for record in adopted} == {"default"}
    assert len({record["id"] for record in adopted}) == 2
    # The adoption default is for rows that predate the column, not for new ones.
    with pytest.raises(asyncpg.NotNullViolationError):
        await db.execute("INSERT INTO rows (data) VALUES ('{}')")

    await wakes_up(empty_database_url, db, "INSERT INTO rows (table_id) VALUES ('t1')")
    assert [op for table_id, _, op in await logged(db) if table_id == "t1"] == ["INSERT"]


async def test_adoption_replaces_an_index_left_invalid(
    empty_database_url: str, db: asyncpg.Connection
) -> None:
    await db.execute("CREATE TABLE rows (id text PRIMARY KEY, table_id text NOT NULL)")
    await db.execute("INSERT INTO rows VALUES ('a', 't1'), ('b', 't1')")
    # A concurrent build that fails (here on the duplicate) leaves its index invalid.
    with pytest.raises(asyncpg.UniqueViolationError):
        await db.execute("CREATE UNIQUE INDEX CONCURRENTLY rows_table_id_idx ON rows (table_id)")

    assert await run_migrate(empty_database_url) == FRESH

    # 0001 replaced it, 0002 dropped the replacement in favour of its own, and
    # 0006 built it again for 0007 to drop that one.
    await assert_head_objects(db)


async def leave_invalid_index(db: asyncpg.Connection, name: str, on: str) -> None:
    """A concurrent build of index ``name`` that failed on duplicates, leaving it invalid."""
    with pytest.raises(asyncpg.UniqueViolationError):
        await db.execute(f"CREATE UNIQUE INDEX CONCURRENTLY {name} ON {on}")


async def test_replaces_a_changed_xid_index_left_invalid(
    empty_database_url: str, db: asyncpg.Connection
) -> None:
    """0002 on a database whose concurrent build of its index failed; 0007 drops the index."""
    await within(asyncio.to_thread(upgrade_to, empty_database_url, "0001"), units=30)
    await db.execute("ALTER TABLE rows ADD COLUMN changed_xid xid8")
    await db.execute(
        "INSERT INTO rows (id, table_id, changed_xid) VALUES ('a', 't1', '5'), ('b', 't1', '5')"
    )
    await leave_invalid_index(db, "rows_table_id_changed_xid_idx", "rows (table_id, changed_xid)")

    await within(asyncio.to_thread(upgrade_to, empty_database_url, RELEASE_0X), units=30)

    await assert_release_0x_objects(db)
    assert await run_migrate(empty_database_url) == MigrationReport(
        applied_revisions=["0006", "0007"], triggers_installed=True
    )
    await assert_head_objects(db)


async def test_replaces_a_tombstones_by_id_index_left_invalid(
    empty_database_url: str, db: asyncpg.Connection
) -> None:
    """0005 on a database of 0004 whose concurrent build of its index failed."""
    await within(asyncio.to_thread(upgrade_to, empty_database_url, "0004"), units=30)
    await db.execute(
        "INSERT INTO broadcaster_tombstones (table_id, id, version, xid)"
        " VALUES ('t1', 'a', 3, '5'), ('t1', 'a', 3, '6')"
    )
    await leave_invalid_index(
        db,
        "broadcaster_tombstones_table_id_id_idx",
        "broadcaster_tombstones (table_id, id, version)",
    )

    await within(asyncio.to_thread(upgrade_to, empty_database_url, "0005"), units=30)

    await assert_release_0x_objects(db)
    assert await run_migrate(empty_database_url) == MigrationReport(
        applied_revisions=["0006", "0007"], triggers_installed=True
    )
    await assert_head_objects(db)


async def test_replaces_a_table_id_index_left_invalid(
    empty_database_url: str, db: asyncpg.Connection
) -> None:
    """0006 on a database of release 0.x whose concurrent build of its index failed."""
    await within(asyncio.to_thread(upgrade_to_release_0x, empty_database_url), units=30)
    await db.execute("INSERT INTO rows (id, table_id) VALUES ('a', 't1'), ('b', 't1')")
    await leave_invalid_index(db, "rows_table_id_idx", "rows (table_id)")

    assert await run_migrate(empty_database_url) == MigrationReport(
        applied_revisions=["0006", "0007"], triggers_installed=True
    )

    await assert_head_objects(db)
    assert await db.fetchval("SELECT count(*) FROM rows") == 2


async def test_adopts_changefeed_objects_that_exist(
    empty_database_url: str, db: asyncpg.Connection
) -> None:
    """Some of 0002's objects already exist: it adds only what is missing, and keeps data."""
    await within(asyncio.to_thread(upgrade_to, empty_database_url, "0001"), units=30)
    await db.execute("ALTER TABLE rows ADD COLUMN inserted_xid xid8")
    await db.execute("INSERT INTO rows (id, table_id, inserted_xid) VALUES ('a', 't1', '7')")
    await db.execute(
        "CREATE TABLE broadcaster_tombstones (table_id text NOT NULL, id text NOT NULL,"
        " version bigint NOT NULL, xid xid8 NOT NULL, deleted_at timestamptz NOT NULL,"
        " tombstone_id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY)"
    )
    await db.execute(
        "INSERT INTO broadcaster_tombstones (table_id, id, version, xid, deleted_at)"
        " VALUES ('t1', 'gone', 3, '6', now())"
    )
    await db.execute(
        "CREATE TABLE broadcaster_state (singleton boolean PRIMARY KEY DEFAULT true"
        " CONSTRAINT broadcaster_state_singleton_check CHECK (singleton),"
        " pruned_below xid8 NOT NULL DEFAULT '1')"
    )
    tombstones = await db.fetch("SELECT * FROM broadcaster_tombstones")

    await within(asyncio.to_thread(upgrade_to, empty_database_url, RELEASE_0X), units=30)

    await assert_release_0x_objects(db)
    assert await db.fetch("SELECT * FROM broadcaster_tombstones") == tombstones
    xids = await db.fetchrow("SELECT changed_xid, inserted_xid FROM rows")
    assert xids is not None
    assert tuple(xids) == (None, 7)
    # The missing default was added.
    await db.execute(
        "INSERT INTO broadcaster_tombstones (table_id, id, version, xid) VALUES ('t1', 'x', 4, '8')"
    )
    # And on to the change log, which needs none of them: the row stays.
    assert await run_migrate(empty_database_url) == MigrationReport(
        applied_revisions=["0006", "0007"], triggers_installed=True
    )
    await assert_head_objects(db)
    assert [tuple(r) for r in await db.fetch("SELECT id, table_id FROM rows")] == [("a", "t1")]


async def test_refuses_a_changefeed_table_with_an_incompatible_column(
    empty_database_url: str, db: asyncpg.Connection
) -> None:
    await within(asyncio.to_thread(upgrade_to, empty_database_url, "0001"), units=30)
    await db.execute(
        "CREATE TABLE broadcaster_tombstones (table_id text, id text, version bigint, xid bigint,"
        " deleted_at timestamptz)"
    )

    with pytest.raises(MigrationError, match=r"broadcaster_tombstones\.xid is bigint, not xid8"):
        await run_migrate(empty_database_url)

    assert await db.fetchval("SELECT version_num FROM alembic_version") == "0001"
    assert "changed_xid" not in await columns(db)
    assert await db.fetchval("SELECT to_regclass('broadcaster_state')") is None


async def test_refuses_an_index_of_the_right_name_on_other_columns(
    empty_database_url: str, db: asyncpg.Connection
) -> None:
    """Dropping rows_table_id_idx relies on rows_table_id_changed_xid_idx leading with table_id."""
    await within(asyncio.to_thread(upgrade_to, empty_database_url, "0001"), units=30)
    await db.execute("ALTER TABLE rows ADD COLUMN changed_xid xid8")
    await db.execute("CREATE INDEX rows_table_id_changed_xid_idx ON rows (changed_xid)")

    with pytest.raises(MigrationError, match="rows_table_id_changed_xid_idx is not the one"):
        await run_migrate(empty_database_url)

    assert "rows_table_id_idx" in await indexes(db)


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
    empty_database_url: str, db: asyncpg.Connection
) -> None:
    """0001 to 0005 on a database that has all their objects only read the catalog.

    At the revision that made them (the stamping design): 0007 drops some of them.
    """
    await within(asyncio.to_thread(upgrade_to_release_0x, empty_database_url), units=30)
    await db.execute("DROP TABLE alembic_version")

    applied = await migrate_beside_open_writer(
        empty_database_url, wait_units=15, run=upgrade_to_release_0x
    )

    assert applied == HEAD[: HEAD.index(RELEASE_0X) + 1]


async def test_readopting_the_change_log_drops_what_the_stamping_revisions_add_back(
    database_url: str,
) -> None:
    """A database at head that lost alembic_version.

    0001 to 0005 adopt it as the stamping design (adding its columns and
    tombstones back, which rewrites rows), and 0007 drops them again, keeping
    the log, the rows and the installed triggers.
    """
    # Written in a session of its own: this one's write would remember for a
    # moment that no server serves t1, and skip the wake-up awaited below.
    writer = await asyncpg.connect(database_url)
    try:
        await writer.execute(
            """INSERT INTO rows (id, table_id, data) VALUES ('a', 't1', '{"n": 1}')"""
        )
    finally:
        await writer.close()
    db = await asyncpg.connect(database_url)
    try:
        await db.execute("DROP TABLE alembic_version")
        before = await db.fetch("SELECT * FROM rows")
        entries = await logged(db)

        assert await run_migrate(database_url) == MigrationReport(
            applied_revisions=HEAD, triggers_installed=False
        )

        await assert_head_objects(db)
        assert await db.fetch("SELECT * FROM rows") == before
        assert await logged(db) == entries
        assert await triggers_comment(db) == expected_comment()
        await wakes_up(database_url, db, """UPDATE rows SET data = '{"n": 2}' WHERE id = 'a'""")
        assert await logged(db) == [*entries, ("t1", "a", "UPDATE")]
    finally:
        await db.close()


async def test_adopting_complete_changefeed_objects_does_not_block_writers(
    empty_database_url: str, db: asyncpg.Connection
) -> None:
    """0002 on a database that has all its objects only reads the catalog."""
    await within(asyncio.to_thread(upgrade_to_release_0x, empty_database_url), units=30)
    await db.execute("UPDATE alembic_version SET version_num = '0001'")

    applied = await migrate_beside_open_writer(
        empty_database_url, wait_units=15, run=upgrade_to_release_0x
    )

    assert applied == ["0002", "0003", "0004", "0005"]


async def test_readopting_the_change_log_objects_does_not_block_writers(
    database_url: str,
) -> None:
    """0006 and 0007 on a database that has all their objects only read the catalog."""
    conn = await asyncpg.connect(database_url)
    try:
        await conn.execute(f"UPDATE alembic_version SET version_num = '{RELEASE_0X}'")
    finally:
        await conn.close()

    report = await migrate_beside_open_writer(database_url, wait_units=15, run=migrate)

    assert report == MigrationReport(applied_revisions=["0006", "0007"], triggers_installed=False)


async def test_current_schema_does_not_block_writers(database_url: str) -> None:
    report = await migrate_beside_open_writer(database_url, wait_units=15, run=migrate)

    assert report == CURRENT


async def test_reinstalling_triggers_waits_for_writers(database_url: str) -> None:
    """The counterpart of the test above: it would notice a migrate() that waits.

    It waits a little at a time: meanwhile, other writers of rows never wait
    for more than a moment behind its lock request.
    """
    conn = await asyncpg.connect(database_url)
    try:
        await conn.execute("COMMENT ON FUNCTION broadcaster_capture() IS NULL")
        await conn.execute("INSERT INTO rows (id, table_id) VALUES ('x1', 't2'), ('x2', 't2')")
    finally:
        await conn.close()

    async with writing(database_url, ["x1", "x2"]) as writers:
        report = await migrate_beside_open_writer(database_url, wait_units=3 * MOMENT, run=migrate)
        await written_after(writers, time.perf_counter())

    assert report is None
    assert max(writer.longest_wait() for writer in writers) < seconds(MOMENT)


@pytest.mark.parametrize(
    "tampering",
    [
        "COMMENT ON FUNCTION broadcaster_capture() IS 'broadcaster triggers sha256:0000'",
        "COMMENT ON FUNCTION broadcaster_capture() IS NULL",
        "DROP FUNCTION broadcaster_capture() CASCADE",
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
        await wakes_up(database_url, db, "INSERT INTO rows (table_id) VALUES ('t1')")
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


async def test_refuses_a_server_older_than_the_minimum(
    empty_database_url: str, db: asyncpg.Connection, monkeypatch: pytest.MonkeyPatch
) -> None:
    # No Postgres 12 at hand: raise the minimum above this server instead.
    monkeypatch.setattr("broadcaster.postgres.migrate._MINIMUM_SERVER_VERSION_NUM", 990000)

    with pytest.raises(
        MigrationError, match=r"Postgres .+ is too old: .* needs Postgres 99 or later"
    ):
        await run_migrate(empty_database_url)

    assert await db.fetchval("SELECT to_regclass('alembic_version')") is None
    assert await db.fetchval("SELECT to_regclass('rows')") is None


async def test_unreachable_database_raises_migration_error(empty_database_url: str) -> None:
    missing = with_database(empty_database_url, "bt_no_such_database")

    with pytest.raises(MigrationError, match="connecting to the database") as raised:
        await run_migrate(missing)

    assert isinstance(raised.value.__cause__, asyncpg.InvalidCatalogNameError)


async def test_calling_from_a_running_loop_points_to_a_thread(empty_database_url: str) -> None:
    with pytest.raises(RuntimeError, match=r"asyncio\.to_thread"):
        migrate(empty_database_url)
