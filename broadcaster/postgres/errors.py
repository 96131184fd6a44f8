"""The driver's errors as the package's: :class:`~broadcaster.exceptions.DatabaseError`.

Every adapter of :mod:`broadcaster.postgres` converts what the driver raises
with one of these: the :func:`raises_database_error` decorator on a method,
or the :func:`database_errors` context around a few statements.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Awaitable, Callable, Coroutine, Iterator
from typing import Any, ParamSpec, TypeVar

import asyncpg

from ..exceptions import DatabaseError

__all__ = ["DRIVER_ERRORS", "database_errors", "raises_database_error"]

DRIVER_ERRORS = (
    OSError,
    TimeoutError,
    asyncpg.PostgresError,
    asyncpg.InterfaceError,
    # asyncpg raises this when a connection breaks in the middle of an operation.
    asyncpg.InternalClientError,
)
"""What a driver call may raise when the database or the network fails.

Only the modules of :mod:`broadcaster.postgres` catch these; what they raise
past their public surface is :class:`~broadcaster.exceptions.DatabaseError`.
"""

_P = ParamSpec("_P")
_T = TypeVar("_T")


@contextlib.contextmanager
def database_errors() -> Iterator[None]:
    """Raise :class:`DatabaseError` from what the driver raises inside, its ``__cause__``."""
    try:
        yield
    except DRIVER_ERRORS as exc:
        raise DatabaseError(str(exc) or type(exc).__name__) from exc


def raises_database_error(
    method: Callable[_P, Awaitable[_T]],
) -> Callable[_P, Coroutine[Any, Any, _T]]:
    """``method``, raising :class:`DatabaseError` from the driver's errors."""

    @functools.wraps(method)
    async def wrapper(*args: _P.args, **kwargs: _P.kwargs) -> _T:
        with database_errors():
            return await method(*args, **kwargs)

    return wrapper
