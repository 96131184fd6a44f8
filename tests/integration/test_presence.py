"""Presence in Postgres: tracking announces, and a dead process's presences expire."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest

from broadcaster.core.presence import CHANNEL
from broadcaster.postgres.queries import ChangeReader
from tests.support.timeouts import within

pytestmark = pytest.mark.asyncio


@pytest.fixture
async def reader(database_url: str) -> AsyncIterator[ChangeReader]:
    pool = await asyncpg.create_pool(database_url, min_size=1, max_size=2)
    yield ChangeReader(pool)
    await pool.close()


@pytest.fixture
async def diffs(database_url: str) -> AsyncIterator[asyncio.Queue[dict[str, Any]]]:
    connection = await asyncpg.connect(database_url)
    queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    await connection.add_listener(
        CHANNEL, lambda _c, _p, _ch, payload: queue.put_nowait(json.loads(payload))
    )
    yield queue
    await connection.close()


async def test_track_retrack_and_untrack_are_announced(
    reader: ChangeReader, diffs: asyncio.Queue[dict[str, Any]]
) -> None:
    await reader.track("room", "ada", "slot-1", "process-a", {"name": "Ada"})
    first = await within(diffs.get())
    assert first["topic"] == "room"
    assert first["leaves"] == {}
    (joined,) = first["joins"]["ada"]["metas"]
    assert joined["name"] == "Ada"
    # A re-track is the old presence leaving and a new one, with a new ref,
    # joining: Phoenix clients apply joins before leaves, matched by ref.
    await reader.track("room", "ada", "slot-1", "process-a", {"name": "Ada L."})
    retracked = await within(diffs.get())
    (rejoined,) = retracked["joins"]["ada"]["metas"]
    (left,) = retracked["leaves"]["ada"]["metas"]
    assert (rejoined["name"], left["name"]) == ("Ada L.", "Ada")
    assert left["phx_ref"] == joined["phx_ref"] != rejoined["phx_ref"]
    assert await reader.presence_state("room") == [("ada", rejoined["phx_ref"], {"name": "Ada L."})]
    await reader.untrack(["slot-1"])
    left = await within(diffs.get())
    assert left["joins"] == {}
    assert list(left["leaves"]) == ["ada"]
    assert await reader.presence_state("room") == []


async def test_a_process_that_stopped_proving_it_is_alive_loses_its_presences(
    reader: ChangeReader, diffs: asyncio.Queue[dict[str, Any]], database_url: str
) -> None:
    await reader.track("room", "ghost", "slot-dead", "dead-process", {})
    await reader.track("room", "live", "slot-live", "live-process", {})
    await within(diffs.get())
    await within(diffs.get())
    db = await asyncpg.connect(database_url)
    try:
        await db.execute(
            "UPDATE broadcaster_presence SET seen_at = now() - interval '1 minute'"
            " WHERE process = 'dead-process'"
        )
    finally:
        await db.close()
    await reader.keep_presence("live-process", stale_after=15)
    left = await within(diffs.get())
    assert list(left["leaves"]) == ["ghost"]
    assert [(key, meta) for key, _, meta in await reader.presence_state("room")] == [("live", {})]
