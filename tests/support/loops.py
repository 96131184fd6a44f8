"""An exception nobody handled on the event loop fails the test that ran it."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import pytest

__all__ = ["failing_on_loop_exceptions"]


@contextlib.asynccontextmanager
async def failing_on_loop_exceptions() -> AsyncIterator[None]:
    """Collect what reaches the running loop's exception handler; fail on leaving if any."""
    loop = asyncio.get_running_loop()
    errors: list[dict[str, Any]] = []
    loop.set_exception_handler(lambda _loop, context: errors.append(context))
    yield
    await asyncio.sleep(0)
    loop.set_exception_handler(None)
    if errors:
        details = "; ".join(f"{ctx.get('message')}: {ctx.get('exception')!r}" for ctx in errors)
        pytest.fail(f"unhandled exceptions on the event loop: {details}")
