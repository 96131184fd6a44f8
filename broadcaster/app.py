"""The starlette application: HTTP routes and the lifespan that runs the :class:`Runtime`.

WebSocket upgrades never reach this app; :mod:`broadcaster.websocket` serves them.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from importlib import resources

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import Route

from .runtime import Runtime
from .settings import Settings

__all__ = ["create_app"]


def _runtime(request: Request) -> Runtime:
    runtime: Runtime = request.state.broadcaster
    return runtime


async def healthz(request: Request) -> Response:
    return JSONResponse({"status": "ok"})


async def readyz(request: Request) -> Response:
    ready, reason = _runtime(request).ready
    if ready:
        return JSONResponse({"status": "ready"})
    return JSONResponse({"status": "not ready", "reason": reason}, status_code=503)


async def demo_page(request: Request) -> Response:
    page = resources.files("broadcaster").joinpath("static/demo.html").read_text()
    return HTMLResponse(page)


def create_app(settings: Settings, database_url: str) -> Starlette:
    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[dict[str, Runtime]]:
        runtime = Runtime(settings, database_url)
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
