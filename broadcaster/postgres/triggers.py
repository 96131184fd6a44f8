"""``triggers.sql`` in a database: which copy is installed, and installing this package's.

The installed copy is identified by the sha256 of its text, kept in the
comment of the trigger function ``broadcaster_capture()``; the file and the
comment are written in one transaction, so the comment never names a copy
that is not installed. Installing it replaces the triggers on ``rows``, which
takes an ACCESS EXCLUSIVE lock: it waits for the writers' open transactions
at most a moment at a time (:func:`broadcaster.postgres.locking.retrying`).
"""

from __future__ import annotations

import hashlib
import logging

import asyncpg

from .locking import retrying

__all__ = ["install", "is_current"]

logger = logging.getLogger(__name__)

_FUNCTION = "broadcaster_capture()"
_COMMENT_PREFIX = "broadcaster triggers sha256:"


def _comment(triggers: str) -> str:
    return _COMMENT_PREFIX + hashlib.sha256(triggers.encode()).hexdigest()


async def _installed_comment(connection: asyncpg.Connection) -> str | None:
    comment: str | None = await connection.fetchval(
        "SELECT obj_description(to_regprocedure($1), 'pg_proc')", _FUNCTION
    )
    return comment


async def is_current(connection: asyncpg.Connection, triggers: str) -> bool:
    """Whether the copy of ``triggers.sql`` installed is ``triggers`` (the text of the file)."""
    return await _installed_comment(connection) == _comment(triggers)


async def install(connection: asyncpg.Connection, triggers: str) -> bool:
    """Install ``triggers`` unless that copy is installed already; return whether it was.

    Raises the driver's errors, ``LockNotAvailableError`` when ``rows`` stayed
    busy through every attempt.
    """
    comment = _comment(triggers)
    digest = comment.removeprefix(_COMMENT_PREFIX)
    installed = await _installed_comment(connection)
    if installed == comment:
        logger.info("triggers.sql is current (sha256 %s)", digest)
        return False
    logger.info("installing triggers.sql (sha256 %s; installed: %s)", digest, installed or "none")

    async def run(connection: asyncpg.Connection) -> None:
        await connection.execute(triggers)
        await connection.execute(f"COMMENT ON FUNCTION {_FUNCTION} IS '{comment}'")

    await retrying(connection, run, busy="rows (installing triggers.sql)")
    return True
