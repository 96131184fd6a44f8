"""triggers.sql on a migrated database: the change log and wake-ups.

Writes go through one connection; the wake-ups are read with a LISTEN on
another, and the log straight from its table.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import asyncpg
import pytest

from broadcaster.core.promises import REMEMBERED_FOR
from tests.support.change_log import entries
from tests.support.wakeups import listening, sent_since


@pytest.fixture
async def db(database_url: str) -> AsyncIterator[asyncpg.Connection]:
    conn = await asyncpg.connect(database_url)
    yield conn
    await conn.close()


async def register(
    db: asyncpg.Connection, table_id: str, polling_until: str, process: str = "tests"
) -> None:
    """Register ``process`` for ``table_id`` as a server does, with its promise's end."""
    await db.execute(
        "INSERT INTO broadcaster_listeners (table_id, process, polling_until)"
        " VALUES ($1, $2, $3::text::timestamptz) ON CONFLICT (table_id, process)"
        " DO UPDATE SET polling_until = EXCLUDED.polling_until",
        table_id,
        process,
        polling_until,
    )


@pytest.fixture
async def wakeups(database_url: str, db: asyncpg.Connection) -> AsyncIterator[asyncio.Queue[str]]:
    """Every payload sent on the channel, in delivery order.

    A listener of every table is registered, as a server with a subscriber of
    every table does, so that every write notifies.
    """
    await register(db, "", "-infinity")
    async with listening(database_url) as queue:
        yield queue


async def only_listener(
    db: asyncpg.Connection, table_id: str, polling_until: str, process: str = "tests"
) -> None:
    """Leave ``process``'s registration of ``table_id`` the only one."""
    await db.execute("DELETE FROM broadcaster_listeners")
    await register(db, table_id, polling_until, process)


async def remember_for_an_hour(db: asyncpg.Connection, table_id: str) -> None:
    """Have the session remember ``table_id`` as promised, longer than the trigger would."""
    await db.execute("SELECT broadcaster_remember($1, now() + interval '1 hour')", table_id)


async def forget(db: asyncpg.Connection) -> None:
    """Let the session's memory of the promises it looked up run out (triggers.sql)."""
    await asyncio.sleep(REMEMBERED_FOR)


async def remembered(db: asyncpg.Connection, table_id: str) -> datetime | None:
    """Until when the session skips ``table_id``'s wake-up without a lookup."""
    until: datetime | None = await db.fetchval("SELECT broadcaster_remembered($1)", table_id)
    return until


async def test_a_write_wakes_its_table_once_per_transaction(
    db: asyncpg.Connection, wakeups: asyncio.Queue[str]
) -> None:
    await db.execute("INSERT INTO rows (id, table_id) VALUES ('a', 't1')")
    assert await sent_since(db, wakeups) == ["t1"]
    async with db.transaction():
        await db.execute(
            "INSERT INTO rows (id, table_id) SELECT 'r' || g, 't2' FROM generate_series(1, 500) g"
        )
        await db.execute("UPDATE rows SET data = '{\"x\": 1}' WHERE table_id = 't2'")
        await db.execute("INSERT INTO rows (id, table_id) VALUES ('b', 't1')")
    assert sorted(await sent_since(db, wakeups)) == ["t1", "t2"]


async def test_every_change_is_logged_with_the_row_after_and_before_it(
    db: asyncpg.Connection,
) -> None:
    await db.execute("INSERT INTO rows (id, table_id) VALUES ('r', 't1')")
    async with db.transaction():
        await db.execute("UPDATE rows SET data = '{\"n\": 1}' WHERE id = 'r'")
        await db.execute("UPDATE rows SET data = '{\"n\": 2}' WHERE id = 'r'")
    await db.execute("DELETE FROM rows WHERE id = 'r'")
    logged = await entries(db)
    assert [(op, t, i) for op, t, i, _, _ in logged] == [
        ("INSERT", "t1", "r"),
        ("UPDATE", "t1", "r"),
        ("UPDATE", "t1", "r"),
        ("DELETE", "t1", "r"),
    ]
    images = [(new and new["data"], old and old["data"]) for _, _, _, new, old in logged]
    assert images == [({}, None), ({"n": 1}, {}), ({"n": 2}, {"n": 1}), (None, {"n": 2})]
    # Whole rows, every column.
    assert (
        set(logged[1][3])
        == set(logged[1][4])
        == {"id", "table_id", "data", "enriching_columns", "created_at", "updated_at"}
    )


