"""Broadcast and presence on the native protocol, between two server processes."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any
from unittest.mock import ANY

import pytest

from broadcaster.core import broadcasts, presence
from broadcaster.net.server import Server
from tests.support.server import Client, client, running_server
from tests.support.timeouts import seconds

pytestmark = pytest.mark.asyncio


@pytest.fixture
async def servers(database_url: str) -> AsyncIterator[tuple[Server, Server]]:
    async with running_server(database_url) as one, running_server(database_url) as two:
        yield one, two


async def exchange(c: Client, message: dict[str, object], *kinds: str) -> dict[str, Any]:
    """Send ``message``; collect one message of each kind, in whatever order they come.

    The reply (sent, tracked) and what the request caused (the echoed
    broadcast, the presence diff) travel different paths.
    """
    await c.send(message)
    found: dict[str, Any] = {}
    while set(kinds) - set(found):
        received = await c.recv(10)
        if received["type"] in kinds:
            found[received["type"]] = received
    return found


async def next_of(c: Client, kind: str) -> dict[str, object]:
    while True:
        message = await c.recv(10)
        if message["type"] == kind:
            return dict(message)


async def test_a_broadcast_reaches_the_others_on_any_process(
    servers: tuple[Server, Server],
) -> None:
    one, two = servers
    async with client(one) as a, client(two) as b, client(two) as elsewhere:
        await a.subscribe("t1")
        await b.subscribe("t1")
        await elsewhere.subscribe("t2")
        reply = await a.request(
            {"type": "broadcast", "table_id": "t1", "event": "cursor", "payload": {"x": 1}}
        )
        assert reply == {"type": "sent", "ref": reply["ref"], "table_id": "t1"}
        heard = await next_of(b, "broadcast")
        assert heard == {
            "type": "broadcast",
            "table_id": "t1",
            "event": "cursor",
            "payload": {"x": 1},
        }
        await a.assert_silent()
        await elsewhere.assert_silent()
        echoed = await exchange(
            a,
            {"type": "broadcast", "table_id": "t1", "event": "e", "payload": 2, "self": True},
            "sent",
            "broadcast",
        )
        assert echoed["broadcast"]["payload"] == 2


async def test_broadcast_and_track_need_a_subscription(servers: tuple[Server, Server]) -> None:
    one, _ = servers
    async with client(one) as c:
        for message in (
            {"type": "broadcast", "table_id": "t9", "event": "e"},
            {"type": "track", "table_id": "t9", "meta": {}},
        ):
            reply = await c.request(message)
            assert reply["code"] == "not_subscribed"
        await c.subscribe("t9")
        reply = await c.request(
            {"type": "broadcast", "table_id": "t9", "event": "e", "payload": "x" * 9000}
        )
        assert reply["code"] == "too_large"


async def test_presence_state_joins_and_leaves_across_processes(
    servers: tuple[Server, Server],
) -> None:
    one, two = servers
    async with client(one) as a:
        await a.subscribe("t1", presence=True)
        assert (await next_of(a, "presence_state"))["presences"] == {}
        tracked = await exchange(
            a,
            {"type": "track", "table_id": "t1", "key": "ada", "meta": {"name": "Ada"}},
            "tracked",
            "presence_diff",
        )
        assert list(tracked["presence_diff"]["joins"]) == ["ada"]

        async with client(two) as b:
            await b.subscribe("t1", presence=True)
            state = await next_of(b, "presence_state")
            metas = state["presences"]["ada"]["metas"]  # type: ignore[index]
            assert metas[0]["name"] == "Ada"
            await exchange(
                b, {"type": "track", "table_id": "t1", "key": "bob", "meta": {}}, "tracked"
            )
            assert list((await next_of(a, "presence_diff"))["joins"]) == ["bob"]  # type: ignore[call-overload]
        # B's connection closed: A sees Bob leave.
        left = await next_of(a, "presence_diff")
        assert list(left["leaves"]) == ["bob"]  # type: ignore[call-overload]
        await asyncio.sleep(seconds(0.1))


async def test_the_largest_broadcast_a_client_may_send_reaches_the_other_process(
    servers: tuple[Server, Server],
) -> None:
    # A broadcast travels as one NOTIFY, whose payload Postgres caps at 8000
    # bytes. Echoed to its sender ("self"), its origin is empty, so the size of
    # its NOTIFY payload is known here; one byte more must be refused.
    one, two = servers
    room = broadcasts.MAX_PAYLOAD_BYTES - len(broadcasts.encode("native:t1", "e", "", "").encode())
    largest = "é" * (room // 2) + "x" * (room % 2)  # bytes count, not characters
    message = {"type": "broadcast", "table_id": "t1", "event": "e", "self": True}
    async with client(one) as a, client(two) as b:
        await a.subscribe("t1")
        await b.subscribe("t1")
        refused = await a.request({**message, "payload": largest + "x"})
        assert refused["code"] == "too_large"
        echoed = await exchange(a, {**message, "payload": largest}, "sent", "broadcast")
        assert echoed["broadcast"]["payload"] == largest
        assert (await next_of(b, "broadcast"))["payload"] == largest


async def test_the_largest_meta_a_client_may_track_reaches_the_other_process(
    servers: tuple[Server, Server],
) -> None:
    # A track is announced by NOTIFY too, its meta inside; one byte more must
    # be refused.
    one, two = servers
    blob = "x" * (presence.MAX_META_BYTES - len(json.dumps({"blob": ""})))
    track = {"type": "track", "table_id": "t1", "key": "ada"}
    async with client(one) as a, client(two) as b:
        await a.subscribe("t1", presence=True)
        await b.subscribe("t1", presence=True)
        await next_of(a, "presence_state")
        refused = await a.request({**track, "meta": {"blob": blob + "x"}})
        assert refused["code"] == "too_large"
        await exchange(a, {**track, "meta": {"blob": blob}}, "tracked", "presence_diff")
        joined = await next_of(b, "presence_diff")
        assert joined["joins"] == {"ada": {"metas": [{"blob": blob, "phx_ref": ANY}]}}


async def test_the_largest_meta_may_be_tracked_again(servers: tuple[Server, Server]) -> None:
    # A re-track announces the old meta leaving beside the new one joining:
    # two of the largest metas do not fit one NOTIFY.
    one, two = servers
    blob = "x" * (presence.MAX_META_BYTES - len(json.dumps({"blob": ""})))
    track = {"type": "track", "table_id": "t1", "key": "ada"}
    async with client(one) as a, client(two) as b:
        await a.subscribe("t1", presence=True)
        await b.subscribe("t1", presence=True)
        await next_of(a, "presence_state")
        await exchange(a, {**track, "meta": {"blob": blob}}, "tracked", "presence_diff")
        tracked: Any = await next_of(b, "presence_diff")
        (first,) = tracked["joins"]["ada"]["metas"]
        again = {"blob": blob[:-1] + "y"}
        await exchange(a, {**track, "meta": again}, "tracked", "presence_diff")
        joined = await next_of(b, "presence_diff")
        left = await next_of(b, "presence_diff")
        assert joined == {
            "type": "presence_diff",
            "table_id": "t1",
            "joins": {"ada": {"metas": [{**again, "phx_ref": ANY}]}},
            "leaves": {},
        }
        assert left["joins"] == {}
        assert left["leaves"] == {"ada": {"metas": [{"blob": blob, "phx_ref": first["phx_ref"]}]}}
