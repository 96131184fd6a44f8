"""Where the tests' Postgres comes from, in this order.

1. ``BROADCASTER_TEST_DATABASE_URL``: an existing server (the role needs CREATEDB).
2. testcontainers, where a Docker daemon answers.
3. An embedded Postgres from the ``pgserver`` wheel in a temporary directory.

Each test gets a database of its own, cloned from a template that has the
migrations applied. Fault tests (killed or restarted Postgres) use
:func:`private_cluster` instead, never the shared server.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import os
import tempfile
import uuid
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from urllib.parse import urlsplit, urlunsplit

import asyncpg

from broadcaster.postgres.embedded import EmbeddedPostgres


def with_database(dsn: str, database: str) -> str:
    """``dsn`` pointing at another database on the same server."""
    parts = urlsplit(dsn)
    return urlunsplit(parts._replace(path="/" + database))


def _docker_answers() -> bool:
    try:
        import docker  # testcontainers' own dependency
    except ImportError:
        return False
    # Where no engine listens, docker-py's failed connect leaves its socket
    # unclosed in a reference cycle. Collected by chance later, inside some
    # test, its ResourceWarning would fail that test; it is collected here.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ResourceWarning)
        try:
            client = docker.from_env(timeout=3)
            try:
                client.ping()
            finally:
                client.close()
            answers = True
        except Exception:
            answers = False
        gc.collect()
    return answers


@contextlib.contextmanager
def _testcontainers_server() -> Iterator[str]:
    from testcontainers.postgres import PostgresContainer

    with PostgresContainer("postgres:16-alpine", driver=None) as container:
        yield container.get_connection_url()


@contextlib.contextmanager
def _embedded_server() -> Iterator[str]:
    with tempfile.TemporaryDirectory(prefix="broadcaster-test-pg-") as parent:
        cluster = EmbeddedPostgres(os.path.join(parent, "pgdata"), delete_on_stop=True)
        try:
            yield cluster.start()
        finally:
            cluster.stop()


@contextlib.contextmanager
def postgres_server() -> Iterator[str]:
    """Yield an admin DSN of a server the tests may create databases on."""
    url = os.environ.get("BROADCASTER_TEST_DATABASE_URL")
    if url:
        yield url
    elif _docker_answers():
        with _testcontainers_server() as dsn:
            yield dsn
    else:
        with _embedded_server() as dsn:
            yield dsn


@contextlib.contextmanager
def private_cluster() -> Iterator[EmbeddedPostgres]:
    """A cluster of the test's own, which it may kill or restart."""
    with tempfile.TemporaryDirectory(prefix="broadcaster-fault-pg-") as parent:
        cluster = EmbeddedPostgres(os.path.join(parent, "pgdata"), delete_on_stop=True)
        cluster.start()
        try:
            yield cluster
        finally:
            cluster.stop()


@dataclass
class Databases:
    """Creates throw-away databases on one server."""

    admin_dsn: str

    async def _admin(self, sql: str) -> None:
        conn = await asyncpg.connect(self.admin_dsn)
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    def create(self, template: str | None = None) -> str:
        name = "bt_" + uuid.uuid4().hex[:16]
        clause = f" TEMPLATE {template}" if template else ""
        asyncio.run(self._admin(f"CREATE DATABASE {name}{clause}"))
        return with_database(self.admin_dsn, name)

    async def drop(self, dsn: str) -> None:
        name = urlsplit(dsn).path.lstrip("/")
        await self._admin(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
