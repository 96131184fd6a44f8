"""Writers of ``rows`` (or of a table like it) at work beside what a test does, each write timed."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import asyncpg

from tests.support.timeouts import eventually, seconds, within

# The longest a writer may wait on a migration or a publish, in test units: their
# lock requests wait at most 500 ms at a time (revision 0007's LOCK_TIMEOUT,
# broadcaster/postgres/locking.py's).
MOMENT = 1.5


@dataclass
class Writer:
    """Writes ``rows`` steadily, one single-row statement per transaction, timing each."""

    url: str
    # The rows it updates in turn; none: it inserts a row and deletes it, in turn.
    ids: list[str]
    # Another table with a text id and a jsonb data column: its rows are updated.
    table: str = "rows"
    # When each write started (perf_counter) and how long it took.
    writes: list[tuple[float, float]] = field(default_factory=list)
    # The data each row was last given.
    last: dict[str, int] = field(default_factory=dict)
    stop: asyncio.Event = field(default_factory=asyncio.Event)

    async def run(self) -> None:
        conn = await asyncpg.connect(self.url)
        try:
            n = 0
            while not self.stop.is_set():
                n += 1
                if self.ids:
                    row_id = self.ids[n % len(self.ids)]
                    statement = (
                        f"UPDATE {self.table} SET data = jsonb_build_object('n', $1::int)"
                        " WHERE id = $2"
                    )
                else:
                    row_id = f"churn-{id(self)}-{(n + 1) // 2}"
                    statement = (
                        "INSERT INTO rows (id, table_id, data)"
                        " VALUES ($2, 'churn', jsonb_build_object('n', $1::int))"
                        if n % 2
                        else "DELETE FROM rows WHERE id = $2 AND $1::int IS NOT NULL"
                    )
                started = time.perf_counter()
                # Bounded, so that a writer blocked for good fails the test rather than hangs it.
                await within(conn.execute(statement, n, row_id), units=30)
                self.writes.append((started, time.perf_counter() - started))
                if self.ids:
                    self.last[row_id] = n
                # Steady, not flat out: the machine's two cores are shared with the migration.
                await asyncio.sleep(seconds(0.005))
        finally:
            await conn.close()

    def longest_wait(self, since: float = 0.0) -> float:
        return max(took for started, took in self.writes if started >= since)

    def count(self, since: float = 0.0) -> int:
        return sum(1 for started, _ in self.writes if started >= since)


@contextlib.asynccontextmanager
async def writing(
    url: str, *id_sets: list[str], table: str = "rows"
) -> AsyncIterator[list[Writer]]:
    """A writer of each set of rows (of ``table``) at work, each in its own connection, while open.

    Yields once every writer has committed a write; stops them on leaving, and
    raises what any of them raised.
    """
    writers = [Writer(url, ids, table) for ids in id_sets]
    tasks = [asyncio.create_task(writer.run()) for writer in writers]
    try:
        await eventually(
            lambda: all(writer.writes for writer in writers) or any(t.done() for t in tasks)
        )
        yield writers
    finally:
        for writer in writers:
            writer.stop.set()
        await within(asyncio.gather(*tasks), units=30)


async def written_after(writers: list[Writer], moment: float, count: int = 3) -> None:
    """Wait until each writer has committed ``count`` writes started after ``moment``."""
    await eventually(lambda: all(writer.count(moment) >= count for writer in writers))
