"""Every wait in the tests is bounded by a multiple of one unit.

``BROADCASTER_TEST_TIMEOUT_SCALE`` scales the unit (default 1.0) for slow
machines; no test waits on a bare literal.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Awaitable
from typing import TypeVar

T = TypeVar("T")

UNIT = float(os.environ.get("BROADCASTER_TEST_TIMEOUT_SCALE", "1.0"))


def seconds(units: float = 1.0) -> float:
    """``units`` of the test time unit, in seconds."""
    return units * UNIT


async def within(awaitable: Awaitable[T], units: float = 5.0) -> T:
    """Await ``awaitable``, failing with TimeoutError after ``units`` units."""
    return await asyncio.wait_for(awaitable, seconds(units))


async def eventually(predicate: object, units: float = 5.0, interval: float = 0.02) -> None:
    """Poll a callable (sync or async) until it returns true, within ``units``."""

    async def poll() -> None:
        while True:
            result = predicate()  # type: ignore[operator]
            if asyncio.iscoroutine(result):
                result = await result
            if result:
                return
            await asyncio.sleep(interval)

    await within(poll(), units)
