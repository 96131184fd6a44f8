"""Supabase's official Python client (``realtime`` on PyPI) against a live server.

The client pins websockets<16, so it runs in a virtualenv of its own
(.venv-realtime, built by the test from supabase_py/requirements.txt):
supabase_py/listen.py subscribes with it and prints each event the client hands
its callbacks; this test does the writes and checks what arrived.
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
                f"{binding} {data['type']} {_row_id(data)} {(data.get('record') or {}).get('data')}"
                for binding, received in self.events.items()
                for data in received
            )
            raise AssertionError(
                f"waited for {everything} events and {updates} UPDATEs, got: {got}"
            ) from None


@contextlib.asynccontextmanager
async def listening(python: Path, url: str, table: str, log: Path) -> AsyncIterator[Listener]:
    with log.open("ab") as stderr:
        process = await asyncio.create_subprocess_exec(
            str(python),
            str(HERE / "listen.py"),
            url,
            table,
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
        listening(python, f"{server.url}/realtime/v1", table, tmp_path / "listen.log") as app,
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
