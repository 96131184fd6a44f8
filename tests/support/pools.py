"""A stand-in for an asyncpg pool whose one connection is the pool itself.

Subclasses answer ``fetchval`` as their test needs; ``acquire()`` lends the
pool as its connection, and ``reset()`` counts the connection's resets.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Self


class PoolStandIn:
    def __init__(self) -> None:
        self.resets = 0

    @contextlib.asynccontextmanager
    async def acquire(self) -> AsyncIterator[Self]:
        yield self

    async def reset(self) -> None:
        self.resets += 1
