"""Authentication, authorization and limits against a real server and Postgres.

Tokens are real JWTs signed with a shared secret (the verifier's key types are
covered in tests/unit/auth/test_tokens.py); every refusal is checked for its
documented error code and close code, and for other clients carrying on.
"""

from __future__ import annotations

import asyncio
import json
import math
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import asyncpg
import jwt
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from broadcaster.net.server import Server
from tests.support.server import Client, client, running_server
from tests.support.timeouts import seconds, within

pytestmark = pytest.mark.asyncio

SECRET = "test-secret-of-at-least-32-bytes!!"
AUTH: dict[str, Any] = {"auth": "jwt", "jwt_secret": SECRET, "jwt_audience": "realtime"}


def token(
    tables: Any = ("A",), *, expires_in: float = 300, secret: str = SECRET, **claims: Any
) -> str:
    payload: dict[str, Any] = {
        "sub": "user-1",
        "aud": "realtime",
        # Rounded up: a token lives at least ``expires_in`` (truncated, a
        # 1-second token could expire before its first subscribe).
        "exp": math.ceil(time.time() + expires_in),
        "table_ids": list(tables) if isinstance(tables, tuple | list) else tables,
    }
    payload.update(claims)
    return jwt.encode(payload, secret, algorithm="HS256")


@pytest.fixture
async def server(database_url: str) -> AsyncIterator[Server]:
    async with running_server(database_url, **AUTH) as s:
        yield s


@pytest.fixture
async def db(database_url: str) -> AsyncIterator[asyncpg.Connection]:
    connection = await asyncpg.connect(database_url)
    yield connection
    await connection.close()


async def authenticate(c: Client, the_token: str) -> Any:
    return await c.request({"type": "auth", "token": the_token})


async def closed_with(c: Client) -> tuple[int, list[Any]]:
    """Read until the server closes; return the close code and what came before."""
    received: list[Any] = []

    async def read_all() -> None:
        while True:
            received.append(json.loads(await within(c.connection.recv(), 10)))

    with pytest.raises(ConnectionClosed) as closed:
        await read_all()
    assert closed.value.rcvd is not None
    return closed.value.rcvd.code, received


def unsigned(payload: dict[str, Any]) -> str:
    import base64

    def part(value: dict[str, Any]) -> str:
        return base64.urlsafe_b64encode(json.dumps(value).encode()).rstrip(b"=").decode()

    return f"{part({'alg': 'none', 'typ': 'JWT'})}.{part(payload)}."


# Each bad token is made when its test runs, not when the tests are collected:
# the suite runs for longer than a token made at collection would stay unexpired.
REFUSED = [
    pytest.param(lambda: "garbage", "unauthorized", id="garbage"),
    pytest.param(
        lambda: token(secret="another-secret-of-at-least-32-bytes"), "unauthorized", id="key"
    ),
    pytest.param(
        lambda: unsigned({"aud": "realtime", "exp": int(time.time()) + 300, "table_ids": ["A"]}),
        "unauthorized",
        id="alg-none",
    ),
    pytest.param(lambda: token(expires_in=-60), "token_expired", id="expired"),
    pytest.param(lambda: token(nbf=int(time.time()) + 3600), "unauthorized", id="not-yet-valid"),
    pytest.param(lambda: token(aud="someone-else"), "unauthorized", id="audience"),
]


@pytest.mark.parametrize(("bad", "code"), REFUSED)
async def test_a_bad_token_in_an_auth_message_is_refused_and_closed(
    server: Server, bad: Callable[[], str], code: str
) -> None:
    async with client(server) as c:
        await c.send({"type": "auth", "token": bad()})
        close_code, received = await closed_with(c)
    assert [m["code"] for m in received] == [code]
    assert close_code == (4002 if code == "token_expired" else 4001)


