"""The wake-ups the triggers send, heard on a LISTEN connection of the tests' own."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import asyncpg

from tests.support.timeouts import within

CHANNEL = "broadcaster_changes"


@contextlib.asynccontextmanager
async def listening(database_url: str) -> AsyncIterator[asyncio.Queue[str]]:
    """Every payload sent on the channel while open, in delivery order."""
    connection = await asyncpg.connect(database_url)
    queue: asyncio.Queue[str] = asyncio.Queue()
    await connection.add_listener(
        CHANNEL, lambda _conn, _pid, _channel, payload: queue.put_nowait(payload)
    )
    try:
        yield queue
    finally:
        await connection.close()


async def sent_since(db: asyncpg.Connection, wakeups: asyncio.Queue[str]) -> list[str]:
    """The payloads sent by what ``db`` committed so far (a marker closes the list)."""
    await db.execute("SELECT pg_notify($1, 'marker')", CHANNEL)
    payloads = []
    while (payload := await within(wakeups.get())) != "marker":
        payloads.append(payload)
    return payloads
