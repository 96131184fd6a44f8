"""Fixtures shared by every tier: databases, loop hygiene."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from urllib.parse import urlsplit

import pytest

from broadcaster.postgres.embedded import EmbeddedPostgres
from broadcaster.postgres.migrate import migrate
from tests.support.database import Databases, postgres_server, private_cluster
from tests.support.loops import failing_on_loop_exceptions

TEMPLATE = "broadcaster_test_template"


@pytest.fixture(scope="session")
def databases() -> Iterator[Databases]:
    with postgres_server() as admin_dsn:
        yield Databases(admin_dsn)


@pytest.fixture(scope="session")
def migrated_template(databases: Databases) -> Iterator[str]:
    """Name of a database with the migrations applied, cloned per test."""
    dsn = databases.create()
    migrate(dsn)
    yield urlsplit(dsn).path.lstrip("/")
    asyncio.run(databases.drop(dsn))


@pytest.fixture
async def empty_database_url(databases: Databases) -> AsyncIterator[str]:
    """A fresh database with nothing in it."""
    dsn = await asyncio.to_thread(databases.create)
    yield dsn
    await databases.drop(dsn)


@pytest.fixture
async def database_url(databases: Databases, migrated_template: str) -> AsyncIterator[str]:
    """A fresh database with the schema and triggers applied."""
    dsn = await asyncio.to_thread(databases.create, migrated_template)
    yield dsn
    await databases.drop(dsn)


@pytest.fixture(autouse=True)
async def _fail_on_loop_exceptions() -> AsyncIterator[None]:
    """An exception nobody handled on the event loop fails the test."""
    async with failing_on_loop_exceptions():
        yield


@pytest.fixture
async def private_postgres() -> AsyncIterator[EmbeddedPostgres]:
    """A migrated cluster of this test's own, which it may kill or restart."""
    with private_cluster() as cluster:
        await asyncio.to_thread(migrate, cluster.dsn)
        yield cluster


@pytest.fixture
def private_database_url(private_postgres: EmbeddedPostgres) -> str:
    """The database of :func:`private_postgres`, for fault tests."""
    return private_postgres.dsn
