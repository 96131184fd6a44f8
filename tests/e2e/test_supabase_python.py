"""Supabase's official Python client (``realtime`` on PyPI) against a live server.

The client pins websockets<16, so it runs in a virtualenv of its own
(.venv-realtime, built by the test from supabase_py/requirements.txt):
supabase_py/listen.py subscribes with it and prints each event the client hands
its callbacks; this test does the writes and checks what arrived: on ``rows``,
and on a table published as a user publishes one.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from datetime import datetime
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from broadcaster.postgres.publishing import publish
from tests.support.server import running_server
from tests.support.timeouts import within
from tests.support.venvs import ROOT, ensure_venv

pytestmark = pytest.mark.asyncio

HERE = Path(__file__).parent / "supabase_py"
VENV = ROOT / ".venv-realtime"

# A row's image as the table holds it: what each write's RETURNING gives.
IMAGE = """json_build_object('id', id, 'table_id', table_id, 'data', data,
    'enriching_columns', enriching_columns, 'created_at', created_at,
    'updated_at', updated_at) AS image"""
# Four writes to a row, in order, and the event each must become.
WRITES = [
    (
        "INSERT",
        "INSERT INTO rows (id, table_id, data, enriching_columns)"
        f""" VALUES ($1, $2, '{{"step": 1}}', '{{email}}') RETURNING {IMAGE}""",
    ),
    (
        "UPDATE",
        f"""UPDATE rows SET data = '{{"step": 2}}' WHERE id = $1 AND table_id = $2
        RETURNING {IMAGE}""",
    ),
    (
        "UPDATE",
        f"""UPDATE rows SET data = '{{"step": 3}}', enriching_columns = '{{}}'
        WHERE id = $1 AND table_id = $2 RETURNING {IMAGE}""",
    ),
    ("DELETE", f"DELETE FROM rows WHERE id = $1 AND table_id = $2 RETURNING {IMAGE}"),
]


class Listener:
    """listen.py running: what it printed, line by line."""

    def __init__(self, process: asyncio.subprocess.Process, log: Path) -> None:
        self.process = process
        self.log = log
        self.events: dict[str, list[dict[str, Any]]] = {"*": [], "UPDATE": []}

    async def line(self) -> dict[str, Any]:
        assert self.process.stdout is not None
        text = await within(self.process.stdout.readline(), 10)
        if not text:
            raise AssertionError(f"listen.py exited early:\n{self.output()}")
        message: dict[str, Any] = json.loads(text)
        return message

    def output(self) -> str:
        """What listen.py wrote to its standard error: the client's own logs."""
        return self.log.read_text()

    async def events_until(self, everything: int, updates: int) -> None:
        """Read events until the ``*`` binding has ``everything`` and the UPDATE one
        ``updates``; failing with what did arrive."""
        try:
            while len(self.events["*"]) < everything or len(self.events["UPDATE"]) < updates:
                message = await self.line()
                self.events[message["binding"]].append(message["data"])
        except TimeoutError:
            got = "; ".join(
                f"{binding} {data['type']} {_row_id(data)} {data.get('record')}"
                for binding, received in self.events.items()
                for data in received
            )
            raise AssertionError(
                f"waited for {everything} events and {updates} UPDATEs, got: {got}"
            ) from None


@contextlib.asynccontextmanager
async def listening(
    python: Path, url: str, table: str, filter: str, log: Path
) -> AsyncIterator[Listener]:
    """listen.py subscribed to ``table`` (``schema.name``) with ``filter``."""
    with log.open("ab") as stderr:
        process = await asyncio.create_subprocess_exec(
            str(python),
            str(HERE / "listen.py"),
            url,
            table,
            filter,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=stderr,
        )
    listener = Listener(process, log)
    try:
        yield listener
        assert process.stdin is not None
        process.stdin.close()
        assert await within(process.wait(), 10) == 0, listener.output()
    finally:
        if process.returncode is None:
            process.kill()
            await within(process.wait(), 10)