async def test_entries_take_the_writers_transaction_and_its_order(db: asyncpg.Connection) -> None:
    async with db.transaction():
        xid = await db.fetchval("SELECT pg_current_xact_id()::text")
        await db.execute("INSERT INTO rows (id, table_id) VALUES ('a', 't1'), ('b', 't1')")
    records = await db.fetch("SELECT xid::text, seq FROM broadcaster_changes ORDER BY seq")
    assert [r["xid"] for r in records] == [xid, xid]
    assert records[0]["seq"] < records[1]["seq"]


async def test_updated_at_is_the_writers_column(db: asyncpg.Connection) -> None:
    """No trigger moves it: the change log says when each change committed."""
    await db.execute("INSERT INTO rows (id, table_id) VALUES ('r', 't1')")
    timestamps = "SELECT array[created_at, updated_at] FROM rows"
    before = await db.fetchval(timestamps)
    await db.execute("UPDATE rows SET enriching_columns = '{a}' WHERE id = 'r'")
    assert await db.fetchval(timestamps) == before
    await db.execute("UPDATE rows SET updated_at = now() WHERE id = 'r'")
    assert await db.fetchval(timestamps) != before


async def test_an_update_that_changes_nothing_logs_nothing_and_wakes_nobody(
    db: asyncpg.Connection, wakeups: asyncio.Queue[str]
) -> None:
    await db.execute("INSERT INTO rows (id, table_id, data) VALUES ('r', 't1', '{\"a\": 1}')")
    before = await entries(db)
    await sent_since(db, wakeups)
    await db.execute("UPDATE rows SET data = '{\"a\": 1}', enriching_columns = '{}' WHERE id = 'r'")
    assert await entries(db) == before
    assert await sent_since(db, wakeups) == []


async def test_a_rolled_back_savepoint_leaves_no_entry(db: asyncpg.Connection) -> None:
    async with db.transaction():
        await db.execute("INSERT INTO rows (id, table_id) VALUES ('kept', 't1')")
        with contextlib.suppress(asyncpg.RaiseError):
            async with db.transaction():
                await db.execute("INSERT INTO rows (id, table_id) VALUES ('undone', 't1')")
                await db.execute("DO $$ BEGIN RAISE 'undo'; END $$")
    assert [i for _, _, i, _, _ in await entries(db)] == ["kept"]


async def test_delete_logs_the_whole_row_and_wakes_its_table(
    db: asyncpg.Connection, wakeups: asyncio.Queue[str]
) -> None:
    await db.execute("INSERT INTO rows (id, table_id, data) VALUES ('r', 't1', '{\"k\": 1}')")
    await sent_since(db, wakeups)
    await db.execute("DELETE FROM rows WHERE id = 'r'")
    assert await sent_since(db, wakeups) == ["t1"]
    op, table_id, row_id, new, old = (await entries(db))[-1]
    assert (op, table_id, row_id, new) == ("DELETE", "t1", "r", None)
    assert old["data"] == {"k": 1}


@pytest.mark.parametrize("column", ["table_id", "id"])
async def test_moving_a_row_logs_a_delete_where_it_was_and_an_insert_where_it_is(
    db: asyncpg.Connection, wakeups: asyncio.Queue[str], column: str
) -> None:
    await db.execute("INSERT INTO rows (id, table_id) VALUES ('r', 'A')")
    await sent_since(db, wakeups)
    await db.execute(f"UPDATE rows SET {column} = 'B' WHERE id = 'r'")
    new_id, new_table = ("B", "A") if column == "id" else ("r", "B")
    assert [(op, t, i) for op, t, i, _, _ in (await entries(db))[1:]] == [
        ("DELETE", "A", "r"),
        ("INSERT", new_table, new_id),
    ]
    woken = await sent_since(db, wakeups)
    assert set(woken) == ({"A", "B"} if column == "table_id" else {"A"})


