"""broadcaster.client against a real server and Postgres."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest

from broadcaster.client import (
    Backoff,
    BadFilterError,
    Change,
    Client,
    ClientClosedError,
    ClientError,
    Event,
    Reset,
    Subscription,
    SubscriptionError,
    Table,
    TooManySubscriptionsError,
    connect,
)
from broadcaster.net.server import Server
from broadcaster.postgres.publishing import publish
from tests.support.server import running_server
from tests.support.timeouts import eventually, seconds, within
from tests.support.view import Rows, database_rows

pytestmark = pytest.mark.asyncio

FAST = Backoff(initial=0.05, maximum=0.5)


@pytest.fixture
async def server(database_url: str) -> AsyncIterator[Server]:
    async with running_server(database_url) as s:
        yield s


@pytest.fixture
async def db(database_url: str) -> AsyncIterator[asyncpg.Connection]:
    connection = await asyncpg.connect(database_url)
    yield connection
    await connection.close()


def client_for(server: Server, **options: Any) -> Client:
    return connect(
        server.ws_url,
        backoff=FAST,
        connect_timeout=seconds(10),
        open_timeout=seconds(5),
        close_timeout=seconds(2),
        **options,
    )


async def take(subscription: Subscription, count: int, units: float = 10) -> list[Event]:
    """The next ``count`` events, within ``units``."""

    async def collect() -> list[Event]:
        return [await anext(subscription) for _ in range(count)]

    return await within(collect(), units)


def changes(events: list[Event]) -> list[Change]:
    assert all(isinstance(event, Change) for event in events), events
    return [event for event in events if isinstance(event, Change)]


def view_rows(table: Table) -> Rows:
    """A view's rows in the shape tests.support.view.database_rows returns."""
    return {row_id: (row["data"], row["enriching_columns"]) for row_id, row in table.rows.items()}


async def converged(table: Table, db: asyncpg.Connection, units: float = 20) -> None:
    """Wait until the view equals ``SELECT ... FROM rows`` for its table."""

    async def check() -> bool:
        return view_rows(table) == await database_rows(db, table.table_id)

    try:
        await eventually(check, units, interval=0.05)
    except TimeoutError:
        want = await database_rows(db, table.table_id)
        raise AssertionError(f"view {view_rows(table)} != database {want}") from None


async def test_live_insert_update_delete(server: Server, db: asyncpg.Connection) -> None:
    async with client_for(server) as client:
        subscription = client.subscribe("t1")
        await within(subscription.wait_synced())
        table = await within(client.table("t2"))
        # Each write waits for the one before: the server sends a row's latest
        # state, so changes made between two of its reads arrive as one.
        await db.execute("INSERT INTO rows (id, table_id, data) VALUES ('r', 't1', '{\"n\": 1}')")
        (inserted,) = changes(await take(subscription, 1))
        await db.execute("UPDATE rows SET data = '{\"n\": 2}' WHERE id = 'r'")
        (updated,) = changes(await take(subscription, 1))
        await db.execute("DELETE FROM rows WHERE id = 'r'")
        (deleted,) = changes(await take(subscription, 1))
        assert (inserted.op, updated.op, deleted.op) == ("INSERT", "UPDATE", "DELETE")
        assert {c.table_id for c in (inserted, updated, deleted)} == {"t1"}
        assert {c.id for c in (inserted, updated, deleted)} == {"r"}
        assert inserted.row["data"] == {"n": 1}
        assert updated.row["data"] == {"n": 2}
        assert inserted.version < updated.version < deleted.version
        assert deleted.row["version"] == deleted.version
        assert all(c.cursor is not None for c in (inserted, updated, deleted))
        assert subscription.cursor == deleted.cursor

        # The view of another table saw none of it, then sees its own rows.
        assert table.rows == {}
        await db.execute("INSERT INTO rows (id, table_id, data) VALUES ('s', 't2', '{}')")
        row = await table.wait_for_row("s", timeout=seconds(10))
        assert row["table_id"] == "t2"
        await db.execute("UPDATE rows SET data = '{\"done\": true}' WHERE id = 's'")
        await table.wait_for_row("s", lambda r: r["data"].get("done"), timeout=seconds(10))
        await db.execute("DELETE FROM rows WHERE id = 's'")
        await table.wait_for(lambda t: "s" not in t, timeout=seconds(10))
        await converged(table, db)


