"""The client's public handle: :class:`Client`, and :func:`connect` that makes one.

A :class:`Client` is a :class:`~._connection.Connection` that opens and closes
on request and hands out subscriptions and table views on it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from types import TracebackType
from typing import Any, Final

from ..core.backoff import Backoff
from ._connection import Connection, Token
from ._errors import ClientClosedError, ClientError, ConnectError
from ._subscription import Subscription
from ._table import Table

__all__ = ["DEFAULT_QUEUE_SIZE", "Client", "connect"]

DEFAULT_QUEUE_SIZE: Final = 10_000
"""The default ``queue_size``: events each :class:`Subscription` queues for its reader."""


class Client(Connection):
    """One connection to a broadcaster server and its subscriptions.

    Create it with :func:`connect`; ``async with`` opens it (see
    :meth:`open`) and closes it.
    """

    def __init__(
        self,
        url: str,
        *,
        backoff: Backoff | None = None,
        ping_interval: float | None = 20.0,
        ping_timeout: float = 10.0,
        open_timeout: float | None = 10.0,
        close_timeout: float | None = 5.0,
        connect_timeout: float | None = None,
        queue_size: int = DEFAULT_QUEUE_SIZE,
        max_frame_bytes: int | None = None,
        websocket_options: Mapping[str, Any] | None = None,
        token: Token | None = None,
        refresh_margin: float = 30.0,
    ) -> None:
        super().__init__(
            url,
            backoff=backoff,
            ping_interval=ping_interval,
            ping_timeout=ping_timeout,
            open_timeout=open_timeout,
            close_timeout=close_timeout,
            max_frame_bytes=max_frame_bytes,
            websocket_options=websocket_options,
            token=token,
            refresh_margin=refresh_margin,
        )
        if queue_size < 1:
            raise ValueError("queue_size must be at least 1")
        self.connect_timeout = connect_timeout
        self.queue_size = queue_size

    # Lifecycle.

    @property
    def closed(self) -> bool:
        return self._core.closed

    @property
    def subscriptions(self) -> Mapping[str, Subscription | Table]:
        """The open subscriptions and table views, by table id."""
        return {
            table_id: stream
            for table_id, stream in self._core.streams.items()
            if isinstance(stream, Subscription | Table)
        }

    async def open(self) -> None:
        """Connect; return once the first connection is open.

        Failures that may pass (connection refused, a timeout, HTTP 5xx while
        the server starts) are retried with :attr:`backoff` for up to
        ``connect_timeout`` seconds (``None``: no limit); others (a bad URI,
        HTTP 4xx) raise :class:`ConnectError` at once.
        """
        if self._core.closed:
            raise ClientClosedError("the client is closed")
        if self._task is not None:
            raise ClientError("the client is already open")
        opened = self._start()
        try:
            async with asyncio.timeout(self.connect_timeout):
                await asyncio.shield(opened)
        except TimeoutError:
            await self.close()
            raise ConnectError(
                f"no connection to {self.url} within {self.connect_timeout} seconds"
            ) from None
        except asyncio.CancelledError:
            current = asyncio.current_task()
            if self._closing and current is not None and not current.cancelling():
                # close() was called meanwhile; this task was not cancelled.
                raise ClientClosedError("the client was closed while opening") from None
            await self.close()
            raise
        except BaseException:
            await self.close()
            raise

    async def close(self) -> None:
        """Close the connection (code 1000) and end every subscription."""
        if self._closing:
            return
        await self._stop()
        self._core.close()

    async def __aenter__(self) -> Client:
        await self.open()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    # Subscribing.

    def subscribe(
        self,
        table_id: str,
        *,
        cursor: str | None = None,
        snapshot: bool = False,
        queue_size: int | None = None,
        filter: str | None = None,
    ) -> Subscription:
        """Subscribe to ``table_id``; iterate the result for its changes.

        ``table_id`` is a table_id of ``rows``, or a published table's
        ``schema.table``. With ``snapshot=True`` every row comes first (as
        ``INSERT`` changes); with ``cursor`` (from :attr:`Subscription.cursor`
        or :attr:`Table.cursor`) every change since that cursor does, or a
        :class:`Reset` and every row if the server cannot serve the cursor.
        With neither, only changes committed from now on. ``filter``, on a
        published table only, keeps the rows that pass it (Supabase's grammar:
        ``room_id=eq.5``; ``docs/supabase.md``): snapshot, catch-up and live
        changes alike; it is sent again with every resume. The subscribe is
        sent at once (or when connected); an error answering it (a refused
        filter: :class:`BadFilterError`) is raised by the iterator and by
        :meth:`Subscription.wait_synced`.
        """
        subscription = Subscription(
            self._core,
            table_id,
            cursor=cursor,
            snapshot=snapshot,
            queue_size=self.queue_size if queue_size is None else queue_size,
            filter=filter,
        )
        self._core.add(subscription)
        return subscription

    async def table(
        self,
        table_id: str,
        *,
        rows: Mapping[str, Mapping[str, Any]] | None = None,
        cursor: str | None = None,
        filter: str | None = None,
    ) -> Table:
        """A live view of ``table_id``, returned once its snapshot is in.

        ``filter`` keeps a published table's rows that pass it, as for
        :meth:`subscribe`. To resume a view saved earlier, pass its ``rows``
        and ``cursor`` (and the same ``filter``): only what changed since is
        sent (or a reset and a snapshot, if the cursor cannot be served).
        Raises :class:`SubscriptionError` if the server refuses the
        subscription (:class:`BadFilterError` for a refused filter).
        """
        view = Table(self._core, table_id, rows=rows, cursor=cursor, filter=filter)
        self._core.add(view)
        try:
            await view.wait_synced()
        except BaseException:
            self._core.remove(view)
            raise
        return view


def connect(
    url: str,
    *,
    backoff: Backoff | None = None,
    ping_interval: float | None = 20.0,
    ping_timeout: float = 10.0,
    open_timeout: float | None = 10.0,
    close_timeout: float | None = 5.0,
    connect_timeout: float | None = None,
    queue_size: int = DEFAULT_QUEUE_SIZE,
    max_frame_bytes: int | None = None,
    websocket_options: Mapping[str, Any] | None = None,
    token: Token | None = None,
    refresh_margin: float = 30.0,
) -> Client:
    """A :class:`Client` for the server at ``url`` (``ws://host:port/ws``); use ``async with``.

    - ``backoff``: delays between reconnection attempts (:class:`Backoff`).
    - ``ping_interval``: seconds between heartbeat pings (``None``: none);
      ``ping_timeout``: seconds to wait for the pong before reconnecting.
    - ``open_timeout``: seconds one connection attempt (TCP, TLS, HTTP
      upgrade) may take; ``close_timeout``: seconds to wait for the server's
      close frame when closing.
    - ``connect_timeout``: seconds :meth:`Client.open` keeps retrying the first
      connection (``None``: until it opens).
    - ``queue_size``: events each :class:`Subscription` queues for its reader.
    - ``max_frame_bytes``: the largest frame accepted (``None``: no limit; the
      server packs frames up to 256 KiB, but one large row is one message).
    - ``token``: a JWT, or a function returning one (sync or async), sent as an
      ``auth`` message on every connection. With a function, a fresh token is
      sent ``refresh_margin`` seconds before the current one expires (or halfway
      through a shorter lifetime). A plain token the server refuses (close 4001)
      ends the client with :class:`ClientError` instead of reconnecting.
    - ``websocket_options``: more keyword arguments for
      :func:`websockets.asyncio.client.connect` (``additional_headers``,
      ``ssl``, ``proxy``...).
    """
    return Client(
        url,
        backoff=backoff,
        ping_interval=ping_interval,
        ping_timeout=ping_timeout,
        open_timeout=open_timeout,
        close_timeout=close_timeout,
        connect_timeout=connect_timeout,
        queue_size=queue_size,
        max_frame_bytes=max_frame_bytes,
        websocket_options=websocket_options,
        token=token,
        refresh_margin=refresh_margin,
    )
