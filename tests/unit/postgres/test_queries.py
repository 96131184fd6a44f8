"""The Postgres adapter's surface: every statement that fails raises DatabaseError.

No database: a pool whose every call fails as the test says. The statements
themselves are checked against a real Postgres in tests/integration/test_queries.py.
"""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, NoReturn

import asyncpg
import pytest

from broadcaster.core.feed import Request
from broadcaster.exceptions import DatabaseError
from broadcaster.postgres.errors import DRIVER_ERRORS
from broadcaster.postgres.queries import ChangeReader, PostgresAuthorizerFunction
from tests.support.timeouts import within


class BrokenPool:
    """A pool whose statements and connections all raise ``error``."""

    def __init__(self, error: BaseException) -> None:
        self.error = error

    async def _fail(self, *_args: object) -> NoReturn:
        raise self.error

    execute = fetch = fetchrow = fetchval = _fail

    @contextlib.asynccontextmanager
    async def acquire(self) -> AsyncIterator[NoReturn]:
        raise self.error
        yield


# Each public statement of ChangeReader, called with arguments it accepts.
CALLS: dict[str, Callable[[ChangeReader], Awaitable[Any]]] = {
    "origin": lambda reader: reader.origin(),
    "read": lambda reader: reader.read([Request(0, "t1", None)]),
    "prune": lambda reader: reader.prune(60.0),
    "register": lambda reader: reader.register("p", ["t1"], ["t2"], 1.0),
    "horizon": lambda reader: reader.horizon(),
    "unregister": lambda reader: reader.unregister("p", ["t1"]),
    "keep_listening": lambda reader: reader.keep_listening("p", 30.0),
    "broadcast": lambda reader: reader.broadcast("{}"),
    "track": lambda reader: reader.track("room", "ada", "slot", "p", {}),
    "untrack": lambda reader: reader.untrack(["slot"]),
    "presence_state": lambda reader: reader.presence_state("room"),
    "keep_presence": lambda reader: reader.keep_presence("p", 15.0),
    "notification_queue_usage": lambda reader: reader.notification_queue_usage(),
}

FAILURES = [
    asyncpg.exceptions.UndefinedTableError("relation does not exist"),
    asyncpg.InterfaceError("connection is closed"),
    asyncpg.InternalClientError("connection was lost"),
    ConnectionResetError("reset by peer"),
    TimeoutError(),
]


def test_every_public_statement_is_checked() -> None:
    public = {
        name
        for name, member in inspect.getmembers(ChangeReader, inspect.iscoroutinefunction)
        if not name.startswith("_")
    }
    assert public == set(CALLS)


def test_the_failures_are_driver_errors() -> None:
    assert all(isinstance(failure, DRIVER_ERRORS) for failure in FAILURES)


@pytest.mark.parametrize("failure", FAILURES, ids=lambda failure: type(failure).__name__)
@pytest.mark.parametrize("method", sorted(CALLS))
async def test_a_failing_statement_raises_database_error_from_the_driver_error(
    method: str, failure: BaseException
) -> None:
    pool = BrokenPool(failure)
    reader = ChangeReader(pool)  # type: ignore[arg-type]

    with pytest.raises(DatabaseError) as raised:
        await within(CALLS[method](reader))

    assert raised.value.__cause__ is failure
    assert str(raised.value) == (str(failure) or type(failure).__name__)


@pytest.mark.parametrize("method", ["broadcast", "track", "presence_state"])
async def test_a_bug_is_not_a_database_error(method: str) -> None:
    """Only the driver's errors are translated: anything else is a bug, raised as is."""
    bug = RuntimeError("a bug")
    reader = ChangeReader(BrokenPool(bug))  # type: ignore[arg-type]

    with pytest.raises(RuntimeError) as raised:
        await within(CALLS[method](reader))

    assert raised.value is bug


async def test_the_authorizer_function_before_the_pool_exists_is_a_database_error() -> None:
    function = PostgresAuthorizerFunction(lambda: None, "may_read")
    with pytest.raises(DatabaseError, match="not connected yet") as raised:
        await within(function.allows("{}", "t1", None))
    assert isinstance(raised.value.__cause__, ConnectionError)


@pytest.mark.parametrize("failure", FAILURES, ids=lambda failure: type(failure).__name__)
async def test_a_failing_authorizer_function_raises_database_error(failure: BaseException) -> None:
    function = PostgresAuthorizerFunction(lambda: BrokenPool(failure), "may_read")  # type: ignore[arg-type,return-value]
    with pytest.raises(DatabaseError) as raised:
        await within(function.allows("{}", "t1", None))
    assert raised.value.__cause__ is failure
