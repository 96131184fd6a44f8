"""broadcaster.sessions.native: authentication, authorization and limits of a session.

A fake verifier stands in for the JWT one (optionally holding each verification
until the test releases it), fake clocks drive the rate limit, the error budget
and the expiry arithmetic, and the real event loop runs the auth and expiry
timers, kept short. The transport closes the session when asked to close, as
the WebSocket adapter does.
"""

from __future__ import annotations

import asyncio
import gc
import json
import logging
import warnings
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from broadcaster.auth.authorization import (
    Authorizer,
    ClaimAuthorizer,
    OpenAuthorizer,
    SqlAuthorizer,
)
from broadcaster.auth.identity import Identity
from broadcaster.core.hub import Hub
from broadcaster.exceptions import AuthenticationError
from broadcaster.postgres.queries import PostgresAuthorizerFunction
from broadcaster.protocols import native as protocol
from broadcaster.sessions.base import Limits
from broadcaster.sessions.native import NativeSession
from tests.support.clocks import FakeClock
from tests.support.pools import PoolStandIn, as_pool
from tests.support.sessions import (
    CLAIM,
    AdapterTransport,
    FakeJoiner,
    FakeTransport,
    FakeVerifier,
    identity,
    messages,
    send,
)
from tests.support.timeouts import eventually, seconds

# Unix time the fake wall clock shows: tokens expire relative to it.
WALL = 1_700_000_000.0
# Long enough never to fire during a test that is not about it.
LONG = 600.0
SHORT = seconds(0.05)


class FakePool(PoolStandIn):
    """An asyncpg pool stand-in for SqlAuthorizer; ``hold()`` makes answers wait."""

    def __init__(self, decide: Callable[[dict[str, Any], str], bool]) -> None:
        super().__init__()
        self.decide = decide
        self.calls: list[str] = []
        self._gate: asyncio.Event | None = None

    def hold(self) -> asyncio.Event:
        self._gate = asyncio.Event()
        return self._gate

    async def call(self, query: str, *args: Any) -> bool:
        claims, table_id = args
        self.calls.append(table_id)
        if self._gate is not None:
            await self._gate.wait()
        return self.decide(json.loads(claims), table_id)


async def settle() -> None:
    """Let every ready task and callback run (bounded: no waiting on a clock)."""
    for _ in range(20):
        await asyncio.sleep(0)


async def received(transport: FakeTransport, count: int) -> list[Any]:
    """The messages sent, once there are at least ``count``."""
    await eventually(lambda: len(transport.sent) >= count)
    return messages(transport)


@pytest.fixture
def hub() -> Hub:
    return Hub()


@pytest.fixture
def transport() -> AdapterTransport:
    return AdapterTransport()


@pytest.fixture
def joiner() -> FakeJoiner:
    return FakeJoiner()


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(1_000.0)


@pytest.fixture
def wall() -> FakeClock:
    return FakeClock(WALL)


@pytest.fixture
def verifier() -> FakeVerifier:
    return FakeVerifier(
        {
            "token-ab": identity(("a", "b"), WALL + 3_600.9, sub="u1"),
            "token-abc": identity(("a", "b", "c"), WALL + 3_600, sub="u1"),
            "token-c": identity(("c",), WALL + 7_200, sub="u1"),
            "token-no-exp": identity(("a", "b"), None, sub="u1"),
            "token-star": identity("*", None),
            "token-star-list": identity(["*"], None),
            "token-expires-soon": identity(("a", "b"), WALL + SHORT, sub="u1"),
            "token-expired": AuthenticationError(protocol.TOKEN_EXPIRED, "the token expired"),
            "token-bad": AuthenticationError(protocol.UNAUTHORIZED, "the signature is invalid"),
        }
    )


MakeSession = Callable[..., NativeSession]


@pytest.fixture
async def make_session(
    hub: Hub,
    joiner: FakeJoiner,
    transport: AdapterTransport,
    clock: FakeClock,
    wall: FakeClock,
) -> AsyncIterator[MakeSession]:
    """Build sessions on the shared fakes; every one is closed at the end."""
    made: list[NativeSession] = []

    def make(
        *,
        verifier: FakeVerifier | None = None,
        authorizer: Authorizer | None = None,
        token: str | None = None,
        **limits: Any,
    ) -> NativeSession:
        options: dict[str, Any] = {
            "messages_per_second": 1e9,
            "max_errors": 10**9,
            "auth_timeout": LONG,
            **limits,
        }
        session = NativeSession(
            hub,
            joiner,
            transport,
            authorizer=authorizer if authorizer is not None else ClaimAuthorizer(CLAIM),
            verifier=verifier,
            token=token,
            limits=Limits(**options),
            clock=clock,
            wall_clock=wall,
        )
        transport.session = session
        made.append(session)
        return session

    yield make
    for session in made:
        session.close()
    await settle()


async def authenticate(
    session: NativeSession, transport: FakeTransport, token: str = "token-ab", ref: Any = 0
) -> dict[str, Any]:
    """Send an auth message and return the ``authenticated`` reply."""
    before = len(transport.sent)
    send(session, {"type": "auth", "ref": ref, "token": token})
    replies = await received(transport, before + 1)
    reply: dict[str, Any] = replies[before]
    assert reply["type"] == "authenticated", reply
    return reply


def go_live(joiner: FakeJoiner, table_id: str) -> None:
    """Answer the pending join of ``table_id``: the subscription is then live."""
    [join] = [j for j in joiner.pending if j.table_id == table_id]
    joiner.answer(join)


def error(code: str, ref: Any = None, table_id: str | None = None) -> dict[str, Any]:
    """The parts of an error message that matter to a test."""
    expected: dict[str, Any] = {"type": "error", "code": code}
    if ref is not None:
        expected["ref"] = ref
    if table_id is not None:
        expected["table_id"] = table_id
    return expected