async def test_snapshot_then_live(server: Server, db: asyncpg.Connection) -> None:
    await db.execute(
        "INSERT INTO rows (id, table_id, data) "
        "SELECT 'r' || g, 't1', jsonb_build_object('n', g) FROM generate_series(1, 700) g"
    )
    async with client_for(server) as client:
        subscription = client.subscribe("t1", snapshot=True)
        snapshot = changes(await take(subscription, 700))
        assert {c.op for c in snapshot} == {"INSERT"}
        assert {c.cursor for c in snapshot} == {None}
        assert {c.id for c in snapshot} == {f"r{n}" for n in range(1, 701)}
        await within(subscription.wait_synced())
        assert subscription.cursor is not None
        await db.execute("UPDATE rows SET data = '{\"n\": 0}' WHERE id = 'r1'")
        (live,) = changes(await take(subscription, 1))
        assert (live.op, live.id, live.row["data"]) == ("UPDATE", "r1", {"n": 0})
        assert live.cursor is not None

        # One subscription per table and client: the stream makes way for a view.
        await subscription.aclose()
        table = await within(client.table("t1"))
        assert table.synced
        assert table.cursor is not None
        assert len(table) == 700
        await converged(table, db)
        await db.execute("INSERT INTO rows (id, table_id) VALUES ('new', 't1')")
        await table.wait_for_row("new", timeout=seconds(10))
        await converged(table, db)


async def test_resume_after_a_server_restart_converges(
    database_url: str, db: asyncpg.Connection
) -> None:
    await db.execute(
        "INSERT INTO rows (id, table_id, data) "
        "SELECT 'r' || g, 't1', jsonb_build_object('n', g) FROM generate_series(1, 50) g"
    )
    client: Client | None = None
    try:
        async with running_server(database_url) as first:
            port = first.port
            client = client_for(first)
            await client.open()
            table = await within(client.table("t1"))
            subscription = client.subscribe("t1-events", snapshot=True)
            await within(subscription.wait_synced())
            await db.execute("UPDATE rows SET data = '{\"before\": true}' WHERE id = 'r1'")
            await table.wait_for_row("r1", lambda r: r["data"] == {"before": True}, seconds(10))
        # The server is gone (it closed with 1001); writes go on without it.
        await eventually(lambda: not client.connected, 10)
        await db.execute("UPDATE rows SET data = '{\"while\": \"down\"}' WHERE id = 'r2'")
        await db.execute("DELETE FROM rows WHERE id IN ('r3', 'r4', 'r5')")
        await db.execute("INSERT INTO rows (id, table_id) VALUES ('new', 't1'), ('e', 't1-events')")
        await db.execute("UPDATE rows SET table_id = 't1-events' WHERE id = 'r6'")
        async with running_server(database_url, port=port) as second:
            assert second.port == port
            await converged(table, db)
            assert client.connections == 2
            assert table.resets == []
            assert "r3" not in table
            assert table.get("r3") is None
            # The stream missed nothing either: the catch-up brought both rows.
            arrived = changes(await take(subscription, 2))
            assert {(c.op, c.id) for c in arrived} == {("INSERT", "e"), ("INSERT", "r6")}
            assert all(c.cursor is None for c in arrived)
            # And both are live again.
            await db.execute("DELETE FROM rows WHERE id = 'e'")
            (deleted,) = changes(await take(subscription, 1))
            assert (deleted.op, deleted.id) == ("DELETE", "e")
            await db.execute("UPDATE rows SET data = '{\"after\": true}' WHERE id = 'r7'")
            await converged(table, db)
    finally:
        if client is not None:
            await client.close()


