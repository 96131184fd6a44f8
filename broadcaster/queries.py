"""The queries the server runs against Postgres, outside the LISTEN connection."""

from __future__ import annotations

from collections.abc import Sequence

import asyncpg

__all__ = ["RowReader"]

_FETCH_ROWS = """
SELECT r.id, r.table_id, broadcaster_row_json(r)::text
FROM rows AS r
WHERE r.id = ANY($1::text[])
"""


class RowReader:
    """Reads rows in the shape clients receive (``broadcaster_row_json``)."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool

    async def fetch_rows(self, ids: Sequence[str]) -> dict[str, tuple[str, str]]:
        records = await self._pool.fetch(_FETCH_ROWS, list(ids))
        return {record[0]: (record[1], record[2]) for record in records}