def without_message(reply: dict[str, Any]) -> dict[str, Any]:
    assert isinstance(reply.get("message", ""), str)
    return {key: value for key, value in reply.items() if key != "message"}


# Before authentication


@pytest.mark.parametrize(
    "message",
    [
        {"type": "subscribe", "ref": "r", "table_id": "a"},
        {"type": "subscribe", "ref": "r", "table_id": "a", "snapshot": True},
        {"type": "unsubscribe", "ref": "r", "table_id": "a"},
    ],
)
async def test_before_authentication_only_auth_and_ping_are_served(
    make_session: MakeSession,
    verifier: FakeVerifier,
    transport: AdapterTransport,
    joiner: FakeJoiner,
    hub: Hub,
    message: dict[str, Any],
) -> None:
    session = make_session(verifier=verifier)

    send(session, message)
    await settle()

    [reply] = messages(transport)
    assert without_message(reply) == error(protocol.UNAUTHORIZED, "r")
    assert "auth" in reply["message"]
    assert joiner.joins == []
    assert session.tables == {}
    assert hub.tables == 0
    assert transport.closes == []
    assert verifier.calls == []
    assert not session.authenticated
    assert session.identity is None


async def test_ping_is_answered_before_authentication(
    make_session: MakeSession, verifier: FakeVerifier, transport: AdapterTransport
) -> None:
    session = make_session(verifier=verifier)

    send(session, {"type": "ping", "ref": 1})
    send(session, {"type": "ping", "ref": "two"})

    # At once: nothing before it needs waiting for.
    assert messages(transport) == [{"type": "pong", "ref": 1}, {"type": "pong", "ref": "two"}]
    assert not session.authenticated


async def test_after_authentication_subscribe_is_served(
    make_session: MakeSession,
    verifier: FakeVerifier,
    transport: AdapterTransport,
    joiner: FakeJoiner,
    hub: Hub,
) -> None:
    session = make_session(verifier=verifier)
    send(session, {"type": "subscribe", "ref": 1, "table_id": "a"})
    await authenticate(session, transport)

    send(session, {"type": "subscribe", "ref": 2, "table_id": "a"})
    go_live(joiner, "a")

    assert [m["type"] for m in messages(transport)] == [
        "error",
        "authenticated",
        "subscribed",
        "synced",
    ]
    assert messages(transport)[2] == {"type": "subscribed", "ref": 2, "table_id": "a"}
    assert hub.is_subscribed("a")


# Authenticating


@pytest.mark.parametrize(
    ("token", "expires_at"),
    [("token-ab", int(WALL) + 3_600), ("token-abc", int(WALL) + 3_600), ("token-no-exp", None)],
)
async def test_auth_is_answered_with_its_ref_and_the_expiry(
    make_session: MakeSession,
    verifier: FakeVerifier,
    transport: AdapterTransport,
    token: str,
    expires_at: int | None,
) -> None:
    session = make_session(verifier=verifier)

    send(session, {"type": "auth", "ref": "auth-1", "token": token})
    [reply] = await received(transport, 1)

    assert reply == {"type": "authenticated", "ref": "auth-1", "expires_at": expires_at}
    assert expires_at is None or type(reply["expires_at"]) is int
    assert verifier.calls == [token]
    assert session.authenticated
    assert session.identity is verifier.outcomes[token]
    assert transport.closes == []


async def test_auth_without_a_verifier_is_answered_with_no_expiry(
    make_session: MakeSession, transport: AdapterTransport, joiner: FakeJoiner
) -> None:
    session = make_session(authorizer=OpenAuthorizer())
    assert session.authenticated  # anonymous from the start

    send(session, {"type": "auth", "ref": 5, "token": "anything"})
    [reply] = await received(transport, 1)

    assert reply == {"type": "authenticated", "ref": 5, "expires_at": None}
    assert session.identity is None
    send(session, {"type": "subscribe", "ref": 6, "table_id": "a"})
    assert [j.table_id for j in joiner.joins] == ["a"]


async def test_an_upgrade_token_is_verified_first_and_answered_with_ref_null(
    make_session: MakeSession,
    verifier: FakeVerifier,
    transport: AdapterTransport,
    joiner: FakeJoiner,
) -> None:
    session = make_session(verifier=verifier, token="token-ab")
    # Sent before the verification could even start: they wait for it.
    send(session, {"type": "ping", "ref": 1})
    send(session, {"type": "subscribe", "ref": 2, "table_id": "a"})
    assert transport.sent == []

    replies = await received(transport, 2)
    await settle()

    assert replies == [
        {"type": "authenticated", "ref": None, "expires_at": int(WALL) + 3_600},
        {"type": "pong", "ref": 1},
    ]
    assert verifier.calls == ["token-ab"]
    assert [j.table_id for j in joiner.joins] == ["a"]  # served as authenticated


@pytest.mark.parametrize(
    ("token", "code", "close_code"),
    [
        ("token-bad", protocol.UNAUTHORIZED, protocol.CLOSE_UNAUTHORIZED),
        ("token-expired", protocol.TOKEN_EXPIRED, protocol.CLOSE_TOKEN_EXPIRED),
        ("unknown", protocol.UNAUTHORIZED, protocol.CLOSE_UNAUTHORIZED),
    ],
)
async def test_a_refused_upgrade_token_is_answered_then_closed(
    make_session: MakeSession,
    verifier: FakeVerifier,
    transport: AdapterTransport,
    joiner: FakeJoiner,
    token: str,
    code: str,
    close_code: int,
) -> None:
    session = make_session(verifier=verifier, token=token)
    send(session, {"type": "ping", "ref": 1})
    send(session, {"type": "subscribe", "ref": 2, "table_id": "a"})

    await eventually(lambda: transport.closes)
    await settle()

    [reply] = messages(transport)
    assert without_message(reply) == error(code)  # no ref: the token came with the upgrade
    assert [close for close, _ in transport.closes] == [close_code]
    assert session.closed
    # What queued behind the refused token is dropped with the connection.
    assert joiner.joins == []