@pytest.mark.parametrize(("bad", "code"), REFUSED[:2] + REFUSED[3:4])
async def test_a_bad_token_on_the_upgrade_request_is_refused(
    server: Server, bad: Callable[[], str], code: str
) -> None:
    headers = {"Authorization": f"Bearer {bad()}"}
    async with connect(server.ws_url, additional_headers=headers) as ws:
        close_code, received = await closed_with(Client(ws))
    assert [m["code"] for m in received] == [code]
    assert close_code in (4001, 4002)


async def test_no_token_closes_after_the_auth_timeout(database_url: str) -> None:
    async with running_server(database_url, **AUTH, auth_timeout=0.5) as server:
        async with client(server) as c:
            reply = await c.request({"type": "subscribe", "table_id": "A"})
            assert reply["code"] == "unauthorized"
            assert await c.request({"type": "ping"}) == {"type": "pong", "ref": 2}
            close_code, received = await closed_with(c)
        assert close_code == 4001
        assert [m["code"] for m in received] == ["unauthorized"]


@pytest.mark.parametrize("where", ["message", "header", "query"])
async def test_a_good_token_from_anywhere_grants_its_tables(
    server: Server, db: asyncpg.Connection, where: str
) -> None:
    good = token(["A"])
    if where == "message":
        context = client(server)
    elif where == "header":
        context = client(server, additional_headers={"Authorization": f"Bearer {good}"})
    else:
        context = connect(f"{server.ws_url}?access_token={good}")  # type: ignore[assignment]
    async with context as opened:
        c = opened if isinstance(opened, Client) else Client(opened)
        if where == "message":
            reply = await authenticate(c, good)
        else:
            # A token from the upgrade request is answered too, without a ref.
            reply = await c.recv()
            assert reply["ref"] is None
        assert reply["type"] == "authenticated"
        assert reply["expires_at"] > time.time()
        await c.subscribe("A")
        await db.execute("INSERT INTO rows (id, table_id) VALUES ('a1', 'A')")
        assert (await c.changes(1))[0]["row"]["id"] == "a1"


async def test_nothing_of_a_forbidden_table_ever_arrives(
    server: Server, db: asyncpg.Connection, database_url: str
) -> None:
    await db.execute(
        "INSERT INTO rows (id, table_id) SELECT 'b' || g, 'B' FROM generate_series(1, 20) g"
    )
    stop = asyncio.Event()

    async def write_b() -> None:
        writer = await asyncpg.connect(database_url)
        try:
            n = 0
            while not stop.is_set():
                await writer.execute(
                    "UPDATE rows SET data = $1::jsonb WHERE table_id = 'B'", json.dumps({"n": n})
                )
                n += 1
        finally:
            await writer.close()

    writing = asyncio.create_task(write_b())
    try:
        async with client(server) as c:
            await authenticate(c, token(["A"]))
            for options in ({}, {"snapshot": True}, {"cursor": "v1:1:2:3:3:"}):
                reply = await c.request({"type": "subscribe", "table_id": "B", **options})
                assert reply["type"] == "error"
                assert reply["code"] == "forbidden"
                assert reply["table_id"] == "B"
            await c.subscribe("A")
            await db.execute("INSERT INTO rows (id, table_id) VALUES ('a1', 'A')")
            await asyncio.sleep(seconds(0.5))
            stop.set()
            await db.execute("INSERT INTO rows (id, table_id) VALUES ('a2', 'A')")
            received = await c.changes(2)
            assert {m["table_id"] for m in received} == {"A"}
            await c.assert_silent()
    finally:
        stop.set()
        await writing


async def test_a_wildcard_grants_every_table(server: Server) -> None:
    for grant in ("*", ["*"]):
        async with client(server) as c:
            await authenticate(c, token(grant))
            await c.subscribe("anything")


async def test_refreshing_extends_and_a_narrower_token_ends_subscriptions(
    server: Server, db: asyncpg.Connection
) -> None:
    async with client(server) as c:
        await authenticate(c, token(["A", "B"], expires_in=1.5))
        await c.subscribe("A")
        await c.subscribe("B")
        refreshed = await authenticate(c, token(["A"], expires_in=300))
        assert refreshed["type"] == "authenticated"
        ended = await c.recv()
        assert ended["code"] == "forbidden"
        assert ended["table_id"] == "B"
        await asyncio.sleep(seconds(3))  # past the first token's expiry (2.5 s at most)
        await db.execute("INSERT INTO rows (id, table_id) VALUES ('a', 'A'), ('b', 'B')")
        assert [m["row"]["id"] for m in await c.changes(1)] == ["a"]
        await c.assert_silent()


