"""Every committed change, exactly once and in order per row, under writers racing on the same rows.

Writers increment a counter in each row's ``data`` (``n``), in transactions of
several statements, with savepoints rolled back, whole transactions rolled
back, deletions and re-inserts of deleted ids. A row's committed history is
then a chain the subscribers can check without knowing the commit order: an
INSERT with ``n = 0``, UPDATEs each one above the last, whose old row is the
row as the previous event left it, and a DELETE of the row as it was. A lost,
repeated, reordered or rolled-back change breaks the chain.
"""

from __future__ import annotations

import asyncio
import json
import random
from collections.abc import AsyncIterator, Callable
from typing import Any

import asyncpg
import pytest
from websockets.asyncio.client import ClientConnection, connect

from broadcaster.net.server import Server
from tests.support.server import client, running_server
from tests.support.timeouts import within

ROWS = 6
WRITERS = 4
TRANSACTIONS = 40
TABLE = "chain"


class _RolledBack(Exception):
    """Raised in a transaction to roll it back."""


@pytest.fixture
async def server(database_url: str) -> AsyncIterator[Server]:
    async with running_server(database_url) as running:
        yield running


async def write(database_url: str, seed: int) -> None:
    rng = random.Random(seed)
    connection = await asyncpg.connect(database_url)
    try:
        for _ in range(TRANSACTIONS):
            try:
                async with connection.transaction():
                    for _ in range(rng.randint(1, 3)):
                        await one_statement(connection, rng)
                        if rng.random() < 0.2:
                            # Undone work in a savepoint: its changes must never arrive.
                            savepoint = connection.transaction()
                            await savepoint.start()
                            await one_statement(connection, rng)
                            await savepoint.rollback()
                    if rng.random() < 0.1:
                        raise _RolledBack
            except (_RolledBack, asyncpg.DeadlockDetectedError):
                pass
    finally:
        await connection.close()


async def one_statement(connection: asyncpg.Connection, rng: random.Random) -> None:
    row_id = f"r{rng.randrange(ROWS)}"
    action = rng.random()
    if action < 0.15:
        await connection.execute("DELETE FROM rows WHERE id = $1", row_id)
    elif action < 0.3:
        await connection.execute(
            "INSERT INTO rows (id, table_id, data) VALUES ($1, $2, '{\"n\": 0}')"
            " ON CONFLICT (id) DO NOTHING",
            row_id,
            TABLE,
        )
    else:
        await connection.execute(
            "UPDATE rows SET data = jsonb_build_object('n', (data->>'n')::int + 1) WHERE id = $1",
            row_id,
        )


class Chains:
    """Each row's events as a subscriber applied them, checked link by link."""

    def __init__(self) -> None:
        self.held: dict[str, Any] = {}
        self.events = 0
        self.broken: list[str] = []

    def apply(self, op: str, row_id: str, new: Any, old: Any) -> None:
        self.events += 1
        held = self.held.get(row_id)
        if op == "INSERT":
            if held is not None or new != {"n": 0}:
                self.broken.append(f"{row_id}: INSERT {new} onto {held}")
            self.held[row_id] = new
        elif op == "UPDATE":
            if held is None or old != held or new != {"n": held["n"] + 1}:
                self.broken.append(f"{row_id}: UPDATE {old} -> {new} onto {held}")
            self.held[row_id] = new
        else:
            if held is None or old != held:
                self.broken.append(f"{row_id}: DELETE of {old} onto {held}")
            self.held.pop(row_id, None)


async def database(db: asyncpg.Connection) -> dict[str, Any]:
    records = await db.fetch("SELECT id, data FROM rows WHERE table_id = $1", TABLE)
    return {r["id"]: json.loads(r["data"]) for r in records}


async def until_converged(
    chains: Chains, db: asyncpg.Connection, receive: Callable[[], Any], units: float = 30
) -> None:
    """Apply what arrives until the chains hold what the database holds."""

    async def run() -> None:
        want = await database(db)
        while chains.held != want:
            try:
                await within(receive(), 0.5)
            except TimeoutError:
                want = await database(db)

    await within(run(), units)


async def supabase_receive(connection: ClientConnection, chains: Chains) -> None:
    frame = json.loads(await connection.recv())
    if frame[3] != "postgres_changes":
        return
    data = frame[4]["data"]
    record, old = data.get("record"), data.get("old_record")
    row_id = (record or old)["id"]
    chains.apply(
        data["type"], row_id, None if record is None else record["data"], old and old["data"]
    )


async def test_every_committed_change_arrives_once_in_order_per_row(
    server: Server, database_url: str
) -> None:
    db = await asyncpg.connect(database_url)
    try:
        await db.execute(
            "INSERT INTO rows (id, table_id, data)"
            " SELECT 'r' || g, $1, '{\"n\": 0}' FROM generate_series(0, $2 - 1) AS g",
            TABLE,
            ROWS,
        )
        native_chains, supabase_chains = Chains(), Chains()
        async with (
            client(server) as native,
            connect(
                server.url.replace("http", "ws") + "/realtime/v1/websocket?vsn=2.0.0"
            ) as phoenix,
        ):
            synced = await native.subscribe(TABLE, snapshot=True)
            for message in synced.changes:
                native_chains.apply("INSERT", message["row"]["id"], message["row"]["data"], None)
            # Supabase has no snapshot: its chains start from the rows as they are now.
            supabase_chains.held = await database(db)
            binding = {"event": "*", "schema": "public", "table": "rows"}
            binding["filter"] = f"table_id=eq.{TABLE}"
            await phoenix.send(
                json.dumps(
                    [
                        "1",
                        "1",
                        "realtime:chain",
                        "phx_join",
                        {"config": {"postgres_changes": [binding]}},
                    ]
                )
            )
            while True:
                reply = json.loads(await within(phoenix.recv()))
                if reply[3] == "phx_reply" and reply[1] == "1":
                    assert reply[4]["status"] == "ok", reply
                    break

            await within(
                asyncio.gather(*(write(database_url, seed) for seed in range(WRITERS))), 60
            )

            async def native_receive() -> None:
                message = await native.recv(60)
                if message["type"] != "change":
                    return
                row, old = message["row"], message.get("old")
                native_chains.apply(
                    message["op"],
                    row["id"],
                    None if message["op"] == "DELETE" else row["data"],
                    None if old is None else old["data"],
                )

            await until_converged(native_chains, db, native_receive)
            await until_converged(
                supabase_chains, db, lambda: supabase_receive(phoenix, supabase_chains)
            )
    finally:
        await db.close()

    assert native_chains.broken == []
    assert supabase_chains.broken == []
    committed = await count_committed(database_url)
    assert committed > TRANSACTIONS, "the writers committed too little to race"
    assert native_chains.events - ROWS == committed
    assert supabase_chains.events == committed


async def count_committed(database_url: str) -> int:
    """The changes the writers committed, as the change log holds them."""
    db = await asyncpg.connect(database_url)
    try:
        count: int = await db.fetchval(
            "SELECT count(*) - $2 FROM broadcaster_changes WHERE table_id = $1", TABLE, ROWS
        )
    finally:
        await db.close()
    return count