@pytest.mark.parametrize(
    ("token", "code", "close_code"),
    [
        ("token-bad", protocol.UNAUTHORIZED, protocol.CLOSE_UNAUTHORIZED),
        ("token-expired", protocol.TOKEN_EXPIRED, protocol.CLOSE_TOKEN_EXPIRED),
    ],
)
async def test_a_refused_token_gets_the_verifiers_error_then_a_close(
    make_session: MakeSession,
    verifier: FakeVerifier,
    transport: AdapterTransport,
    hub: Hub,
    token: str,
    code: str,
    close_code: int,
) -> None:
    session = make_session(verifier=verifier)

    send(session, {"type": "auth", "ref": 7, "token": token})
    await eventually(lambda: transport.closes)
    await settle()

    refusal = verifier.outcomes[token]
    assert isinstance(refusal, AuthenticationError)
    assert messages(transport) == [
        {"type": "error", "code": code, "message": refusal.message, "ref": 7}
    ]
    assert transport.closes == [(close_code, code)]
    assert session.closed
    assert not session.authenticated
    assert session.identity is None
    assert hub.tables == 0


async def test_a_refused_refresh_closes_an_authenticated_session(
    make_session: MakeSession,
    verifier: FakeVerifier,
    transport: AdapterTransport,
    joiner: FakeJoiner,
    hub: Hub,
) -> None:
    session = make_session(verifier=verifier)
    await authenticate(session, transport)
    send(session, {"type": "subscribe", "ref": 1, "table_id": "a"})
    go_live(joiner, "a")

    send(session, {"type": "auth", "ref": 2, "token": "token-bad"})
    await eventually(lambda: transport.closes)

    assert without_message(messages(transport)[-1]) == error(protocol.UNAUTHORIZED, 2)
    assert [close for close, _ in transport.closes] == [protocol.CLOSE_UNAUTHORIZED]
    assert not hub.is_subscribed("a")


# The auth timeout


async def test_no_auth_within_the_timeout_is_unauthorized_and_closed(
    make_session: MakeSession, verifier: FakeVerifier, transport: AdapterTransport
) -> None:
    session = make_session(verifier=verifier, auth_timeout=SHORT)
    send(session, {"type": "ping", "ref": 1})  # a ping is not an auth

    await eventually(lambda: transport.closes)

    pong, reply = messages(transport)
    assert pong == {"type": "pong", "ref": 1}
    assert without_message(reply) == error(protocol.UNAUTHORIZED)
    assert f"{SHORT:g}" in reply["message"]
    assert transport.closes == [(protocol.CLOSE_UNAUTHORIZED, "authentication timeout")]
    assert session.closed


async def test_the_auth_timeout_does_not_fire_after_a_successful_auth(
    make_session: MakeSession, verifier: FakeVerifier, transport: AdapterTransport
) -> None:
    session = make_session(verifier=verifier, auth_timeout=SHORT)
    await authenticate(session, transport)

    await asyncio.sleep(4 * SHORT)

    assert [m["type"] for m in messages(transport)] == ["authenticated"]
    assert transport.closes == []
    assert not session.closed


async def test_the_auth_timeout_does_not_fire_after_an_upgrade_token(
    make_session: MakeSession, verifier: FakeVerifier, transport: AdapterTransport
) -> None:
    session = make_session(verifier=verifier, token="token-no-exp", auth_timeout=SHORT)
    await received(transport, 1)

    await asyncio.sleep(4 * SHORT)

    assert [m["type"] for m in messages(transport)] == ["authenticated"]
    assert transport.closes == []
    assert not session.closed


async def test_no_auth_timeout_without_a_verifier(
    make_session: MakeSession, transport: AdapterTransport
) -> None:
    session = make_session(authorizer=OpenAuthorizer(), auth_timeout=SHORT)

    await asyncio.sleep(4 * SHORT)

    assert transport.sent == []
    assert transport.closes == []
    assert not session.closed


async def test_the_auth_timeout_fires_while_a_verification_is_still_pending(
    make_session: MakeSession, verifier: FakeVerifier, transport: AdapterTransport
) -> None:
    gate = verifier.hold()
    session = make_session(verifier=verifier, auth_timeout=SHORT)
    send(session, {"type": "auth", "ref": 1, "token": "token-ab"})

    await eventually(lambda: transport.closes)
    gate.set()
    await settle()

    [reply] = messages(transport)
    assert without_message(reply) == error(protocol.UNAUTHORIZED)
    assert transport.closes == [(protocol.CLOSE_UNAUTHORIZED, "authentication timeout")]
    assert verifier.cancelled == 1
    assert not session.authenticated


# Token expiry


async def test_an_expired_token_is_told_then_closed(
    make_session: MakeSession,
    verifier: FakeVerifier,
    transport: AdapterTransport,
    joiner: FakeJoiner,
    hub: Hub,
) -> None:
    session = make_session(verifier=verifier)
    reply = await authenticate(session, transport, "token-expires-soon")
    assert reply["expires_at"] == int(WALL + SHORT)
    send(session, {"type": "subscribe", "ref": 1, "table_id": "a"})
    go_live(joiner, "a")

    await eventually(lambda: transport.closes)

    assert without_message(messages(transport)[-1]) == error(protocol.TOKEN_EXPIRED)
    assert transport.closes == [(protocol.CLOSE_TOKEN_EXPIRED, protocol.TOKEN_EXPIRED)]
    assert session.closed
    assert not hub.is_subscribed("a")


