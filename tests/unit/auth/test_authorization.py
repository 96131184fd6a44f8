"""Unit tests for broadcaster.auth.authorization: who may subscribe to which table.

No database: the SQL authorizer's function (the Postgres adapter's) gets a fake
pool whose ``fetchval`` answers, or raises, as each test says, and a fake clock
drives its cache.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import logging
from collections.abc import Awaitable, Callable, Mapping
from types import MappingProxyType
from typing import Any

import asyncpg
import pytest

from broadcaster.auth.authorization import (
    EVERY_TABLE_ID,
    ClaimAuthorizer,
    OpenAuthorizer,
    SqlAuthorizer,
    authorizer_table_id,
)
from broadcaster.auth.identity import Identity
from broadcaster.core.tables import EVERY_TABLE
from broadcaster.exceptions import ConfigurationError, DatabaseError
from broadcaster.postgres.queries import PostgresAuthorizerFunction
from tests.support.clocks import FakeClock
from tests.support.pools import PoolStandIn, as_pool
from tests.support.timeouts import within

FUNCTION = "broadcaster_authorize"
CACHE_SECONDS = 10.0


class FakePool(PoolStandIn):
    """Records each fetchval and answers it.

    ``answer`` is returned as is, or raised when it is an exception, or called
    with the claims (parsed) and the table_id when it is a function.
    """

    def __init__(self, answer: Any = True, *, takes_binding: bool = False) -> None:
        super().__init__(takes_binding=takes_binding)
        self.answer = answer
        self.calls: list[tuple[str, tuple[Any, ...]]] = []

    async def call(self, query: str, *args: Any) -> Any:
        self.calls.append((query, args))
        await asyncio.sleep(0)
        answer = self.answer
        if isinstance(answer, BaseException):
            raise answer
        if callable(answer):
            claims, table_id = args[:2]
            return answer(json.loads(claims), table_id)
        return answer


def identity(claims: Mapping[str, Any] | None = None) -> Identity:
    claims = {"sub": "user-1"} if claims is None else claims
    return Identity(
        claims=MappingProxyType(dict(claims)), expires_at=None, subject=claims.get("sub")
    )


def sql_authorizer(
    pool: FakePool | None, clock: FakeClock | None = None, function: str = FUNCTION
) -> SqlAuthorizer:
    return SqlAuthorizer(
        PostgresAuthorizerFunction(lambda: as_pool(pool), function),
        cache_seconds=CACHE_SECONDS,
        clock=clock if clock is not None else FakeClock(),
    )


async def decide(verdict: bool | Awaitable[bool]) -> bool:
    """The authorizer's answer, awaited when it is not known at once."""
    if isinstance(verdict, bool):
        return verdict
    return await within(verdict)


async def asked(
    authorizer: SqlAuthorizer, who: Identity | None, table_id: str, binding: str | None = None
) -> bool:
    """Ask, asserting the answer is not a cached one."""
    verdict = authorizer.allowed(who, table_id, binding)
    assert inspect.isawaitable(verdict), "expected a question to the database"
    return await within(verdict)


def cached(authorizer: SqlAuthorizer, who: Identity | None, table_id: str) -> bool:
    """Ask, asserting the answer comes from the cache, at once."""
    verdict = authorizer.allowed(who, table_id)
    assert isinstance(verdict, bool), "expected a cached answer"
    return verdict


# OpenAuthorizer


@pytest.mark.parametrize("who", [None, identity(), identity({"table_ids": []})])
def test_open_authorizer_allows_every_table_to_everyone(who: Identity | None) -> None:
    authorizer = OpenAuthorizer()

    assert authorizer.allowed(who, "t1") is True
    assert authorizer.allowed(who, "any other table") is True


# ClaimAuthorizer


def test_claim_authorizer_allows_the_tables_listed_in_the_claim() -> None:
    authorizer = ClaimAuthorizer("table_ids")
    who = identity({"table_ids": ["t1", "t2"]})

    assert authorizer.allowed(who, "t1") is True
    assert authorizer.allowed(who, "t2") is True
    assert authorizer.allowed(who, "t3") is False
    # No prefix or substring matching.
    assert authorizer.allowed(who, "t") is False
    assert authorizer.allowed(who, "t10") is False


@pytest.mark.parametrize("granted", ["*", ["*"], ["t1", "*"]])
def test_claim_authorizer_wildcard_allows_every_table(granted: Any) -> None:
    authorizer = ClaimAuthorizer("table_ids")
    who = identity({"table_ids": granted})

    assert authorizer.allowed(who, "t1") is True
    assert authorizer.allowed(who, "anything at all") is True


