"""The statements against a real Postgres: reads for one table and for every table, and failures."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator

import asyncpg
import pytest

from broadcaster.core.feed import Request
from broadcaster.core.tables import EVERY_TABLE
from broadcaster.exceptions import DatabaseError
from broadcaster.postgres.publishing import publish
from broadcaster.postgres.queries import ChangeReader, PostgresAuthorizerFunction, ReadSession
from tests.support.timeouts import eventually, within

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


async def test_a_reinsert_that_raced_a_deletion_is_read_after_the_deletion(
    pool: asyncpg.Pool, database_url: str
) -> None:
    """The re-insert's BEFORE triggers ran before the deletion's AFTER trigger logged it,
    then the re-insert waited for the deletion in the unique check: its entry, drawn
    in the AFTER trigger once the check let it through, comes after the deletion's."""
    await pool.execute("INSERT INTO rows (id, table_id, data) VALUES ('r', 't', '{\"n\": 0}')")
    # Holds the re-insert before its unique check, until released.
    await before_trigger(
        pool, "INSERT", "NEW.id = 'r'", "PERFORM pg_advisory_xact_lock(7); RETURN NEW;"
    )
    reader = ChangeReader(pool)
    since = (await reader.read([])).snapshot
    gate, inserter, deleter = [await asyncpg.connect(database_url) for _ in range(3)]
    try:
        gate_transaction = gate.transaction()
        await gate_transaction.start()
        await gate.execute("SELECT pg_advisory_xact_lock(7)")
        reinsert = asyncio.create_task(
            inserter.execute(
                "INSERT INTO rows (id, table_id, data) VALUES ('r', 't', '{\"n\": 1}')"
                " ON CONFLICT (id) DO UPDATE SET data = EXCLUDED.data"
            )
        )
        await eventually(lambda: waiting_for_lock(gate))
        delete_transaction = deleter.transaction()
        await delete_transaction.start()
        await deleter.execute("DELETE FROM rows WHERE id = 'r'")
        await gate_transaction.commit()
        # The re-insert now waits for the deletion in its unique check.
        await eventually(lambda: waiting_for_lock(gate))
        await delete_transaction.commit()
        await within(reinsert)
    finally:
        for connection in (gate, inserter, deleter):
            await connection.close()
    changes = sorted(
        (row.change for row in (await reader.read([Request(0, "t", since)])).rows),
        key=lambda change: change.version,
    )
    assert [(c.op, json.loads(c.old_json or "null")) for c in changes] == [
        ("DELETE", {**json.loads(changes[0].old_json or "{}"), "data": {"n": 0}}),
        ("INSERT", None),
    ]
    assert json.loads(changes[1].row_json)["data"] == {"n": 1}


async def before_trigger(pool: asyncpg.Pool, event: str, when: str, body: str) -> None:
    """A BEFORE ``event`` trigger on rows, running ``body`` when ``when``."""
    await pool.execute(
        f"CREATE FUNCTION zz_test() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN {body} END $$"
    )
    await pool.execute(
        f"CREATE TRIGGER zz_test BEFORE {event} ON rows FOR EACH ROW"
        f" WHEN ({when}) EXECUTE FUNCTION zz_test()"
    )


async def waiting_for_lock(db: asyncpg.Connection) -> bool:
    """Is some other session of this database waiting for a lock?"""
    return bool(
        await db.fetchval(
            "SELECT EXISTS (SELECT FROM pg_stat_activity WHERE datname = current_database()"
            " AND wait_event_type = 'Lock' AND pid <> pg_backend_pid())"
        )
    )


async def test_a_move_another_trigger_cancelled_leaves_nothing_to_read(
    pool: asyncpg.Pool,
) -> None:
    """A BEFORE trigger that skips the update: the capture, an AFTER trigger, never runs."""
    await pool.execute("INSERT INTO rows (id, table_id) VALUES ('r', 'A')")
    await before_trigger(pool, "UPDATE", "NEW.table_id <> OLD.table_id", "RETURN NULL;")
    reader = ChangeReader(pool)
    since = (await reader.read([])).snapshot

    await pool.execute("UPDATE rows SET table_id = 'B' WHERE id = 'r'")

    assert await pool.fetchval("SELECT table_id FROM rows WHERE id = 'r'") == "A"
    for request in (Request(0, "A", since), Request(0, None, since)):
        assert (await reader.read([request])).rows == []


