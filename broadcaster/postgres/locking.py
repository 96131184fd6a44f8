"""Schema changes on tables that writers use: a lock waited for a moment at a time, retried.

A statement that needs a lock conflicting with writers (``CREATE TRIGGER``,
``DROP TRIGGER``) waits for the writers' open transactions, and while it
waits every later writer of the table queues behind it. :func:`retrying`
runs such a change in a transaction whose ``lock_timeout`` is
:data:`LOCK_TIMEOUT`, and runs it again, a little later each time, until the
writers leave a gap: no writer waits behind it for much longer than that.
Used to install ``triggers.sql`` and to publish tables.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import TypeVar

import asyncpg

__all__ = ["ATTEMPTS", "LOCK_TIMEOUT", "retrying"]

logger = logging.getLogger(__name__)

T = TypeVar("T")

#: The longest one attempt waits for its lock (as revision 0007 does).
LOCK_TIMEOUT = "500ms"
#: Attempts before giving up: 40 of them wait 98 s in all at most (20 s
#: for the locks, 78 s between them).
ATTEMPTS = 40


async def retrying(
    connection: asyncpg.Connection,
    change: Callable[[asyncpg.Connection], Awaitable[T]],
    *,
    busy: str,
) -> T:
    """Run ``change(connection)`` in a transaction under :data:`LOCK_TIMEOUT`, retried.

    ``change`` may run several times: each attempt's transaction is rolled
    back when its lock times out, so it should read what it needs inside.
    ``busy`` names what is waited for, in the log line of each retry. Raises
    the driver's ``LockNotAvailableError`` after :data:`ATTEMPTS` attempts,
    and whatever else ``change`` raises at once.
    """
    attempt = 1
    while True:
        try:
            async with connection.transaction():
                await connection.execute(f"SET LOCAL lock_timeout = '{LOCK_TIMEOUT}'")
                return await change(connection)
        except asyncpg.LockNotAvailableError:
            if attempt == ATTEMPTS:
                raise
            logger.info("%s is busy; retrying (attempt %d)", busy, attempt)
            await asyncio.sleep(0.1 * attempt)
            attempt += 1
