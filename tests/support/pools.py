"""A stand-in for an asyncpg pool whose one connection is the pool itself.

Subclasses answer ``fetchval`` as their test needs; ``acquire()`` lends the
pool as its connection, and ``reset()`` counts the connection's resets.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Self, cast

import asyncpg


class PoolStandIn:
    def __init__(self) -> None:
        self.resets = 0

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
