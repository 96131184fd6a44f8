"""What one server process runs: the hub, the listener and the dispatcher, wired.

The starlette lifespan starts a :class:`Runtime` and stops it; the WebSocket
adapter and the HTTP routes reach it through the lifespan state.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

import asyncpg

from .dispatcher import Dispatcher
from .hub import Hub
from .listener import Listener
from .queries import RowReader
from .settings import Settings

__all__ = ["Runtime"]

logger = logging.getLogger(__name__)


class Runtime:
    def __init__(self, settings: Settings, database_url: str) -> None:
        self.settings = settings
        self.database_url = database_url
        self.hub = Hub()
        self._pool: asyncpg.Pool | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self.dispatcher: Dispatcher | None = None
        self.listener: Listener | None = None

    async def start(self) -> None:
        # min_size=0: the pool connects on first use, so a database that is down
        # at start delays fetches instead of failing the start.
        self._pool = await asyncpg.create_pool(
            self.database_url,
            min_size=0,
            max_size=2,
            server_settings={"application_name": "broadcaster-reader"},
        )
        self.dispatcher = Dispatcher(self.hub, RowReader(self._pool).fetch_rows)
        self.listener = Listener(
            self.database_url,
            self.dispatcher.push,
            keepalive_interval=self.settings.keepalive_interval,
            keepalive_timeout=self.settings.keepalive_timeout,
            reconnect_max_delay=self.settings.reconnect_max_delay,
        )
        self._tasks = [
            asyncio.create_task(self._supervise("dispatcher", self.dispatcher.run())),
            asyncio.create_task(self._supervise("listener", self.listener.run())),
        ]

    async def _supervise(self, name: str, coroutine: object) -> None:
        try:
            await coroutine  # type: ignore[misc]
        except asyncio.CancelledError:
            raise
        except Exception:
            # Both loops handle their expected failures; reaching here is a bug,
            # and a process that cannot deliver must not look ready.
            logger.critical("%s stopped unexpectedly", name, exc_info=True)
            if self.listener is not None:
                self.listener.ready = False
                self.listener.status = f"{name} crashed; see the server log"

    @property
    def ready(self) -> tuple[bool, str]:
        if self.listener is None:
            return False, "starting"
        return self.listener.ready, self.listener.status

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks = []
        if self._pool is not None:
            await self._pool.close()
            self._pool = None
