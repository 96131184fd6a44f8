"""What a poll costs a Python server on this machine before our code does anything.

Usage, from the repository root (with the repository's virtualenv)::

    .venv/bin/python bench/poll_floor.py
    .venv/bin/python bench/poll_floor.py --interval 0.005 --cycles 1000

A server that polls Postgres every ``interval`` pays, per poll, for two
wake-ups (its timer, then Postgres' reply) and a round trip, whatever it does
with the reply. This measures that floor, step by step, in one process: the
CPU time of a cycle (``time.process_time``), and of the Postgres backend that
answers it (from ``/proc``), for

1. ``time.sleep(interval)``: the kernel putting the process to sleep and waking it;
2. ``asyncio.sleep(interval)``: the same through the event loop;
3. asyncpg's ``fetch("SELECT 1")`` and then ``asyncio.sleep(interval)``: a
   round trip to Postgres added;
4. our read (``ChangeReader.read`` on a ``ReadSession``, the session settings
   the server uses) of 10 tables that have not changed, and then the sleep:
   what a poll that finds nothing costs our server's read path.

Compare the last line with what a poll costs the whole server
(docs/performance.md, "Skipping the wake-up"). It creates a database
``bench_floor_<random>`` (``BENCH_DATABASE_URL``, default
``postgresql://postgres@127.0.0.1:5432/postgres``), migrates it with
``python -m broadcaster migrate``, writes 1,000 rows over 10 tables and drops
it at the end. Postgres must run on this machine (its backends' CPU is read
from ``/proc``).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import secrets
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import asyncpg

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from run import DEFAULT_ADMIN_URL, cpu_seconds, fresh_database, migrate  # noqa: E402

from broadcaster.core.feed import Request  # noqa: E402
from broadcaster.postgres.queries import ChangeReader, ReadSession  # noqa: E402

TABLES = 10


async def cycle_cost(
    cycle: Callable[[], Awaitable[None]], cycles: int, backend: int | None
) -> tuple[float, float | None]:
    """CPU µs per cycle of this process, and of ``backend`` if given."""
    for _ in range(cycles // 10):  # warm up: connections, plans, caches
        await cycle()
    pg = cpu_seconds(backend) if backend else 0.0
    started = time.process_time()
    for _ in range(cycles):
        await cycle()
    ours = (time.process_time() - started) / cycles * 1e6
    theirs = (cpu_seconds(backend) - pg) / cycles * 1e6 if backend else None
    return ours, theirs


async def run(admin_url: str, interval: float, cycles: int) -> None:
    async with fresh_database(admin_url, f"bench_floor_{secrets.token_hex(4)}") as url:
        log = Path(tempfile.mkdtemp(prefix="broadcaster-poll-floor-")) / "migrate.log"
        await asyncio.to_thread(migrate, url, log)
        await measure(url, interval, cycles)


async def measure(url: str, interval: float, cycles: int) -> None:
    settings = {"jit": "off", "plan_cache_mode": "force_generic_plan"}
    connection = await asyncpg.connect(url, server_settings=settings)
    await connection.execute(
        "INSERT INTO rows (id, table_id) SELECT 'r' || k, 't' || (k % $1::int)"
        " FROM generate_series(1, 1000) AS k",
        TABLES,
    )
    pool = await asyncpg.create_pool(url, min_size=1, max_size=1)
    reads = ReadSession(lambda: asyncpg.connect(url, server_settings=settings))
    reader = ChangeReader(pool, reads=reads)
    snapshot = (await reader.read([])).snapshot
    ((read_backend,),) = await reads.fetch("SELECT pg_backend_pid()")

    async def kernel() -> None:
        # Blocking on purpose: the wake-up without the event loop.
        time.sleep(interval)  # noqa: ASYNC251

    async def loop() -> None:
        await asyncio.sleep(interval)

    async def select_1() -> None:
        await connection.fetch("SELECT 1")
        await asyncio.sleep(interval)

    async def our_read() -> None:
        nonlocal snapshot
        requests = [Request(k, f"t{k}", snapshot) for k in range(TABLES)]
        snapshot = (await reader.read(requests)).snapshot
        await asyncio.sleep(interval)

    rows = [
        ("time.sleep", kernel, None),
        ("asyncio.sleep", loop, None),
        (
            "asyncpg fetch SELECT 1 + asyncio.sleep",
            select_1,
            await connection.fetchval("SELECT pg_backend_pid()"),
        ),
        (f"ChangeReader.read of {TABLES} tables + asyncio.sleep", our_read, read_backend),
    ]
    print(f"CPU per cycle, {cycles} cycles, interval {interval * 1000:g} ms")
    print()
    print("| cycle | process µs | its Postgres backend µs |")
    print("|---|---|---|")
    try:
        for label, cycle, backend in rows:
            process, pg = await cycle_cost(cycle, cycles, backend)
            pg_text = "" if pg is None else f"{pg:.0f}"
            print(f"| {label} | {process:.0f} | {pg_text} |")
    finally:
        await reads.close()
        await pool.close()
        await connection.close()


class Options(argparse.Namespace):
    """The command line, as ``main`` parses it."""

    interval: float
    cycles: int


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--interval", type=float, default=0.005, help="seconds between polls")
    parser.add_argument("--cycles", type=int, default=1000, help="cycles per measurement")
    options = parser.parse_args(namespace=Options())
    admin_url = os.environ.get("BENCH_DATABASE_URL", DEFAULT_ADMIN_URL)
    asyncio.run(run(admin_url, options.interval, options.cycles))
    return 0


if __name__ == "__main__":
    sys.exit(main())
