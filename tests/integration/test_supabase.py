"""The Supabase protocol against a real server and Postgres: bindings that read every table."""

from __future__ import annotations

import json
from typing import Any

import asyncpg
import pytest
from websockets.asyncio.client import ClientConnection, connect

from tests.support.server import record_writes, running_server
from tests.support.timeouts import within

pytestmark = pytest.mark.asyncio


async def join(connection: ClientConnection, topic: str, filter: str) -> None:
    """Join ``topic`` with one binding (vsn 2.0.0 frames) and wait for the ok reply."""
    binding = {"event": "*", "schema": "public", "table": "rows", "filter": filter}
    config = {"postgres_changes": [binding]}
    await connection.send(json.dumps(["1", "1", topic, "phx_join", {"config": config}]))
    while True:
        _, ref, _, event, payload = json.loads(await within(connection.recv()))
        if event == "phx_reply" and ref == "1":
            assert payload["status"] == "ok", payload
            return


async def next_change(connection: ClientConnection) -> Any:
    while True:
        _, _, _, event, payload = json.loads(await within(connection.recv()))
        if event == "postgres_changes":
            return payload["data"]


async def test_every_table_binding_gets_a_change_that_woke_nobody_at_the_refresh(
    database_url: str,
) -> None:
    """A change with no wake-up is found by the refresh's read of every table."""
    db = await asyncpg.connect(database_url)
    try:
        async with (
            running_server(database_url, refresh_interval=0.3) as server,
            connect(server.url.replace("http", "ws") + "/realtime/v1/websocket?vsn=2.0.0") as ws,
        ):
            await join(ws, "realtime:quiet", "id=eq.quiet")
            await db.execute("INSERT INTO rows (id, table_id) VALUES ('loud', 'ta')")
            async with db.transaction():
                await db.execute("SET LOCAL broadcaster.wake = 'off'")
                await db.execute("INSERT INTO rows (id, table_id) VALUES ('quiet', 'tq')")
            change = await next_change(ws)
            assert (change["type"], change["record"]["id"]) == ("INSERT", "quiet")
            await db.execute("UPDATE rows SET data = '{\"n\": 1}' WHERE id IN ('quiet', 'loud')")
            change = await next_change(ws)
            assert (change["type"], change["record"]["table_id"]) == ("UPDATE", "tq")
    finally:
        await db.close()


async def test_a_write_that_skipped_its_wake_up_before_an_every_table_join_arrives(
    database_url: str,
) -> None:
    """No server served tz when it was written, so its writer skipped the NOTIFY; the
    registration's final read finds it once it commits, long before any refresh."""
    db = await asyncpg.connect(database_url)
    try:
        async with running_server(database_url, refresh_interval=60) as server:
            transaction = db.transaction()
            await transaction.start()
            await db.execute("INSERT INTO rows (id, table_id) VALUES ('early', 'tz')")
            async with connect(
                server.url.replace("http", "ws") + "/realtime/v1/websocket?vsn=2.0.0"
            ) as ws:
                await join(ws, "realtime:every", "id=eq.early")
                await transaction.commit()
                change = await next_change(ws)
                assert (change["type"], change["record"]["table_id"]) == ("INSERT", "tz")
    finally:
        await db.close()


async def test_the_changes_of_one_read_go_out_in_one_write(
    database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Phoenix carries one change per frame: a read's frames reach the socket together."""
    writes = record_writes(monkeypatch)
    db = await asyncpg.connect(database_url)
    try:
        async with (
            running_server(database_url) as server,
            connect(server.url.replace("http", "ws") + "/realtime/v1/websocket?vsn=2.0.0") as ws,
        ):
            await join(ws, "realtime:sheet", "table_id=eq.sheet")
            await db.execute(
                "INSERT INTO rows (id, table_id)"
                " SELECT 'c' || k, 'sheet' FROM generate_series(1, 3) AS k"
            )
            ids = {(await next_change(ws))["record"]["id"] for _ in range(3)}
            assert ids == {"c1", "c2", "c3"}
    finally:
        await db.close()
    (carrying,) = [w.data for w in writes if b'"record"' in w.data]
    assert carrying.count(b'"record"') == 3