async def test_truncate_logs_a_delete_of_every_row_and_wakes_every_table(
    db: asyncpg.Connection, wakeups: asyncio.Queue[str]
) -> None:
    await db.execute("INSERT INTO rows (id, table_id) VALUES ('a', 't1'), ('b', 't2')")
    await sent_since(db, wakeups)
    await db.execute("TRUNCATE rows")
    assert await sent_since(db, wakeups) == [""]
    deleted = {(t, i, old["id"]) for op, t, i, _, old in await entries(db) if op == "DELETE"}
    assert deleted == {("t1", "a", "a"), ("t2", "b", "b")}


async def test_large_rows_and_long_table_ids_never_fail_the_writer(
    db: asyncpg.Connection, wakeups: asyncio.Queue[str]
) -> None:
    big = json.dumps({"big": "x" * 1_000_000})
    await db.execute("INSERT INTO rows (id, table_id, data) VALUES ('big', 't1', $1)", big)
    long_table = "t" * 9000
    await db.execute("INSERT INTO rows (id, table_id) VALUES ('long', $1)", long_table)
    assert await sent_since(db, wakeups) == ["t1", ""]


async def test_a_writer_may_turn_wake_ups_off_and_still_gets_logged(
    db: asyncpg.Connection, wakeups: asyncio.Queue[str]
) -> None:
    """For two-phase commit: Postgres refuses to PREPARE a transaction that sent a NOTIFY."""
    async with db.transaction():
        await db.execute("SET LOCAL broadcaster.wake = 'off'")
        await db.execute("INSERT INTO rows (id, table_id) VALUES ('quiet', 't1')")
        await db.execute("TRUNCATE rows")
    assert await sent_since(db, wakeups) == []
    assert [op for op, *_ in await entries(db)] == ["INSERT", "DELETE"]


async def test_a_writer_skips_the_wake_up_while_every_server_promised_to_read(
    db: asyncpg.Connection, wakeups: asyncio.Queue[str]
) -> None:
    await db.execute("DELETE FROM broadcaster_listeners")
    await db.execute("INSERT INTO rows (id, table_id) VALUES ('nobody', 't1')")
    assert await sent_since(db, wakeups) == []  # no server serves t1

    await register(db, "t1", "infinity", process="a")
    await db.execute("UPDATE rows SET data = '{\"n\": 1}' WHERE id = 'nobody'")
    assert await sent_since(db, wakeups) == []  # a's promise runs

    await register(db, "t1", "-infinity", process="b")
    await forget(db)
    await db.execute("UPDATE rows SET data = '{\"n\": 2}' WHERE id = 'nobody'")
    assert await sent_since(db, wakeups) == ["t1"]  # b's does not

    await register(db, "t1", "infinity", process="b")
    await db.execute("UPDATE rows SET data = '{\"n\": 3}' WHERE id = 'nobody'")
    assert await sent_since(db, wakeups) == []
    await db.execute("DELETE FROM rows WHERE id = 'nobody'")
    assert await sent_since(db, wakeups) == []
    await db.execute("TRUNCATE rows")
    assert await sent_since(db, wakeups) == [""]  # every table: always


async def test_outside_read_committed_a_writer_never_looks_up(
    db: asyncpg.Connection, wakeups: asyncio.Queue[str]
) -> None:
    """Its snapshot may predate a registration, so it cannot trust what it sees.

    What its session remembers of a lookup in READ COMMITTED holds in any
    isolation level: the memory's end bounds the time of the check, not the
    snapshot's.
    """
    await only_listener(db, "t1", "infinity")
    async with db.transaction(isolation="repeatable_read"):
        await db.execute("INSERT INTO rows (id, table_id) VALUES ('rr', 't1')")
    assert await sent_since(db, wakeups) == ["t1"]
    assert await remembered(db, "t1") is None

    await remember_for_an_hour(db, "t1")
    async with db.transaction(isolation="serializable"):
        await db.execute("UPDATE rows SET data = '{\"n\": 1}' WHERE id = 'rr'")
    assert await sent_since(db, wakeups) == []


