"""The enrichment demo in a real browser: Chromium driven by Playwright.

Each test runs ``broadcaster demo`` (short provider delays) and opens the page
in tabs of their own browser contexts, so that taking one tab offline leaves
the others alone. What a tab shows is read from the DOM (each cell is
``td[data-row][data-column][data-state][data-value]``) and compared with the
database.

Playwright's wheel carries its driver; the browser is Debian's Chromium
(``apt-get install chromium``), never one downloaded by ``playwright
install``. Without it these tests are skipped. Set
``BROADCASTER_UPDATE_SCREENSHOT=1`` to rewrite ``docs/demo.png``.
"""

from __future__ import annotations

import json
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from playwright.async_api import Browser, BrowserContext, Page, async_playwright

from tests.support.demo import TABLE, Demo, http, needs_js_client, running_demo
from tests.support.timeouts import eventually, seconds
from tests.support.view import Rows, database_rows

CHROMIUM = Path(os.environ.get("BROADCASTER_TEST_CHROMIUM", "/usr/bin/chromium"))
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",  # CI runs as root, where Chromium's sandbox cannot start.
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
SCREENSHOT = Path(__file__).resolve().parents[2] / "docs" / "demo.png"

pytestmark = [
    pytest.mark.asyncio,
    needs_js_client,
    pytest.mark.skipif(
        not CHROMIUM.is_file(),
        reason=f"no Chromium at {CHROMIUM}: `apt-get install chromium` "
        "(or set BROADCASTER_TEST_CHROMIUM to a Chromium binary)",
    ),
]

# Cell -> (state, value), as the page shows it or as the database implies it.
Cells = dict[tuple[str, str], tuple[str, Any]]

_READ_CELLS = """() => Array.from(
    document.querySelectorAll("td[data-row][data-column]"),
    (td) => [td.dataset.row, td.dataset.column, td.dataset.state, td.dataset.value ?? null],
)"""


def ms(units: float) -> float:
    """A Playwright timeout: ``units`` test time units, in milliseconds."""
    return seconds(units) * 1000


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(
            executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, timeout=ms(60)
        )
        try:
            yield browser
        finally:
            await browser.close()


class Tab:
    """One page in a browser context of its own, and the errors it raised."""

    def __init__(self, context: BrowserContext, page: Page) -> None:
        self.context = context
        self.page = page
        self.errors: list[str] = []
        page.on("pageerror", lambda error: self.errors.append(str(error)))

    @classmethod
    async def open(cls, browser: Browser, url: str) -> Tab:
        context = await browser.new_context(viewport={"width": 1280, "height": 800})
        context.set_default_timeout(ms(20))
        tab = cls(context, await context.new_page())
        await tab.page.goto(url)
        await tab.wait_live()
        return tab

    async def wait_live(self) -> None:
        await self.page.wait_for_selector('#status[data-status="live"]', timeout=ms(30))
        await self.page.wait_for_selector('#grid[data-synced="true"]', timeout=ms(30))

    async def cells(self) -> Cells:
        cells: Cells = {}
        for row, column, state, value in await self.page.evaluate(_READ_CELLS):
            cells[(row, column)] = (state, None if value is None else json.loads(value))
        return cells

    def cell(self, row: str, column: str) -> str:
        return f'td[data-row="{row}"][data-column="{column}"]'

    async def count(self, selector: str) -> int:
        return int(await self.page.evaluate("(s) => document.querySelectorAll(s).length", selector))

    async def select(self, first: tuple[str, str], last: tuple[str, str]) -> None:
        """Click one corner, shift-click the other."""
        await self.page.click(self.cell(*first))
        await self.page.click(self.cell(*last), modifiers=["Shift"])

    async def drag(self, first: tuple[str, str], last: tuple[str, str]) -> None:
        """Select a rectangle by dragging from one corner to the other."""
        start = await self.page.locator(self.cell(*first)).bounding_box()
        end = await self.page.locator(self.cell(*last)).bounding_box()
        assert start is not None
        assert end is not None
        await self.page.mouse.move(start["x"] + 5, start["y"] + 5)
        await self.page.mouse.down()
        await self.page.mouse.move(end["x"] + 5, end["y"] + 5, steps=10)
        await self.page.mouse.up()

    async def states(self, cells: list[tuple[str, str]]) -> list[str]:
        everything = await self.cells()
        return [everything[cell][0] for cell in cells]

    async def close(self) -> None:
        await self.context.close()
        assert self.errors == [], self.errors