class Connections:
    """A ReadSession's ``connect``, recording every connection it opened."""

    def __init__(self, database_url: str) -> None:
        self.database_url = database_url
        self.opened: list[asyncpg.Connection] = []

    async def __call__(self) -> asyncpg.Connection:
        self.opened.append(await asyncpg.connect(self.database_url))
        return self.opened[-1]


@pytest.fixture
async def session(database_url: str) -> AsyncIterator[tuple[ReadSession, Connections]]:
    connections = Connections(database_url)
    read_session = ReadSession(connections)
    try:
        yield read_session, connections
    finally:
        await read_session.close()


async def test_a_read_session_opens_its_connection_on_first_use_and_keeps_it(
    session: tuple[ReadSession, Connections], pool: asyncpg.Pool
) -> None:
    read_session, connections = session
    assert connections.opened == []
    reader = ChangeReader(pool, reads=read_session)
    await within(reader.read([]))
    with pytest.raises(asyncpg.PostgresError):
        await within(read_session.fetch("SELECT 1 / 0"))
    await within(reader.read([]))
    assert len(connections.opened) == 1, "a statement error leaves the session usable"
    await read_session.close()
    assert connections.opened[0].is_closed()


async def test_a_read_session_whose_connection_was_killed_reconnects(
    session: tuple[ReadSession, Connections], pool: asyncpg.Pool
) -> None:
    read_session, connections = session
    reader = ChangeReader(pool, reads=read_session)
    await within(reader.read([]))
    backend = connections.opened[0].get_server_pid()
    await pool.execute("SELECT pg_terminate_backend($1)", backend)
    # A read that meets the dead connection fails like any lost database
    # (unless asyncpg noticed the loss first); the next one reconnects.
    with contextlib.suppress(DatabaseError):
        await within(reader.read([]))
    result = await within(reader.read([]))
    assert result.snapshot
    assert len(connections.opened) == 2
    assert connections.opened[1].get_server_pid() != backend


async def test_a_failing_statement_raises_database_error_from_the_drivers(
    pool: asyncpg.Pool,
) -> None:
    reader = ChangeReader(pool)
    # NOTIFY refuses a payload of 8000 bytes or more.
    with pytest.raises(DatabaseError, match="payload string too long") as raised:
        await within(reader.broadcast("x" * 8000))
    assert isinstance(raised.value.__cause__, asyncpg.InvalidParameterValueError)


async def test_a_cursor_postgres_refuses_is_a_database_error_from_a_data_error(
    pool: asyncpg.Pool,
) -> None:
    """The read loop tells such a cursor from a lost database by the cause."""
    reader = ChangeReader(pool)
    with pytest.raises(DatabaseError) as raised:
        await within(reader.read([Request(0, "t1", "3:2:")]))
    assert isinstance(raised.value.__cause__, asyncpg.DataError)


async def test_the_authorizer_function_answers_and_fails_as_a_database_error(
    pool: asyncpg.Pool,
) -> None:
    await pool.execute(
        "CREATE FUNCTION may_read(claims jsonb, table_id text) RETURNS boolean"
        " LANGUAGE sql AS $$ SELECT claims->>'sub' = table_id $$"
    )
    function = PostgresAuthorizerFunction(lambda: pool, "may_read")
    assert await within(function.allows('{"sub": "t1"}', "t1", None)) is True
    assert await within(function.allows('{"sub": "t1"}', "t2", None)) is False
    assert await within(function.allows("{}", "t1", None)) is False  # null is not true

    await pool.execute(
        "CREATE FUNCTION may_bind(claims jsonb, table_id text, binding jsonb) RETURNS boolean"
        " LANGUAGE sql AS $$ SELECT binding->>'filter' = 'room_id=eq.' || (claims->>'room') $$"
    )
    binding = PostgresAuthorizerFunction(lambda: pool, "may_bind")
    room = '{"filter": "room_id=eq.5"}'
    assert await within(binding.allows('{"room": "5"}', "public.messages", room)) is True
    assert await within(binding.allows('{"room": "6"}', "public.messages", room)) is False
    assert await within(binding.allows('{"room": "5"}', "t1", None)) is False

    missing = PostgresAuthorizerFunction(lambda: pool, "no_such_function")
    with pytest.raises(DatabaseError) as raised:
        await within(missing.allows("{}", "t1", None))
    assert isinstance(raised.value.__cause__, asyncpg.UndefinedFunctionError)