async def test_expiry_is_measured_on_the_wall_clock(
    make_session: MakeSession,
    verifier: FakeVerifier,
    transport: AdapterTransport,
    wall: FakeClock,
) -> None:
    # The token expires in an hour by its exp, but the wall clock says that
    # hour has all but passed.
    wall.advance(3_600.9 - SHORT)
    session = make_session(verifier=verifier)
    await authenticate(session, transport, "token-ab")

    await eventually(lambda: transport.closes)

    assert transport.closes == [(protocol.CLOSE_TOKEN_EXPIRED, protocol.TOKEN_EXPIRED)]
    assert session.closed


async def test_a_token_already_past_its_expiry_expires_at_once(
    make_session: MakeSession,
    verifier: FakeVerifier,
    transport: AdapterTransport,
    wall: FakeClock,
) -> None:
    wall.advance(4_000)  # past token-ab's exp (a verifier's leeway let it through)
    session = make_session(verifier=verifier)
    send(session, {"type": "auth", "ref": 1, "token": "token-ab"})

    await eventually(lambda: transport.closes)

    assert [m["type"] for m in messages(transport)] == ["authenticated", "error"]
    assert transport.closes == [(protocol.CLOSE_TOKEN_EXPIRED, protocol.TOKEN_EXPIRED)]


@pytest.mark.parametrize("fresh", ["token-ab", "token-no-exp"])
async def test_a_refresh_before_expiry_keeps_the_connection(
    make_session: MakeSession, verifier: FakeVerifier, transport: AdapterTransport, fresh: str
) -> None:
    session = make_session(verifier=verifier)
    await authenticate(session, transport, "token-expires-soon", ref=1)
    await authenticate(session, transport, fresh, ref=2)

    await asyncio.sleep(4 * SHORT)

    assert [m["type"] for m in messages(transport)] == ["authenticated", "authenticated"]
    assert transport.closes == []
    assert session.identity is verifier.outcomes[fresh]


async def test_a_refresh_to_a_sooner_expiry_expires_at_the_new_time(
    make_session: MakeSession, verifier: FakeVerifier, transport: AdapterTransport
) -> None:
    session = make_session(verifier=verifier)
    await authenticate(session, transport, "token-no-exp", ref=1)
    await authenticate(session, transport, "token-expires-soon", ref=2)

    await eventually(lambda: transport.closes)

    assert transport.closes == [(protocol.CLOSE_TOKEN_EXPIRED, protocol.TOKEN_EXPIRED)]


# A refresh that grants fewer tables


async def test_a_refresh_to_fewer_tables_ends_the_others(
    make_session: MakeSession,
    verifier: FakeVerifier,
    transport: AdapterTransport,
    joiner: FakeJoiner,
    hub: Hub,
) -> None:
    session = make_session(verifier=verifier)
    await authenticate(session, transport, "token-abc")
    for ref, table_id in enumerate("abc"):
        send(session, {"type": "subscribe", "ref": ref, "table_id": table_id})
    go_live(joiner, "a")
    go_live(joiner, "c")
    [pending_b] = [j for j in joiner.joins if j.table_id == "b"]
    assert session.tables == {"a": None, "b": pending_b, "c": None}
    before = len(transport.sent)

    await authenticate(session, transport, "token-c", ref="refresh")
    await settle()

    assert [without_message(m) for m in messages(transport)[before + 1 :]] == [
        error(protocol.FORBIDDEN, table_id="a"),
        error(protocol.FORBIDDEN, table_id="b"),
    ]
    assert session.tables == {"c": None}
    assert not hub.is_subscribed("a")  # live: left the hub
    assert joiner.cancels == [pending_b]  # pending: its join cancelled
    assert hub.is_subscribed("c")
    assert transport.closes == []

    # The pending join answered late sends nothing.
    sent = len(transport.sent)
    joiner.answer(pending_b)
    assert len(transport.sent) == sent
    assert not hub.is_subscribed("b")

    # And the table stays forbidden.
    send(session, {"type": "subscribe", "ref": "again", "table_id": "a"})
    assert without_message(messages(transport)[-1]) == error(protocol.FORBIDDEN, "again", "a")


async def test_a_refresh_granting_the_same_tables_changes_nothing(
    make_session: MakeSession,
    verifier: FakeVerifier,
    transport: AdapterTransport,
    joiner: FakeJoiner,
    hub: Hub,
) -> None:
    session = make_session(verifier=verifier)
    await authenticate(session, transport, "token-ab")
    send(session, {"type": "subscribe", "ref": 1, "table_id": "a"})
    go_live(joiner, "a")

    await authenticate(session, transport, "token-star", ref=2)
    await settle()

    assert messages(transport)[-1]["type"] == "authenticated"
    assert session.tables == {"a": None}
    assert hub.is_subscribed("a")
    assert joiner.cancels == []


async def test_a_refresh_rechecks_with_the_sql_authorizer(
    make_session: MakeSession,
    verifier: FakeVerifier,
    transport: AdapterTransport,
    joiner: FakeJoiner,
    hub: Hub,
) -> None:
    pool = FakePool(lambda claims, table_id: table_id in claims[CLAIM])
    authorizer = SqlAuthorizer(
        PostgresAuthorizerFunction(lambda: as_pool(pool), "authorize"), cache_seconds=0.0
    )
    session = make_session(verifier=verifier, authorizer=authorizer)
    await authenticate(session, transport, "token-abc")
    for ref, table_id in enumerate("ab"):
        send(session, {"type": "subscribe", "ref": ref, "table_id": table_id})
    await eventually(lambda: len(joiner.joins) == 2)
    go_live(joiner, "a")
    go_live(joiner, "b")
    before = len(transport.sent)

    await authenticate(session, transport, "token-c", ref="refresh")
    await eventually(lambda: len(transport.sent) == before + 3)

    assert [without_message(m) for m in messages(transport)[before + 1 :]] == [
        error(protocol.FORBIDDEN, table_id="a"),
        error(protocol.FORBIDDEN, table_id="b"),
    ]
    assert session.tables == {}
    assert hub.tables == 0


