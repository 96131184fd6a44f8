"""The enrichment example's API: the user's own web app, which only writes rows.

It serves the page (``static/``), the built JS client (``clients/js/dist`` at
``/client/``), the page's configuration (``/config.json``: where the
broadcaster is) and one endpoint::

    POST /tables/{table_id}/enrich
    {"cells": [{"row_id": "demo-0001", "column": "ceo"}, ...]}

which marks those cells as being enriched, in one transaction, by adding each
column to its row's ``enriching_columns``. That is all it does: it never talks
to the broadcaster and never pushes anything to browsers. The triggers on
``rows`` make the broadcaster deliver the change to every tab subscribed to
the table, which then shows spinners; ``worker.py`` fills the cells, and those
writes are delivered the same way.

Run it on its own with ``python examples/enrichment/app.py --help``;
``broadcaster demo`` starts it with the broadcaster and the worker.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import signal
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

# isort: split
# The example's own module, beside this script (its directory is on sys.path).
from companies import COLUMNS, ENRICHABLE

logger = logging.getLogger("enrichment.app")

HERE = Path(__file__).resolve().parent
STATIC = HERE / "static"
# The example lives in the repository next to the JS client it loads.
DEFAULT_CLIENT_DIR = HERE.parent.parent / "clients" / "js" / "dist"

#: One request may ask for at most this many cells (a whole 300-row table is 1,200).
MAX_CELLS = 5000
#: Longest row_id or table_id accepted; longer ones are refused rather than queried.
MAX_ID_LENGTH = 200

# Rows are locked in id order before they are updated, so two concurrent
# requests touching the same rows queue up instead of deadlocking (an UPDATE
# ... FROM locks rows in whatever order its plan visits them).
_LOCK_ROWS = """
SELECT id FROM rows
WHERE table_id = $1 AND id = ANY($2::text[])
ORDER BY id
FOR UPDATE
"""

# Array union without duplicates, keeping the order keys were first added in.
# A cell already being enriched stays as it is; a row whose array comes out
# unchanged is not delivered at all (the trigger skips updates that change
# nothing).
_MARK_ENRICHING = """
UPDATE rows AS r
SET enriching_columns = ARRAY(
    SELECT u.c
    FROM unnest(r.enriching_columns || w.columns) WITH ORDINALITY AS u(c, n)
    GROUP BY u.c
    ORDER BY min(u.n)
)
FROM (
    SELECT t.row_id, array_agg(t.col) AS columns
    FROM unnest($2::text[], $3::text[]) AS t(row_id, col)
    GROUP BY t.row_id
) AS w
WHERE r.table_id = $1 AND r.id = w.row_id
"""


class BadRequest(Exception):
    """The request cannot be served; ``status`` says why (400, 404, 422)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def parse_cells(body: object) -> list[tuple[str, str]]:
    """The (row_id, column) pairs of an enrich request, without duplicates, in order."""
    if not isinstance(body, dict) or set(body) != {"cells"}:
        raise BadRequest(422, 'the body must be {"cells": [{"row_id": ..., "column": ...}, ...]}')
    cells = body["cells"]
    if not isinstance(cells, list) or not cells:
        raise BadRequest(422, "cells must be a non-empty list")
    if len(cells) > MAX_CELLS:
        raise BadRequest(422, f"at most {MAX_CELLS} cells per request, not {len(cells)}")
    pairs: dict[tuple[str, str], None] = {}
    for index, cell in enumerate(cells):
        if not isinstance(cell, dict) or set(cell) != {"row_id", "column"}:
            raise BadRequest(422, f"cells[{index}] must be an object with row_id and column")
        row_id, column = cell["row_id"], cell["column"]
        if not isinstance(row_id, str) or not 0 < len(row_id) <= MAX_ID_LENGTH:
            raise BadRequest(422, f"cells[{index}].row_id must be a non-empty string")
        if column not in ENRICHABLE:
            raise BadRequest(
                422, f"cells[{index}].column must be one of {', '.join(ENRICHABLE)}, not {column!r}"
            )
        pairs[(row_id, column)] = None
    return list(pairs)


def _pool(request: Request) -> asyncpg.Pool:
    pool: asyncpg.Pool = request.state.pool
    return pool