@pytest.mark.parametrize(
    "claims",
    [
        pytest.param({}, id="no claim"),
        pytest.param({"table_ids": []}, id="empty list"),
        pytest.param({"table_ids": None}, id="null"),
        pytest.param({"table_ids": "t1"}, id="a string that is not *"),
        pytest.param({"table_ids": {"t1": True}}, id="an object"),
        pytest.param({"table_ids": 1}, id="a number"),
        pytest.param({"table_ids": True}, id="true"),
        pytest.param({"table_ids": ["*x", "t*"]}, id="no glob patterns"),
        pytest.param({"other_claim": ["t1"]}, id="another claim"),
    ],
)
def test_claim_authorizer_denies_what_the_claim_does_not_list(claims: dict[str, Any]) -> None:
    assert ClaimAuthorizer("table_ids").allowed(identity(claims), "t1") is False


def test_claim_authorizer_denies_anonymous_access() -> None:
    assert ClaimAuthorizer("table_ids").allowed(None, "t1") is False


def test_claim_authorizer_reads_the_configured_claim() -> None:
    authorizer = ClaimAuthorizer("https://example.com/tables")
    who = identity({"https://example.com/tables": ["t1"], "table_ids": ["*"]})

    assert authorizer.allowed(who, "t1") is True
    # The default claim name means nothing once another is configured.
    assert authorizer.allowed(who, "t2") is False


# Every table, as the authorizers spell it


def test_every_table_is_asked_about_as_the_documented_star() -> None:
    # docs/security.md and docs/supabase.md promise "*" to users.
    assert EVERY_TABLE_ID == "*"
    assert authorizer_table_id(EVERY_TABLE) == "*"
    assert authorizer_table_id("t1") == "t1"


@pytest.mark.parametrize("granted", ["*", ["*"]])
def test_a_star_claim_grants_every_table(granted: Any) -> None:
    who = identity({"table_ids": granted})
    assert ClaimAuthorizer("table_ids").allowed(who, authorizer_table_id(EVERY_TABLE)) is True


def test_a_list_of_tables_does_not_grant_every_table() -> None:
    who = identity({"table_ids": ["t1", "t2"]})
    assert ClaimAuthorizer("table_ids").allowed(who, authorizer_table_id(EVERY_TABLE)) is False


async def test_the_sql_function_is_asked_about_every_table_as_star() -> None:
    pool = FakePool(True)
    assert await asked(sql_authorizer(pool), identity(), authorizer_table_id(EVERY_TABLE))
    assert pool.calls[0][1][1] == "*"


# SqlAuthorizer: answers


async def test_sql_authorizer_allows_when_the_function_returns_true() -> None:
    pool = FakePool(True)
    authorizer = sql_authorizer(pool)

    assert await asked(authorizer, identity({"sub": "u1"}), "t1") is True

    [(query, args)] = pool.calls
    assert query == f"SELECT {FUNCTION}($1::jsonb, $2::text)"
    assert args == ('{"sub":"u1"}', "t1")


async def test_sql_authorizer_resets_the_connection_its_function_ran_on() -> None:
    """The pool does not reset connections; the operator's function may leave state."""
    pool = FakePool(True)
    authorizer = sql_authorizer(pool)

    await asked(authorizer, identity(), "t1")
    await asked(authorizer, identity(), "t2")

    assert pool.resets == 2


@pytest.mark.parametrize("answer", [False, None, 1, "true", "t"])
async def test_sql_authorizer_denies_anything_but_true(answer: Any) -> None:
    authorizer = sql_authorizer(FakePool(answer))

    assert await asked(authorizer, identity(), "t1") is False


async def test_sql_authorizer_passes_the_table_and_decides_per_table() -> None:
    pool = FakePool(lambda claims, table_id: table_id in claims["tables"])
    authorizer = sql_authorizer(pool)
    who = identity({"tables": ["t1"]})

    assert await asked(authorizer, who, "t1") is True
    assert await asked(authorizer, who, "t2") is False
    assert [args[1] for _, args in pool.calls] == ["t1", "t2"]


async def test_sql_authorizer_sends_empty_claims_for_anonymous_access() -> None:
    pool = FakePool(True)
    authorizer = sql_authorizer(pool)

    assert await asked(authorizer, None, "t1") is True
    assert pool.calls[0][1] == ("{}", "t1")


async def test_sql_authorizer_uses_a_schema_qualified_function() -> None:
    pool = FakePool(True)
    authorizer = sql_authorizer(pool, function="auth.may_subscribe")

    assert await asked(authorizer, identity(), "t1") is True
    assert pool.calls[0][0] == "SELECT auth.may_subscribe($1::jsonb, $2::text)"


# SqlAuthorizer: claims as JSON


