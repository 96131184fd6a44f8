"""Publishing and unpublishing tables in a database: ``broadcaster publish`` and ``unpublish``.

What to do with a table is decided by :mod:`broadcaster.core.publishing`, from
the catalog as :mod:`broadcaster.postgres.catalog` reads it; this module reads
it and runs the plan's statements in one transaction per table. Creating a
trigger takes a SHARE ROW EXCLUSIVE lock on the table (on each partition of
a partitioned one), dropping one an ACCESS EXCLUSIVE lock: each transaction
waits for its lock at most half a second, retried until the writers leave a
gap (:func:`broadcaster.postgres.locking.retrying`), so writers never queue
behind it for longer. The catalog is read inside that transaction, so each
attempt plans from what the table is then.

Publishing needs this package's ``triggers.sql`` installed (``broadcaster
migrate``): the triggers call its functions, whose arguments an older copy
may not read alike. Each function returns the table's
:class:`~broadcaster.core.publishing.Outcome`, refusals included, and raises
:class:`~broadcaster.exceptions.DatabaseError` when the database or the
network fails.
"""

from __future__ import annotations

from collections.abc import Callable

import asyncpg

from ..core.publishing import Action, Outcome, Plan, Relation, plan_publish, plan_unpublish
from ..exceptions import DatabaseError
from . import catalog, locking
from . import triggers as installed_triggers
from .errors import database_errors
from .resources import triggers_sql

__all__ = ["publish", "unpublish"]

# Two publishers of one table: the second's CREATE TRIGGER waits for the
# first's lock, then finds the trigger there. Planning again sees it.
_RACES = 3


async def publish(connection: asyncpg.Connection, name: str) -> Outcome:
    """Publish the table ``name`` (resolved as Postgres does): create its capture triggers."""
    with database_errors():
        current = await installed_triggers.is_current(connection, triggers_sql())
    if not current:
        return Outcome(
            name,
            Action.REFUSED,
            f"{name}: the database's triggers.sql is not this release's, or is missing:"
            " run broadcaster migrate first",
        )
    return await _run(connection, name, plan_publish)


async def unpublish(connection: asyncpg.Connection, name: str) -> Outcome:
    """Unpublish the table ``name``: drop its capture triggers; the entries logged stay."""
    return await _run(connection, name, plan_unpublish)


async def _run(
    connection: asyncpg.Connection,
    name: str,
    plan: Callable[[str, Relation | None], Plan],
) -> Outcome:
    async def attempt(connection: asyncpg.Connection) -> Outcome:
        planned = plan(name, await catalog.relation(connection, name))
        for statement in planned.statements:
            await connection.execute(statement)
        return planned.outcome

    with database_errors():
        race = 1
        while True:
            try:
                outcome = await locking.retrying(connection, attempt, busy=name)
            except asyncpg.DuplicateObjectError:
                if race == _RACES:
                    raise
                race += 1
                continue
            except (asyncpg.InsufficientPrivilegeError, DatabaseError) as exc:
                # The catalog's reads raise DatabaseError: for a schema the role may not use.
                denied = exc.__cause__ if isinstance(exc, DatabaseError) else exc
                if not isinstance(denied, asyncpg.InsufficientPrivilegeError):
                    raise
                return Outcome(
                    name,
                    Action.REFUSED,
                    f"{name}: {denied}: publishing and unpublishing a table take its owner's"
                    " rights (connect as its owner, or as a member of its owning role)",
                )
            except asyncpg.LockNotAvailableError:
                return Outcome(
                    name,
                    Action.REFUSED,
                    f"{name}: its writers' transactions left no gap in {locking.ATTEMPTS}"
                    f" attempts of {locking.LOCK_TIMEOUT}: try again, or end the long"
                    " transaction that holds it (pg_stat_activity, pg_locks)",
                )
            return outcome
