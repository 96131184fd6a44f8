"""Alembic environment of the broadcaster schema.

``broadcaster.postgres.migrate.migrate()`` runs it programmatically and passes the DSN
in ``config.attributes["dsn"]``. From the command line::

    alembic -c schema/alembic.ini -x dsn=postgresql://postgres@127.0.0.1/app upgrade head

or with ``DATABASE_URL`` set instead of ``-x dsn=``. asyncpg parses the DSN
itself, so any libpq-style URL works, including the socket-only
``postgresql://postgres:@/postgres?host=/tmp/sockdir`` of the embedded Postgres.
"""

from __future__ import annotations

import asyncio
import importlib.util
import os
import sys
from logging.config import fileConfig
from pathlib import Path
from types import ModuleType

import asyncpg
from alembic import context
from sqlalchemy import Connection
from sqlalchemy.ext.asyncio import create_async_engine
from sqlalchemy.pool import NullPool

MODELS_MODULE = "broadcaster_schema_models"
MODELS_FILE = Path(__file__).resolve().parent.parent / "models.py"

config = context.config

if config.config_file_name is not None:
    fileConfig(config.config_file_name, disable_existing_loggers=False)


def load_models() -> ModuleType:
    """``schema/models.py``, imported by path: ``schema`` is not a package of the wheel."""
    module = sys.modules.get(MODELS_MODULE)
    if module is None:
        spec = importlib.util.spec_from_file_location(MODELS_MODULE, MODELS_FILE)
        if spec is None or spec.loader is None:
            raise RuntimeError(f"cannot load the models from {MODELS_FILE}")
        module = importlib.util.module_from_spec(spec)
        # SQLAlchemy resolves the models' string annotations through sys.modules.
        sys.modules[MODELS_MODULE] = module
        spec.loader.exec_module(module)
    return module


def database_url() -> str:
    dsn = (
        config.attributes.get("dsn")
        or context.get_x_argument(as_dictionary=True).get("dsn")
        or os.environ.get("DATABASE_URL")
    )
    if not dsn:
        raise RuntimeError("no database given: pass -x dsn=postgresql://... or set DATABASE_URL")
    return str(dsn)


def do_run_migrations(connection: Connection) -> None:
    models = load_models()
    context.configure(
        connection=connection,
        target_metadata=models.Base.metadata,
        include_name=models.include_name,
        # Revisions may commit part-way (CREATE INDEX CONCURRENTLY needs an
        # autocommit block), so each one gets a transaction of its own.
        transaction_per_migration=True,
        on_version_apply=config.attributes.get("on_version_apply"),
    )
    with context.begin_transaction():
        context.run_migrations()


async def run_async_migrations(dsn: str) -> None:
    engine = create_async_engine(
        "postgresql+asyncpg://",
        async_creator=lambda: asyncpg.connect(dsn),
        poolclass=NullPool,
    )
    try:
        async with engine.connect() as connection:
            await connection.run_sync(do_run_migrations)
    finally:
        await engine.dispose()


if context.is_offline_mode():
    raise RuntimeError(
        "offline (--sql) mode is not supported: revision 0001 reads the catalog "
        "to adopt an existing rows table"
    )
asyncio.run(run_async_migrations(database_url()))