async def test_a_writer_remembers_a_lookup_for_at_most_a_tenth_of_a_second(
    db: asyncpg.Connection, wakeups: asyncio.Queue[str]
) -> None:
    """And never past the promise it saw."""
    await db.execute("DELETE FROM broadcaster_listeners")
    assert await remembered(db, "t1") is None
    clock = "SELECT clock_timestamp()"
    before = await db.fetchval(clock)
    await db.execute("INSERT INTO rows (id, table_id) VALUES ('a', 't1')")  # none serves t1
    after = await db.fetchval(clock)
    until = await remembered(db, "t1")
    memory = timedelta(seconds=REMEMBERED_FOR)
    assert until is not None
    assert before + memory <= until <= after + memory

    await register(db, "t2", "infinity", process="a")
    promise = await db.fetchval(
        "UPDATE broadcaster_listeners SET polling_until = clock_timestamp() + interval '50 ms'"
        " WHERE table_id = 't2' RETURNING polling_until"
    )
    await db.execute("INSERT INTO rows (id, table_id) VALUES ('b', 't2')")
    until = await remembered(db, "t2")
    if until is None:  # the promise had run out before the write
        assert await sent_since(db, wakeups) == ["t2"]
    else:  # remembered with t1, until the earlier end
        assert until <= promise
        assert await remembered(db, "t1") == until
        assert await sent_since(db, wakeups) == []


async def test_a_remembered_promise_is_trusted_until_it_runs_out(
    db: asyncpg.Connection, wakeups: asyncio.Queue[str]
) -> None:
    """A server registering meanwhile reads the table once more after REMEMBERED_FOR."""
    await only_listener(db, "t1", "-infinity", process="b")
    await remember_for_an_hour(db, "t1")
    await db.execute("INSERT INTO rows (id, table_id) VALUES ('trusted', 't1')")
    assert await sent_since(db, wakeups) == []

    await db.execute("SELECT broadcaster_remember('t1', now() - interval '1 ms')")
    await db.execute("UPDATE rows SET data = '{\"n\": 1}' WHERE id = 'trusted'")
    assert await sent_since(db, wakeups) == ["t1"]


async def test_a_reset_session_forgets_and_looks_up_again(
    db: asyncpg.Connection, wakeups: asyncio.Queue[str]
) -> None:
    await only_listener(db, "t1", "-infinity")
    await remember_for_an_hour(db, "t1")
    await db.execute("RESET ALL")
    assert await remembered(db, "t1") is None
    await db.execute("INSERT INTO rows (id, table_id) VALUES ('reset', 't1')")
    assert await sent_since(db, wakeups) == ["t1"]


async def test_a_session_remembers_several_tables_until_the_earliest_end(
    db: asyncpg.Connection, wakeups: asyncio.Queue[str]
) -> None:
    await only_listener(db, "t1", "-infinity")
    await register(db, "t2", "-infinity")
    await remember_for_an_hour(db, "t1")
    await remember_for_an_hour(db, "t2")
    await db.execute("INSERT INTO rows (id, table_id) VALUES ('a', 't1'), ('b', 't2')")
    assert await sent_since(db, wakeups) == []

    soon = await db.fetchval("SELECT now() + interval '1 minute'")
    await db.execute("SELECT broadcaster_remember('t3', $1)", soon)
    assert [await remembered(db, t) for t in ("t1", "t2", "t3")] == [soon] * 3
    assert await remembered(db, "t4") is None


async def test_a_table_id_holding_the_separator_is_never_remembered(
    db: asyncpg.Connection, wakeups: asyncio.Queue[str]
) -> None:
    """Nor taken for the two remembered tables whose run it spells."""
    spelled = "a\x1fb"
    await only_listener(db, spelled, "-infinity")
    await remember_for_an_hour(db, "a")
    await remember_for_an_hour(db, "b")
    await remember_for_an_hour(db, spelled)
    assert await remembered(db, spelled) is None
    await db.execute("INSERT INTO rows (id, table_id) VALUES ('s', $1)", spelled)
    assert await sent_since(db, wakeups) == [spelled]


