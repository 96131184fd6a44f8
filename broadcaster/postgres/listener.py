"""The LISTEN connection: one dedicated asyncpg connection per server process.

It is never taken from a pool. Losing it is routine: a termination callback and
a periodic keepalive query detect a dead connection, and the listener reconnects
with capped exponential backoff and LISTENs again, logging each step. The NOTIFY
callback only hands the payload on; it never awaits. Every new LISTEN session is
reported, since whatever was committed while none was up raised no wake-up that
reached us.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping
from typing import Any

import asyncpg

from ..core.backoff import Backoff
from .errors import DRIVER_ERRORS

__all__ = ["CHANNEL", "Listener"]

logger = logging.getLogger(__name__)

CHANNEL = "broadcaster_changes"
"""The channel ``triggers.sql`` notifies on."""

APPLICATION_NAME = "broadcaster-listener"


class Listener:
    """Keeps one LISTEN connection up and passes each payload to its channel's callback.

    ``ready`` is true while the connection is up and LISTENing; ``status`` says
    why it is not, for ``/readyz``.
    """

    def __init__(
        self,
        dsn: str,
        channels: Mapping[str, Callable[[str], None]],
        on_listening: Callable[[], None],
        *,
        keepalive_interval: float,
        keepalive_timeout: float,
        reconnect_max_delay: float,
    ) -> None:
        self._dsn = dsn
        self._channels = dict(channels)
        self._on_listening = on_listening
        self._keepalive_interval = keepalive_interval
        self._keepalive_timeout = keepalive_timeout
        self._reconnect_max_delay = reconnect_max_delay
        self.ready = False
        self.status = "not connected yet"
        self.backend_pid: int | None = None

    async def run(self) -> None:
        """Connect, LISTEN and watch, forever; cancel to stop."""
        failures = 0
        while True:
            try:
                connection = await self._connect()
            except DRIVER_ERRORS as exc:
                failures += 1
                self.status = f"cannot connect to Postgres: {exc}"
                delay = self._backoff(failures)
                logger.warning(
                    "listener: %s; retrying in %.1fs (attempt %d)", self.status, delay, failures
                )
                await asyncio.sleep(delay)
                continue
            failures = 0
            try:
                reason = await self._watch(connection)
            finally:
                self.ready = False
                self.backend_pid = None
                connection.terminate()
            self.status = f"LISTEN connection lost: {reason}"
            failures += 1
            delay = self._backoff(failures)
            logger.warning("listener: %s; reconnecting in %.1fs", self.status, delay)
            await asyncio.sleep(delay)

    def _backoff(self, failures: int) -> float:
        # Jitter (half to all of each step) keeps the processes of a fleet from
        # reconnecting in lockstep.
        return Backoff.capped_at(self._reconnect_max_delay).delay(failures)

    async def _connect(self) -> asyncpg.Connection:
        logger.info("listener: connecting")
        connection: asyncpg.Connection = await asyncpg.connect(
            self._dsn,
            timeout=self._keepalive_timeout,
            server_settings={"application_name": APPLICATION_NAME},
        )
        try:
            for channel in self._channels:
                await connection.add_listener(channel, self._notified)
        except BaseException:
            connection.terminate()
            raise
        self.backend_pid = connection.get_server_pid()
        self.ready = True
        self.status = "listening"
        logger.info(
            "listener: LISTENing on %s (backend pid %d)",
            ", ".join(self._channels),
            self.backend_pid,
        )
        # Only now: a change committed from here on raises a wake-up we will
        # receive, so a read started after this call misses nothing.
        self._on_listening()
        return connection

    def _notified(self, _connection: Any, _pid: int, channel: str, payload: object) -> None:
        # Synchronous on purpose: asyncpg runs coroutine callbacks as separate
        # tasks, which could reorder payloads.
        self._channels[channel](str(payload))

    async def _watch(self, connection: asyncpg.Connection) -> str:
        """Return the reason once ``connection`` is dead."""
        lost: asyncio.Future[str] = asyncio.get_running_loop().create_future()

        def terminated(_connection: Any) -> None:
            if not lost.done():
                lost.set_result("the connection was closed")

        connection.add_termination_listener(terminated)
        try:
            while True:
                try:
                    return await asyncio.wait_for(
                        asyncio.shield(lost), timeout=self._keepalive_interval
                    )
                except TimeoutError:
                    pass
                try:
                    await asyncio.wait_for(
                        connection.fetchval("SELECT 1"), timeout=self._keepalive_timeout
                    )
                except TimeoutError:
                    return f"keepalive got no answer within {self._keepalive_timeout}s"
                except DRIVER_ERRORS as exc:
                    return f"keepalive failed: {exc}"
        finally:
            connection.remove_termination_listener(terminated)