# Ordering while a verification is pending


async def test_messages_sent_during_a_verification_wait_and_keep_their_order(
    make_session: MakeSession,
    verifier: FakeVerifier,
    transport: AdapterTransport,
    joiner: FakeJoiner,
) -> None:
    gate = verifier.hold()
    session = make_session(verifier=verifier)
    send(session, {"type": "auth", "ref": 0, "token": "token-ab"})
    await eventually(lambda: verifier.waiting == 1)

    send(session, {"type": "ping", "ref": 1})
    send(session, {"type": "subscribe", "ref": 2, "table_id": "a"})
    send(session, {"type": "ping", "ref": 3})
    send(session, {"type": "subscribe", "ref": 4, "table_id": "forbidden"})
    send(session, {"type": "unsubscribe", "ref": 5, "table_id": "a"})
    send(session, {"type": "ping", "ref": 6})
    await settle()
    assert transport.sent == []
    assert joiner.joins == []

    gate.set()
    replies = await received(transport, 6)
    await settle()

    assert [(m["type"], m.get("ref")) for m in replies] == [
        ("authenticated", 0),
        ("pong", 1),
        ("pong", 3),
        ("error", 4),
        ("unsubscribed", 5),
        ("pong", 6),
    ]
    assert replies[3]["code"] == protocol.FORBIDDEN
    # The subscribe was served as authenticated, then the unsubscribe cancelled it.
    [join] = joiner.joins
    assert join.table_id == "a"
    assert joiner.cancels == [join]
    assert session.tables == {}


async def test_a_second_auth_waits_for_the_first(
    make_session: MakeSession, verifier: FakeVerifier, transport: AdapterTransport
) -> None:
    gate = verifier.hold()
    session = make_session(verifier=verifier)
    send(session, {"type": "auth", "ref": 1, "token": "token-ab"})
    send(session, {"type": "auth", "ref": 2, "token": "token-c"})
    await eventually(lambda: verifier.waiting == 1)
    await settle()

    assert verifier.calls == ["token-ab"]

    gate.set()
    replies = await received(transport, 2)

    assert [(m["type"], m["ref"]) for m in replies] == [("authenticated", 1), ("authenticated", 2)]
    assert verifier.calls == ["token-ab", "token-c"]
    assert session.identity is verifier.outcomes["token-c"]


async def test_messages_behind_a_refused_token_are_dropped_with_the_connection(
    make_session: MakeSession,
    verifier: FakeVerifier,
    transport: AdapterTransport,
    joiner: FakeJoiner,
) -> None:
    gate = verifier.hold()
    session = make_session(verifier=verifier)
    send(session, {"type": "auth", "ref": 1, "token": "token-bad"})
    send(session, {"type": "ping", "ref": 2})
    send(session, {"type": "subscribe", "ref": 3, "table_id": "a"})

    gate.set()
    await eventually(lambda: transport.closes)
    await settle()

    [reply] = messages(transport)
    assert without_message(reply) == error(protocol.UNAUTHORIZED, 1)
    assert joiner.joins == []
    assert session.closed


async def test_a_subscribe_waiting_for_the_sql_authorizer_holds_later_messages(
    make_session: MakeSession, transport: AdapterTransport, joiner: FakeJoiner
) -> None:
    pool = FakePool(lambda claims, table_id: table_id != "secret")
    gate = pool.hold()
    authorizer = SqlAuthorizer(
        PostgresAuthorizerFunction(lambda: as_pool(pool), "authorize"), cache_seconds=10.0
    )
    session = make_session(authorizer=authorizer)  # anonymous: the function decides

    send(session, {"type": "subscribe", "ref": 1, "table_id": "a"})
    send(session, {"type": "subscribe", "ref": 2, "table_id": "secret"})
    send(session, {"type": "ping", "ref": 3})
    await settle()
    assert transport.sent == []
    assert joiner.joins == []
    assert pool.calls == ["a"]

    gate.set()
    replies = await received(transport, 2)

    assert [without_message(m) for m in replies] == [
        error(protocol.FORBIDDEN, 2, "secret"),
        {"type": "pong", "ref": 3},
    ]
    assert [j.table_id for j in joiner.joins] == ["a"]
    assert "secret" not in session.tables


# Back-pressure on the inbox


async def test_a_long_inbox_pauses_reading_until_it_drains(
    make_session: MakeSession, verifier: FakeVerifier, transport: AdapterTransport
) -> None:
    high, low = 64, 16  # native._INBOX_HIGH, native._INBOX_LOW
    gate = verifier.hold()
    session = make_session(verifier=verifier)
    send(session, {"type": "auth", "ref": "auth", "token": "token-ab"})
    await eventually(lambda: verifier.waiting == 1)

    for ref in range(high):
        send(session, {"type": "ping", "ref": ref})
    assert transport.pauses == []
    assert not transport.paused

    send(session, {"type": "ping", "ref": high})  # one past the high-water mark
    assert transport.pauses == [0]
    assert transport.paused
    for ref in range(high + 1, high + 5):
        send(session, {"type": "ping", "ref": ref})
    assert transport.pauses == [0]  # paused once, not once per message

    gate.set()
    replies = await received(transport, 1 + high + 5)

    # Reading resumed once the inbox was down to the low-water mark.
    assert transport.resumes == [1 + (high + 5 - low)]
    assert not transport.paused
    assert [m.get("ref") for m in replies] == ["auth", *range(high + 5)]

    # With nothing queued, a message is answered at once again.
    send(session, {"type": "ping", "ref": "after"})
    assert messages(transport)[-1] == {"type": "pong", "ref": "after"}
    assert transport.pauses == [0]