async def test_every_table_is_registered_as_the_empty_table_id(pool: asyncpg.Pool) -> None:
    """triggers.sql reads a registration of table_id '' as one for every table."""
    reader = ChangeReader(pool)
    await within(reader.register("p1", [EVERY_TABLE, "t1"], [], 1.0))
    registered = "SELECT table_id FROM broadcaster_listeners WHERE process = 'p1' ORDER BY 1"
    assert [r[0] for r in await pool.fetch(registered)] == ["", "t1"]

    await within(reader.unregister("p1", [EVERY_TABLE]))
    assert [r[0] for r in await pool.fetch(registered)] == ["t1"]


async def test_a_long_catch_up_is_compacted_and_a_live_read_never_is(pool: asyncpg.Pool) -> None:
    reader = ChangeReader(pool, max_catch_up=5)
    await pool.execute("INSERT INTO rows (id, table_id) VALUES ('a', 't'), ('b', 't'), ('c', 't')")
    since = (await reader.read([])).snapshot
    for n in range(1, 4):
        await pool.execute("UPDATE rows SET data = jsonb_build_object('n', $1::int)", n)
    await pool.execute("DELETE FROM rows WHERE id = 'c'")

    live = (await reader.read([Request(0, "t", since)])).rows
    compacted = (await reader.read([Request(0, "t", since, catch_up=True)])).rows

    assert len(live) == 10  # three updates of three rows, one deletion
    latest = {
        row.change.id: (row.change.op, json.loads(row.change.row_json).get("data"))
        for row in compacted
    }
    assert len(compacted) == 3
    assert latest == {"a": ("UPDATE", {"n": 3}), "b": ("UPDATE", {"n": 3}), "c": ("DELETE", None)}
    # The latest change of a row, whole: its old row is the one before it.
    old = {row.change.id: json.loads(row.change.old_json or "{}")["data"] for row in compacted}
    assert old == {"a": {"n": 2}, "b": {"n": 2}, "c": {"n": 3}}
    # At most max_catch_up changes: every one.
    short = ChangeReader(pool, max_catch_up=10)
    assert len((await short.read([Request(0, "t", since, catch_up=True)])).rows) == 10


async def test_pruning_empties_partitions_past_the_retention_and_refuses_older_cursors(
    pool: asyncpg.Pool,
) -> None:
    reader = ChangeReader(pool)
    old_cursor = (await reader.read([])).snapshot
    await pool.execute("INSERT INTO rows (id, table_id) VALUES ('old', 't')")
    # As if written 90 minutes ago, in another partition of the ring.
    await pool.execute(
        "UPDATE broadcaster_changes SET at = now() - interval '90 minutes',"
        " bucket = (bucket + 1) % (SELECT count(*) FROM pg_inherits"
        "  WHERE inhparent = 'broadcaster_changes'::regclass)"
    )
    recent_cursor = (await reader.read([])).snapshot
    await pool.execute("INSERT INTO rows (id, table_id) VALUES ('new', 't')")

    assert await reader.prune(3600) == 0  # not yet an hour past the retention
    assert await reader.prune(60) == 1

    assert await pool.fetchval("SELECT array_agg(id) FROM broadcaster_changes") == ["new"]
    refused = await reader.read([Request(0, "t", old_cursor)])
    assert refused.resets == {0: "history_pruned"}
    served = await reader.read([Request(0, "t", recent_cursor)])
    assert (served.resets, [row.change.id for row in served.rows]) == ({}, ["new"])


