"""The Supabase protocol against a real server and Postgres: bindings that read every
table, token expiry and the limits."""

from __future__ import annotations

import json
import math
import re
import time
from typing import Any

import asyncpg
import jwt
import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from tests.support.server import record_writes, running_server
from tests.support.timeouts import seconds, within

pytestmark = pytest.mark.asyncio

SECRET = "supabase-integration-secret-of-32-bytes!"
AUTH: dict[str, Any] = {"auth": "jwt", "jwt_secret": SECRET}
PATH = "/realtime/v1/websocket?vsn=2.0.0"


def token(tables: list[str], expires_in: float) -> str:
    """A Supabase-like access token granting ``tables``; rounded up, it lives at least
    ``expires_in`` seconds."""
    claims = {
        "role": "authenticated",
        "sub": "user-1",
        "exp": math.ceil(time.time() + expires_in),
        "table_ids": tables,
    }
    return jwt.encode(claims, SECRET, algorithm="HS256")


async def join(
    connection: ClientConnection, topic: str, filter: str, access_token: str | None = None
) -> None:
    """Join ``topic`` with one binding (vsn 2.0.0 frames) and wait for the ok reply."""
    binding = {"event": "*", "schema": "public", "table": "rows", "filter": filter}
    payload: dict[str, Any] = {"config": {"postgres_changes": [binding]}}
    if access_token is not None:
        payload["access_token"] = access_token
    await connection.send(json.dumps(["1", "1", topic, "phx_join", payload]))
    while True:
        _, ref, _, event, payload = json.loads(await within(connection.recv()))
        if event == "phx_reply" and ref == "1":
            assert payload["status"] == "ok", payload
            return


async def until_closed(connection: ClientConnection) -> tuple[int | None, list[Any]]:
    """Every message until the server closes the connection, and its close code."""
    received = []
    try:
        while True:
            received.append(json.loads(await within(connection.recv())))
    except ConnectionClosed as closed:
        return (closed.rcvd.code if closed.rcvd is not None else None), received


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


async def test_a_row_committed_after_the_token_expired_never_arrives(database_url: str) -> None:
    """The channel gets Supabase's system error and phx_close at expiry; the
    connection stays up, and a change another client receives is not sent to it."""
    db = await asyncpg.connect(database_url)
    try:
        async with (
            running_server(database_url, **AUTH) as server,
            connect(server.url.replace("http", "ws") + PATH) as expiring,
            connect(server.url.replace("http", "ws") + PATH) as witness,
        ):
            short = token(["sheet"], seconds(2))
            expires_at = jwt.decode(short, options={"verify_signature": False})["exp"]
            await join(expiring, "realtime:mine", "table_id=eq.sheet", short)
            await join(witness, "realtime:theirs", "table_id=eq.sheet", token(["sheet"], 300))
            await db.execute("INSERT INTO rows (id, table_id) VALUES ('before', 'sheet')")
            assert (await next_change(expiring))["record"]["id"] == "before"
            assert (await next_change(witness))["record"]["id"] == "before"

            ended: list[Any] = []
            while not ended or ended[-1][3] != "phx_close":
                ended.append(json.loads(await within(expiring.recv())))
            assert time.time() >= expires_at
            assert [(topic, event) for _, _, topic, event, _ in ended] == [
                ("realtime:mine", "system"),
                ("realtime:mine", "phx_close"),
            ]
            system = ended[0][4]
            assert (system["extension"], system["status"], system["channel"]) == (
                "system",
                "error",
                "mine",
            )
            assert re.fullmatch(r"Token has expired \d+ seconds ago", system["message"])

            await db.execute("INSERT INTO rows (id, table_id) VALUES ('after', 'sheet')")
            assert (await next_change(witness))["record"]["id"] == "after"
            # Anything sent to the expired connection before the heartbeat's
            # reply comes before it.
            await expiring.send(json.dumps([None, "hb", "phoenix", "heartbeat", {}]))
            late: list[Any] = []
            while not late or late[-1][1] != "hb":
                late.append(json.loads(await within(expiring.recv())))
            assert [event for _, _, _, event, _ in late] == ["phx_reply"]
    finally:
        await db.close()


async def test_a_connection_that_never_joins_with_a_valid_token_is_closed(
    database_url: str,
) -> None:
    async with (
        running_server(database_url, **AUTH, auth_timeout=0.5) as server,
        connect(server.url.replace("http", "ws") + PATH) as ws,
    ):
        await ws.send(json.dumps(["1", "1", "realtime:x", "phx_join", {"access_token": "bad"}]))
        code, received = await until_closed(ws)
        assert code == 4001
        assert [(event, payload["status"]) for _, _, _, event, payload in received] == [
            ("phx_reply", "error")
        ]


async def test_a_message_flood_is_rate_limited_then_cut_off(database_url: str) -> None:
    async with (
        running_server(database_url, max_messages_per_second=10, max_errors=5) as server,
        connect(server.url.replace("http", "ws") + PATH) as witness,
        connect(server.url.replace("http", "ws") + PATH) as flooder,
    ):
        await join(witness, "realtime:w", "table_id=eq.A")
        for ref in range(200):
            try:
                await flooder.send(json.dumps([None, str(ref), "phoenix", "heartbeat", {}]))
            except ConnectionClosed:
                break
        code, replies = await until_closed(flooder)
        assert code == 4003
        reasons = {payload["response"].get("reason") for _, _, _, _, payload in replies}
        assert "Too many messages per second" in reasons
        db = await asyncpg.connect(database_url)
        try:
            await db.execute("INSERT INTO rows (id, table_id) VALUES ('still', 'A')")
        finally:
            await db.close()
        assert (await next_change(witness))["record"]["id"] == "still"
