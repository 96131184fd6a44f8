"""broadcaster.postgres.publishing on a migrated database: any table's changes in the change log.

Each test publishes tables of its own, writes them, and reads the change log
straight from its table; the locking tests hold a writer's transaction open
beside the publish.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator

import asyncpg
import pytest

from broadcaster.core.publishing import Action
from broadcaster.exceptions import MigrationError
from broadcaster.postgres import catalog
from broadcaster.postgres.migrate import MigrationReport, migrate
from broadcaster.postgres.publishing import publish, unpublish
from tests.support.change_log import entries
from tests.support.timeouts import seconds, within
from tests.support.writers import MOMENT, writing, written_after


@pytest.fixture
async def db(database_url: str) -> AsyncIterator[asyncpg.Connection]:
    conn = await asyncpg.connect(database_url)
    yield conn
    await conn.close()


UUID = "6f1c2a4e-9b7d-4c3a-8e21-5d0f7a9b3c11"


@pytest.mark.parametrize(
    ("columns", "key_value", "key_text"),
    [
        ("id int PRIMARY KEY", "1", "1"),
        ("id bigint PRIMARY KEY", "9007199254740993", "9007199254740993"),
        ("id text PRIMARY KEY", "'k1'", "k1"),
        ("id uuid PRIMARY KEY", f"'{UUID}'", UUID),
        ("a int, b text, PRIMARY KEY (a, b)", "1, 'x'", '[1, "x"]'),
        ("a text, b date, PRIMARY KEY (b, a)", "'x', '2026-03-01'", '["2026-03-01", "x"]'),
    ],
    ids=["int", "bigint", "text", "uuid", "composite", "composite-in-key-order"],
)
async def test_every_change_of_a_published_table_is_logged_under_its_name_and_key(
    db: asyncpg.Connection, columns: str, key_value: str, key_text: str
) -> None:
    await db.execute(f"CREATE TABLE things ({columns}, note text)")

    outcome = await publish(db, "things")

    assert outcome.action is Action.PUBLISHED, outcome.message
    await db.execute(f"INSERT INTO things VALUES ({key_value}, 'first')")
    await db.execute("UPDATE things SET note = 'second'")
    await db.execute("UPDATE things SET note = 'second'")  # changes nothing: not logged
    await db.execute("DELETE FROM things")
    logged = [
        (op, t, i, new and new["note"], old and old["note"])
        for op, t, i, new, old in await entries(db)
    ]
    assert logged == [
        ("INSERT", "public.things", key_text, "first", None),
        ("UPDATE", "public.things", key_text, "second", "first"),
        ("DELETE", "public.things", key_text, None, "second"),
    ]


async def test_images_are_whole_rows_and_truncate_deletes_each(db: asyncpg.Connection) -> None:
    await db.execute("CREATE TABLE items (id int PRIMARY KEY, name text, tags text[])")
    await publish(db, "items")

    await db.execute("INSERT INTO items VALUES (1, 'a', '{x,y}'), (2, 'b', '{}')")
    await db.execute("TRUNCATE items")

    logged = await entries(db)
    assert logged[0] == (
        "INSERT",
        "public.items",
        "1",
        {"id": 1, "name": "a", "tags": ["x", "y"]},
        None,
    )
    assert sorted((op, i, old["name"]) for op, _, i, _, old in logged[2:]) == [
        ("DELETE", "1", "a"),
        ("DELETE", "2", "b"),
    ]


@pytest.mark.parametrize(
    ("columns", "values", "keys"),
    [
        ("id int PRIMARY KEY, t float8", "(1, 2.5), (2, 3.5)", ["1", "2"]),
        ("t int, id int, PRIMARY KEY (t, id)", "(1, 2), (3, 4)", ["[1, 2]", "[3, 4]"]),
    ],
    ids=["column-t", "key-column-t"],
)
async def test_truncate_logs_whole_rows_of_a_table_with_a_column_named_t(
    db: asyncpg.Connection, columns: str, values: str, keys: list[str]
) -> None:
    # t is what the capture of a TRUNCATE calls each row: a column of that
    # name once took the row's place, and the TRUNCATE failed.
    await db.execute(f"CREATE TABLE items ({columns})")
    await publish(db, "items")
    await db.execute(f"INSERT INTO items VALUES {values}")
    rows = [json.loads(r[0]) for r in await db.fetch("SELECT to_jsonb(i)::text FROM items AS i")]

    await db.execute("TRUNCATE items")

    deletes = [(i, old) for op, _, i, _, old in await entries(db) if op == "DELETE"]
    assert sorted(deletes, key=lambda d: d[0]) == list(zip(keys, rows, strict=True))


async def test_a_changed_key_moves_the_row(db: asyncpg.Connection) -> None:
    await db.execute("CREATE TABLE items (id int PRIMARY KEY, name text)")
    await publish(db, "items")

    await db.execute("INSERT INTO items VALUES (1, 'a')")
    await db.execute("UPDATE items SET id = 2")

    assert [(op, i) for op, _, i, _, _ in await entries(db)] == [
        ("INSERT", "1"),
        ("DELETE", "1"),
        ("INSERT", "2"),
    ]


async def test_names_that_need_quotes_are_published_under_their_stored_names(
    db: asyncpg.Connection,
) -> None:
    await db.execute('CREATE SCHEMA "App"')
    await db.execute('CREATE TABLE "App"."Order Items" ("Line No" int PRIMARY KEY, "it\'s" text)')

    outcome = await publish(db, '"App"."Order Items"')

    assert outcome.action is Action.PUBLISHED
    assert outcome.message == "App.Order Items: published, key: Line No"
    await db.execute('INSERT INTO "App"."Order Items" VALUES (7, \'x\')')
    assert [(t, i) for _, t, i, _, _ in await entries(db)] == [("App.Order Items", "7")]


async def test_a_partitioned_table_logs_its_partitions_changes_under_its_own_name(
    db: asyncpg.Connection,
) -> None:
    await db.execute(
        "CREATE TABLE m (id int, region text, note text, PRIMARY KEY (id, region))"
        " PARTITION BY LIST (region)"
    )
    await db.execute("CREATE TABLE m_eu PARTITION OF m FOR VALUES IN ('eu')")

    outcome = await publish(db, "m")

    assert outcome.message == "public.m: published with its partitions, key: id, region"
    # A partition created later gets the trigger too.
    await db.execute("CREATE TABLE m_us PARTITION OF m FOR VALUES IN ('us')")
    await db.execute("INSERT INTO m VALUES (1, 'eu', 'a'), (2, 'us', 'b')")
    await db.execute("UPDATE m_us SET note = 'c'")
    await db.execute("TRUNCATE m")
    logged = [(op, t, i) for op, t, i, _, _ in await entries(db)]
    assert logged[:3] == [
        ("INSERT", "public.m", '[1, "eu"]'),
        ("INSERT", "public.m", '[2, "us"]'),
        ("UPDATE", "public.m", '[2, "us"]'),
    ]
    assert sorted(logged[3:]) == [
        ("DELETE", "public.m", '[1, "eu"]'),
        ("DELETE", "public.m", '[2, "us"]'),
    ]
    refused = await publish(db, "m_eu")
    assert refused.refused
    assert refused.message == (
        "public.m_eu is a partition of public.m: publish public.m,"
        " whose changes are its partitions'"
    )
    assert (await catalog.published_tables(db))[0].describe() == (
        "public.m (key: id, region; partitioned)"
    )


async def test_a_table_without_a_primary_key_is_refused(db: asyncpg.Connection) -> None:
    await db.execute("CREATE TABLE loose (id int UNIQUE, note text)")

    outcome = await publish(db, "loose")

    assert outcome.refused
    assert outcome.message == (
        "public.loose has no primary key: add one (ALTER TABLE public.loose ADD PRIMARY KEY"
        " (...)) so that its changes can be identified"
    )
    relation = await catalog.relation(db, "loose")
    assert relation is not None
    assert relation.capture is None


@pytest.mark.parametrize(
    ("setup", "name", "says"),
    [
        ("", "nosuch", "nosuch: no such table"),
        ("CREATE VIEW v AS SELECT 1 AS id", "v", "public.v is a view"),
        ("", "broadcaster_changes", "public.broadcaster_changes is the broadcaster's own table"),
        ("", "pg_class", "pg_catalog.pg_class is a system catalog"),
        ('CREATE TABLE "a.b" (id int PRIMARY KEY)', '"a.b"', "holds a dot"),
    ],
)
async def test_what_cannot_be_published_is_refused_and_left_alone(
    db: asyncpg.Connection, setup: str, name: str, says: str
) -> None:
    if setup:
        await db.execute(setup)

    outcome = await publish(db, name)

    assert outcome.refused
    assert says in outcome.message
    assert [p.table.name for p in await catalog.published_tables(db)] == ["rows"]


async def test_publishing_is_idempotent_and_follows_a_changed_key(db: asyncpg.Connection) -> None:
    await db.execute("CREATE TABLE items (id int PRIMARY KEY, name text NOT NULL)")
    assert (await publish(db, "items")).action is Action.PUBLISHED

    again = await publish(db, "public.items")

    assert again.action is Action.ALREADY_PUBLISHED
    assert again.message == "public.items: already published, key: id"

    await db.execute("ALTER TABLE items DROP CONSTRAINT items_pkey, ADD PRIMARY KEY (id, name)")
    changed = await publish(db, "items")
    assert changed.action is Action.REPUBLISHED
    await db.execute("INSERT INTO items VALUES (1, 'a')")
    assert [i for _, _, i, _, _ in await entries(db)] == ['[1, "a"]']
    assert (await publish(db, "items")).action is Action.ALREADY_PUBLISHED


async def test_rows_is_published_by_migrate(db: asyncpg.Connection) -> None:
    outcome = await publish(db, "rows")

    assert outcome.action is Action.ALREADY_PUBLISHED
    assert "broadcaster migrate" in outcome.message
    refused = await unpublish(db, "rows")
    assert refused.refused
    assert "cannot be unpublished" in refused.message
    await db.execute("INSERT INTO rows (id, table_id) VALUES ('r1', 't1')")
    assert [(t, i) for _, t, i, _, _ in await entries(db)] == [("t1", "r1")]


async def test_unpublishing_stops_logging_and_keeps_what_was_logged(
    db: asyncpg.Connection,
) -> None:
    await db.execute("CREATE TABLE items (id int PRIMARY KEY)")
    await publish(db, "items")
    await db.execute("INSERT INTO items VALUES (1)")

    outcome = await unpublish(db, "items")

    assert outcome.action is Action.UNPUBLISHED
    await db.execute("INSERT INTO items VALUES (2)")
    await db.execute("TRUNCATE items")
    assert [(t, i) for _, t, i, _, _ in await entries(db)] == [("public.items", "1")]
    assert (await unpublish(db, "items")).action is Action.NOT_PUBLISHED
    assert [p.table.name for p in await catalog.published_tables(db)] == ["rows"]


async def test_publishing_needs_this_releases_triggers(db: asyncpg.Connection) -> None:
    await db.execute("CREATE TABLE items (id int PRIMARY KEY)")
    await db.execute("COMMENT ON FUNCTION broadcaster_capture() IS NULL")

    outcome = await publish(db, "items")

    assert outcome.refused
    assert outcome.message == (
        "items: the database's triggers.sql is not this release's, or is missing:"
        " run broadcaster migrate first"
    )


async def test_publishing_needs_the_tables_owner(database_url: str, db: asyncpg.Connection) -> None:
    role = "bt_role_" + uuid.uuid4().hex[:12]
    await db.execute("CREATE TABLE items (id int PRIMARY KEY)")
    await db.execute("CREATE SCHEMA private")
    await db.execute("CREATE TABLE private.items (id int PRIMARY KEY)")
    await db.execute("CREATE TABLE pub (id int PRIMARY KEY)")
    await publish(db, "pub")
    await db.execute(f"CREATE ROLE {role} LOGIN PASSWORD 'secret'")
    try:
        # The URL's user, replaced: it may name a host or a socket directory.
        other = await asyncpg.connect(database_url, user=role, password="secret")
        try:
            outcome = await publish(other, "items")
            hidden = await publish(other, "private.items")
            not_published = await unpublish(other, "items")
            unpublished = await unpublish(other, "pub")
        finally:
            await other.close()
    finally:
        await db.execute(f"DROP ROLE {role}")

    advice = (
        ": publishing and unpublishing a table take its owner's rights (connect as its owner,"
        " or as a member of its owning role)"
    )
    assert outcome.refused
    assert outcome.message == "items: permission denied for table items" + advice
    assert hidden.message == "private.items: permission denied for schema private" + advice
    assert unpublished.message == "pub: must be owner of relation pub" + advice
    # Nothing to drop is no refusal, whoever asks.
    assert not_published.action is Action.NOT_PUBLISHED


async def test_publishing_waits_for_writers_a_moment_at_a_time(database_url: str) -> None:
    """A writer's open transaction delays the publish, which never holds other writers up long.

    Its lock request waits half a second at a time: meanwhile the table's other
    writers wait behind it no longer; once the transaction ends it succeeds.
    """
    setup = await asyncpg.connect(database_url)
    holder = await asyncpg.connect(database_url)
    try:
        await setup.execute("CREATE TABLE items (id text PRIMARY KEY, data jsonb)")
        await setup.execute("INSERT INTO items VALUES ('x1', '{}'), ('x2', '{}'), ('held', '{}')")
        async with writing(database_url, ["x1"], ["x2"], table="items") as writers:
            transaction = holder.transaction()
            await transaction.start()
            await holder.execute("UPDATE items SET data = '{\"held\": true}' WHERE id = 'held'")

            publishing = asyncio.ensure_future(publish(setup, "items"))
            try:
                done, _ = await asyncio.wait({publishing}, timeout=seconds(3 * MOMENT))
                assert not done, "published while a writer's transaction held the table"
                await written_after(writers, time.perf_counter())
            finally:
                await transaction.commit()
                outcome = await within(publishing, units=30)
            await written_after(writers, time.perf_counter())

        assert outcome.action is Action.PUBLISHED
        assert max(writer.longest_wait() for writer in writers) < seconds(MOMENT)
        await setup.execute("UPDATE items SET data = '{}' WHERE id = 'held'")
        assert (await entries(setup))[-1][:3] == ("UPDATE", "public.items", "held")
    finally:
        await holder.close()
        await setup.close()


async def test_migrate_publishes_the_tables_it_is_given_and_never_unpublishes(
    database_url: str, db: asyncpg.Connection
) -> None:
    await db.execute("CREATE TABLE items (id int PRIMARY KEY)")
    await db.execute("CREATE TABLE other (id int PRIMARY KEY)")
    await publish(db, "other")

    report = await asyncio.to_thread(migrate, database_url, publish=["items"])

    assert report == MigrationReport(
        applied_revisions=[], triggers_installed=False, published=["public.items"]
    )
    assert [p.table.name for p in await catalog.published_tables(db)] == [
        "items",
        "other",
        "rows",
    ]
    again = await asyncio.to_thread(migrate, database_url, publish=["items"])
    assert again == MigrationReport(applied_revisions=[], triggers_installed=False)


async def test_migrate_reports_the_tables_it_cannot_publish(
    database_url: str, db: asyncpg.Connection
) -> None:
    await db.execute("CREATE TABLE items (id int PRIMARY KEY)")
    await db.execute("CREATE TABLE loose (id int)")

    with pytest.raises(MigrationError) as raised:
        await asyncio.to_thread(migrate, database_url, publish=["loose", "items", "nosuch"])

    assert str(raised.value) == (
        "cannot publish every table of BROADCASTER_PUBLISH:"
        " public.loose has no primary key: add one (ALTER TABLE public.loose ADD PRIMARY KEY"
        " (...)) so that its changes can be identified;"
        " nosuch: no such table (a name without a schema is looked up in search_path;"
        " a name with capitals or spaces needs double quotes: '\"My Table\"')"
    )
    # The others are published all the same.
    assert await catalog.published_table(db, "items") is not None


async def test_reinstalling_triggers_keeps_the_published_tables(
    database_url: str, db: asyncpg.Connection
) -> None:
    await db.execute("CREATE TABLE items (id int PRIMARY KEY)")
    await publish(db, "items")
    await db.execute("COMMENT ON FUNCTION broadcaster_capture() IS NULL")

    report = await asyncio.to_thread(migrate, database_url)

    assert report.triggers_installed
    await db.execute("INSERT INTO items VALUES (1)")
    assert [(t, i) for _, t, i, _, _ in await entries(db)] == [("public.items", "1")]
    assert (await publish(db, "items")).action is Action.ALREADY_PUBLISHED


async def test_a_writer_without_rights_on_the_log_writes_a_published_table(
    database_url: str, db: asyncpg.Connection
) -> None:
    """The app's roles write their tables; the capture runs as the role that installed it."""
    role = "bt_writer_" + uuid.uuid4().hex[:12]
    await db.execute("CREATE TABLE todos (id int PRIMARY KEY, title text)")
    await publish(db, "todos")
    await db.execute(f"CREATE ROLE {role} LOGIN PASSWORD 'secret'")
    await db.execute(f"GRANT INSERT, UPDATE, DELETE, SELECT, TRUNCATE ON todos TO {role}")
    await db.execute(f"CREATE SCHEMA {role} AUTHORIZATION {role}")
    try:
        writer = await asyncpg.connect(database_url, user=role, password="secret")
        try:
            await writer.execute("INSERT INTO todos VALUES (1, 'a')")
            await writer.execute("UPDATE todos SET title = 'b'")
            await writer.execute("TRUNCATE todos")
            with pytest.raises(asyncpg.InsufficientPrivilegeError):
                await writer.execute(
                    "INSERT INTO broadcaster_changes (table_id, id, op)"
                    " VALUES ('public.todos', '9', 'INSERT')"
                )
            # Nor can it borrow the capture to log under another table's name.
            await writer.execute(f"CREATE TABLE {role}.own (id int PRIMARY KEY)")
            with pytest.raises(asyncpg.InsufficientPrivilegeError):
                await writer.execute(
                    f"CREATE TRIGGER forge AFTER INSERT ON {role}.own FOR EACH ROW"
                    " EXECUTE FUNCTION broadcaster_capture('=public.todos', 'id')"
                )
        finally:
            await writer.close()
    finally:
        await db.execute(f"DROP SCHEMA {role} CASCADE")
        await db.execute(f"DROP OWNED BY {role}")
        await db.execute(f"DROP ROLE {role}")

    assert [(op, table_id, id) for op, table_id, id, _, _ in await entries(db)] == [
        ("INSERT", "public.todos", "1"),
        ("UPDATE", "public.todos", "1"),
        ("DELETE", "public.todos", "1"),
    ]