async def test_claims_are_a_json_object_with_sorted_keys() -> None:
    pool = FakePool(True)
    authorizer = sql_authorizer(pool)
    claims = {"sub": "u1", "aud": "app", "exp": 1_700_000_000, "roles": ["b", "a"], "x": {"z": 1}}
    # A verifier hands out read-only claims: json cannot serialise a mappingproxy itself.
    who = Identity(claims=MappingProxyType(claims), expires_at=1_700_000_000.0, subject="u1")

    assert await asked(authorizer, who, "t1") is True

    [(_, (sent, _table_id))] = pool.calls
    assert isinstance(sent, str)
    assert json.loads(sent) == claims
    assert list(json.loads(sent)) == sorted(claims)
    assert sent == json.dumps(claims, sort_keys=True, separators=(",", ":"))


async def test_claims_in_another_key_order_share_a_cache_entry() -> None:
    pool = FakePool(True)
    authorizer = sql_authorizer(pool)
    first = identity({"sub": "u1", "role": "admin"})
    second = identity({"role": "admin", "sub": "u1"})

    assert await asked(authorizer, first, "t1") is True
    assert cached(authorizer, second, "t1") is True
    assert len(pool.calls) == 1


# SqlAuthorizer: failures deny, are logged, and are not remembered


@pytest.mark.parametrize(
    "error",
    [
        pytest.param(
            asyncpg.exceptions.UndefinedFunctionError("function does not exist"),
            id="PostgresError",
        ),
        pytest.param(asyncpg.PostgresError("boom"), id="bare PostgresError"),
        pytest.param(OSError("connection refused"), id="OSError"),
        pytest.param(ConnectionResetError("reset by peer"), id="ConnectionResetError"),
        pytest.param(TimeoutError(), id="TimeoutError"),
        pytest.param(asyncpg.InterfaceError("connection is closed"), id="InterfaceError"),
    ],
)
async def test_a_failing_function_denies_and_is_logged(
    error: BaseException, caplog: pytest.LogCaptureFixture
) -> None:
    authorizer = sql_authorizer(FakePool(error))

    with caplog.at_level(logging.ERROR, logger="broadcaster.auth.authorization"):
        assert await asked(authorizer, identity(), "t1") is False

    [record] = [r for r in caplog.records if r.name == "broadcaster.auth.authorization"]
    assert record.levelno == logging.ERROR
    assert FUNCTION in record.getMessage()
    assert "'t1'" in record.getMessage()
    assert record.exc_info is not None
    assert isinstance(record.exc_info[1], DatabaseError)
    assert record.exc_info[1].__cause__ is error


async def test_a_failure_is_not_cached(caplog: pytest.LogCaptureFixture) -> None:
    pool = FakePool(OSError("connection refused"))
    authorizer = sql_authorizer(pool)

    with caplog.at_level(logging.ERROR, logger="broadcaster.auth.authorization"):
        assert await asked(authorizer, identity(), "t1") is False
    pool.answer = True

    # Once the database answers again, the next subscribe is allowed.
    assert await asked(authorizer, identity(), "t1") is True
    assert len(pool.calls) == 2


async def test_no_pool_denies_and_is_logged(caplog: pytest.LogCaptureFixture) -> None:
    authorizer = sql_authorizer(None)

    with caplog.at_level(logging.ERROR, logger="broadcaster.auth.authorization"):
        assert await asked(authorizer, identity(), "t1") is False

    [record] = [r for r in caplog.records if r.name == "broadcaster.auth.authorization"]
    assert record.levelno == logging.ERROR
    assert FUNCTION in record.getMessage()


async def test_the_pool_is_looked_up_at_each_question(caplog: pytest.LogCaptureFixture) -> None:
    pools: list[FakePool | None] = [None]
    authorizer = SqlAuthorizer(
        PostgresAuthorizerFunction(lambda: as_pool(pools[-1]), FUNCTION),
        cache_seconds=CACHE_SECONDS,
        clock=FakeClock(),
    )

    with caplog.at_level(logging.ERROR, logger="broadcaster.auth.authorization"):
        assert await asked(authorizer, identity(), "t1") is False
    pools.append(FakePool(True))

    # Not connected at first, connected later: the denial was not cached.
    assert await asked(authorizer, identity(), "t1") is True


# SqlAuthorizer: the cache


async def test_an_answer_is_cached_for_cache_seconds() -> None:
    clock = FakeClock()
    pool = FakePool(True)
    authorizer = sql_authorizer(pool, clock)
    who = identity()

    assert await asked(authorizer, who, "t1") is True
    clock.advance(CACHE_SECONDS - 0.001)

    assert cached(authorizer, who, "t1") is True
    assert cached(authorizer, identity(), "t1") is True  # equal claims, another Identity
    assert len(pool.calls) == 1


async def test_a_denial_is_cached_too() -> None:
    clock = FakeClock()
    pool = FakePool(False)
    authorizer = sql_authorizer(pool, clock)

    assert await asked(authorizer, identity(), "t1") is False
    clock.advance(1.0)

    assert cached(authorizer, identity(), "t1") is False
    assert len(pool.calls) == 1


