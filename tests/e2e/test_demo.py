"""``broadcaster demo`` as a user runs it: the page, the API, the worker, the broadcaster.

The demo is started as a child process on free ports with a short, reliable
fake provider; a WebSocket client subscribed to the table sees each cell
first being enriched (its key in ``enriching_columns``: the page's spinner)
and then filled.

:func:`running_demo` is shared with ``test_browser.py``.
"""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from websockets.asyncio.client import connect

from tests.support.demo import TABLE, http, needs_js_client, running_demo
from tests.support.process import environment
from tests.support.server import Client
from tests.support.timeouts import eventually, seconds, within
from tests.support.view import database_rows

pytestmark = pytest.mark.asyncio


def enrich_body(*cells: tuple[str, str]) -> dict[str, Any]:
    return {"cells": [{"row_id": row_id, "column": column} for row_id, column in cells]}


# A fast provider that never fails, so the test knows every cell ends up with a value.
FAST = {"ENRICH_MIN_DELAY": "0.5", "ENRICH_MAX_DELAY": "1.0", "ENRICH_FAILURE_RATE": "0"}


@needs_js_client
async def test_demo_serves_the_page_and_delivers_spinners_then_values(tmp_path: Path) -> None:
    async with running_demo(tmp_path / "data", tmp_path / "demo.log", rows=40, **FAST) as demo:
        # The page, its configuration and the JS client it loads.
        status, _, page = await http("GET", demo.url + "/")
        assert status == 200
        assert b'id="grid"' in page
        assert b"/static/app.js" in page
        status, _, body = await http("GET", demo.url + "/config.json")
        assert status == 200
        config = json.loads(body)
        assert config["wsUrl"] == demo.ws_url
        assert config["tableId"] == TABLE
        for path in ("/static/app.js", "/client/index.js"):
            status, headers, script = await http("GET", demo.url + path)
            assert status == 200, path
            assert "javascript" in headers["content-type"], path
        assert b"createClient" in script

        db = await asyncpg.connect(demo.dsn)
        try:
            async with connect(demo.ws_url, open_timeout=seconds(10)) as connection:
                client = Client(connection)
                synced = await client.subscribe(TABLE, snapshot=True)
                assert len(synced.changes) == 40
                assert all(c["row"]["enriching_columns"] == [] for c in synced.changes)

                cells = [("demo-0001", "ceo"), ("demo-0002", "domain"), ("demo-0002", "ceo")]
                status, _, body = await http(
                    "POST", f"{demo.url}/tables/{TABLE}/enrich", enrich_body(*cells)
                )
                assert status == 200, body
                assert json.loads(body) == {"cells": 3, "rows": 2}

                # Every state each row passes through, as the page's store sees it.
                seen: dict[str, list[dict[str, Any]]] = {"demo-0001": [], "demo-0002": []}

                def filled() -> bool:
                    return all(
                        states and not states[-1]["enriching_columns"] for states in seen.values()
                    )

                while not filled():
                    (change,) = await client.changes(1, units=15)
                    row = change["row"]
                    assert row["id"] in seen, change
                    seen[row["id"]].append(row)

            # First the spinners: the API's write, the keys in enriching_columns ...
            assert seen["demo-0001"][0]["enriching_columns"] == ["ceo"]
            assert sorted(seen["demo-0002"][0]["enriching_columns"]) == ["ceo", "domain"]
            assert "ceo" not in seen["demo-0001"][0]["data"]
            # ... then the values, each written with its key removed.
            for row_id, column in cells:
                final = seen[row_id][-1]
                assert isinstance(final["data"][column], str), final
                assert final["data"][column], final
            rows = await database_rows(db, TABLE)
            for row_id in seen:
                assert rows[row_id][0] == seen[row_id][-1]["data"]
                assert rows[row_id][1] == []
        finally:
            await db.close()

        assert await demo.stop() == 0, demo.log.read_text()


