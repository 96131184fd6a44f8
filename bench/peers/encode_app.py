"""Peer: encode/broadcaster with its Postgres backend, under Starlette and uvicorn.

Set up as the library's README shows (its chat example, with the Postgres URL
instead of Redis): one WebSocket route whose sender task iterates
``broadcast.subscribe(channel=...)`` and ``send_text``s each event, and a
receiver task that ends the connection when the client leaves. The channel is
the client's ``table_id`` (``/ws?table_id=t3``); the rows' trigger NOTIFYs that
channel with the row as JSON (``bench/peers/peer.sql``).

One addition for the benchmark: once the subscription is in place the server
sends ``{"type":"subscribed"}``, so that clients know when they are live.

Runs in ``bench/.venv-peers`` (``broadcaster`` on PyPI is this library, whose name
clashes with ours)::

    DATABASE_URL=postgresql://... bench/.venv-peers/bin/python -m uvicorn \
        encode_app:app --app-dir bench/peers --port 8001
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import AsyncIterator

import anyio
from starlette.applications import Starlette
from starlette.routing import WebSocketRoute
from starlette.websockets import WebSocket

# encode/broadcaster, from bench/.venv-peers (ruff files it as first-party: our
# package has the same name).
from broadcaster import Broadcast

broadcast = Broadcast(os.environ["DATABASE_URL"])

SUBSCRIBED = '{"type":"subscribed"}'


async def rows_ws(websocket: WebSocket) -> None:
    await websocket.accept()
    table_id = websocket.query_params["table_id"]

    async with anyio.create_task_group() as task_group:
        # run until first is complete
        async def run_receiver() -> None:
            await receiver(websocket)
            task_group.cancel_scope.cancel()

        task_group.start_soon(run_receiver)
        await sender(websocket, table_id)


async def receiver(websocket: WebSocket) -> None:
    async for _message in websocket.iter_text():
        pass


async def sender(websocket: WebSocket, table_id: str) -> None:
    async with broadcast.subscribe(channel=table_id) as subscriber:
        await websocket.send_text(SUBSCRIBED)
        async for event in subscriber:  # type: ignore[union-attr]
            await websocket.send_text(event.message)


@contextlib.asynccontextmanager
async def lifespan(app: Starlette) -> AsyncIterator[None]:
    await broadcast.connect()
    try:
        yield
    finally:
        await broadcast.disconnect()


app = Starlette(routes=[WebSocketRoute("/ws", rows_ws)], lifespan=lifespan)