def rectangle(rows: range, columns: list[str]) -> list[tuple[str, str]]:
    return [(f"{TABLE}-{r:04d}", column) for r in rows for column in columns]


def expected_cells(rows: Rows, columns: list[str]) -> Cells:
    """What the page must show for the database's rows (docs: static/app.js)."""
    cells: Cells = {}
    for row_id, (data, enriching) in rows.items():
        for column in columns:
            value = data.get(column)
            if column in enriching:
                state = "enriching"
            elif value is None or value == "":
                state = "empty"
            elif isinstance(value, dict) and "error" in value:
                state = "error"
            else:
                state = "value"
            cells[(row_id, column)] = (state, value)
    return cells


async def columns_of(demo: Demo) -> list[str]:
    _, _, body = await http("GET", demo.url + "/config.json")
    columns: list[str] = json.loads(body)["columns"]
    return columns


async def agrees_with_database(tab: Tab, db: asyncpg.Connection, columns: list[str]) -> None:
    """Wait until the tab shows exactly what the database holds."""
    last: dict[str, Any] = {}

    async def same() -> bool:
        want = expected_cells(await database_rows(db, TABLE), columns)
        have = await tab.cells()
        last["diff"] = sorted(
            (cell, have.get(cell), want.get(cell))
            for cell in set(want) | set(have)
            if have.get(cell) != want.get(cell)
        )[:5]
        return have == want

    try:
        await eventually(same, 30, interval=0.2)
    except TimeoutError:
        raise AssertionError(f"the tab differs from the database: {last['diff']}") from None


async def no_enriching_left(db: asyncpg.Connection) -> bool:
    return not await db.fetchval(
        "SELECT count(*) FROM rows WHERE table_id = $1 AND cardinality(enriching_columns) > 0",
        TABLE,
    )


async def test_two_tabs_show_the_same_spinners_then_the_same_values(
    browser: Browser, tmp_path: Path
) -> None:
    # Slow enough that all ten spinners are on screen together.
    env = {"ENRICH_MIN_DELAY": "1.5", "ENRICH_MAX_DELAY": "3.0", "ENRICH_FAILURE_RATE": "0.1"}
    async with running_demo(tmp_path / "data", tmp_path / "demo.log", rows=60, **env) as demo:
        columns = await columns_of(demo)
        db = await asyncpg.connect(demo.dsn)
        one = await Tab.open(browser, demo.url)
        two = await Tab.open(browser, demo.url)
        try:
            assert await one.count("td[data-row][data-column]") == 60 * len(columns)
            assert await one.count('td[data-state="enriching"]') == 0

            # Ten cells, by click and shift-click: rows 1-5, domain and employees.
            cells = rectangle(range(1, 6), ["domain", "employees"])
            await one.select(cells[0], cells[-1])
            assert await one.count("td.selected") == 10
            assert await one.page.text_content("#enrich") == "Enrich 10 cells"
            await one.page.click("#enrich")

            for tab in (one, two):
                await eventually(lambda tab=tab: _all_in(tab, cells, {"enriching"}), 10)
            for tab in (one, two):
                await eventually(lambda tab=tab: _all_in(tab, cells, {"value", "error"}), 20)
            await eventually(lambda: no_enriching_left(db), 10)
            for tab in (one, two):
                await agrees_with_database(tab, db, columns)
                # No spinner left for a cell the database no longer enriches.
                assert await tab.count('td[data-state="enriching"]') == 0
            assert await one.cells() == await two.cells()
        finally:
            await db.close()
            await one.close()
            await two.close()
        assert await demo.stop() == 0


async def _all_in(tab: Tab, cells: list[tuple[str, str]], states: set[str]) -> bool:
    return all(state in states for state in await tab.states(cells))