async def test_a_short_inbox_does_not_pause_reading(
    make_session: MakeSession, verifier: FakeVerifier, transport: AdapterTransport
) -> None:
    gate = verifier.hold()
    session = make_session(verifier=verifier)
    send(session, {"type": "auth", "ref": 0, "token": "token-ab"})
    for ref in range(1, 20):
        send(session, {"type": "ping", "ref": ref})

    gate.set()
    await received(transport, 20)

    assert transport.pauses == []
    assert transport.resumes == []


# The rate limit
#
# The burst is twice the rate or a full resubscribe (max_subscriptions + 2
# messages), whichever is more: these tests keep max_subscriptions small so
# that twice the rate decides, except where the resubscribe is the point.


async def test_a_burst_over_twice_the_rate_is_rate_limited(
    make_session: MakeSession, transport: AdapterTransport, joiner: FakeJoiner
) -> None:
    session = make_session(authorizer=OpenAuthorizer(), messages_per_second=5, max_subscriptions=3)

    for ref in range(10):  # bursts of up to 2 x 5
        send(session, {"type": "ping", "ref": ref})
    send(session, {"type": "ping", "ref": 10})
    send(session, {"type": "subscribe", "ref": 11, "table_id": "a"})

    replies = messages(transport)
    assert replies[:10] == [{"type": "pong", "ref": ref} for ref in range(10)]
    # Each error answers the ref of the message it dropped.
    assert [without_message(m) for m in replies[10:]] == [
        error(protocol.RATE_LIMITED, 10),
        error(protocol.RATE_LIMITED, 11),
    ]
    assert "5 messages a second" in replies[10]["message"]
    assert joiner.joins == []
    assert session.tables == {}
    assert transport.closes == []


async def test_the_burst_allows_a_full_resubscribe(
    make_session: MakeSession,
    verifier: FakeVerifier,
    transport: AdapterTransport,
    joiner: FakeJoiner,
) -> None:
    # A reconnecting client sends its auth and resubscribes every table at once.
    tables = 20
    session = make_session(verifier=verifier, messages_per_second=1, max_subscriptions=tables)

    send(session, {"type": "auth", "ref": "auth", "token": "token-star"})
    for number in range(tables):
        send(session, {"type": "subscribe", "ref": number, "table_id": f"t{number}"})
    send(session, {"type": "ping", "ref": "last"})  # max_subscriptions + 2
    send(session, {"type": "ping", "ref": "over"})

    replies = await received(transport, 3)
    await settle()

    # (The rate_limited error may come before the replies queued behind the
    # auth: it is sent as the message is dropped.)
    assert [m for m in replies if m["type"] != "error"] == [
        {"type": "authenticated", "ref": "auth", "expires_at": None},
        {"type": "pong", "ref": "last"},
    ]
    assert [without_message(m) for m in replies if m["type"] == "error"] == [
        error(protocol.RATE_LIMITED, "over")
    ]
    assert len(joiner.joins) == tables


async def test_the_rate_limit_refills_with_the_clock(
    make_session: MakeSession, transport: AdapterTransport, clock: FakeClock
) -> None:
    session = make_session(authorizer=OpenAuthorizer(), messages_per_second=5, max_subscriptions=3)

    def pings(count: int) -> list[str]:
        before = len(transport.sent)
        for _ in range(count):
            send(session, {"type": "ping"})
        return [m["type"] for m in messages(transport)[before:]]

    assert pings(11) == ["pong"] * 10 + ["error"]

    clock.advance(0.1)  # half a message
    assert pings(1) == ["error"]

    clock.advance(0.1)  # a whole one now (the dropped messages took nothing)
    assert pings(2) == ["pong", "error"]

    clock.advance(0.6)  # three
    assert pings(4) == ["pong"] * 3 + ["error"]

    clock.advance(3_600)  # never more than the burst
    assert pings(11) == ["pong"] * 10 + ["error"]


async def test_a_rate_below_one_still_refills(
    make_session: MakeSession, transport: AdapterTransport, clock: FakeClock
) -> None:
    # Burst: max(2 x 0.1, 1 + 2) = 3 messages.
    session = make_session(
        authorizer=OpenAuthorizer(), messages_per_second=0.1, max_subscriptions=1
    )

    for ref in range(4):
        send(session, {"type": "ping", "ref": ref})
    clock.advance(9.9)
    send(session, {"type": "ping", "ref": 4})
    clock.advance(0.1)
    send(session, {"type": "ping", "ref": 5})

    assert [(m["type"], m["ref"]) for m in messages(transport)] == [
        ("pong", 0),
        ("pong", 1),
        ("pong", 2),
        ("error", 3),
        ("error", 4),
        ("pong", 5),
    ]


async def test_the_rate_limit_applies_before_authentication(
    make_session: MakeSession, verifier: FakeVerifier, transport: AdapterTransport
) -> None:
    # Burst: max(2 x 1, 1 + 2) = 3 messages.
    session = make_session(verifier=verifier, messages_per_second=1, max_subscriptions=1)

    for ref in range(3):
        send(session, {"type": "ping", "ref": ref})
    send(session, {"type": "auth", "ref": "auth", "token": "token-ab"})
    await settle()

    replies = messages(transport)
    assert [m["type"] for m in replies] == ["pong", "pong", "pong", "error"]
    assert without_message(replies[3]) == error(protocol.RATE_LIMITED, "auth")
    assert verifier.calls == []
    assert not session.authenticated


# The error budget


def bad(session: NativeSession, ref: Any = None) -> None:
    send(session, {"type": "no such type", "ref": ref})


