"""Nothing lost after faults: killed listeners, a restarted Postgres, killed and stopped servers.

Each test runs on a private cluster it may break, with concurrent writers on
several tables and clients that resume with their cursors; each ends with every
client's view equal to the database.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import signal
from collections.abc import AsyncIterator
from pathlib import Path
from urllib.parse import urlsplit

import asyncpg
import pytest

from broadcaster.postgres.embedded import EmbeddedPostgres
from broadcaster.postgres.errors import DRIVER_ERRORS
from broadcaster.postgres.listener import APPLICATION_NAME
from tests.support.database import with_database
from tests.support.process import serve
from tests.support.server import client, is_ready, running_server
from tests.support.timeouts import eventually, seconds, within
from tests.support.view import ResumingClient, database_rows

pytestmark = [pytest.mark.asyncio, pytest.mark.fault]

TABLES = ["a", "b", "c"]


@pytest.fixture
async def db(private_database_url: str) -> AsyncIterator[asyncpg.Connection]:
    connection = await asyncpg.connect(private_database_url)
    yield connection
    await connection.close()


class Writers:
    """Concurrent writers of inserts, updates and deletes over TABLES.

    With ``tolerate_outage`` a writer whose connection dies (Postgres restarting)
    reconnects and carries on; otherwise any failed write fails the test.
    """

    def __init__(self, dsn: str, *, writes: int, concurrency: int = 4) -> None:
        self._dsn = dsn
        self._remaining = writes
        self._concurrency = concurrency
        self.errors: list[BaseException] = []
        self.tolerate_outage = False

    def stop(self) -> None:
        """Write nothing more than the writes in flight."""
        self._remaining = 0

    async def run(self) -> None:
        await asyncio.gather(*(self._writer(seed) for seed in range(self._concurrency)))

    async def _writer(self, seed: int) -> None:
        rng = random.Random(seed)
        connection: asyncpg.Connection | None = None
        try:
            while self._remaining > 0:
                self._remaining -= 1
                while True:
                    try:
                        if connection is None or connection.is_closed():
                            connection = await asyncpg.connect(self._dsn)
                        await self._write(connection, rng)
                        break
                    except DRIVER_ERRORS as exc:
                        if not self.tolerate_outage or isinstance(
                            exc, asyncpg.IntegrityConstraintViolationError
                        ):
                            self.errors.append(exc)
                            return
                        connection = None
                        await asyncio.sleep(0.05)
        finally:
            if connection is not None:
                await connection.close()

    async def _write(self, connection: asyncpg.Connection, rng: random.Random) -> None:
        table_id = rng.choice(TABLES)
        row_id = f"{table_id}{rng.randint(1, 60)}"
        roll = rng.random()
        if roll < 0.15:
            await connection.execute("DELETE FROM rows WHERE id = $1", row_id)
        else:
            await connection.execute(
                "INSERT INTO rows (id, table_id, data) VALUES ($1, $2, $3::jsonb) "
                "ON CONFLICT (id) DO UPDATE SET data = EXCLUDED.data, "
                "enriching_columns = CASE WHEN random() < 0.5 THEN '{}'::text[] "
                "ELSE ARRAY['col'] END",
                row_id,
                table_id,
                json.dumps({"n": rng.random()}),
            )


async def kill_listener(db: asyncpg.Connection) -> int:
    return int(
        await db.fetchval(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
            " WHERE application_name = $1",
            APPLICATION_NAME,
        )
    )


async def test_listener_killed_20_times_during_writes(
    private_database_url: str, db: asyncpg.Connection
) -> None:
    async with (
        running_server(private_database_url) as server,
        ResumingClient(lambda: server.ws_url, TABLES) as everything,
        ResumingClient(lambda: server.ws_url, ["a"]) as only_a,
    ):
        # Writers keep going until the listener has been killed 20 times, however
        # fast either goes on this machine.
        writers = Writers(private_database_url, writes=1_000_000)
        writing = asyncio.create_task(writers.run())

        async def kill_20_times() -> None:
            kills = 0
            while kills < 20:
                await asyncio.sleep(random.uniform(0.02, 0.1))
                kills += await kill_listener(db)

        await within(kill_20_times(), 60)
        writers.stop()
        await within(writing, 120)
        assert writers.errors == []
        await eventually(lambda: is_ready(server), 20)
        await everything.converged(db)
        await only_a.converged(db)


async def test_postgres_restarted_during_writes(
    private_database_url: str, private_postgres: EmbeddedPostgres, db: asyncpg.Connection
) -> None:
    async with (
        running_server(private_database_url) as server,
        ResumingClient(lambda: server.ws_url, TABLES) as reader,
    ):
        writers = Writers(private_database_url, writes=1500)
        writers.tolerate_outage = True
        writing = asyncio.create_task(writers.run())
        await asyncio.sleep(seconds(0.3))
        await asyncio.to_thread(private_postgres.pg_ctl, "-w", "-m", "fast", "restart")
        await within(writing, 120)
        assert writers.errors == []
        await eventually(lambda: is_ready(server), 30)
        fresh = await asyncpg.connect(private_database_url)
        try:
            await reader.converged(fresh)
        finally:
            await fresh.close()


async def test_a_server_killed_and_restarted_loses_nothing(
    private_database_url: str, db: asyncpg.Connection, tmp_path: Path
) -> None:
    log = tmp_path / "serve.log"
    async with serve(log, DATABASE_URL=private_database_url, BROADCASTER_AUTH="none") as first:
        current = [first.ws_url]
        async with ResumingClient(lambda: current[0], TABLES) as reader:
            # Writers keep going until the client has moved to the second server.
            writers = Writers(private_database_url, writes=1_000_000)
            writing = asyncio.create_task(writers.run())
            await asyncio.sleep(seconds(0.3))
            first.process.send_signal(signal.SIGKILL)
            await within(first.process.wait(), 10)
            async with serve(
                log, DATABASE_URL=private_database_url, BROADCASTER_AUTH="none"
            ) as second:
                current[0] = second.ws_url
                await eventually(lambda: reader.connections >= 2, 20)
                await asyncio.sleep(seconds(0.3))
                writers.stop()
                await within(writing, 120)
                assert writers.errors == []
                await reader.converged(db)


async def test_a_change_committed_while_the_listener_is_down_and_a_resume_elsewhere(
    private_database_url: str, db: asyncpg.Connection
) -> None:
    database = urlsplit(private_database_url).path.lstrip("/")
    other = await asyncpg.connect(with_database(private_database_url, "template1"))
    try:
        async with (
            running_server(private_database_url) as one,
            running_server(private_database_url) as two,
            client(one) as c,
        ):
            await c.subscribe("a")
            # Keep the listener out while a change commits.
            await other.execute(f'ALTER DATABASE "{database}" WITH ALLOW_CONNECTIONS false')
            await kill_listener(db)
            await db.execute("INSERT INTO rows (id, table_id) VALUES ('during', 'a')")
            await other.execute(f'ALTER DATABASE "{database}" WITH ALLOW_CONNECTIONS true')
            (change,) = await c.changes(1, units=20)
            assert change["row"]["id"] == "during"
            cursor = change["cursor"]

            # The client moves to the other process, resuming with its cursor.
            await db.execute("INSERT INTO rows (id, table_id) VALUES ('away', 'a')")
            async with client(two) as moved:
                synced = await moved.subscribe("a", cursor=cursor)
                assert synced.reset is None
                assert [m["row"]["id"] for m in synced.changes] == ["away"]
    finally:
        await other.close()


async def test_a_stopped_server_never_fails_a_writer(
    private_database_url: str, db: asyncpg.Connection, tmp_path: Path
) -> None:
    """SIGSTOP for 30 s: the NOTIFY queue holds the wake-ups; no write fails; a 1 MB row too."""
    async with (
        serve(
            tmp_path / "serve.log", DATABASE_URL=private_database_url, BROADCASTER_AUTH="none"
        ) as server,
        ResumingClient(lambda: server.ws_url, TABLES) as reader,
    ):
        os.kill(server.process.pid, signal.SIGSTOP)
        try:
            writers = Writers(private_database_url, writes=100_000)
            writing = asyncio.create_task(writers.run())
            big = json.dumps({"big": "x" * 1_000_000})
            await db.execute(
                "INSERT INTO rows (id, table_id, data) VALUES ('big', 'a', $1::jsonb)", big
            )
            await asyncio.sleep(seconds(30))
            usage = await db.fetchval("SELECT pg_notification_queue_usage()")
            writers.stop()
            await within(writing, 30)
            assert writers.errors == []
        finally:
            os.kill(server.process.pid, signal.SIGCONT)
        assert usage < 1.0
        await reader.converged(db, units=60)
        assert (await database_rows(db, "a"))["big"][0] == {"big": "x" * 1_000_000}