async def test_expiry_without_a_fresh_token_closes_with_4002(server: Server) -> None:
    async with client(server) as c:
        await authenticate(c, token(["A"], expires_in=1))
        await c.subscribe("A")
        close_code, received = await closed_with(c)
    assert close_code == 4002
    assert received[-1]["code"] == "token_expired"


async def test_the_sql_authorizer_allows_denies_and_survives_its_errors(
    database_url: str, db: asyncpg.Connection
) -> None:
    await db.execute(
        """
        CREATE FUNCTION broadcaster_authorize(claims jsonb, table_id text) RETURNS boolean
        LANGUAGE plpgsql AS $$
        BEGIN
            -- Session state left behind must not reach the server's reads,
            -- nor the next call (which names the function unqualified).
            PERFORM set_config('search_path', 'pg_catalog', false);
            IF table_id = 'boom' THEN
                RAISE EXCEPTION 'authorizer failure';
            END IF;
            RETURN table_id = 'team-' || (claims ->> 'sub');
        END
        $$
        """
    )
    async with (
        running_server(database_url, **AUTH, authorizer="broadcaster_authorize") as server,
        client(server) as c,
    ):
        await authenticate(c, token(None, sub="red"))
        await c.subscribe("team-red")
        for table_id in ("team-blue", "boom"):
            reply = await c.request({"type": "subscribe", "table_id": table_id})
            assert reply["code"] == "forbidden"
        await db.execute("INSERT INTO rows (id, table_id) VALUES ('r', 'team-red')")
        assert (await c.changes(1))[0]["row"]["id"] == "r"


async def test_a_disallowed_origin_is_refused(database_url: str) -> None:
    async with running_server(database_url, allowed_origins="https://app.example") as server:
        with pytest.raises(InvalidStatus) as refused:
            async with connect(server.ws_url, origin="https://evil.example"):  # type: ignore[arg-type]
                pass
        assert refused.value.response.status_code == 403
        async with connect(server.ws_url, origin="https://app.example"):  # type: ignore[arg-type]
            pass
        async with client(server):  # no Origin: not a browser
            pass


async def test_connections_over_the_limit_are_refused(database_url: str) -> None:
    async with (
        running_server(database_url, max_connections=2) as server,
        client(server),
        client(server) as second,
    ):
        with pytest.raises(InvalidStatus) as refused:
            async with client(server):
                pass
        assert refused.value.response.status_code == 503
        assert await second.request({"type": "ping"}) == {"type": "pong", "ref": 1}


async def test_a_message_flood_is_rate_limited_then_cut_off(
    database_url: str, db: asyncpg.Connection
) -> None:
    async with (
        running_server(database_url, max_messages_per_second=10, max_errors=5) as server,
        client(server) as witness,
        client(server) as flooder,
    ):
        await witness.subscribe("A")
        for ref in range(200):
            try:
                await flooder.connection.send(json.dumps({"type": "ping", "ref": ref}))
            except ConnectionClosed:
                break
        close_code, received = await closed_with(flooder)
        assert close_code == 4003
        assert "rate_limited" in {m.get("code") for m in received}
        await db.execute("INSERT INTO rows (id, table_id) VALUES ('still', 'A')")
        assert (await witness.changes(1))[0]["row"]["id"] == "still"


async def test_a_slow_handshake_is_cut_off(database_url: str) -> None:
    async with running_server(database_url, handshake_timeout=0.5) as server:
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        writer.write(b"GET /ws HTTP/1.1\r\nHost: x\r\n")  # never finished
        assert await within(reader.read(), 5) == b""
        writer.close()