async def test_compacted_catch_ups_of_two_tables_keep_each_tables_latest_change(
    pool: asyncpg.Pool,
) -> None:
    """A row moved between tables has entries under one id in both: each request keeps its own."""
    reader = ChangeReader(pool, max_catch_up=1)
    await pool.execute("INSERT INTO rows (id, table_id) VALUES ('a', 't'), ('b', 't')")
    since = (await reader.read([])).snapshot
    await pool.execute("UPDATE rows SET data = '{\"n\": 1}'")
    await pool.execute("UPDATE rows SET table_id = 'u' WHERE id = 'a'")
    await pool.execute("UPDATE rows SET data = '{\"n\": 2}' WHERE id = 'a'")

    result = await reader.read(
        [Request(0, "t", since, catch_up=True), Request(1, "u", since, catch_up=True)]
    )

    latest = {(row.key, row.change.id): row.change.op for row in result.rows}
    assert latest == {(0, "a"): "DELETE", (0, "b"): "UPDATE", (1, "a"): "UPDATE"}


async def published_todos(database_url: str) -> None:
    connection = await asyncpg.connect(database_url)
    try:
        await connection.execute(
            "CREATE TABLE todos (org int, id int, title text, PRIMARY KEY (org, id));"
            "CREATE TABLE notes (id uuid PRIMARY KEY DEFAULT gen_random_uuid(), body text)"
        )
        await publish(connection, "public.todos")
        await publish(connection, "public.notes")
    finally:
        await connection.close()


async def test_a_published_table_loads_its_rows_keyed_as_its_changes_are(
    pool: asyncpg.Pool, database_url: str
) -> None:
    await published_todos(database_url)
    await pool.execute("INSERT INTO todos VALUES (1, 1, 'a'), (1, 2, 'b')")
    await pool.execute("INSERT INTO notes (body) VALUES ('n')")
    reader = ChangeReader(pool)
    loaded = await reader.read([Request(0, "public.todos", None), Request(1, "public.notes", None)])
    await pool.execute("UPDATE todos SET title = 'c' WHERE id = 2")
    await pool.execute("UPDATE notes SET body = 'm'")
    changed = await reader.read(
        [Request(0, "public.todos", loaded.snapshot), Request(1, "public.notes", loaded.snapshot)]
    )

    rows = {(row.key, row.change.id): row.change for row in loaded.rows}
    assert {key: (c.op, c.version, json.loads(c.row_json)) for key, c in rows.items()} == {
        (0, "[1, 1]"): ("INSERT", 0, {"org": 1, "id": 1, "title": "a"}),
        (0, "[1, 2]"): ("INSERT", 0, {"org": 1, "id": 2, "title": "b"}),
        (1, next(c.id for (k, _), c in rows.items() if k == 1)): (
            "INSERT",
            0,
            {"id": next(c.id for (k, _), c in rows.items() if k == 1), "body": "n"},
        ),
    }
    # The load's ids are those of the table's changes: a client merges them.
    assert {(row.key, row.change.id) for row in changed.rows} <= set(rows)
    assert len(changed.rows) == 2


async def test_a_load_of_a_table_id_that_is_not_published_reads_rows_only(
    pool: asyncpg.Pool,
) -> None:
    await pool.execute("INSERT INTO rows (id, table_id) VALUES ('r1', 'public.todos')")
    reader = ChangeReader(pool)

    result = await reader.read([Request(0, "public.todos", None)])

    assert [row.change.id for row in result.rows] == ["r1"]


async def test_every_table_leaves_out_the_published_tables(
    pool: asyncpg.Pool, database_url: str
) -> None:
    await published_todos(database_url)
    reader = ChangeReader(pool)
    since = (await reader.read([])).snapshot
    await pool.execute("INSERT INTO todos VALUES (1, 1, 'a')")
    await pool.execute("INSERT INTO rows (id, table_id) VALUES ('r1', 't1')")

    result = await reader.read([Request(0, None, since), Request(1, "public.todos", since)])

    assert sorted((row.key, row.change.table_id) for row in result.rows) == [
        (0, "t1"),
        (1, "public.todos"),
    ]
