"""Bring a database's schema and triggers up to date.

:func:`migrate` runs the Alembic migrations of ``schema/migrations`` up to head,
then installs ``triggers.sql`` if the installed copy differs from this
package's (:mod:`broadcaster.postgres.triggers`). Installing it waits for the
writers' open transactions on ``rows`` at most 500 ms at a time, retried, so
that writers are not queued behind it for longer. Then it publishes the
tables it is given (``BROADCASTER_PUBLISH``) as ``broadcaster publish`` does
(:mod:`broadcaster.postgres.publishing`); it never unpublishes one.

On a database that is already current, :func:`migrate` only reads
(``alembic_version`` and that comment), so servers may run it at every start
without waiting for or blocking writers of ``rows``. Runs against the same
database are serialised by a session advisory lock, which blocks no writer.

The schema needs Postgres 13 or later (``xid8``, ``pg_current_xact_id()``);
:func:`migrate` checks the server's version before it changes anything.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationInfo

from ..exceptions import BroadcasterError, DatabaseError, MigrationError
from . import publishing
from . import triggers as installed_triggers
from .resources import migrations_dir, triggers_sql

__all__ = ["MigrationReport", "migrate"]

logger = logging.getLogger(__name__)

# Advisory locks are scoped to one database, so this key serialises the runs
# against a database without affecting others.
_LOCK_KEY = int.from_bytes(b"bcastmig", "big")
_LOCK_POLL_SECONDS = 0.5

# Alembic publishes alembic.context and alembic.op as process-wide proxies:
# only one thread at a time may run it, whatever the database.
_ALEMBIC_LOCK = threading.Lock()

# xid8 and pg_current_xact_id(), which the schema and triggers use, appeared in 13.
_MINIMUM_SERVER_VERSION_NUM = 130000


@dataclass(frozen=True)
class MigrationReport:
    """What :func:`migrate` changed."""

    #: Alembic revisions applied by this run, oldest first; empty when the schema was current.
    applied_revisions: list[str]
    #: Whether ``triggers.sql`` was (re)installed.
    triggers_installed: bool
    #: The tables this run published, or published again (their key changed), as ``schema.table``.
    published: list[str] = field(default_factory=list)


def migrate(database_url: str, *, publish: Sequence[str] = ()) -> MigrationReport:
    """Upgrade the database at ``database_url`` to head, install changed triggers, publish tables.

    ``database_url`` is any libpq-style URL that asyncpg accepts. ``publish``
    names tables to publish, as ``broadcaster publish`` takes them (those
    published already are left as they are). This runs an event loop of its
    own: from async code, call it with ``await asyncio.to_thread(migrate, url)``.

    Raises :class:`MigrationError` when a step fails, when a table of
    ``publish`` cannot be published (once every other one is), or when the
    server is older than Postgres 13, and
    :class:`ConfigurationError` when ``schema/`` or ``triggers.sql`` cannot be found.
    """
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        pass
    else:
        raise RuntimeError(
            "migrate() runs its own event loop; from async code call "
            "asyncio.to_thread(migrate, database_url)"
        )
    script_location = migrations_dir()
    triggers = triggers_sql()
    return asyncio.run(_migrate(database_url, script_location, triggers, publish))


async def _migrate(
    dsn: str, script_location: Path, triggers: str, publish: Sequence[str]
) -> MigrationReport:
    with _step("connecting to the database"):
        conn = await asyncpg.connect(dsn)
    try:
        with _step("checking the server version"):
            await _check_server_version(conn)
        with _step("taking the migration lock"):
            await _lock(conn)
        with _step("running the Alembic migrations"):
            applied = await asyncio.to_thread(_upgrade, dsn, script_location)
        with _step("installing triggers.sql"):
            installed = await installed_triggers.install(conn, triggers)
        with _step("publishing the tables of BROADCASTER_PUBLISH"):
            outcomes = []
            for name in publish:
                outcome = await publishing.publish(conn, name)
                logger.log(
                    logging.WARNING if outcome.refused else logging.INFO, "%s", outcome.message
                )
                outcomes.append(outcome)
    finally:
        # Ending the session releases the advisory lock.
        await conn.close()
    refusals = [outcome.message for outcome in outcomes if outcome.refused]
    if refusals:
        raise MigrationError(
            "cannot publish every table of BROADCASTER_PUBLISH: " + "; ".join(refusals)
        )
    return MigrationReport(
        applied_revisions=applied,
        triggers_installed=installed,
        published=[outcome.table for outcome in outcomes if outcome.changed],
    )


@contextlib.contextmanager
def _step(description: str) -> Iterator[None]:
    try:
        yield
    except DatabaseError as exc:
        raise MigrationError(f"migration failed while {description}: {exc}") from exc
    except BroadcasterError:
        raise
    except Exception as exc:
        raise MigrationError(f"migration failed while {description}: {exc}") from exc


async def _check_server_version(conn: asyncpg.Connection) -> None:
    # Before any revision runs: on an older server revision 0001 would
    # succeed and leave a schema that no later revision or triggers.sql can
    # complete.
    version_num = int(await conn.fetchval("SHOW server_version_num"))
    if version_num < _MINIMUM_SERVER_VERSION_NUM:
        version = await conn.fetchval("SHOW server_version")
        raise MigrationError(
            f"Postgres {version} is too old: the broadcaster needs Postgres"
            f" {_MINIMUM_SERVER_VERSION_NUM // 10000} or later (xid8, pg_current_xact_id)"
        )


async def _lock(conn: asyncpg.Connection) -> None:
    # Polled rather than waited for: a session blocked in pg_advisory_lock()
    # holds a snapshot, and the lock holder's CREATE INDEX CONCURRENTLY would
    # wait for that snapshot while holding the lock, forever.
    waiting = False
    while not await conn.fetchval("SELECT pg_try_advisory_lock($1)", _LOCK_KEY):
        if not waiting:
            logger.info("waiting for another migration of this database to finish")
            waiting = True
        await asyncio.sleep(_LOCK_POLL_SECONDS)


def _upgrade(dsn: str, script_location: Path) -> list[str]:
    applied: list[str] = []

    def record(*, step: MigrationInfo, **_: Any) -> None:
        if step.is_upgrade and not step.is_stamp:
            applied.extend(step.up_revision_ids)

    config = Config()
    # Option values are interpolated by configparser, where "%" is special.
    config.set_main_option("script_location", str(script_location).replace("%", "%%"))
    # The DSN is passed as an attribute for the same reason: passwords may be
    # URL-encoded. env.py reads it from there.
    config.attributes["dsn"] = dsn
    config.attributes["on_version_apply"] = record
    with _ALEMBIC_LOCK:
        command.upgrade(config, "head")
    if applied:
        logger.info("applied schema revisions %s", ", ".join(applied))
    else:
        logger.info("schema is current")
    return applied