def _row_id(data: dict[str, Any]) -> str:
    row: dict[str, Any] = data["old_record"] if data["type"] == "DELETE" else data["record"]
    return str(row["id"])


async def four_writes(database_url: str, table: str, ids: list[str]) -> dict[str, list[Any]]:
    """The four writes to each of ``ids``, interleaved (every row's INSERT, then every
    row's first UPDATE, ...), each its own transaction, none waiting for an event;
    each row's images, in the order of its writes."""
    images: dict[str, list[Any]] = {row_id: [] for row_id in ids}
    connection = await asyncpg.connect(database_url)
    try:
        for _, sql in WRITES:
            for row_id in ids:
                image = json.loads(await connection.fetchval(sql, row_id, table))
                images[row_id].append(_instants(image))
    finally:
        await connection.close()
    return images


TIMESTAMPS = ("created_at", "updated_at")


def _instants(row: dict[str, Any]) -> dict[str, Any]:
    """``row`` with its timestamps as instants: the server may spell them otherwise
    than Postgres does (Z for +00:00). A missing one stays None."""
    return {
        column: datetime.fromisoformat(value) if column in TIMESTAMPS and value else value
        for column, value in row.items()
    }


def _as_written(record: dict[str, Any], image: dict[str, Any]) -> dict[str, Any]:
    """The table's columns of ``record`` (a record may carry more: its version)."""
    return _instants({column: record.get(column) for column in image})


def assert_four_events(events: list[dict[str, Any]], images: list[Any], row_id: str) -> None:
    """``events`` (one row's, in arrival order) are the four writes that left ``images``."""
    assert [e["type"] for e in events] == [op for op, _ in WRITES], (row_id, events)
    inserted, first, second, deleted = events
    for event, image in zip([inserted, first, second], images[:3], strict=True):
        assert _as_written(event["record"], image) == image, event
        assert isinstance(event["record"].get("version"), int), event
    for before, update in zip(images[:2], [first, second], strict=True):
        # The whole old row: as the previous write left it.
        assert _as_written(update["old_record"], before) == before, update
    assert _as_written(deleted["old_record"], images[3]) == images[3], deleted
    committed = [datetime.fromisoformat(e["commit_timestamp"]) for e in events]
    assert committed == sorted(committed), [e["commit_timestamp"] for e in events]


async def test_four_back_to_back_writes_to_three_rows_arrive_as_four_events_each(
    database_url: str, tmp_path: Path
) -> None:
    python = await ensure_venv(VENV, HERE / "requirements.txt")
    table = "python-client"
    ids = [f"py-{n}" for n in range(3)]
    async with (
        running_server(database_url) as server,
        listening(
            python,
            f"{server.url}/realtime/v1",
            "public.rows",
            f"table_id=eq.{table}",
            tmp_path / "listen.log",
        ) as app,
    ):
        assert await app.line() == {"status": "SUBSCRIBED", "error": ""}
        images = await four_writes(database_url, table, ids)
        await app.events_until(everything=4 * len(ids), updates=2 * len(ids))
    for row_id in ids:
        assert_four_events(
            [data for data in app.events["*"] if _row_id(data) == row_id], images[row_id], row_id
        )
        assert [
            (data["type"], data["record"]["data"])
            for data in app.events["UPDATE"]
            if _row_id(data) == row_id
        ] == [("UPDATE", {"step": 2}), ("UPDATE", {"step": 3})]
    assert len(app.events["*"]) == 4 * len(ids)
    assert len(app.events["UPDATE"]) == 2 * len(ids)


