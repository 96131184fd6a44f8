"""Seed a table of the enrichment example with companies, if it has no rows yet.

Each row gets an id ``<table_id>-0001``, ``<table_id>-0002``, ... (the page
sorts by id) and ``data = {"company": ...}``; every other cell starts empty,
waiting to be enriched. A table that already has rows is left alone, so
``broadcaster demo`` keeps what an earlier run filled in.

    python examples/enrichment/seed.py --database-url URL --table-id demo --rows 300
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os

import asyncpg

# isort: split
# The example's own module, beside this script (its directory is on sys.path).
from companies import company_names


async def seed(database_url: str, table_id: str, count: int) -> int:
    """Insert ``count`` rows into an empty ``table_id``; return how many were inserted."""
    conn = await asyncpg.connect(database_url)
    try:
        async with conn.transaction():
            # Two seeders started at once must not both see an empty table.
            await conn.execute("SELECT pg_advisory_xact_lock(hashtext('seed:' || $1))", table_id)
            if await conn.fetchval("SELECT count(*) FROM rows WHERE table_id = $1", table_id):
                return 0
            names = company_names(count)
            await conn.execute(
                """
                INSERT INTO rows (id, table_id, data)
                SELECT $1 || '-' || lpad(n::text, $3, '0'), $1, d
                FROM unnest($2::jsonb[]) WITH ORDINALITY AS t(d, n)
                """,
                table_id,
                [json.dumps({"company": name}) for name in names],
                # Zero-padded to one width, so ids sort in seeding order.
                max(4, len(str(count))),
            )
            return count
    finally:
        await conn.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--database-url", default=os.environ.get("DATABASE_URL"))
    parser.add_argument("--table-id", default="demo")
    parser.add_argument("--rows", type=int, default=300)
    options = parser.parse_args()
    if not options.database_url:
        parser.error("set DATABASE_URL or pass --database-url")
    if not 0 < options.rows <= 100_000:
        parser.error("--rows must be between 1 and 100000")
    inserted = asyncio.run(seed(options.database_url, options.table_id, options.rows))
    if inserted:
        print(f"seeded table {options.table_id!r} with {inserted} rows", flush=True)
    else:
        print(f"table {options.table_id!r} already has rows; not seeded", flush=True)


if __name__ == "__main__":
    main()
