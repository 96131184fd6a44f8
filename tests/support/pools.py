"""A stand-in for an asyncpg pool whose one connection is the pool itself.

Subclasses answer ``call`` (the SQL authorizer's function call) as their test
needs; the adapter's one question about the function (does it take a
binding?) is answered by ``takes_binding``. ``acquire()`` lends the pool as
its connection, and ``reset()`` counts the connection's resets.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any, Self, cast

import asyncpg


class PoolStandIn:
    def __init__(self, *, takes_binding: bool = False) -> None:
        self.resets = 0
        self.takes_binding = takes_binding
        self.probes = 0

    async def fetchval(self, query: str, *args: Any) -> Any:
        if "to_regprocedure" in query:
            self.probes += 1
            return self.takes_binding
        return await self.call(query, *args)

    async def call(self, query: str, *args: Any) -> Any:
        raise NotImplementedError

    @contextlib.asynccontextmanager
    async def acquire(self) -> AsyncIterator[Self]:
        yield self

    async def reset(self) -> None:
        self.resets += 1


def as_pool(stand_in: PoolStandIn | None) -> asyncpg.Pool | None:
    """``stand_in`` where the code under test asks for an asyncpg pool.

    SqlAuthorizer is typed for an ``asyncpg.Pool`` but calls only ``acquire()``
    and, on the connection lent, ``fetchval()`` and ``reset()``: what a stand-in has.
    """
    return cast("asyncpg.Pool | None", stand_in)
