"""The client's I/O: one WebSocket connection at a time, re-established with backoff.

:class:`Connection` opens the WebSocket, sends the token first, feeds every
text frame to the :class:`~._core.Core` and writes what the core queues, pings
to detect a dead connection, sends a fresh token before the current one
expires, and reconnects whenever the connection drops, until it is stopped.
:class:`~._client.Client` builds the public API on it.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, TypeAlias

from websockets.asyncio.client import ClientConnection
from websockets.asyncio.client import connect as ws_connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus

from ..core.backoff import Backoff
from ..protocols.native import CLOSE_UNAUTHORIZED
from ._core import Core
from ._errors import ClientError, ConnectError

__all__ = ["Connection", "Token"]

# The package's logger, as documented: records keep its name whichever module logs.
logger = logging.getLogger("broadcaster.client")

Token: TypeAlias = str | Callable[[], str | Awaitable[str]]
"""A JWT, or a function (sync or async) that returns a fresh one."""


class _DeadConnection(Exception):
    """No pong came back in time."""


def _permanent(error: BaseException) -> bool:
    """Whether a failed first connection attempt is not worth retrying."""
    if isinstance(error, InvalidStatus):
        status = error.response.status_code
        return 400 <= status < 500 and status not in (408, 429)
    return not isinstance(error, OSError | ConnectionClosed | InvalidHandshake)


class Connection:
    """Keeps one WebSocket connection to ``url`` open for a :class:`~._core.Core`.

    :meth:`_start` starts connecting and :meth:`_stop` closes; in between, a
    lost connection is re-established after a delay from :attr:`backoff`.
    The options are those of :func:`~._client.connect`.
    """

    def __init__(
        self,
        url: str,
        *,
        backoff: Backoff | None,
        ping_interval: float | None,
        ping_timeout: float,
        open_timeout: float | None,
        close_timeout: float | None,
        max_frame_bytes: int | None,
        websocket_options: Mapping[str, Any] | None,
        token: Token | None,
        refresh_margin: float,
    ) -> None:
        if ping_interval is not None and not ping_interval > 0:
            raise ValueError("ping_interval must be positive (or None: no heartbeat)")
        if not ping_timeout > 0:
            raise ValueError("ping_timeout must be positive")
        self.url = url
        self.backoff = backoff or Backoff()
        self.ping_interval = ping_interval
        self.ping_timeout = ping_timeout
        self._websocket_options: dict[str, Any] = {
            "open_timeout": open_timeout,
            "close_timeout": close_timeout,
            "max_size": max_frame_bytes,
            # The heartbeat is the protocol's ping message (see _heartbeat).
            "ping_interval": None,
            # The server negotiates no extension.
            "compression": None,
            **(websocket_options or {}),
        }
        self._token = token
        self._refresh_margin = refresh_margin
        self._refresh: asyncio.TimerHandle | None = None
        self._refusal: ClientError | None = None
        self._outbox_ready = asyncio.Event()
        # Read at each use: the backoff may be replaced after construction.
        self._core = Core(self._outbox_ready.set, lambda failures: self.backoff.delay(failures))
        self._core.on_authenticated = self._authenticated
        self._ws: ClientConnection | None = None
        self._task: asyncio.Task[None] | None = None
        self._opened: asyncio.Future[None] | None = None
        self._closing = False
        self.connections = 0
        """How many connections have been opened (1 + the reconnections)."""

    @property
    def connected(self) -> bool:
        """A connection is open right now."""
        return self._core.connected

    def _start(self) -> asyncio.Future[None]:
        """Start connecting, for good; the future resolves once the first
        connection is open (with a token: accepted), or fails for good."""
        self._opened = opened = asyncio.get_running_loop().create_future()
        self._task = asyncio.create_task(self._run(opened), name=f"broadcaster client {self.url}")
        return opened

    async def _stop(self) -> None:
        """Close the connection (code 1000) and stop reconnecting."""
        self._closing = True
        ws = self._ws
        if ws is not None:
            try:
                await ws.close()
            except Exception as exc:  # the connection may be failing already
                logger.debug("closing the connection failed: %r", exc)
        task = self._task
        if task is not None:
            task.cancel()
            await asyncio.wait({task})
            if not task.cancelled() and task.exception() is not None:
                logger.error("the client's task failed", exc_info=task.exception())
        opened = self._opened
        if opened is not None and opened.done() and not opened.cancelled():
            opened.exception()  # retrieved: open() has raised it, or nobody waits
        elif opened is not None:
            opened.cancel()

    async def _run(self, opened: asyncio.Future[None]) -> None:
        try:
            await self._connect_forever(opened)
        except Exception as exc:
            # A bug: end every subscription with it rather than hang them.
            logger.exception("the client for %s failed", self.url)
            if not opened.done():
                opened.set_exception(exc)
            error = ClientError(f"the client for {self.url} failed: {exc!r}")
            error.__cause__ = exc
            for stream in list(self._core.streams.values()):
                self._core.remove(stream)
                stream._fail(error)

    async def _connect_forever(self, opened: asyncio.Future[None]) -> None:
        loop = asyncio.get_running_loop()
        failures = 0
        while not self._closing:
            if failures:
                await asyncio.sleep(self.backoff.delay(failures))
            try:
                ws = await ws_connect(self.url, **self._websocket_options)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                failures += 1
                if not opened.done() and _permanent(exc):
                    opened.set_exception(ConnectError(f"cannot connect to {self.url}: {exc}"))
                    return
                logger.warning("cannot connect to %s: %s; retrying", self.url, exc)
                continue
            self.connections += 1
            opened_at = loop.time()
            if not opened.done() and self._token is None:
                opened.set_result(None)
            elif not opened.done():
                # With a token, the client is open once the server accepts it.
                self._core.on_authenticated = self._opened_when_authenticated(opened)
            else:
                logger.info("reconnected to %s", self.url)
            await self._session(ws)
            if ws.close_code == CLOSE_UNAUTHORIZED and isinstance(self._token, str):
                # The same token would be refused again: give up.
                self._refusal = ClientError(
                    f"{self.url} refused the token: {ws.close_reason or 'unauthorized'}"
                )
                for stream in list(self._core.streams.values()):
                    self._core.remove(stream)
                    stream._fail(self._refusal)
                if not opened.done():
                    opened.set_exception(self._refusal)
                return
            if loop.time() - opened_at >= self.backoff.maximum:
                failures = 0
            failures += 1

    @staticmethod
    async def _get_token(token: Token) -> str:
        if isinstance(token, str):
            return token
        value = token()
        return value if isinstance(value, str) else await value

    async def _authenticate(self, ws: ClientConnection) -> None:
        """Send the token first: the server handles messages in order, so the
        subscribes that follow are served once it is accepted."""
        if self._token is not None:
            token = await self._get_token(self._token)
            await ws.send(json.dumps({"type": "auth", "ref": "auth", "token": token}))

    def _opened_when_authenticated(
        self, opened: asyncio.Future[None]
    ) -> Callable[[float | None], None]:
        def authenticated(expires_at: float | None) -> None:
            self._core.on_authenticated = self._authenticated
            if not opened.done():
                opened.set_result(None)
            self._authenticated(expires_at)

        return authenticated

    def _authenticated(self, expires_at: float | None) -> None:
        if self._refresh is not None:
            self._refresh.cancel()
            self._refresh = None
        if expires_at is None or self._token is None or isinstance(self._token, str):
            return
        loop = asyncio.get_running_loop()
        # Refresh a margin before expiry, or halfway through a shorter lifetime.
        lifetime = expires_at - time.time()
        delay = max(0.0, lifetime - min(self._refresh_margin, lifetime / 2))
        self._refresh = loop.call_later(delay, lambda: loop.create_task(self._send_fresh_token()))

    async def _send_fresh_token(self) -> None:
        if self._token is None:
            return
        try:
            token = await self._get_token(self._token)
        except Exception:
            logger.exception("getting a fresh token failed; the connection ends at expiry")
            return
        if self._core.connected:
            self._core.outbox.append(json.dumps({"type": "auth", "ref": "auth", "token": token}))
            self._outbox_ready.set()

    async def _session(self, ws: ClientConnection) -> None:
        self._ws = ws
        await self._authenticate(ws)
        self._core.opened()
        tasks = [
            asyncio.create_task(self._read(ws)),
            asyncio.create_task(self._write(ws)),
        ]
        if self.ping_interval is not None:
            tasks.append(asyncio.create_task(self._heartbeat(self.ping_interval)))
        try:
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            self._ws = None
            self._core.lost()
            if self._refresh is not None:
                self._refresh.cancel()
                self._refresh = None
            if ws.close_code is None:
                # A dead connection (no pong): waiting for a closing handshake is pointless.
                ws.transport.abort()
                await ws.wait_closed()
        for task in done:
            error = None if task.cancelled() else task.exception()
            if isinstance(error, _DeadConnection):
                logger.warning("%s; reconnecting", error)
            elif isinstance(error, ConnectionClosed) or error is None:
                if not self._closing:
                    logger.info(
                        "connection to %s closed (code %s %s); reconnecting",
                        self.url,
                        ws.close_code,
                        ws.close_reason or "",
                    )
            else:
                logger.error("connection to %s failed; reconnecting", self.url, exc_info=error)

    async def _read(self, ws: ClientConnection) -> None:
        async for frame in ws:
            if isinstance(frame, str):
                self._core.receive(frame)
            else:
                logger.warning("ignoring a binary frame from the server")

    async def _write(self, ws: ClientConnection) -> None:
        outbox = self._core.outbox
        while True:
            while outbox:
                await ws.send(outbox.popleft())
            self._outbox_ready.clear()
            await self._outbox_ready.wait()

    async def _heartbeat(self, interval: float) -> None:
        while True:
            await asyncio.sleep(interval)
            pong = self._core.ping()
            try:
                await asyncio.wait_for(pong, self.ping_timeout)
            except TimeoutError:
                raise _DeadConnection(
                    f"no pong from {self.url} within {self.ping_timeout} seconds"
                ) from None
