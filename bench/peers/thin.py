"""Peer: the thinnest Python server, the ceiling of the obvious design.

One asyncpg connection LISTENs on a channel per subscribed ``table_id`` (the
rows' trigger NOTIFYs that channel with the row as JSON, see
``bench/peers/peer.sql``); each notification's payload goes to that table's
clients with ``websockets.broadcast()``, which encodes it once. Nothing else: no
parsing, no cursors, no catch-up. A client connects to ``/ws?table_id=t3`` and
gets ``{"type":"subscribed"}`` once the table's LISTEN is in place.

Runs in ``bench/.venv-peers``::

    DATABASE_URL=postgresql://... PORT=8002 bench/.venv-peers/bin/python bench/peers/thin.py
"""

from __future__ import annotations

import asyncio
import os
import signal
from urllib.parse import parse_qs, urlsplit

import asyncpg
from websockets.asyncio.server import ServerConnection, broadcast, serve

SUBSCRIBED = '{"type":"subscribed"}'


async def main() -> None:
    listener = await asyncpg.connect(os.environ["DATABASE_URL"])
    tables: dict[str, set[ServerConnection]] = {}
    listening: dict[str, asyncio.Future[None]] = {}

    def notified(_conn: object, _pid: int, channel: str, payload: object) -> None:
        clients = tables.get(channel)
        if clients:
            # asyncpg's payload is a str; its stubs promise only an object.
            broadcast(clients, str(payload))

    one_at_a_time = asyncio.Lock()  # asyncpg runs one query at a time per connection

    async def listen(table_id: str) -> None:
        # The first client of a table starts its LISTEN; the others wait for it.
        ready = listening.get(table_id)
        if ready is None:
            ready = listening[table_id] = asyncio.get_running_loop().create_future()
            async with one_at_a_time:
                await listener.add_listener(table_id, notified)
            ready.set_result(None)
        await ready

    async def handler(websocket: ServerConnection) -> None:
        query = parse_qs(urlsplit(websocket.request.path if websocket.request else "").query)
        table_id = query.get("table_id", [""])[0]
        if not table_id:
            await websocket.close(1008, "table_id required")
            return
        await listen(table_id)
        clients = tables.setdefault(table_id, set())
        clients.add(websocket)
        try:
            await websocket.send(SUBSCRIBED)
            await websocket.wait_closed()
        finally:
            clients.discard(websocket)

    stop = asyncio.get_running_loop().create_future()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set_result, None)
    async with serve(handler, "127.0.0.1", int(os.environ["PORT"]), compression=None):
        await stop
    await listener.close()


if __name__ == "__main__":
    asyncio.run(main())