async def enrich(request: Request) -> Response:
    table_id = request.path_params["table_id"]
    try:
        if len(table_id) > MAX_ID_LENGTH:
            raise BadRequest(404, "no such table")
        try:
            body = json.loads(await request.body())
        except ValueError:
            raise BadRequest(400, "the body is not JSON") from None
        cells = parse_cells(body)
        row_ids = sorted({row_id for row_id, _ in cells})
        async with _pool(request).acquire() as conn, conn.transaction():
            found = {r["id"] for r in await conn.fetch(_LOCK_ROWS, table_id, row_ids)}
            missing = [row_id for row_id in row_ids if row_id not in found]
            if missing:
                # Raised inside the transaction: it rolls back, nothing is marked.
                shown = ", ".join(missing[:10]) + (", ..." if len(missing) > 10 else "")
                raise BadRequest(404, f"no such rows in table {table_id!r}: {shown}")
            await conn.execute(
                _MARK_ENRICHING,
                table_id,
                [row_id for row_id, _ in cells],
                [column for _, column in cells],
            )
    except BadRequest as exc:
        return JSONResponse({"error": str(exc)}, status_code=exc.status)
    logger.info("enrich: %d cells in %d rows of %r", len(cells), len(row_ids), table_id)
    return JSONResponse({"cells": len(cells), "rows": len(row_ids)})


async def index(request: Request) -> Response:
    return FileResponse(STATIC / "index.html")


def create_app(
    database_url: str, ws_url: str, table_id: str, client_dir: Path = DEFAULT_CLIENT_DIR
) -> Starlette:
    """The app: the page, its configuration, the built JS client and the enrich endpoint."""
    if not (client_dir / "index.js").is_file():
        raise SystemExit(
            f"the JS client is not built ({client_dir}/index.js is missing): "
            "run `npm ci && npm run build` in clients/js"
        )
    config = {
        "wsUrl": ws_url,
        "tableId": table_id,
        "columns": list(COLUMNS),
        "enrichable": list(ENRICHABLE),
        # Passed to createClient: a tab whose network went away notices within
        # a few seconds (the client pings on the browser's `offline` event).
        "clientOptions": {
            "heartbeatIntervalMs": 10_000,
            "heartbeatTimeoutMs": 3_000,
            "reconnect": {"initialDelayMs": 250, "maxDelayMs": 5_000},
        },
    }

    async def config_json(request: Request) -> Response:
        return JSONResponse(config, headers={"Cache-Control": "no-store"})

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[dict[str, Any]]:
        async with asyncpg.create_pool(database_url, min_size=1, max_size=4) as pool:
            yield {"pool": pool}

    return Starlette(
        routes=[
            Route("/", index),
            Route("/config.json", config_json),
            Route("/tables/{table_id}/enrich", enrich, methods=["POST"]),
            Mount("/static", StaticFiles(directory=STATIC), name="static"),
            Mount("/client", StaticFiles(directory=client_dir), name="client"),
        ],
        lifespan=lifespan,
    )


def _arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8080, help="0 picks a free port")
    parser.add_argument("--database-url", default=os.environ.get("DATABASE_URL"))
    parser.add_argument(
        "--ws-url",
        default=os.environ.get("BROADCASTER_WS_URL", "ws://127.0.0.1:8000/ws"),
        help="the broadcaster's WebSocket URL, as the browser reaches it",
    )
    parser.add_argument("--table-id", default="demo", help="the table the page shows")
    parser.add_argument("--client-dir", type=Path, default=DEFAULT_CLIENT_DIR)
    options = parser.parse_args()
    if not options.database_url:
        parser.error("set DATABASE_URL or pass --database-url")
    return options


async def _serve(options: argparse.Namespace) -> None:
    app = create_app(options.database_url, options.ws_url, options.table_id, options.client_dir)
    config = uvicorn.Config(
        app, host=options.host, port=options.port, log_config=None, access_log=False
    )
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    while not server.started:
        if task.done():
            await task
            raise SystemExit("the enrichment app stopped during start-up; see its log")
        await asyncio.sleep(0.01)
    port = server.servers[0].sockets[0].getsockname()[1]
    # Read by `broadcaster demo` to learn the port (--port 0).
    print(f"enrichment app: serving on http://{options.host}:{port}", flush=True)
    await task


def main() -> None:
    options = _arguments()
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    # uvicorn re-raises the signal it stopped on once it has shut down; with a
    # handler of ours in place that is a no-op, so SIGTERM exits 0.
    signal.signal(signal.SIGTERM, lambda _signum, _frame: None)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_serve(options))
    sys.exit(0)


if __name__ == "__main__":
    main()