async def test_a_memory_about_to_pass_4000_bytes_starts_afresh(db: asyncpg.Connection) -> None:
    """A session writing many tables in turn keeps looking up, as before any memory."""
    tables = [f"{n}{'x' * 990}" for n in range(5)]
    for table_id in tables:
        await remember_for_an_hour(db, table_id)
    assert await remembered(db, tables[0]) is None
    assert await remembered(db, tables[4]) is not None
    await remember_for_an_hour(db, "y" * 1001)
    assert await remembered(db, "y" * 1001) is None


async def test_a_memory_is_never_trusted_past_any_end_it_was_given(db: asyncpg.Connection) -> None:
    """Random remembering, resets and expiries: a table's memory never outlasts its latest end.

    Nor does an id that is never remembered (one holding the separator, or too
    long) ever look remembered, and the memory stays within its bytes.
    """
    rng = random.Random(5)
    ids = ["t1", "t2", "a", "b", "a\x1fb", "\x1fa", "y" * 1001, *(c * 999 for c in "uvwxz")]
    never = {"a\x1fb", "\x1fa", "y" * 1001}
    ends = [timedelta(seconds=-1), timedelta(milliseconds=30), timedelta(minutes=1)]
    latest: dict[str, datetime] = {}
    for _ in range(300):
        if rng.random() < 0.03:
            await db.execute("RESET ALL")
            latest.clear()
            continue
        table_id = rng.choice(ids)
        until = datetime.now(UTC) + rng.choice(ends)
        await db.execute("SELECT broadcaster_remember($1, $2)", table_id, until)
        latest[table_id] = until
        if rng.random() < 0.1:
            await asyncio.sleep(0.03)
        records = await db.fetch(
            "SELECT t, broadcaster_remembered(t) AS until FROM unnest($1::text[]) AS t", ids
        )
        for record in records:
            remembered_until = record["until"]
            if remembered_until is not None:
                assert record["t"] not in never
                assert remembered_until <= latest[record["t"]]
        size = await db.fetchval(
            "SELECT coalesce(octet_length(current_setting('broadcaster.promised', true)), 0)"
        )
        assert size <= 4001


async def test_a_transaction_that_notified_a_table_skips_the_lookups_of_its_later_writes(
    db: asyncpg.Connection, wakeups: asyncio.Queue[str]
) -> None:
    """Its NOTIFY, delivered at commit, covers them; one for every table covers all."""
    async with db.transaction():
        await db.execute("INSERT INTO rows (id, table_id) VALUES ('a', 't1')")
        notified = await db.fetchval("SELECT current_setting('broadcaster.notified')")
        assert notified == "\x1ft1\x1f"
        await db.execute("INSERT INTO rows (id, table_id) VALUES ('b', 't1'), ('c', 't2')")
    assert await sent_since(db, wakeups) == ["t1", "t2"]
    assert await db.fetchval("SELECT current_setting('broadcaster.notified')") == ""

    async with db.transaction():
        await db.execute("TRUNCATE rows")
        await db.execute("INSERT INTO rows (id, table_id) VALUES ('d', 't1')")
    assert await sent_since(db, wakeups) == [""]


async def test_a_rolled_back_savepoint_takes_its_notification_and_its_record(
    db: asyncpg.Connection, wakeups: asyncio.Queue[str]
) -> None:
    async with db.transaction():
        await db.execute("SAVEPOINT before")
        await db.execute("INSERT INTO rows (id, table_id) VALUES ('gone', 't1')")
        await db.execute("ROLLBACK TO SAVEPOINT before")
        await db.execute("INSERT INTO rows (id, table_id) VALUES ('kept', 't1')")
    assert await sent_since(db, wakeups) == ["t1"]