async def test_a_cursor_that_cannot_be_served_rebuilds_the_view(
    server: Server, db: asyncpg.Connection
) -> None:
    await db.execute("INSERT INTO rows (id, table_id) VALUES ('a', 't1'), ('b', 't1')")
    stale = {"gone": {"id": "gone", "table_id": "t1", "data": {}, "version": 1}}
    async with client_for(server) as client:
        table = await within(client.table("t1", rows=stale, cursor="garbage"))
        assert table.resets == ["malformed_cursor"]
        assert sorted(table.rows) == ["a", "b"]
        await converged(table, db)
        assert table.cursor is not None
        assert table.cursor.startswith("v1:")

        subscription = client.subscribe("t2", cursor="v1:1:2:3:4:")
        (first,) = await take(subscription, 1)
        assert first == Reset("t2", "foreign_cursor")
        await within(subscription.wait_synced())
        assert subscription.queued == 0


async def test_versions_already_held_are_dropped(server: Server, db: asyncpg.Connection) -> None:
    async with client_for(server) as client:
        async with client.subscribe("t1") as before:
            await within(before.wait_synced())
            old_cursor = before.cursor
        await db.execute("INSERT INTO rows (id, table_id, data) VALUES ('r1', 't1', '{}')")
        await db.execute("INSERT INTO rows (id, table_id, data) VALUES ('r2', 't1', '{}')")
        held = await db.fetch(
            "SELECT id, max(seq) AS version FROM broadcaster_changes"
            " WHERE table_id = 't1' GROUP BY id"
        )
        # A view saved after both inserts, but with the cursor from before them:
        # the catch-up re-sends r1 and r2 at the versions it already holds.
        seeded = {
            r["id"]: {
                "id": r["id"],
                "table_id": "t1",
                "data": {"seeded": True},
                "version": r["version"],
            }
            for r in held
        }
        table = await within(client.table("t1", rows=seeded, cursor=old_cursor))
        assert table.resets == []
        assert {row_id: row["data"] for row_id, row in table.rows.items()} == {
            "r1": {"seeded": True},
            "r2": {"seeded": True},
        }
        # A newer version is taken.
        await db.execute("UPDATE rows SET data = '{\"n\": 1}' WHERE id = 'r1'")
        await table.wait_for_row("r1", lambda r: r["data"] == {"n": 1}, seconds(10))


async def test_a_full_queue_pauses_and_resumes_without_loss_or_duplicates(
    server: Server, db: asyncpg.Connection
) -> None:
    async with client_for(server) as client:
        subscription = client.subscribe("t1", queue_size=3)
        await within(subscription.wait_synced())
        # One transaction: one batch of 40 changes in one frame, far more than fits.
        await db.execute(
            "INSERT INTO rows (id, table_id) SELECT 'r' || g, 't1' FROM generate_series(1, 40) g"
        )
        await eventually(lambda: subscription.queued == 3, 10)
        events = changes(await take(subscription, 40, units=20))
        assert sorted(c.id for c in events) == sorted(f"r{n}" for n in range(1, 41))
        # Then live again, from the cursor it resumed with.
        await db.execute("UPDATE rows SET data = '{\"x\": 1}' WHERE id = 'r7'")
        (update,) = changes(await take(subscription, 1))
        assert (update.op, update.id) == ("UPDATE", "r7")
        assert update.cursor is not None
        await asyncio.sleep(seconds(0.3))
        assert subscription.queued == 0
        # Its cursor covers everything yielded: resuming from it brings nothing old.
        resumed_cursor = subscription.cursor
        await subscription.aclose()
        async with client.subscribe("t1", cursor=resumed_cursor) as again:
            await within(again.wait_synced())
            assert again.queued == 0