async def test_more_than_max_errors_closes_with_4003(
    make_session: MakeSession, transport: AdapterTransport
) -> None:
    session = make_session(authorizer=OpenAuthorizer(), max_errors=3)

    for ref in range(3):
        bad(session, ref)
    assert transport.closes == []
    assert [m["code"] for m in messages(transport)] == [protocol.UNKNOWN_TYPE] * 3

    bad(session, 3)

    assert transport.closes == [(protocol.CLOSE_TOO_MANY_ERRORS, "too many protocol errors")]
    assert len(messages(transport)) == 4  # the fourth error is still told
    assert session.closed
    bad(session, 4)
    send(session, {"type": "ping"})
    assert len(transport.sent) == 4


async def test_the_error_window_resets_after_60_seconds(
    make_session: MakeSession, transport: AdapterTransport, clock: FakeClock
) -> None:
    session = make_session(authorizer=OpenAuthorizer(), max_errors=3)
    for _ in range(3):
        bad(session)

    clock.advance(60.5)
    for _ in range(3):
        bad(session)
    assert transport.closes == []

    clock.advance(59.0)  # within the new window
    bad(session)
    assert [close for close, _ in transport.closes] == [protocol.CLOSE_TOO_MANY_ERRORS]


async def test_errors_within_60_seconds_add_up(
    make_session: MakeSession, transport: AdapterTransport, clock: FakeClock
) -> None:
    session = make_session(authorizer=OpenAuthorizer(), max_errors=3)
    for _ in range(3):
        bad(session)
        clock.advance(19.0)

    bad(session)  # 57 s after the first

    assert [close for close, _ in transport.closes] == [protocol.CLOSE_TOO_MANY_ERRORS]


async def test_the_error_window_starts_with_the_first_error_after_a_quiet_time(
    make_session: MakeSession, transport: AdapterTransport, clock: FakeClock
) -> None:
    session = make_session(authorizer=OpenAuthorizer(), max_errors=3)
    clock.advance(500.0)  # a long quiet connection

    for _ in range(3):
        bad(session)
    clock.advance(30.0)
    bad(session)

    assert [close for close, _ in transport.closes] == [protocol.CLOSE_TOO_MANY_ERRORS]


async def test_every_kind_of_error_counts_towards_the_budget(
    make_session: MakeSession, verifier: FakeVerifier, transport: AdapterTransport
) -> None:
    session = make_session(verifier=verifier, max_errors=3, max_message_bytes=100)

    send(session, {"type": "subscribe", "ref": 1, "table_id": "a"})  # unauthorized
    session.receive_text(b"{not json")  # bad_json
    session.receive_text(b"x" * 101)  # too_large
    assert transport.closes == []
    session.receive_binary(b"\x00")  # binary_not_supported

    assert [m["code"] for m in messages(transport)] == [
        protocol.UNAUTHORIZED,
        protocol.BAD_JSON,
        protocol.TOO_LARGE,
        protocol.BINARY_NOT_SUPPORTED,
    ]
    assert [close for close, _ in transport.closes] == [protocol.CLOSE_TOO_MANY_ERRORS]


async def test_a_flood_is_rate_limited_then_cut_off(
    make_session: MakeSession, transport: AdapterTransport
) -> None:
    session = make_session(
        authorizer=OpenAuthorizer(), messages_per_second=5, max_subscriptions=3, max_errors=3
    )

    for _ in range(100):
        send(session, {"type": "ping"})

    assert [m["type"] for m in messages(transport)] == ["pong"] * 10 + ["error"] * 4
    assert [close for close, _ in transport.closes] == [protocol.CLOSE_TOO_MANY_ERRORS]
    assert session.closed


# Authorization of subscribe


async def test_a_forbidden_subscribe_gets_forbidden_and_creates_no_join(
    make_session: MakeSession,
    verifier: FakeVerifier,
    transport: AdapterTransport,
    joiner: FakeJoiner,
    hub: Hub,
) -> None:
    session = make_session(verifier=verifier)
    await authenticate(session, transport, "token-ab")

    send(session, {"type": "subscribe", "ref": "s1", "table_id": "c", "snapshot": True})

    reply = messages(transport)[-1]
    assert without_message(reply) == error(protocol.FORBIDDEN, "s1", "c")
    assert reply["message"]
    assert joiner.joins == []
    assert session.tables == {}
    assert hub.tables == 0
    assert transport.closes == []


async def test_a_forbidden_resubscribe_does_not_touch_other_subscriptions(
    make_session: MakeSession,
    verifier: FakeVerifier,
    transport: AdapterTransport,
    joiner: FakeJoiner,
    hub: Hub,
) -> None:
    session = make_session(verifier=verifier)
    await authenticate(session, transport, "token-ab")
    send(session, {"type": "subscribe", "ref": 1, "table_id": "a"})
    go_live(joiner, "a")

    send(session, {"type": "subscribe", "ref": 2, "table_id": "c"})

    assert session.tables == {"a": None}
    assert hub.is_subscribed("a")


@pytest.mark.parametrize("token", ["token-star", "token-star-list"])
async def test_a_wildcard_grants_every_table(
    make_session: MakeSession,
    verifier: FakeVerifier,
    transport: AdapterTransport,
    joiner: FakeJoiner,
    token: str,
) -> None:
    session = make_session(verifier=verifier)
    await authenticate(session, transport, token)

    for ref, table_id in enumerate(["a", "anything", "*"]):
        send(session, {"type": "subscribe", "ref": ref, "table_id": table_id})

    assert [j.table_id for j in joiner.joins] == ["a", "anything", "*"]
    assert [m["type"] for m in messages(transport)] == ["authenticated"]


async def test_anonymous_access_with_the_claim_authorizer_is_forbidden(
    make_session: MakeSession, transport: AdapterTransport, joiner: FakeJoiner
) -> None:
    session = make_session(authorizer=ClaimAuthorizer(CLAIM))

    send(session, {"type": "subscribe", "ref": 1, "table_id": "a"})

    assert [without_message(m) for m in messages(transport)] == [error(protocol.FORBIDDEN, 1, "a")]
    assert joiner.joins == []