async def test_a_tab_that_was_offline_catches_up_without_a_reload(
    browser: Browser, tmp_path: Path
) -> None:
    env = {"ENRICH_MIN_DELAY": "0.3", "ENRICH_MAX_DELAY": "1.5", "ENRICH_FAILURE_RATE": "0.1"}
    async with running_demo(tmp_path / "data", tmp_path / "demo.log", rows=60, **env) as demo:
        columns = await columns_of(demo)
        db = await asyncpg.connect(demo.dsn)
        one = await Tab.open(browser, demo.url)
        two = await Tab.open(browser, demo.url)
        try:
            # Gone after a reload: proves the catch-up happened in the same page.
            await two.page.evaluate("window.stillTheSamePage = true")
            before = await two.cells()

            await two.context.set_offline(True)
            # The client pings on the browser's `offline` event; no pong comes.
            await two.page.wait_for_selector('#status[data-status="offline"]', timeout=ms(15))

            # Twenty cells, by dragging: rows 11-15, every enrichable column.
            cells = rectangle(range(11, 16), columns[1:])
            await one.drag(cells[0], cells[-1])
            assert await one.count("td.selected") == 20
            await one.page.click("#enrich")
            deleted = [f"{TABLE}-{r:04d}" for r in range(30, 35)]
            await db.execute("DELETE FROM rows WHERE id = ANY($1::text[])", deleted)
            await eventually(lambda: _all_in(one, cells, {"value", "error"}), 20)
            await eventually(lambda: no_enriching_left(db), 10)
            await agrees_with_database(one, db, columns)

            # The offline tab saw none of it ...
            assert await two.cells() == before
            assert await two.page.get_attribute("#status", "data-status") == "offline"
            assert await two.page.get_attribute("#grid", "data-synced") == "false"

            # ... and shows exactly the database once back online, without a reload.
            await two.context.set_offline(False)
            await two.wait_live()
            # Nothing is written any more, so from the moment the tab is synced it
            # must equal the database: not one stale spinner or deleted row, even
            # briefly (the page renders a frame before it reports `synced`).
            want = expected_cells(await database_rows(db, TABLE), columns)
            assert await two.cells() == want
            assert await two.page.evaluate("window.stillTheSamePage") is True
            for row_id in deleted:
                assert await two.count(f'tr[data-row="{row_id}"]') == 0
            assert await two.count('td[data-state="enriching"]') == 0
            assert await one.cells() == await two.cells()
        finally:
            await db.close()
            await one.close()
            await two.close()
        assert await demo.stop() == 0


async def test_screenshot_mid_enrichment(browser: Browser, tmp_path: Path) -> None:
    """The README's screenshot; written to docs/ only with BROADCASTER_UPDATE_SCREENSHOT=1."""
    env = {"ENRICH_MIN_DELAY": "1.0", "ENRICH_MAX_DELAY": "8.0", "ENRICH_FAILURE_RATE": "0.1"}
    async with running_demo(tmp_path / "data", tmp_path / "demo.log", rows=300, **env) as demo:
        db = await asyncpg.connect(demo.dsn)
        tab = await Tab.open(browser, demo.url)
        try:
            await tab.page.set_viewport_size({"width": 1280, "height": 720})
            # Some cells done (values, a few errors) ...
            done = rectangle(range(1, 7), ["domain", "employees", "funding", "ceo"])
            await tab.select(done[0], done[-1])
            await tab.page.click("#enrich")
            await eventually(lambda: no_enriching_left(db), 20)
            # ... then a bigger block, caught half-way ...
            busy = rectangle(range(5, 15), ["domain", "employees", "funding", "ceo"])
            await tab.drag(busy[0], busy[-1])
            await tab.page.click("#enrich")

            async def half_way() -> bool:
                states = await tab.states(busy)
                return 12 <= states.count("enriching") <= 26

            await eventually(half_way, 20, interval=0.05)
            # ... and a selection waiting to be enriched.
            await tab.select((f"{TABLE}-0016", "domain"), (f"{TABLE}-0018", "funding"))
            target = (
                SCREENSHOT
                if os.environ.get("BROADCASTER_UPDATE_SCREENSHOT") == "1"
                else tmp_path / "demo.png"
            )
            await tab.page.screenshot(path=target)
            assert target.read_bytes().startswith(b"\x89PNG")
        finally:
            await db.close()
            await tab.close()
        assert await demo.stop() == 0
