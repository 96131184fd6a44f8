"""A Python client for the native protocol: change streams and live tables.

One :class:`Client` holds one WebSocket connection and any number of
subscriptions on it, reconnects with capped, jittered exponential backoff when
the connection drops, and resubscribes every table from the last cursor it saw,
so nothing committed while it was away is missed. Changes not newer than what a
subscription already delivered for that row are dropped, so a resume never
delivers the same row version twice. ``docs/clients.md`` has the details.

Two ways to consume a table::

    import asyncio

    from broadcaster.client import Change, Reset, connect


    async def main() -> None:
        async with connect("ws://127.0.0.1:8000/ws") as client:
            # 1. A live view: the table's rows, kept up to date.
            table = await client.table("t1")  # returns once the snapshot is in
            print(len(table.rows), table.get("r1"))
            row = await table.wait_for_row("r2", lambda row: row["data"].get("done"), timeout=5)

            # 2. A stream of changes, e.g. for a worker; here of a published
            #    table's rows whose room_id is 5.
            async for event in client.subscribe(
                "public.messages", snapshot=True, filter="room_id=eq.5"
            ):
                if isinstance(event, Reset):
                    ...  # drop what you hold: the table's snapshot follows
                elif event.op == "DELETE":
                    ...  # the row keyed event.id was deleted
                else:
                    ...  # event.row is the row's new state (event.version)


    asyncio.run(main())

Leaving ``async with`` closes the connection and ends every iterator; leaving
an ``async for`` (``break``, an exception) or calling
:meth:`Subscription.aclose` unsubscribes from that table.

Exceptions, all under :class:`broadcaster.exceptions.BroadcasterError`::

    ClientError                     anything the client raises on purpose
    ├── ConnectError                the first connection could not be opened
    ├── ClientClosedError           the client, or this subscription, is closed
    ├── SlowConsumerError           a subscription's queue overflowed where no
    │                               cursor can resume it (see docs/clients.md)
    └── SubscriptionError           the server refused a subscribe, or ended a
        │                           subscription (``forbidden``); ``code`` is
        │                           the protocol's error code
        ├── TooManySubscriptionsError   code ``too_many_subscriptions``
        └── BadFilterError              code ``bad_filter``

Import everything from here: the modules of this package (``_client``,
``_connection``, ``_core``, ``_stream``, ``_subscription``, ``_table``,
``_events``, ``_errors``) are private. :class:`Backoff` is the package's one
backoff, :class:`broadcaster.core.backoff.Backoff`.
"""

from __future__ import annotations

from ..core.backoff import Backoff
from ._client import DEFAULT_QUEUE_SIZE, Client, connect
from ._connection import Token
from ._errors import (
    BadFilterError,
    ClientClosedError,
    ClientError,
    ConnectError,
    SlowConsumerError,
    SubscriptionError,
    TooManySubscriptionsError,
)
from ._events import INTERRUPTED, Change, Event, Op, Reset
from ._subscription import Subscription
from ._table import Table

__all__ = [
    "DEFAULT_QUEUE_SIZE",
    "INTERRUPTED",
    "Backoff",
    "BadFilterError",
    "Change",
    "Client",
    "ClientClosedError",
    "ClientError",
    "ConnectError",
    "Event",
    "Op",
    "Reset",
    "SlowConsumerError",
    "Subscription",
    "SubscriptionError",
    "Table",
    "Token",
    "TooManySubscriptionsError",
    "connect",
]