async def test_anonymous_access_with_the_open_authorizer_is_allowed(
    make_session: MakeSession, transport: AdapterTransport, joiner: FakeJoiner
) -> None:
    session = make_session(authorizer=OpenAuthorizer())

    send(session, {"type": "subscribe", "ref": 1, "table_id": "a"})

    assert [j.table_id for j in joiner.joins] == ["a"]
    assert transport.sent == []


async def test_the_sql_authorizer_decides_with_the_tokens_claims(
    make_session: MakeSession,
    verifier: FakeVerifier,
    transport: AdapterTransport,
    joiner: FakeJoiner,
) -> None:
    seen: list[dict[str, Any]] = []

    def decide(claims: dict[str, Any], table_id: str) -> bool:
        seen.append(claims)
        return claims.get("sub") == "u1" and table_id == "a"

    pool = FakePool(decide)
    authorizer = SqlAuthorizer(
        PostgresAuthorizerFunction(lambda: as_pool(pool), "authorize"), cache_seconds=10.0
    )
    session = make_session(verifier=verifier, authorizer=authorizer)
    await authenticate(session, transport, "token-ab")

    send(session, {"type": "subscribe", "ref": 1, "table_id": "a"})
    send(session, {"type": "subscribe", "ref": 2, "table_id": "b"})
    await received(transport, 2)

    assert [j.table_id for j in joiner.joins] == ["a"]
    assert without_message(messages(transport)[1]) == error(protocol.FORBIDDEN, 2, "b")
    outcome = verifier.outcomes["token-ab"]
    assert isinstance(outcome, Identity)
    assert seen[0] == dict(outcome.claims)


# Closing


async def test_close_during_a_verification_cancels_it_and_sends_nothing_more(
    make_session: MakeSession,
    verifier: FakeVerifier,
    transport: AdapterTransport,
    joiner: FakeJoiner,
) -> None:
    gate = verifier.hold()
    session = make_session(verifier=verifier, auth_timeout=SHORT)
    send(session, {"type": "auth", "ref": 1, "token": "token-expires-soon"})
    await eventually(lambda: verifier.waiting == 1)
    send(session, {"type": "ping", "ref": 2})
    send(session, {"type": "subscribe", "ref": 3, "table_id": "a"})

    session.close()
    await settle()
    assert verifier.cancelled == 1
    gate.set()
    await asyncio.sleep(4 * SHORT)  # past the auth timeout and the token's expiry

    assert transport.sent == []
    assert transport.closes == []
    assert joiner.joins == []
    assert not session.authenticated
    send(session, {"type": "ping", "ref": 4})
    session.receive_binary(b"\x00")
    assert transport.sent == []


async def test_close_during_the_upgrade_tokens_verification(
    make_session: MakeSession, verifier: FakeVerifier, transport: AdapterTransport
) -> None:
    gate = verifier.hold()
    session = make_session(verifier=verifier, token="token-ab")
    await eventually(lambda: verifier.waiting == 1)

    session.close()
    await settle()
    gate.set()
    await settle()

    assert verifier.cancelled == 1
    assert transport.sent == []
    assert transport.closes == []


async def test_close_after_authentication_stops_the_expiry_timer(
    make_session: MakeSession, verifier: FakeVerifier, transport: AdapterTransport
) -> None:
    session = make_session(verifier=verifier)
    await authenticate(session, transport, "token-expires-soon")

    session.close()
    await asyncio.sleep(4 * SHORT)

    assert [m["type"] for m in messages(transport)] == ["authenticated"]
    assert transport.closes == []


@pytest.mark.parametrize("waiting_for", ["the upgrade token", "the sql authorizer"])
async def test_close_before_the_wait_starts_leaves_nothing_behind(
    hub: Hub, joiner: FakeJoiner, verifier: FakeVerifier, waiting_for: str
) -> None:
    # The connection may be gone in the same loop iteration as the message that
    # must wait (the client sent its upgrade, or a subscribe, and a close frame
    # in one packet): the task that would have finished it never runs.
    transport = AdapterTransport()
    pool = FakePool(lambda claims, table_id: True)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        if waiting_for == "the upgrade token":
            session = NativeSession(
                hub,
                joiner,
                transport,
                authorizer=ClaimAuthorizer(CLAIM),
                limits=Limits(),
                verifier=verifier,
                token="token-ab",
            )
        else:
            session = NativeSession(
                hub,
                joiner,
                transport,
                authorizer=SqlAuthorizer(
                    PostgresAuthorizerFunction(lambda: as_pool(pool), "authorize"),
                    cache_seconds=10.0,
                ),
                limits=Limits(),
            )
            send(session, {"type": "subscribe", "ref": 1, "table_id": "a"})
        session.close()
        await settle()
        del session
        gc.collect()

    assert transport.sent == []
    assert transport.closes == []
    assert joiner.joins == []
    assert verifier.calls == []
    assert pool.calls == []
    # Each coroutine created to finish the message is closed, not dropped unawaited.
    assert [str(w.message) for w in caught] == []


async def test_an_unexpected_verifier_failure_closes_with_1011(
    make_session: MakeSession, transport: AdapterTransport, caplog: pytest.LogCaptureFixture
) -> None:
    class BrokenVerifier(FakeVerifier):
        async def verify(self, token: str) -> Identity:
            raise RuntimeError("bug")

    session = make_session(verifier=BrokenVerifier({}))
    with caplog.at_level(logging.ERROR, logger="broadcaster.sessions.native"):
        send(session, {"type": "auth", "ref": 1, "token": "token-ab"})
        await eventually(lambda: transport.closes)

    assert transport.sent == []
    assert transport.closes == [(1011, "internal error")]
    assert not session.authenticated
    assert any(r.exc_info for r in caplog.records if r.name == "broadcaster.sessions.native")