async def test_a_notified_table_id_holding_the_separator_covers_no_other(
    db: asyncpg.Connection, wakeups: asyncio.Queue[str]
) -> None:
    async with db.transaction():
        await db.execute("INSERT INTO rows (id, table_id) VALUES ('a', 'a'), ('b', 'b')")
        await db.execute("INSERT INTO rows (id, table_id) VALUES ('s', 'a\x1fb')")
        await db.execute("INSERT INTO rows (id, table_id) VALUES ('s2', 'b\x1fa')")
    assert sorted(await sent_since(db, wakeups)) == sorted(["a", "b", "a\x1fb", "b\x1fa"])


async def test_the_capture_trigger_serves_any_table_with_any_primary_key(
    db: asyncpg.Connection,
) -> None:
    """The log's identity is designed for any table: the table's own name, a composite key."""
    await db.execute("CREATE TABLE things (a int, b text, note text, PRIMARY KEY (a, b))")
    await db.execute(
        "CREATE TRIGGER capture AFTER INSERT OR UPDATE OR DELETE ON things"
        " FOR EACH ROW EXECUTE FUNCTION broadcaster_capture('', 'a', 'b')"
    )
    await db.execute(
        "CREATE TRIGGER capture_truncate BEFORE TRUNCATE ON things"
        " FOR EACH STATEMENT EXECUTE FUNCTION broadcaster_capture_truncate('', 'a', 'b')"
    )
    await db.execute("INSERT INTO things VALUES (1, 'x', 'first'), (2, 'y', 'second')")
    await db.execute("UPDATE things SET note = 'changed' WHERE a = 1")
    await db.execute("TRUNCATE things")
    logged = [
        (op, t, i, new and new["note"], old and old["note"])
        for op, t, i, new, old in await entries(db)
    ]
    assert logged[:3] == [
        ("INSERT", "public.things", '[1, "x"]', "first", None),
        ("INSERT", "public.things", '[2, "y"]', "second", None),
        ("UPDATE", "public.things", '[1, "x"]', "changed", "first"),
    ]
    assert sorted(logged[3:]) == [
        ("DELETE", "public.things", '[1, "x"]', None, "changed"),
        ("DELETE", "public.things", '[2, "y"]', None, "second"),
    ]


async def test_a_partitioned_tables_capture_logs_the_identity_it_is_given(
    db: asyncpg.Connection, wakeups: asyncio.Queue[str]
) -> None:
    """'=' and a table_id: its partitions' triggers log and wake the root's, not their own name."""
    await db.execute(
        "CREATE TABLE m (id int, region text, note text, PRIMARY KEY (id, region))"
        " PARTITION BY LIST (region)"
    )
    await db.execute("CREATE TABLE m_eu PARTITION OF m FOR VALUES IN ('eu')")
    await db.execute(
        "CREATE TRIGGER capture AFTER INSERT OR UPDATE OR DELETE ON m"
        " FOR EACH ROW EXECUTE FUNCTION broadcaster_capture('=public.m', 'id', 'region')"
    )
    await db.execute(
        "CREATE TRIGGER capture_truncate BEFORE TRUNCATE ON m FOR EACH STATEMENT"
        " EXECUTE FUNCTION broadcaster_capture_truncate('=public.m', 'id', 'region')"
    )
    # Created after the triggers: it gets the row trigger, cloned.
    await db.execute("CREATE TABLE m_us PARTITION OF m FOR VALUES IN ('us')")
    await db.execute("INSERT INTO m VALUES (1, 'eu', 'first'), (2, 'us', 'second')")
    await db.execute("UPDATE m SET region = 'us' WHERE id = 1")
    await db.execute("TRUNCATE m")
    logged = [(op, t, i) for op, t, i, _, _ in await entries(db)]
    assert logged[:4] == [
        ("INSERT", "public.m", '[1, "eu"]'),
        ("INSERT", "public.m", '[2, "us"]'),
        # Moved to another partition: a DELETE there and an INSERT here, as Postgres fires them.
        ("DELETE", "public.m", '[1, "eu"]'),
        ("INSERT", "public.m", '[1, "us"]'),
    ]
    assert sorted(logged[4:]) == [
        ("DELETE", "public.m", '[1, "us"]'),
        ("DELETE", "public.m", '[2, "us"]'),
    ]
    assert set(await sent_since(db, wakeups)) == {"public.m", ""}