async def test_breaking_out_of_async_for_unsubscribes(
    database_url: str, db: asyncpg.Connection
) -> None:
    async with (
        running_server(database_url, max_subscriptions=1) as server,
        client_for(server) as client,
    ):

        async def first_change() -> Event:
            async for event in client.subscribe("t1"):
                return event
            raise AssertionError("the subscription ended")

        consumer = asyncio.create_task(first_change())
        await eventually(lambda: "t1" in client.subscriptions and client.subscriptions["t1"].synced)
        await db.execute("INSERT INTO rows (id, table_id) VALUES ('r', 't1')")
        event = await within(consumer)
        assert isinstance(event, Change)
        assert event.id == "r"
        await eventually(lambda: "t1" not in client.subscriptions)
        # The server let go of t1: the one subscription it allows is free again.
        table = await within(client.table("t2"))
        assert table.synced


async def test_too_many_subscriptions_raises_a_typed_error(
    database_url: str, db: asyncpg.Connection
) -> None:
    async with (
        running_server(database_url, max_subscriptions=1) as server,
        client_for(server) as client,
    ):
        table = await within(client.table("t1"))
        with pytest.raises(TooManySubscriptionsError) as raised:
            await within(client.table("t2"))
        assert raised.value.code == "too_many_subscriptions"
        assert raised.value.table_id == "t2"
        assert "t2" not in client.subscriptions

        subscription = client.subscribe("t3")
        with pytest.raises(SubscriptionError):
            await within(anext(subscription))
        assert subscription.closed

        # The subscription that was accepted carries on.
        await db.execute("INSERT INTO rows (id, table_id) VALUES ('r', 't1')")
        await table.wait_for_row("r", timeout=seconds(10))


async def test_leaving_the_client_ends_iterators_and_closes_cleanly(server: Server) -> None:
    received: list[Event] = []

    async def consume(subscription: Subscription) -> str:
        async for event in subscription:
            received.append(event)
        return "ended"

    async with client_for(server) as client:
        subscription = client.subscribe("t1")
        await within(subscription.wait_synced())
        consumer = asyncio.create_task(consume(subscription))
        await asyncio.sleep(0)
        table = await within(client.table("t2"))
    assert await within(consumer) == "ended"
    assert received == []
    assert client.closed
    assert not client.connected
    assert subscription.closed
    assert table.closed
    with pytest.raises(ClientClosedError):
        await table.wait_for(lambda t: False, timeout=seconds(1))


async def test_rows_moving_between_tables_and_json_in_data(
    server: Server, db: asyncpg.Connection
) -> None:
    async with client_for(server) as client:
        left = await within(client.table("left"))
        right = await within(client.table("right"))
        data = {"text": "é ü \u2603", "nested": [1, {"a": None}]}
        await db.execute(
            "INSERT INTO rows (id, table_id, data) VALUES ('r', 'left', $1::jsonb)",
            json.dumps(data),
        )
        assert (await left.wait_for_row("r", timeout=seconds(10)))["data"] == data
        await db.execute("UPDATE rows SET table_id = 'right' WHERE id = 'r'")
        await right.wait_for_row("r", timeout=seconds(10))
        await left.wait_for(lambda t: "r" not in t, timeout=seconds(10))
        await converged(left, db)
        await converged(right, db)


# Tokens


SECRET = "client-test-secret-of-at-least-32-bytes"


def jwt_for(tables: list[str], expires_in: float) -> str:
    import time

    import jwt

    claims = {"table_ids": tables, "exp": int(time.time() + expires_in)}
    return jwt.encode(claims, SECRET, algorithm="HS256")


async def test_a_token_is_sent_and_refreshed_before_it_expires(
    database_url: str, db: asyncpg.Connection
) -> None:
    issued: list[str] = []

    async def fresh_token() -> str:
        issued.append(jwt_for(["t1"], expires_in=4))
        return issued[-1]

    async with (
        running_server(database_url, auth="jwt", jwt_secret=SECRET) as server,
        client_for(server, token=fresh_token, refresh_margin=2) as c,
    ):
        table = await c.table("t1")
        # Past the first token's expiry: the refreshed one keeps the connection.
        await asyncio.sleep(seconds(5))
        await db.execute("INSERT INTO rows (id, table_id) VALUES ('late', 't1')")
        await within(table.wait_for_row("late", lambda row: True, timeout=seconds(10)))
        assert len(issued) >= 2
        assert c.connections == 1


