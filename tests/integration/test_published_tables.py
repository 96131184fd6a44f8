"""Published tables served by a real server: Supabase bindings with filters decided by
Postgres, row-level security as the subscriber, and the native protocol."""

from __future__ import annotations

import json
import math
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import jwt
import pytest
from websockets.asyncio.client import ClientConnection, connect

from broadcaster.net.server import Server
from broadcaster.postgres.publishing import publish
from tests.support.server import client, running_server
from tests.support.timeouts import within

pytestmark = pytest.mark.asyncio

SECRET = "published-tables-secret-of-32-bytes!!"
PATH = "/realtime/v1/websocket?vsn=2.0.0"


@pytest.fixture
async def db(database_url: str) -> AsyncIterator[asyncpg.Connection]:
    connection = await asyncpg.connect(database_url)
    await connection.execute(
        "CREATE TABLE messages (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,"
        " room_id int, body text, tags text[])"
    )
    await publish(connection, "public.messages")
    yield connection
    await connection.close()


async def supabase(server: Server) -> ClientConnection:
    return await connect(server.url.replace("http", "ws") + PATH)


async def join(
    ws: ClientConnection, topic: str, binding: dict[str, Any], access_token: str | None = None
) -> dict[str, Any]:
    """Join ``topic`` with one binding; the reply's payload."""
    payload: dict[str, Any] = {"config": {"postgres_changes": [binding]}}
    if access_token is not None:
        payload["access_token"] = access_token
    await ws.send(json.dumps(["1", "1", topic, "phx_join", payload]))
    while True:
        _, ref, _, event, reply = json.loads(await within(ws.recv()))
        if event == "phx_reply" and ref == "1":
            return dict(reply)


async def changes(ws: ClientConnection, count: int) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = []
    while len(found) < count:
        _, _, _, event, payload = json.loads(await within(ws.recv()))
        if event == "postgres_changes":
            found.append(payload["data"])
    return found


def on_messages(filter: str | None = None) -> dict[str, Any]:
    binding = {"event": "*", "schema": "public", "table": "messages"}
    return binding if filter is None else {**binding, "filter": filter}


async def test_a_filtered_binding_gets_every_change_of_its_rows_each_as_an_event(
    database_url: str, db: asyncpg.Connection
) -> None:
    async with running_server(database_url) as server:
        ws = await supabase(server)
        try:
            reply = await join(ws, "realtime:room5", on_messages("room_id=eq.5"))
            assert reply["status"] == "ok", reply
            await db.execute("INSERT INTO messages (room_id, body) VALUES (6, 'other room')")
            await db.execute("INSERT INTO messages (room_id, body, tags) VALUES (5, 'a', '{x}')")
            await db.execute("UPDATE messages SET body = 'b' WHERE room_id = 5")
            await db.execute("UPDATE messages SET body = 'c' WHERE room_id = 5")
            await db.execute("DELETE FROM messages WHERE room_id = 5")

            found = await changes(ws, 4)
        finally:
            await ws.close()

    assert [(c["type"], (c.get("record") or c["old_record"])["body"]) for c in found] == [
        ("INSERT", "a"),
        ("UPDATE", "b"),
        ("UPDATE", "c"),
        ("DELETE", "c"),
    ]
    assert found[0]["table"] == "messages"
    assert found[0]["record"]["tags"] == ["x"]
    assert {"name": "room_id", "type": "int4"} in found[0]["columns"]
    assert found[2]["old_record"]["body"] == "b"


async def test_refusals_come_with_their_reason(database_url: str, db: asyncpg.Connection) -> None:
    async with running_server(database_url) as server:
        ws = await supabase(server)
        try:
            unpublished = await join(ws, "realtime:a", {"schema": "public", "table": "todos"})
            uncast = await join(ws, "realtime:b", on_messages("room_id=eq.five"))
        finally:
            await ws.close()

    assert unpublished["status"] == "error"
    assert "broadcaster publish public.todos" in unpublished["response"]["reason"]
    assert uncast["status"] == "error"
    assert "invalid input syntax for type integer" in uncast["response"]["reason"]


async def test_every_table_of_rows_leaves_the_published_tables_out(
    database_url: str, db: asyncpg.Connection
) -> None:
    async with running_server(database_url) as server:
        ws = await supabase(server)
        try:
            everything = {"event": "*", "schema": "public", "table": "rows"}
            assert (await join(ws, "realtime:all", everything))["status"] == "ok"
            assert (await join(ws, "realtime:messages", on_messages()))["status"] == "ok"
            await db.execute("INSERT INTO messages (room_id, body) VALUES (1, 'm')")
            await db.execute("INSERT INTO rows (id, table_id) VALUES ('r1', 't1')")

            found = await changes(ws, 2)
        finally:
            await ws.close()

    assert sorted(c["table"] for c in found) == ["messages", "rows"]


async def test_the_native_protocol_loads_and_follows_a_published_table(
    database_url: str, db: asyncpg.Connection
) -> None:
    await db.execute("INSERT INTO messages (room_id, body) VALUES (1, 'first')")
    async with running_server(database_url) as server, client(server) as native:
        synced = await native.subscribe("public.messages", snapshot=True)
        await db.execute("UPDATE messages SET body = 'second'")
        change = await native.recv()

    [loaded] = synced.changes
    assert (loaded["op"], loaded["row"]["body"], loaded["row"]["version"]) == ("INSERT", "first", 0)
    assert (change["op"], change["row"]["body"], change["old"]["body"]) == (
        "UPDATE",
        "second",
        "first",
    )