@pytest.mark.parametrize("later", [CACHE_SECONDS, CACHE_SECONDS + 0.001, 10 * CACHE_SECONDS])
async def test_a_cached_answer_expires_after_cache_seconds(later: float) -> None:
    clock = FakeClock()
    pool = FakePool(True)
    authorizer = sql_authorizer(pool, clock)

    assert await asked(authorizer, identity(), "t1") is True
    clock.advance(later)
    pool.answer = False

    assert await asked(authorizer, identity(), "t1") is False
    assert len(pool.calls) == 2
    # ... and the fresh answer is cached in turn.
    assert cached(authorizer, identity(), "t1") is False


async def test_the_cache_is_per_claims_and_table() -> None:
    pool = FakePool(lambda claims, table_id: claims.get("sub") == "u1" and table_id == "t1")
    authorizer = sql_authorizer(pool)
    u1, u2 = identity({"sub": "u1"}), identity({"sub": "u2"})

    assert await asked(authorizer, u1, "t1") is True
    # Another table, other claims, anonymous: each is a question of its own.
    assert await asked(authorizer, u1, "t2") is False
    assert await asked(authorizer, u2, "t1") is False
    assert await asked(authorizer, None, "t1") is False
    assert len(pool.calls) == 4

    assert cached(authorizer, u1, "t1") is True
    assert cached(authorizer, u1, "t2") is False
    assert cached(authorizer, u2, "t1") is False
    assert cached(authorizer, None, "t1") is False
    assert len(pool.calls) == 4


async def test_the_cache_is_bounded() -> None:
    pool = FakePool(True)
    authorizer = sql_authorizer(pool)
    who = identity()
    entries = 10_000  # authorization._CACHE_ENTRIES

    for number in range(entries):
        await decide(authorizer.allowed(who, f"t{number}"))
    assert cached(authorizer, who, "t0") is True

    # One entry more: the cache starts over rather than growing.
    assert await asked(authorizer, who, "one too many") is True
    assert await asked(authorizer, who, "t0") is True
    assert len(pool.calls) == entries + 2


# SqlAuthorizer: the function name


@pytest.mark.parametrize(
    "function",
    [
        "x; drop table rows",
        "a.b.c",
        "",
        " ",
        "1abc",
        "a b",
        "f()",
        "f($1)",
        '"quoted"',
        "a.",
        ".a",
        "a..b",
        "x--",
        "x\n",
        "x/*",
        "pg_catalog.now() --",
        "é",
    ],
)
def test_an_invalid_function_name_is_a_configuration_error(function: str) -> None:
    with pytest.raises(ConfigurationError, match="function name"):
        PostgresAuthorizerFunction(lambda: None, function)


@pytest.mark.parametrize(
    "function", ["broadcaster_authorize", "auth.may_subscribe", "_f1", "A.B", "f"]
)
async def test_a_valid_function_name_is_accepted_and_called(function: str) -> None:
    pool = FakePool(True)

    assert await asked(sql_authorizer(pool, function=function), identity(), "t1") is True
    assert [query for query, _args in pool.calls] == [f"SELECT {function}($1::jsonb, $2::text)"]


def test_an_invalid_function_name_is_refused_before_any_question() -> None:
    asked_pool: list[Callable[[], Any]] = []

    def pool() -> None:
        asked_pool.append(pool)

    with pytest.raises(ConfigurationError):
        PostgresAuthorizerFunction(pool, "x; drop table rows")
    assert asked_pool == []


def test_the_claim_may_be_a_dotted_path_into_objects() -> None:
    authorizer = ClaimAuthorizer("app_metadata.table_ids")
    nested = Identity(claims={"app_metadata": {"table_ids": ["t1"]}}, expires_at=None, subject=None)
    assert authorizer.allowed(nested, "t1") is True
    assert authorizer.allowed(nested, "t2") is False
    flat = Identity(claims={"app_metadata": "t1"}, expires_at=None, subject=None)
    assert authorizer.allowed(flat, "t1") is False


async def test_a_function_taking_a_binding_is_given_it_and_asked_once_which_it_takes() -> None:
    pool = FakePool(takes_binding=True)
    authorizer = sql_authorizer(pool)
    binding = '{"event":"*","filter":"room_id=eq.5","schema":"public","table":"messages"}'

    assert await asked(authorizer, identity(), "public.messages", binding)
    assert await asked(authorizer, identity(), "t1")

    assert [args for _, args in pool.calls] == [
        ('{"sub":"user-1"}', "public.messages", binding),
        ('{"sub":"user-1"}', "t1", None),
    ]
    assert pool.calls[0][0] == f"SELECT {FUNCTION}($1::jsonb, $2::text, $3::jsonb)"
    assert pool.probes == 1