async def test_a_refused_static_token_ends_the_client(database_url: str) -> None:
    async with running_server(database_url, auth="jwt", jwt_secret=SECRET) as server:
        c = client_for(server, token="not-a-jwt")
        with pytest.raises(ClientError, match="refused the token"):
            await within(c.open(), 10)
        await c.close()


async def test_a_table_the_token_does_not_grant_is_a_subscription_error(
    database_url: str,
) -> None:
    async with (
        running_server(database_url, auth="jwt", jwt_secret=SECRET) as server,
        client_for(server, token=jwt_for(["t1"], expires_in=300)) as c,
    ):
        with pytest.raises(SubscriptionError) as refused:
            await c.table("t2")
        assert refused.value.code == "forbidden"
        await c.table("t1")


# A published table keyed by two columns, with an ordinary column named id:
# rows are keyed by the key the server sends ("[5, 1]"), never by row["id"].
MESSAGES = "public.messages"
ROOM_5 = "room_id=eq.5"


@pytest.fixture
async def messages(db: asyncpg.Connection) -> asyncpg.Connection:
    await db.execute(
        "CREATE TABLE messages (room_id int, seq int, id int, body text,"
        " PRIMARY KEY (room_id, seq))"
    )
    await publish(db, MESSAGES)
    await db.execute(
        "INSERT INTO messages VALUES (5, 1, 100, 'a'), (5, 2, 101, 'b'), (6, 1, 102, 'c')"
    )
    return db


async def messages_rows(db: asyncpg.Connection, where: str = "true") -> dict[str, Any]:
    """The table's rows keyed as the server keys them, as to_jsonb writes them."""
    records = await db.fetch(
        "SELECT jsonb_build_array(room_id, seq)::text AS key, to_jsonb(m)::text AS row"
        f" FROM messages AS m WHERE {where}"
    )
    return {r["key"]: json.loads(r["row"]) for r in records}


def columns(table: Table) -> dict[str, Any]:
    """A view's rows without the version the server adds."""
    return {
        key: {name: value for name, value in row.items() if name != "version"}
        for key, row in table.rows.items()
    }


async def same_rows(table: Table, db: asyncpg.Connection, where: str = "true") -> None:
    async def check() -> bool:
        return columns(table) == await messages_rows(db, where)

    try:
        await eventually(check, 20, interval=0.05)
    except TimeoutError:
        want = await messages_rows(db, where)
        raise AssertionError(f"view {columns(table)} != database {want}") from None


async def test_a_published_table_whole_and_by_a_columns_value(
    server: Server, messages: asyncpg.Connection
) -> None:
    async with client_for(server) as one, client_for(server) as other:
        whole = await within(one.table(MESSAGES))
        room = await within(other.table(MESSAGES, filter=ROOM_5))
        assert sorted(whole.rows) == ["[5, 1]", "[5, 2]", "[6, 1]"]
        assert room.rows == {
            "[5, 1]": {"room_id": 5, "seq": 1, "id": 100, "body": "a", "version": 0},
            "[5, 2]": {"room_id": 5, "seq": 2, "id": 101, "body": "b", "version": 0},
        }
        await messages.execute("UPDATE messages SET body = 'edited' WHERE seq = 1")
        await messages.execute("INSERT INTO messages VALUES (5, 3, 103, 'd'), (6, 2, 104, 'e')")
        await messages.execute("DELETE FROM messages WHERE (room_id, seq) = (5, 2)")
        await same_rows(whole, messages)
        await same_rows(room, messages, "room_id = 5")
        assert room.get("[5, 1]") is not None
        assert room.rows["[5, 1]"]["version"] == whole.rows["[5, 1]"]["version"] > 0


