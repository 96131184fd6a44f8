"""The starlette application: HTTP routes and the lifespan that runs the :class:`Runtime`.

WebSocket upgrades never reach this app; :mod:`broadcaster.net.websocket` serves them.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from importlib import resources

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import Route

from ..exceptions import DatabaseError
from ..settings import Settings
from .runtime import Runtime

__all__ = ["create_app"]


def _runtime(request: Request) -> Runtime:
    runtime: Runtime = request.state.broadcaster
    return runtime


async def healthz(request: Request) -> Response:
    return JSONResponse({"status": "ok"})


async def readyz(request: Request) -> Response:
    runtime = _runtime(request)
    ready, reason = runtime.ready
    body: dict[str, object] = (
        {"status": "ready"} if ready else {"status": "not ready", "reason": reason}
    )
    if ready and runtime.reader is not None:
        # How full Postgres' NOTIFY queue is (0 to 1): a stalled listener
        # anywhere on the cluster makes it grow, and writers fail when it is full.
        with contextlib.suppress(DatabaseError, TimeoutError):
            body["notification_queue_usage"] = await asyncio.wait_for(
                runtime.reader.notification_queue_usage(), timeout=2
            )
    return JSONResponse(body, status_code=200 if ready else 503)


async def demo_page(request: Request) -> Response:
    page = resources.files("broadcaster").joinpath("static/demo.html").read_text()
    return HTMLResponse(page)


def create_app(settings: Settings, database_url: str) -> Starlette:
    # Built now, so that a configuration error stops the server before it serves.
    runtime = Runtime(settings, database_url)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[dict[str, Runtime]]:
        await runtime.start()
        try:
            yield {"broadcaster": runtime}
        finally:
            await runtime.stop()

    return Starlette(
        routes=[
            Route("/", demo_page),
            Route("/healthz", healthz),
            Route("/readyz", readyz),
        ],
        lifespan=lifespan,
    )