MESSAGES = """
CREATE TABLE messages (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, room_id int,
    body text, tags text[], at timestamptz DEFAULT now(), meta jsonb)
"""
# A message as the table holds it: what each write's RETURNING gives.
MESSAGE = "to_jsonb(messages.*)::text AS image"
# Four writes to a message of room $1 (the UPDATEs and the DELETE: of id $2), in order.
MESSAGE_WRITES = [
    (
        "INSERT",
        "INSERT INTO messages (room_id, body, tags, meta)"
        f""" VALUES ($1, 'hello', '{{a,"b c"}}', '{{"n": 1}}') RETURNING {MESSAGE}""",
    ),
    (
        "UPDATE",
        "UPDATE messages SET body = 'edited', at = '2026-11-26T10:00:00.123456+02:00'"
        f" WHERE id = $2 AND room_id = $1 RETURNING {MESSAGE}",
    ),
    (
        "UPDATE",
        """UPDATE messages SET tags = '{}', meta = '{"n": 2, "deep": {"x": [1, null]}}'"""
        f" WHERE id = $2 AND room_id = $1 RETURNING {MESSAGE}",
    ),
    ("DELETE", f"DELETE FROM messages WHERE id = $2 AND room_id = $1 RETURNING {MESSAGE}"),
]


async def four_message_writes(database_url: str, rooms: list[int]) -> dict[int, list[Any]]:
    """The four writes to a new message in each of ``rooms``, interleaved, each its
    own transaction, none waiting for an event; each message's images, by its id."""
    (_, insert), *later = MESSAGE_WRITES
    messages: list[tuple[int, list[Any]]] = []
    connection = await asyncpg.connect(database_url)
    try:
        for room in rooms:
            messages.append((room, [json.loads(await connection.fetchval(insert, room))]))
        for _, sql in later:
            for room, images in messages:
                images.append(json.loads(await connection.fetchval(sql, room, images[0]["id"])))
    finally:
        await connection.close()
    return {images[0]["id"]: images for _, images in messages}


async def test_four_back_to_back_writes_to_a_published_table_arrive_filtered(
    database_url: str, tmp_path: Path
) -> None:
    python = await ensure_venv(VENV, HERE / "requirements.txt")
    connection = await asyncpg.connect(database_url)
    try:
        await connection.execute(MESSAGES)
        outcome = await publish(connection, "public.messages")
    finally:
        await connection.close()
    assert not outcome.refused, outcome.message
    async with (
        running_server(database_url) as server,
        listening(
            python,
            f"{server.url}/realtime/v1",
            "public.messages",
            "room_id=eq.5",
            tmp_path / "listen.log",
        ) as app,
    ):
        assert await app.line() == {"status": "SUBSCRIBED", "error": ""}
        # Room 6's message is written between room 5's, and must not arrive.
        written = await four_message_writes(database_url, [5, 6, 5])
        await app.events_until(everything=8, updates=4)
    room5 = {id: images for id, images in written.items() if images[0]["room_id"] == 5}
    for message_id, images in room5.items():
        events = [data for data in app.events["*"] if _row_id(data) == str(message_id)]
        assert [e["type"] for e in events] == [op for op, _ in MESSAGE_WRITES], events
        inserted, edited, retagged, deleted = events
        assert (inserted["record"], inserted.get("old_record")) == (images[0], None)
        assert (edited["record"], edited["old_record"]) == (images[1], images[0])
        assert (retagged["record"], retagged["old_record"]) == (images[2], images[1])
        assert (deleted.get("record"), deleted["old_record"]) == (None, images[3])
        for event in events:
            assert (event["schema"], event["table"]) == ("public", "messages"), event
            assert [(c["name"], c["type"]) for c in event["columns"]] == [
                ("id", "int8"),
                ("room_id", "int4"),
                ("body", "text"),
                ("tags", "_text"),
                ("at", "timestamptz"),
                ("meta", "jsonb"),
            ], event
        committed = [datetime.fromisoformat(e["commit_timestamp"]) for e in events]
        assert committed == sorted(committed), events
        assert [
            data["record"] for data in app.events["UPDATE"] if _row_id(data) == str(message_id)
        ] == images[1:3]
    assert len(app.events["*"]) == 8
    assert len(app.events["UPDATE"]) == 4
