"""Postgres types on the wire: what a native and a Supabase client receive for each.

A published table has a column of each type docs/protocol.md ("Types") and
docs/supabase.md ("Types") describe; rows written in a session whose time
zone is Asia/Kolkata (+05:30) reach a native client (``row``, ``old``, and a
snapshot's rows) and a Supabase client (``record``, ``old_record``,
``columns``) as the JSON ``to_jsonb`` writes: frames are read here as raw
text and parsed keeping every digit, so that a number rounded anywhere on
the way would show.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from decimal import Decimal
from typing import Any

import asyncpg
import pytest
from websockets.asyncio.client import ClientConnection, connect

from broadcaster.postgres.publishing import publish
from tests.support.server import running_server
from tests.support.timeouts import within

pytestmark = pytest.mark.asyncio

SCHEMA = """
CREATE TYPE mood AS ENUM ('sad', 'ok', 'happy');
CREATE DOMAIN positive AS int4 CHECK (VALUE > 0);
CREATE TABLE typed (
    id int8 PRIMARY KEY,
    price numeric,
    big int8,
    ratio float8,
    flag bool,
    at timestamptz,
    local timestamp,
    day date,
    ref uuid,
    tags text[],
    nums int4[],
    doc jsonb,
    raw json,
    bytes bytea,
    mood mood,
    qty positive
)
"""
FULL = """INSERT INTO typed VALUES (
    9007199254740993, 12345678901234567890.123456789012345678, 9223372036854775807, 0.1, true,
    '2026-11-26 10:00:00.123456+00', '2026-11-26 10:00', '2026-11-26',
    '6F1C2A4E-9B7D-4C3A-8E21-5D0F7A9B3C11', '{a,"b c",NULL}', '{1,NULL,3}',
    '{"b": [1.50, true], "a": null}', '{"b":1,  "a":2, "b":3}', '\\x00ff', 'happy', 5
)"""
NULLS = "INSERT INTO typed (id, price, ratio) VALUES (2, 'NaN', 'Infinity')"
COLUMNS = [
    {"name": "id", "type": "int8"},
    {"name": "price", "type": "numeric"},
    {"name": "big", "type": "int8"},
    {"name": "ratio", "type": "float8"},
    {"name": "flag", "type": "bool"},
    {"name": "at", "type": "timestamptz"},
    {"name": "local", "type": "timestamp"},
    {"name": "day", "type": "date"},
    {"name": "ref", "type": "uuid"},
    {"name": "tags", "type": "_text"},
    {"name": "nums", "type": "_int4"},
    {"name": "doc", "type": "jsonb"},
    {"name": "raw", "type": "json"},
    {"name": "bytes", "type": "bytea"},
    {"name": "mood", "type": "mood"},
    {"name": "qty", "type": "positive"},
]


def full_row(at: str) -> dict[str, Any]:
    """The full row as every client receives it, its timestamptz written as ``at``."""
    return {
        "id": 9007199254740993,
        "price": Decimal("12345678901234567890.123456789012345678"),
        "big": 9223372036854775807,
        "ratio": Decimal("0.1"),
        "flag": True,
        "at": at,
        "local": "2026-11-26T10:00:00",
        "day": "2026-11-26",
        "ref": "6f1c2a4e-9b7d-4c3a-8e21-5d0f7a9b3c11",
        "tags": ["a", "b c", None],
        "nums": [1, None, 3],
        "doc": {"a": None, "b": [Decimal("1.50"), True]},
        "raw": {"a": 2, "b": 3},
        "bytes": "\\x00ff",
        "mood": "happy",
        "qty": 5,
    }


IN_KOLKATA = full_row("2026-11-26T15:30:00.123456+05:30")
IN_UTC = full_row("2026-11-26T10:00:00.123456+00:00")
NULL_ROW = {name: None for name in IN_UTC} | {"id": 2, "price": "NaN", "ratio": "Infinity"}
# Each of these, as the frame's text has it: every digit, and jsonb's own spacing.
EXACT = (
    '"id": 9007199254740993',
    '"price": 12345678901234567890.123456789012345678',
    '"big": 9223372036854775807',
    '"doc": {"a": null, "b": [1.50, true]}',
)


def parsed(text: str | bytes) -> Any:
    """A frame as JSON, its numbers kept whole (a float would round them)."""
    return json.loads(text, parse_float=Decimal)


@pytest.fixture
async def writer(database_url: str) -> AsyncIterator[asyncpg.Connection]:
    connection = await asyncpg.connect(database_url, server_settings={"TimeZone": "Asia/Kolkata"})
    await connection.execute(SCHEMA)
    await publish(connection, "public.typed")
    yield connection
    await connection.close()


async def frames(
    ws: ClientConnection, wanted: int, keep: Callable[[Any], bool]
) -> list[tuple[str, Any]]:
    """The next ``wanted`` messages ``keep`` accepts, each with its frame's text (a native
    frame may hold a batch, a list of messages; a Phoenix message is a list too)."""
    found: list[tuple[str, Any]] = []
    while len(found) < wanted:
        text = await within(ws.recv())
        assert isinstance(text, str)
        message = parsed(text)
        for item in (
            message if isinstance(message, list) and isinstance(message[0], dict) else [message]
        ):
            if keep(item):
                found.append((text, item))
    return found


async def test_each_type_reaches_native_and_supabase_clients_as_to_jsonb_writes_it(
    database_url: str, writer: asyncpg.Connection
) -> None:
    await writer.execute(FULL)
    async with running_server(database_url) as server:
        native = await connect(server.ws_url)
        phoenix = await connect(
            server.url.replace("http", "ws") + "/realtime/v1/websocket?vsn=2.0.0"
        )
        try:
            await native.send(
                json.dumps(
                    {"type": "subscribe", "ref": 1, "table_id": "public.typed", "snapshot": True}
                )
            )
            (_, snapshot), _ = await frames(
                native, 2, lambda m: m.get("type") in ("change", "synced")
            )
            binding = {"event": "*", "schema": "public", "table": "typed"}
            await phoenix.send(
                json.dumps(
                    [
                        "1",
                        "1",
                        "realtime:typed",
                        "phx_join",
                        {"config": {"postgres_changes": [binding]}},
                    ]
                )
            )
            [(_, reply)] = await frames(phoenix, 1, lambda m: m[3] == "phx_reply")
            assert reply[4]["status"] == "ok", reply

            await writer.execute(NULLS)
            await writer.execute("UPDATE typed SET flag = false WHERE id = 2")
            await writer.execute("DELETE FROM typed WHERE id = 9007199254740993")

            live = await frames(native, 3, lambda m: m.get("type") == "change")
            supabase = await frames(phoenix, 3, lambda m: m[3] == "postgres_changes")
        finally:
            await native.close()
            await phoenix.close()

    # The snapshot is read in the server's session, whose time zone is UTC.
    assert snapshot["row"] == IN_UTC | {"version": 0}
    changed = NULL_ROW | {"flag": False}
    deleted = live[2][1]["row"]["version"]
    assert [(m["op"], m["row"], m.get("old")) for _, m in live] == [
        ("INSERT", NULL_ROW | {"version": live[0][1]["row"]["version"]}, None),
        ("UPDATE", changed | {"version": live[1][1]["row"]["version"]}, NULL_ROW),
        # A DELETE's row is the log's: the key as text, whatever its type.
        (
            "DELETE",
            {"id": "9007199254740993", "table_id": "public.typed", "version": deleted},
            IN_KOLKATA,
        ),
    ]
    data = [m[4]["data"] for _, m in supabase]
    assert [(d["type"], d.get("record"), d.get("old_record")) for d in data] == [
        ("INSERT", NULL_ROW, None),
        ("UPDATE", changed, NULL_ROW),
        ("DELETE", None, IN_KOLKATA),
    ]
    assert all(d["columns"] == COLUMNS for d in data)
    # Live changes are written in the writer's time zone.
    for text in (live[2][0], supabase[2][0]):
        for member in EXACT:
            assert member in text