# A provider so slow that cells stay marked for the whole test.
STUCK = {"ENRICH_MIN_DELAY": "600", "ENRICH_MAX_DELAY": "600"}


@needs_js_client
async def test_the_api_validates_and_marks_all_cells_or_none(tmp_path: Path) -> None:
    async with running_demo(tmp_path / "data", tmp_path / "demo.log", rows=5, **STUCK) as demo:
        enrich = f"{demo.url}/tables/{TABLE}/enrich"
        bad: list[tuple[int, str, Any, bytes | None]] = [
            (400, enrich, None, b"not json"),
            (422, enrich, [], None),
            (422, enrich, {"cells": []}, None),
            (422, enrich, {"cells": "demo-0001"}, None),
            (422, enrich, {"cells": [{"row_id": "demo-0001"}]}, None),
            (422, enrich, {"cells": [{"row_id": 1, "column": "ceo"}]}, None),
            (422, enrich, {"cells": [{"row_id": "demo-0001", "column": "company"}]}, None),
            (422, enrich, {"cells": [{"row_id": "demo-0001", "column": "ceo", "x": 1}]}, None),
            (422, enrich, {"cells": [{"row_id": "demo-0001", "column": "ceo"}], "x": 1}, None),
            # One unknown row: the whole request is refused, the known row untouched.
            (404, enrich, enrich_body(("demo-0001", "ceo"), ("no-such-row", "ceo")), None),
            # Rows are looked up in the table of the URL only.
            (404, f"{demo.url}/tables/other/enrich", enrich_body(("demo-0001", "ceo")), None),
        ]
        for expected, url, body, raw in bad:
            status, _, answer = await http("POST", url, body, raw=raw)
            assert status == expected, (body, raw, answer)
            assert "error" in json.loads(answer)

        db = await asyncpg.connect(demo.dsn)
        try:
            rows = await database_rows(db, TABLE)
            assert all(enriching == [] for _, enriching in rows.values())
            # A cell asked for twice, or already being enriched, is listed once
            # (an array union), in the order first asked for.
            cells = [("demo-0003", "ceo"), ("demo-0003", "ceo"), ("demo-0003", "domain")]
            status, _, answer = await http("POST", enrich, enrich_body(*cells))
            assert (status, json.loads(answer)) == (200, {"cells": 2, "rows": 1})
            cells = [("demo-0003", "domain"), ("demo-0003", "funding")]
            status, _, _ = await http("POST", enrich, enrich_body(*cells))
            assert status == 200
            enriching = await db.fetchval(
                "SELECT enriching_columns FROM rows WHERE id = 'demo-0003'"
            )
            assert enriching == ["ceo", "domain", "funding"]
        finally:
            await db.close()
        assert await demo.stop() == 0, demo.log.read_text()

    # A second run on the same data keeps the rows, and its worker fills the
    # cells the stopped one left marked.
    async with running_demo(tmp_path / "data", tmp_path / "demo.log", rows=99, **FAST) as again:
        assert any("already has rows; not seeded" in line for line in again.stdout)
        db = await asyncpg.connect(again.dsn)
        try:
            assert await db.fetchval("SELECT count(*) FROM rows WHERE table_id = $1", TABLE) == 5

            async def filled() -> bool:
                row = await db.fetchrow(
                    "SELECT data, enriching_columns FROM rows WHERE id = $1", "demo-0003"
                )
                assert row is not None
                data = json.loads(row["data"])
                return row["enriching_columns"] == [] and {"ceo", "domain", "funding"} <= set(data)

            await eventually(filled, 20)
        finally:
            await db.close()
        assert await again.stop() == 0


async def test_demo_help_names_its_flags() -> None:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "broadcaster",
        "demo",
        "--help",
        env=environment(),
        stdout=asyncio.subprocess.PIPE,
    )
    stdout, _ = await within(process.communicate(), 30)
    assert process.returncode == 0
    for flag in ("--port", "--ws-port", "--rows", "ENRICH_MIN_DELAY"):
        assert flag in stdout.decode()
