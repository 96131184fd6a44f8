"""Which order column of a change log follows each row's commit order: a demonstration.

Usage, from the repository root (with the repository's virtualenv)::

    .venv/bin/python bench/log_order.py [--url postgresql://postgres@127.0.0.1:5432/postgres]

Creates a scratch database on ``--url`` (dropped at the end), a table ``t`` with
a change log written by triggers, and plays two races with two connections
(docs/design/change-log.md, "Ordering"):

1. Two transactions update one row. T2 takes its xid first, T1 updates the
   row, T2's UPDATE waits for T1's row lock, T1 commits, then T2. Printed per
   entry: the xid8, a global sequence's ``nextval``, ``clock_timestamp()`` and
   a transaction-local counter, each taken by the AFTER ROW trigger.
2. A re-insert of an id whose DELETE is not committed yet. T1 deletes the row
   in a statement that goes on for a second after the deletion (its AFTER ROW
   trigger fires at the statement's end); meanwhile T2 inserts the same id,
   which waits in the unique index for T1; T1 commits, then T2. Played twice:
   with the insert's entry written by a BEFORE INSERT trigger (before the
   unique index's wait), then by an AFTER INSERT trigger (after it).

Timing does not matter here (a correctness demonstration), so a shared
server will do.
"""

from __future__ import annotations

import argparse
import asyncio
import secrets

import asyncpg

SCHEMA = """
CREATE TABLE t (id text PRIMARY KEY, v int NOT NULL);
CREATE SEQUENCE log_seq;
CREATE TABLE log (
    xid xid8 NOT NULL,
    seq bigint NOT NULL,
    clock timestamptz NOT NULL,
    counter int NOT NULL,
    id text NOT NULL,
    op text NOT NULL
);
CREATE FUNCTION log_entry(op text, id text) RETURNS void LANGUAGE plpgsql AS $$
DECLARE
    counter int := coalesce(nullif(current_setting('demo.counter', true), ''), '0')::int + 1;
BEGIN
    PERFORM set_config('demo.counter', counter::text, true);
    INSERT INTO log VALUES (pg_current_xact_id(), nextval('log_seq'), clock_timestamp(),
        counter, id, op);
END
$$;
CREATE FUNCTION log_row() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM log_entry(TG_OP || ' (' || TG_WHEN || ')',
        CASE WHEN TG_OP = 'DELETE' THEN OLD.id ELSE NEW.id END);
    RETURN CASE WHEN TG_WHEN = 'BEFORE' THEN NEW END;
END
$$;
CREATE TRIGGER log_after AFTER UPDATE OR DELETE ON t FOR EACH ROW EXECUTE FUNCTION log_row();
"""
BEFORE_INSERT = (
    "CREATE TRIGGER log_insert BEFORE INSERT ON t FOR EACH ROW EXECUTE FUNCTION log_row()"
)
AFTER_INSERT = "CREATE TRIGGER log_insert AFTER INSERT ON t FOR EACH ROW EXECUTE FUNCTION log_row()"


async def show(connection: asyncpg.Connection, commits: list[tuple[str, int]]) -> None:
    print("  commit order:", ", ".join(f"{name} (xid {xid})" for name, xid in commits))
    records = await connection.fetch("SELECT * FROM log ORDER BY seq")
    print("  | xid | seq | clock_timestamp | counter | op |")
    for record in records:
        print(
            f"  | {record['xid']} | {record['seq']} | {record['clock'].time()}"
            f" | {record['counter']} | {record['op']} |"
        )
    final = [record["op"] for record in records][-1]
    print(f"  in seq order, the row ends: {final}\n")


async def same_row(url: str) -> None:
    t1, t2, reader = [await asyncpg.connect(url) for _ in range(3)]
    await reader.execute("INSERT INTO t VALUES ('x', 0)")
    await reader.execute("TRUNCATE log")
    await t2.execute("BEGIN")
    xid2 = int(await t2.fetchval("SELECT pg_current_xact_id()::text"))
    await t1.execute("BEGIN")
    xid1 = int(await t1.fetchval("SELECT pg_current_xact_id()::text"))
    await t1.execute("UPDATE t SET v = 1 WHERE id = 'x'")
    waiting = asyncio.create_task(t2.execute("UPDATE t SET v = 2 WHERE id = 'x'"))
    await asyncio.sleep(0.5)
    await t1.execute("COMMIT")
    await waiting
    await t2.execute("COMMIT")
    print("1. Two transactions update row x; T2 took its xid first:")
    await show(reader, [("T1", xid1), ("T2", xid2)])
    for connection in (t1, t2, reader):
        await connection.close()


async def reinsert(url: str, trigger: str) -> None:
    t1, t2, reader = [await asyncpg.connect(url) for _ in range(3)]
    await reader.execute("DROP TRIGGER IF EXISTS log_insert ON t")
    await reader.execute(trigger)
    await reader.execute("DELETE FROM t; INSERT INTO t VALUES ('y', 0); TRUNCATE log")
    await t1.execute("BEGIN")
    xid1 = int(await t1.fetchval("SELECT pg_current_xact_id()::text"))
    deleting = asyncio.create_task(
        t1.execute(
            "WITH d AS (DELETE FROM t WHERE id = 'y' RETURNING id) SELECT pg_sleep(1) FROM d"
        )
    )
    await asyncio.sleep(0.3)
    await t2.execute("BEGIN")
    xid2 = int(await t2.fetchval("SELECT pg_current_xact_id()::text"))
    inserting = asyncio.create_task(t2.execute("INSERT INTO t VALUES ('y', 2)"))
    await deleting
    await t1.execute("COMMIT")
    await inserting
    await t2.execute("COMMIT")
    when = "BEFORE" if "BEFORE" in trigger else "AFTER"
    print(f"2. Re-insert of y while its DELETE is uncommitted; the insert logged {when}:")
    await show(reader, [("T1 (delete)", xid1), ("T2 (insert)", xid2)])
    for connection in (t1, t2, reader):
        await connection.close()


async def main(url: str) -> None:
    admin = await asyncpg.connect(url)
    name = f"log_order_{secrets.token_hex(4)}"
    await admin.execute(f"CREATE DATABASE {name}")
    try:
        scratch = url.rsplit("/", 1)[0] + f"/{name}"
        connection = await asyncpg.connect(scratch)
        await connection.execute(SCHEMA)
        await connection.close()
        await same_row(scratch)
        await reinsert(scratch, BEFORE_INSERT)
        await reinsert(scratch, AFTER_INSERT)
    finally:
        await admin.execute(f"DROP DATABASE {name} WITH (FORCE)")
        await admin.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", default="postgresql://postgres@127.0.0.1:5432/postgres")
    asyncio.run(main(parser.parse_args().url))
