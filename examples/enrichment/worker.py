"""The enrichment example's worker: fills the cells that are being enriched.

It finds every cell listed in a row's ``enriching_columns``, asks a (fake)
data provider for its value, and writes the answer into ``data`` while
removing the column from ``enriching_columns``, in one UPDATE: a tab never
sees a value without its spinner gone, or a spinner gone without its value.

About one cell in ten fails (``--failure-rate``): the cell then gets an error
marker, ``data[column] = {"error": "provider timed out"}`` (or another
message from ``companies.ERRORS``), and the column is removed from
``enriching_columns`` all the same, so the page stops its spinner and shows
the error.

Like the API, the worker only writes rows; the broadcaster delivers its
writes to the browsers. It finds work by polling ``rows`` every 200 ms, which
keeps the example to one table. A real worker would take jobs from a queue
(the API would enqueue them in the transaction that marks the cells), run
them with retries, and not scan the table.

Run it on its own with ``python examples/enrichment/worker.py --help``.
The provider's delay is random between ``--min-delay`` and ``--max-delay``
seconds (or ``ENRICH_MIN_DELAY``, ``ENRICH_MAX_DELAY``); tests shorten it.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import random
import signal
import sys

import asyncpg

# isort: split
# The example's own module, beside this script (its directory is on sys.path).
from companies import error_marker, fake_value

logger = logging.getLogger("enrichment.worker")

POLL_INTERVAL = 0.2

_FIND_WORK = """
SELECT table_id, id, data->>'company' AS company, enriching_columns
FROM rows
WHERE cardinality(enriching_columns) > 0
"""

# Only while the cell is still being enriched: a row deleted meanwhile, or a
# cell some other writer already settled, is left alone.
_FILL = """
UPDATE rows
SET data = data || jsonb_build_object($3::text, $4::jsonb),
    enriching_columns = array_remove(enriching_columns, $3::text)
WHERE table_id = $1 AND id = $2 AND $3::text = ANY(enriching_columns)
"""

Cell = tuple[str, str, str]  # table_id, row id, column


class Worker:
    def __init__(
        self, pool: asyncpg.Pool, min_delay: float, max_delay: float, failure_rate: float
    ) -> None:
        self.pool = pool
        self.min_delay = min_delay
        self.max_delay = max_delay
        self.failure_rate = failure_rate
        self.rng = random.Random()
        self.in_flight: dict[Cell, asyncio.Task[None]] = {}

    async def run(self) -> None:
        try:
            while True:
                try:
                    await self.poll()
                except (OSError, asyncpg.PostgresError) as exc:
                    # Postgres restarting, say: the cells stay marked in the
                    # database, so nothing is lost; poll again shortly.
                    logger.warning("polling failed: %s", exc)
                await asyncio.sleep(POLL_INTERVAL)
        finally:
            # Stopping: unfinished cells stay in enriching_columns, and the
            # next worker to start picks them up.
            for task in self.in_flight.values():
                task.cancel()
            await asyncio.gather(*self.in_flight.values(), return_exceptions=True)

    async def poll(self) -> None:
        new = 0
        for record in await self.pool.fetch(_FIND_WORK):
            for column in record["enriching_columns"]:
                cell = (record["table_id"], record["id"], column)
                if cell not in self.in_flight:
                    task = asyncio.create_task(self.fill(cell, record["company"] or record["id"]))
                    self.in_flight[cell] = task
                    new += 1
        if new:
            logger.info("picked up %d cells (%d in flight)", new, len(self.in_flight))

    async def fill(self, cell: Cell, company: str) -> None:
        table_id, row_id, column = cell
        try:
            # The provider's latency.
            await asyncio.sleep(self.rng.uniform(self.min_delay, self.max_delay))
            failed = self.rng.random() < self.failure_rate
            value = error_marker(self.rng) if failed else fake_value(column, company, self.rng)
            status = await self.pool.execute(_FILL, table_id, row_id, column, json.dumps(value))
            if failed and status == "UPDATE 1":
                logger.info("%s/%s.%s failed: %s", table_id, row_id, column, value["error"])
        except (OSError, asyncpg.PostgresError) as exc:
            # The cell is still marked: the next poll starts it again.
            logger.warning("could not fill %s/%s.%s: %s", table_id, row_id, column, exc)
        finally:
            self.in_flight.pop(cell, None)


def _arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--database-url", default=os.environ.get("DATABASE_URL"))
    parser.add_argument(
        "--min-delay", type=float, default=float(os.environ.get("ENRICH_MIN_DELAY", "0.3"))
    )
    parser.add_argument(
        "--max-delay", type=float, default=float(os.environ.get("ENRICH_MAX_DELAY", "2.5"))
    )
    parser.add_argument(
        "--failure-rate",
        type=float,
        default=float(os.environ.get("ENRICH_FAILURE_RATE", "0.1")),
        help="fraction of cells that get an error marker instead of a value",
    )
    options = parser.parse_args()
    if not options.database_url:
        parser.error("set DATABASE_URL or pass --database-url")
    if not 0 <= options.min_delay <= options.max_delay:
        parser.error("need 0 <= --min-delay <= --max-delay")
    if not 0 <= options.failure_rate <= 1:
        parser.error("--failure-rate must be between 0 and 1")
    return options


async def _run(options: argparse.Namespace) -> None:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    async with asyncpg.create_pool(options.database_url, min_size=1, max_size=4) as pool:
        worker = Worker(pool, options.min_delay, options.max_delay, options.failure_rate)
        logger.info(
            "worker started: delays %.2f-%.2f s, failure rate %.0f%%",
            options.min_delay,
            options.max_delay,
            options.failure_rate * 100,
        )
        task = asyncio.create_task(worker.run())
        await stop.wait()
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    logger.info("worker stopped")


def main() -> None:
    options = _arguments()
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    asyncio.run(_run(options))
    sys.exit(0)


if __name__ == "__main__":
    main()