async def test_a_filtered_subscription_resumes_with_its_filter(
    database_url: str, messages: asyncpg.Connection
) -> None:
    client: Client | None = None
    try:
        async with running_server(database_url) as first:
            port = first.port
            client = client_for(first)
            await client.open()
            subscription = client.subscribe(MESSAGES, snapshot=True, filter=ROOM_5)
            loaded = changes(await take(subscription, 2))
            assert {(c.op, c.id, c.version) for c in loaded} == {
                ("INSERT", "[5, 1]", 0),
                ("INSERT", "[5, 2]", 0),
            }
            await messages.execute(
                "UPDATE messages SET body = 'live' WHERE (room_id, seq) = (5, 2)"
            )
            (live,) = changes(await take(subscription, 1))
            assert (live.op, live.id, live.row["body"], live.old) == (
                "UPDATE",
                "[5, 2]",
                "live",
                {"room_id": 5, "seq": 2, "id": 101, "body": "b"},
            )
        # The server is gone; writes go on without it.
        await eventually(lambda: not client.connected, 10)
        await messages.execute("UPDATE messages SET body = 'while down' WHERE seq = 1")
        await messages.execute("INSERT INTO messages VALUES (5, 3, 103, 'd'), (6, 2, 104, 'e')")
        await messages.execute("DELETE FROM messages WHERE (room_id, seq) = (5, 2)")
        async with running_server(database_url, port=port) as second:
            # Caught up from the cursor, through the filter: room 6 stays out.
            arrived = changes(await take(subscription, 3))
            assert sorted((c.op, c.id) for c in arrived) == [
                ("DELETE", "[5, 2]"),
                ("INSERT", "[5, 3]"),
                ("UPDATE", "[5, 1]"),
            ]
            assert all(c.cursor is None for c in arrived)
            (deleted,) = [c for c in arrived if c.op == "DELETE"]
            assert deleted.row == {"id": "[5, 2]", "table_id": MESSAGES, "version": deleted.version}
            # Synced: the cursor covers the catch-up, all of it yielded.
            await eventually(lambda: subscription.synced, 10)
            saved = subscription.cursor
            await client.close()

            # Another client, from the saved cursor: only what changed since.
            await messages.execute("INSERT INTO messages VALUES (6, 3, 105, 'f'), (5, 4, 106, 'g')")
            async with client_for(second) as resumed:
                again = resumed.subscribe(MESSAGES, cursor=saved, filter=ROOM_5)
                (caught_up,) = changes(await take(again, 1))
                assert (caught_up.op, caught_up.id, caught_up.row["body"]) == (
                    "INSERT",
                    "[5, 4]",
                    "g",
                )
                await within(again.wait_synced())
                assert again.queued == 0
    finally:
        if client is not None:
            await client.close()


async def test_a_refused_filter_is_a_bad_filter_error(
    server: Server, messages: asyncpg.Connection
) -> None:
    async with client_for(server) as client:
        with pytest.raises(BadFilterError) as unknown:
            await within(client.table(MESSAGES, filter="nope=eq.1"))
        assert (unknown.value.code, unknown.value.table_id) == ("bad_filter", MESSAGES)
        assert "unknown column" in unknown.value.message

        uncast = client.subscribe(MESSAGES, filter="room_id=eq.five")
        with pytest.raises(BadFilterError):
            await within(uncast.wait_synced())
        assert uncast.closed

        with pytest.raises(BadFilterError, match="published"):
            await within(client.table("t1", filter=ROOM_5))

        # The refusals leave the client as it was.
        table = await within(client.table(MESSAGES, filter="room_id=eq.6"))
        assert sorted(table.rows) == ["[6, 1]"]


async def test_a_published_table_with_row_level_security_is_forbidden(
    server: Server, messages: asyncpg.Connection
) -> None:
    await messages.execute("ALTER TABLE messages ENABLE ROW LEVEL SECURITY")
    async with client_for(server) as client:
        with pytest.raises(SubscriptionError) as refused:
            await within(client.table(MESSAGES))
        assert (refused.value.code, refused.value.table_id) == ("forbidden", MESSAGES)
        assert "row-level security" in refused.value.message
