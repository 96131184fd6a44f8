"""The LISTEN connection's life: losing it, reconnecting, and what /readyz says meanwhile."""

from __future__ import annotations

import os
import signal
from collections.abc import AsyncIterator
from urllib.parse import urlsplit

import asyncpg
import pytest

from broadcaster.postgres.listener import APPLICATION_NAME
from tests.support.database import with_database
from tests.support.server import client, http_get, is_ready, running_server
from tests.support.timeouts import eventually

pytestmark = pytest.mark.asyncio


@pytest.fixture
async def admin(private_database_url: str) -> AsyncIterator[asyncpg.Connection]:
    connection = await asyncpg.connect(private_database_url)
    yield connection
    await connection.close()


UNREACHABLE = "postgresql://nobody@127.0.0.1:1/none"


async def test_healthz_answers_while_not_ready() -> None:
    async with running_server(UNREACHABLE, wait_ready=False) as server:
        status, body = await http_get(server.url + "/healthz")
        assert (status, body) == (200, {"status": "ok"})


async def test_unreachable_postgres_at_start_is_retried_and_reported(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async with running_server(UNREACHABLE, wait_ready=False) as server:

        async def says_why() -> bool:
            status, body = await http_get(server.url + "/readyz")
            return status == 503 and "cannot connect to Postgres" in body["reason"]

        await eventually(says_why)
        await eventually(lambda: caplog.text.count("retrying in") >= 2)


@pytest.mark.fault
async def test_a_killed_listener_reconnects_and_delivery_resumes(
    private_database_url: str, admin: asyncpg.Connection
) -> None:
    database = urlsplit(private_database_url).path.lstrip("/")
    async with running_server(private_database_url) as server, client(server) as c:
        await c.subscribe("t1")
        await admin.execute("INSERT INTO rows (id, table_id) VALUES ('before', 't1')")
        assert (await c.changes(1))[0]["row"]["id"] == "before"

        # Refuse new connections so the outage lasts long enough to observe
        # (a database cannot be closed from a session inside it).
        other = await asyncpg.connect(with_database(private_database_url, "template1"))
        await other.execute(f'ALTER DATABASE "{database}" WITH ALLOW_CONNECTIONS false')
        killed = await admin.fetchval(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
            " WHERE application_name = $1",
            APPLICATION_NAME,
        )
        assert killed == 1

        async def not_ready() -> bool:
            status, body = await http_get(server.url + "/readyz")
            return status == 503 and "cannot connect" in body["reason"]

        await eventually(not_ready)
        await other.execute(f'ALTER DATABASE "{database}" WITH ALLOW_CONNECTIONS true')
        await other.close()
        await eventually(lambda: is_ready(server), 10)

        await admin.execute("INSERT INTO rows (id, table_id) VALUES ('after', 't1')")
        assert (await c.changes(1))[0]["row"]["id"] == "after"


@pytest.mark.fault
async def test_a_silently_dead_connection_is_found_by_the_keepalive(
    private_database_url: str, admin: asyncpg.Connection, caplog: pytest.LogCaptureFixture
) -> None:
    """A backend that stops answering (SIGSTOP) is detected by the keepalive timeout."""
    async with running_server(
        private_database_url, keepalive_interval=0.2, keepalive_timeout=0.5
    ) as server:
        pid = await admin.fetchval(
            "SELECT pid FROM pg_stat_activity WHERE application_name = $1", APPLICATION_NAME
        )
        os.kill(pid, signal.SIGSTOP)
        try:
            await eventually(lambda: "keepalive got no answer" in caplog.text)
        finally:
            os.kill(pid, signal.SIGCONT)
        await eventually(lambda: is_ready(server), 10)
        async with client(server) as c:
            await c.subscribe("t1")
            await admin.execute("INSERT INTO rows (id, table_id) VALUES ('after', 't1')")
            assert (await c.changes(1))[0]["row"]["id"] == "after"
