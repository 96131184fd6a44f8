"""What one server process runs: the hub, the listener and the read loop, wired.

The starlette lifespan starts a :class:`Runtime` and stops it; the WebSocket
adapter and the HTTP routes reach it through the lifespan state.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Coroutine
from typing import Any

from ..auth.authorization import Authorizer, ClaimAuthorizer, OpenAuthorizer, SqlAuthorizer
from ..auth.identity import TokenVerifier
from ..auth.tokens import JWTVerifier, read_key
from ..core.broadcasts import CHANNEL as BROADCAST_CHANNEL
from ..core.broadcasts import Broadcasts
from ..core.hub import Hub
from ..core.presence import CHANNEL as PRESENCE_CHANNEL
from ..core.presence import Presences
from ..core.writes import Writes
from ..exceptions import ConfigurationError, DatabaseError
from ..postgres.connections import Connections
from ..postgres.directory import Directory
from ..postgres.listener import CHANNEL as CHANGES_CHANNEL
from ..postgres.listener import Listener
from ..postgres.queries import ChangeReader
from ..postgres.read_loop import ReadLoop
from ..sessions.base import Limits, Messaging
from ..settings import Settings

__all__ = ["PRESENCE_HEARTBEAT", "Runtime"]

PRESENCE_HEARTBEAT = 5.0
"""Seconds between proofs that this process's presences are alive."""

logger = logging.getLogger(__name__)


class Runtime:
    def __init__(self, settings: Settings, database_url: str) -> None:
        self.settings = settings
        self.database_url = database_url
        self.hub = Hub()
        self.writes = Writes()
        self.broadcasts = Broadcasts()
        self.presences = Presences()
        self.connections = 0
        self.limits = Limits(
            max_subscriptions=settings.max_subscriptions,
            max_message_bytes=settings.max_message_bytes,
            messages_per_second=settings.max_messages_per_second,
            max_errors=settings.max_errors,
            auth_timeout=settings.auth_timeout,
        )
        self._origins = _split(settings.allowed_origins)
        self.publishable_keys = dict(
            item.split("=", 1) for item in _split(settings.publishable_keys) if "=" in item
        )
        self._connections = Connections(
            database_url,
            statement_timeout=settings.keepalive_timeout * 6,
            max_catch_up=settings.max_catch_up,
        )
        self.verifier, self.authorizer = self._access(settings)
        self._tasks: list[asyncio.Task[None]] = []
        self.reader: ChangeReader | None = None
        self.messaging: Messaging | None = None
        self.read_loop: ReadLoop | None = None
        self.directory: Directory | None = None
        self.listener: Listener | None = None
        self._crashed: str | None = None

    def _access(self, settings: Settings) -> tuple[TokenVerifier | None, Authorizer]:
        """Who may connect (the verifier) and what they may read (the authorizer)."""
        authorizer: Authorizer
        if settings.authorizer is not None:
            authorizer = SqlAuthorizer(
                self._connections.authorizer_function(settings.authorizer),
                cache_seconds=settings.authorizer_cache_seconds,
            )
        elif settings.auth == "none":
            authorizer = OpenAuthorizer()
        else:
            authorizer = ClaimAuthorizer(settings.table_ids_claim)
        if settings.auth == "none":
            return None, authorizer
        if not (settings.jwt_secret or settings.jwt_public_key or settings.jwks_url):
            raise ConfigurationError(
                "BROADCASTER_AUTH is jwt (the default with DATABASE_URL) but no key is set: "
                "set BROADCASTER_JWT_SECRET, BROADCASTER_JWT_PUBLIC_KEY or "
                "BROADCASTER_JWKS_URL, or BROADCASTER_AUTH=none to let anyone read every table"
            )
        verifier = JWTVerifier(
            secret=settings.jwt_secret,
            public_key=read_key(settings.jwt_public_key) if settings.jwt_public_key else None,
            jwks_url=settings.jwks_url,
            algorithms=_split(settings.jwt_algorithms) or None,
            issuer=settings.jwt_issuer,
            audience=settings.jwt_audience,
            leeway=settings.jwt_leeway,
        )
        return verifier, authorizer

    def origin_allowed(self, origin: str) -> bool:
        return not self._origins or origin in self._origins

    async def start(self) -> None:
        settings = self.settings
        self.reader = await self._connections.open()
        self.messaging = Messaging(self.broadcasts, self.presences, self.reader)
        self.directory = self._connections.directory()
        self.read_loop = ReadLoop(
            self.hub,
            self.reader,
            refresh_interval=settings.refresh_interval,
            history_retention=settings.history_retention,
            retry_max_delay=settings.reconnect_max_delay,
            read_delay=settings.read_delay,
            process=self.broadcasts.process,
            poll_interval=settings.poll_interval,
            poll_window=settings.poll_window,
            poll_min_rate=settings.poll_min_rate,
            writes=self.writes,
            held_checks=self.directory.checks,
            check_filters=self.directory.check_filters,
            check_rows=self.directory.check_rows,
            published=self.directory.is_published,
        )
        self.listener = Listener(
            self.database_url,
            {
                CHANGES_CHANNEL: self.read_loop.notified,
                BROADCAST_CHANNEL: self.broadcasts.notified,
                PRESENCE_CHANNEL: self.presences.notified,
            },
            self.read_loop.listening,
            keepalive_interval=settings.keepalive_interval,
            keepalive_timeout=settings.keepalive_timeout,
            reconnect_max_delay=settings.reconnect_max_delay,
        )
        self._tasks = [
            asyncio.create_task(self._supervise("read loop", self.read_loop.run())),
            asyncio.create_task(self._supervise("listener", self.listener.run())),
            asyncio.create_task(self._supervise("presence", self._keep_presence(self.reader))),
        ]

    async def _supervise(self, name: str, coroutine: Coroutine[Any, Any, None]) -> None:
        try:
            await coroutine
        except asyncio.CancelledError:
            raise
        except BaseException:
            # Both loops handle their expected failures; reaching here is a bug,
            # and a process that cannot deliver must not look ready.
            logger.critical("%s stopped unexpectedly", name, exc_info=True)
            self._crashed = f"the {name} crashed; see the server log"

    async def _keep_presence(self, reader: ChangeReader) -> None:
        # Refreshes this process's presences and expires those of processes
        # that stopped doing so (crashed or cut off) after three missed rounds.
        while True:
            await asyncio.sleep(PRESENCE_HEARTBEAT)
            try:
                await reader.keep_presence(self.broadcasts.process, 3 * PRESENCE_HEARTBEAT)
            except DatabaseError:
                logger.warning("keeping presences failed", exc_info=True)

    @property
    def ready(self) -> tuple[bool, str]:
        if self._crashed:
            return False, self._crashed
        if self.listener is None or self.read_loop is None:
            return False, "starting"
        if not self.listener.ready:
            return False, self.listener.status
        if not self.read_loop.caught_up:
            return False, self.read_loop.status
        return True, "ready"

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks = []
        if self.read_loop is not None:
            try:
                await asyncio.wait_for(self.read_loop.unregister(), 5)
            except (DatabaseError, TimeoutError):
                logger.warning("removing this process's registrations failed", exc_info=True)
        await self._connections.close()


def _split(values: str | None) -> list[str]:
    """A comma-separated setting as a list."""
    return [value.strip() for value in (values or "").split(",") if value.strip()]