async def test_a_native_subscription_by_a_columns_value_gets_its_rows_only(
    database_url: str, db: asyncpg.Connection
) -> None:
    await db.execute("INSERT INTO messages (room_id, body) VALUES (5, 'five'), (6, 'six')")
    async with running_server(database_url) as server, client(server) as native:
        synced = await native.subscribe("public.messages", snapshot=True, filter="room_id=eq.5")
        await db.execute("INSERT INTO messages (room_id, body) VALUES (6, 'other')")
        await db.execute("UPDATE messages SET body = 'moved', room_id = 5 WHERE body = 'six'")
        await db.execute("INSERT INTO messages (room_id, body) VALUES (5, 'later')")
        first, second = await native.recv(), await native.recv()
        again = await native.subscribe(
            "public.messages", cursor=synced.cursor, filter="room_id=eq.5"
        )
        refused = await native.request(
            {"type": "subscribe", "table_id": "public.messages", "filter": "nope=eq.1"}
        )

    assert [c["row"]["body"] for c in synced.changes] == ["five"]
    assert [(first["op"], first["row"]["body"]), (second["op"], second["row"]["body"])] == [
        ("UPDATE", "moved"),
        ("INSERT", "later"),
    ]
    # Resumed from its cursor, the subscription catches up on what passed since.
    assert [c["row"]["body"] for c in again.changes] == ["moved", "later"]
    assert (refused["type"], refused["code"]) == ("error", "bad_filter")
    assert "unknown column" in refused["message"]


async def test_a_row_leaving_a_native_filter_arrives_as_a_delete(
    database_url: str, db: asyncpg.Connection
) -> None:
    await db.execute("INSERT INTO messages (room_id, body) VALUES (5, 'here')")
    async with running_server(database_url) as server, client(server) as native:
        synced = await native.subscribe("public.messages", snapshot=True, filter="room_id=eq.5")
        await db.execute("UPDATE messages SET room_id = 6")
        await db.execute("UPDATE messages SET body = 'away'")
        await db.execute("UPDATE messages SET room_id = 5")
        left, back = await native.recv(), await native.recv()
        again = await native.subscribe(
            "public.messages", cursor=synced.cursor, filter="room_id=eq.5"
        )

    [loaded] = synced.changes
    assert (left["op"], left["id"], left["old"]["room_id"]) == ("DELETE", loaded["id"], 5)
    assert (back["op"], back["row"]["body"]) == ("UPDATE", "away")
    assert [(c["op"], c["id"]) for c in again.changes] == [
        ("DELETE", loaded["id"]),
        ("UPDATE", loaded["id"]),
    ]


def user_token(role: str, sub: str) -> str:
    claims = {"role": role, "sub": sub, "exp": math.ceil(time.time() + 600)}
    return jwt.encode(claims, SECRET, algorithm="HS256")


async def test_row_level_security_is_checked_as_each_subscriber(
    database_url: str, db: asyncpg.Connection
) -> None:
    # Roles are the cluster's: one of this test's own.
    role = "bt_viewer_" + uuid.uuid4().hex[:12]
    await db.execute(
        f"""
        CREATE ROLE {role} NOLOGIN;
        CREATE TABLE notes (id int PRIMARY KEY, owner text, body text, secret text);
        ALTER TABLE notes ENABLE ROW LEVEL SECURITY;
        CREATE POLICY mine ON notes FOR SELECT TO {role}
            USING (owner = current_setting('request.jwt.claims', true)::jsonb ->> 'sub');
        GRANT SELECT (id, owner, body) ON notes TO {role};
        """
    )
    await publish(db, "public.notes")
    binding = {"event": "*", "schema": "public", "table": "notes"}
    try:
        async with running_server(database_url, auth="jwt", jwt_secret=SECRET) as server:
            ada, bob = await supabase(server), await supabase(server)
            try:
                for ws, who in ((ada, "ada"), (bob, "bob")):
                    reply = await join(ws, "realtime:notes", binding, user_token(role, who))
                    assert reply["status"] == "ok", reply
                await db.execute(
                    "INSERT INTO notes VALUES (1, 'ada', 'a', 's1'), (2, 'bob', 'b', 's2')"
                )
                # Checked on the row as it is when read: a row deleted before
                # the read checks its INSERT is seen by nobody (as on Supabase).
                seen_by_ada = await changes(ada, 1)
                seen_by_bob = await changes(bob, 1)
                await db.execute("DELETE FROM notes WHERE id = 1")
                seen_by_ada += await changes(ada, 1)
                seen_by_bob += await changes(bob, 1)
            finally:
                await ada.close()
                await bob.close()
    finally:
        await db.execute(f"DROP OWNED BY {role}; DROP ROLE {role}")

    assert [(c["type"], c.get("record") or c["old_record"]) for c in seen_by_ada] == [
        ("INSERT", {"id": 1, "owner": "ada", "body": "a"}),
        ("DELETE", {"id": 1}),
    ]
    assert [(c["type"], c.get("record") or c["old_record"]) for c in seen_by_bob] == [
        ("INSERT", {"id": 2, "owner": "bob", "body": "b"}),
        ("DELETE", {"id": 1}),
    ]
    assert [c["name"] for c in seen_by_ada[0]["columns"]] == ["id", "owner", "body"]
