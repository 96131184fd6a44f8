"""What one server process runs: the hub, the listener and the poller, wired.

The starlette lifespan starts a :class:`Runtime` and stops it; the WebSocket
adapter and the HTTP routes reach it through the lifespan state.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Coroutine
from typing import Any

import asyncpg

from ..auth.authorization import Authorizer, ClaimAuthorizer, OpenAuthorizer, SqlAuthorizer
from ..auth.tokens import JWTVerifier, TokenVerifier, read_key
from ..core.broadcasts import CHANNEL as BROADCAST_CHANNEL
from ..core.broadcasts import Broadcasts
from ..core.hub import Hub
from ..core.presence import CHANNEL as PRESENCE_CHANNEL
from ..core.presence import Presences
from ..core.writes import Writes
from ..exceptions import ConfigurationError
from ..postgres.listener import CHANNEL as CHANGES_CHANNEL
from ..postgres.listener import Listener
from ..postgres.queries import DATABASE_ERRORS, ChangeReader, ReadSession
from ..postgres.read_loop import Poller
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
        self.verifier, self.authorizer = self._access(settings)
        self._pool: asyncpg.Pool | None = None
        self._reads: ReadSession | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self.reader: ChangeReader | None = None
        self.messaging: Messaging | None = None
        self.poller: Poller | None = None
        self.listener: Listener | None = None
        self._crashed: str | None = None

    def _access(self, settings: Settings) -> tuple[TokenVerifier | None, Authorizer]:
        """Who may connect (the verifier) and what they may read (the authorizer)."""
        authorizer: Authorizer
        if settings.authorizer is not None:
            authorizer = SqlAuthorizer(
                lambda: self._pool,
                settings.authorizer,
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
        # min_size=0: the pools connect on first use, so a database that is down
        # at start delays reads instead of failing the start.
        server_settings = {
            "application_name": "broadcaster-reader",
            # A read that hangs must not stall delivery for ever.
            "statement_timeout": str(int(settings.keepalive_timeout * 6 * 1000)),
            # Reads take a millisecond; compiling one (when the planner's
            # estimate passes jit_above_cost, as the read's per-row tombstone
            # lookup makes it do) takes 30.
            "jit": "off",
        }
        self._pool = await asyncpg.create_pool(
            self.database_url,
            min_size=0,
            max_size=4,
            server_settings=server_settings,
            reset=_keep_session,
        )
        # The read statement, one at a time, on a session of its own that plans
        # it once: Postgres would plan it anew at every execution (its custom
        # plans look cheaper to it), which was 40% of a poll's time on
        # Postgres, and the generic plan is no slower for any read (measured:
        # live, catch-up and snapshot reads).
        read_settings = {**server_settings, "plan_cache_mode": "force_generic_plan"}
        self._reads = ReadSession(
            lambda: asyncpg.connect(self.database_url, server_settings=read_settings)
        )
        self.reader = ChangeReader(self._pool, reads=self._reads)
        self.messaging = Messaging(self.broadcasts, self.presences, self.reader)
        self.poller = Poller(
            self.hub,
            self.reader,
            refresh_interval=settings.refresh_interval,
            tombstone_retention=settings.tombstone_retention,
            retry_max_delay=settings.reconnect_max_delay,
            read_delay=settings.read_delay,
            process=self.broadcasts.process,
            poll_interval=settings.poll_interval,
            poll_window=settings.poll_window,
            poll_min_rate=settings.poll_min_rate,
            writes=self.writes,
        )
        self.listener = Listener(
            self.database_url,
            {
                CHANGES_CHANNEL: self.poller.notified,
                BROADCAST_CHANNEL: self.broadcasts.notified,
                PRESENCE_CHANNEL: self.presences.notified,
            },
            self.poller.listening,
            keepalive_interval=settings.keepalive_interval,
            keepalive_timeout=settings.keepalive_timeout,
            reconnect_max_delay=settings.reconnect_max_delay,
        )
        self._tasks = [
            asyncio.create_task(self._supervise("poller", self.poller.run())),
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
            except DATABASE_ERRORS:
                logger.warning("keeping presences failed", exc_info=True)

    @property
    def ready(self) -> tuple[bool, str]:
        if self._crashed:
            return False, self._crashed
        if self.listener is None or self.poller is None:
            return False, "starting"
        if not self.listener.ready:
            return False, self.listener.status
        if not self.poller.caught_up:
            return False, self.poller.status
        return True, "ready"

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks = []
        if self.poller is not None:
            try:
                await asyncio.wait_for(self.poller.unregister(), 5)
            except (*DATABASE_ERRORS, TimeoutError):
                logger.warning("removing this process's registrations failed", exc_info=True)
        if self._reads is not None:
            await self._reads.close()
        if self._pool is not None:
            await self._pool.close()
        self._pool = self._reads = None


async def _keep_session(connection: asyncpg.Connection) -> None:
    """Return a connection to the pool as it is; asyncpg still rolls back an open transaction.

    asyncpg's default reset (RESET ALL, UNLISTEN *, CLOSE ALL, advisory unlocks)
    is one more round trip after every read. The server's own statements leave
    no session state behind; the one statement that is not ours, the SQL
    authorizer's function, resets its connection itself.
    """


def _split(values: str | None) -> list[str]:
    """A comma-separated setting as a list."""
    return [value.strip() for value in (values or "").split(",") if value.strip()]
