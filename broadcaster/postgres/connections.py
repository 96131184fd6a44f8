"""The server process's connections to Postgres besides the LISTEN one, opened and closed here.

A small pool runs most statements; the read statement has a session of its own
(:class:`~broadcaster.postgres.queries.ReadSession`). Both connect on first
use, so a database that is down at start delays reads instead of failing the
start.
"""

from __future__ import annotations

from collections.abc import Mapping

import asyncpg

from .directory import Directory
from .queries import ChangeReader, PostgresAuthorizerFunction, ReadSession

__all__ = ["APPLICATION_NAME", "Connections"]

APPLICATION_NAME = "broadcaster-reader"


class Connections:
    """The pool and the read session of one server process.

    ``statement_timeout`` (seconds) bounds every statement: a read that hangs
    must not stall delivery for ever. ``max_catch_up``: see :class:`ChangeReader`.
    """

    def __init__(self, dsn: str, *, statement_timeout: float, max_catch_up: int) -> None:
        self._dsn = dsn
        self._max_catch_up = max_catch_up
        self._settings: Mapping[str, str] = {
            "application_name": APPLICATION_NAME,
            "statement_timeout": str(int(statement_timeout * 1000)),
            # Reads take a millisecond; compiling one (when the planner's
            # estimate passes jit_above_cost, as a read over the change log's
            # partitions may) takes 30.
            "jit": "off",
            # Rows of a snapshot load are written as JSON by the read, in its
            # session's time zone.
            "TimeZone": "UTC",
        }
        self._pool: asyncpg.Pool | None = None
        self._reads: ReadSession | None = None

    async def open(self) -> ChangeReader:
        """Create the pool and the read session (neither connects yet); return their reader."""
        # min_size=0: the pool connects on first use.
        self._pool = await asyncpg.create_pool(
            self._dsn,
            min_size=0,
            max_size=4,
            server_settings=dict(self._settings),
            reset=_keep_session,
        )
        # The read statement, one at a time, on a session of its own that plans
        # it once: Postgres would plan it anew at every execution (its custom
        # plans look cheaper to it), which was 40% of a poll's time on
        # Postgres, and the generic plan is no slower for any read (measured:
        # live, catch-up and snapshot reads).
        # Its generic plan is made once per session, from the statistics of
        # the change log's partitions at that moment: a partition analyzed
        # while it was empty would be scanned whole for as long as the
        # session lives, however much it grew. Only the log's btree on xid
        # keeps a read proportional to what it returns.
        read_settings = {
            **self._settings,
            "plan_cache_mode": "force_generic_plan",
            "enable_seqscan": "off",
        }
        self._reads = ReadSession(lambda: asyncpg.connect(self._dsn, server_settings=read_settings))
        return ChangeReader(self._pool, reads=self._reads, max_catch_up=self._max_catch_up)

    def directory(self) -> Directory:
        """The published tables and their checks, on the pool; call after :meth:`open`."""
        if self._pool is None:
            raise RuntimeError("Connections.directory() before open()")
        return Directory(self._pool)

    def authorizer_function(self, name: str) -> PostgresAuthorizerFunction:
        """The SQL authorizer function ``name``, called on the pool once it is open.

        Raises :class:`~broadcaster.exceptions.ConfigurationError` for a name
        that is not a function name.
        """
        return PostgresAuthorizerFunction(lambda: self._pool, name)

    async def close(self) -> None:
        if self._reads is not None:
            await self._reads.close()
        if self._pool is not None:
            await self._pool.close()
        self._pool = self._reads = None


async def _keep_session(connection: asyncpg.Connection) -> None:
    """Return a connection to the pool as it is; asyncpg still rolls back an open transaction.

    asyncpg's default reset (RESET ALL, UNLISTEN *, CLOSE ALL, advisory unlocks)
    is one more round trip after every read. The server's own statements leave
    no session state behind; the one statement that is not ours, the SQL
    authorizer's function, resets its connection itself.
    """
