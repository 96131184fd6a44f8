"""What every client session shares, whatever its protocol: ports, limits, ordering, expiry.

A session does no I/O of its own: the WebSocket adapter feeds it each incoming
message and hands it a :class:`Transport` to write frames to, a :class:`Joiner`
and, for broadcast and presence, a :class:`Messaging`. A protocol's session
(native.py, supabase.py) parses a message, hands it to this base and encodes
the replies; the base, once for both protocols:

- drops a message past the rate limit (a token bucket) and counts the
  client's errors, closing a connection past its budget;
- handles messages strictly in order: one that must wait (a token
  verification, a SQL authorizer, a database write) is finished by a worker
  task and later messages queue behind it; past ``_INBOX_HIGH`` queued
  messages, reading from the socket pauses until the queue is back to
  ``_INBOX_LOW``;
- closes a connection that has not authenticated within ``auth_timeout``;
- ends access at each token's expiry, by a timer and, should the timer run
  late, before anything else is delivered;
- runs background work as guarded tasks: a failure is logged with its
  traceback and answered as the protocol answers an internal error, and
  every task is cancelled when the session closes.
"""

from __future__ import annotations

import asyncio
import logging
import math
from abc import ABC, abstractmethod
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Final, Generic, Protocol, TypeVar

from ..auth.identity import Identity, TokenVerifier
from ..core import presence
from ..core.broadcasts import Broadcasts
from ..core.feed import Join
from ..core.hub import Batch, Hub
from ..core.presence import Presences
from ..exceptions import DatabaseError
from ..protocols.native import CLOSE_TOO_MANY_ERRORS

__all__ = [
    "Continuation",
    "Joiner",
    "Limits",
    "Messaging",
    "MessagingStore",
    "Session",
    "Transport",
]

logger = logging.getLogger(__name__)

# Queued messages past which a session stops reading from its socket, and
# below which it reads again: a client cannot make it buffer without bound.
_INBOX_HIGH: Final = 64
_INBOX_LOW: Final = 16

# Errors are counted per window; a client past the budget is disconnected.
_ERROR_WINDOW: Final = 60.0


class Transport(Protocol):
    def send(self, frame: bytes) -> None:
        """Queue a complete WebSocket frame; never block."""

    def close(self, code: int, reason: str) -> None:
        """Start the closing handshake with ``code``."""

    def pause_reading(self) -> None:
        """Stop reading from the client until :meth:`resume_reading`."""

    def resume_reading(self) -> None:
        """Read from the client again."""


class Joiner(Protocol):
    def join(self, join: Join) -> None:
        """Answer ``join`` at the next read."""

    def cancel(self, join: Join) -> None:
        """Forget ``join`` if it has not been answered."""


class MessagingStore(presence.Store, Protocol):
    """Where broadcasts are sent and presences kept (broadcaster.postgres.queries.ChangeReader).

    Each method raises :class:`~broadcaster.exceptions.DatabaseError` when
    Postgres fails it.
    """

    async def broadcast(self, payload: str) -> None: ...


@dataclass(frozen=True)
class Messaging:
    """Client-to-client messages: broadcast and presence.

    Both travel through Postgres to every server process; see broadcasts.py
    and presence.py.
    """

    broadcasts: Broadcasts
    presences: Presences
    store: MessagingStore


@dataclass(frozen=True)
class Limits:
    """What one connection may do; ``docs/security.md`` explains each."""

    max_subscriptions: int = 100
    max_message_bytes: int = 64 * 1024
    messages_per_second: float = 50.0
    max_errors: int = 20
    auth_timeout: float = 5.0


class _TokenBucket:
    """``rate`` messages a second on average, in bursts of up to ``burst``."""

    # One per connection: slots keep it small.
    __slots__ = ("_burst", "_clock", "_last", "_rate", "_tokens")

    def __init__(self, rate: float, burst: float, clock: Callable[[], float]) -> None:
        self._rate = rate
        self._burst = max(burst, 1.0)
        self._tokens = self._burst
        self._clock = clock
        self._last = clock()

    def take(self) -> bool:
        now = self._clock()
        self._tokens = min(self._burst, self._tokens + (now - self._last) * self._rate)
        self._last = now
        if self._tokens < 1.0:
            return False
        self._tokens -= 1.0
        return True


Continuation = Coroutine[Any, Any, None]
"""What is left of handling a message once it must wait."""

M = TypeVar("M")

# Untracking as a connection goes must outlive its session's own tasks, which
# are cancelled as it closes.
_UNTRACKING: set[asyncio.Task[None]] = set()


async def _untrack(store: presence.Store, slots: Sequence[str], log: logging.Logger) -> None:
    try:
        await store.untrack(slots)
    except DatabaseError:
        log.warning("removing a presence failed; it will expire", exc_info=True)
    except Exception:
        log.exception("removing a presence failed")


class Session(ABC, Generic[M]):
    """One connection, protocol aside; ``M`` is the protocol's parsed message.

    ``verifier`` is ``None`` when authentication is off: the connection is then
    anonymous from the start. With a verifier, the connection has
    ``limits.auth_timeout`` seconds to present a token it accepts.
    """

    # The protocol's module logger: failures are logged where its code is.
    _logger: ClassVar[logging.Logger] = logger

    def __init__(
        self,
        hub: Hub,
        joiner: Joiner,
        transport: Transport,
        *,
        verifier: TokenVerifier | None,
        limits: Limits,
        messaging: Messaging | None,
        clock: Callable[[], float],
        wall_clock: Callable[[], float],
    ) -> None:
        self._hub = hub
        self._joiner = joiner
        self._transport = transport
        self._verifier = verifier
        self._limits = limits
        self._messaging = messaging
        self._origin = messaging.broadcasts.origin(self) if messaging is not None else ""
        self._clock = clock
        self._wall_clock = wall_clock
        self.closed = False
        self.identity: Identity | None = None
        self.authenticated = verifier is None
        # A list, not a deque: a deque allocates a 64-slot block at once, 700
        # bytes for every connection, and this holds at most _INBOX_HIGH + 1
        # messages, most of the time none.
        self._inbox: list[M] = []
        self._worker: asyncio.Task[None] | None = None
        # The continuation handed to a worker task that has not run yet: if the
        # session closes first, it is closed rather than left never awaited.
        self._unstarted: Continuation | None = None
        self._paused = False
        self._tasks: set[asyncio.Task[None]] = set()
        # A reconnecting client resubscribes every table at once (plus its auth
        # message): the burst allows that as well as twice the rate.
        self._rate = _TokenBucket(
            limits.messages_per_second,
            max(2 * limits.messages_per_second, limits.max_subscriptions + 2),
            clock,
        )
        self._errors = 0
        self._errors_since = clock()
        self._auth_timer: asyncio.TimerHandle | None = None
        # What a token grants, by key (the connection, or a channel): when it
        # expires (unix seconds) and the timer that ends it then.
        self._deadlines: dict[str, tuple[float, asyncio.TimerHandle]] = {}
        self._soonest = math.inf
        if verifier is not None:
            self._auth_timer = asyncio.get_running_loop().call_later(
                limits.auth_timeout, self._auth_timeout_passed
            )

    # What a protocol's session says

    @abstractmethod
    def _handle(self, message: M) -> Continuation | None:
        """Handle ``message``; return what is left to await, if anything."""

    @abstractmethod
    def _scope(self, about: M | None) -> str:
        """What a failure while handling ``about`` concerns, for the log."""

    @abstractmethod
    def _failed(self, about: M | None) -> None:
        """Tell the client that handling ``about`` failed (the log has why)."""

    @abstractmethod
    def _auth_timed_out(self) -> None:
        """Tell the client it did not authenticate in time, and close."""

    @abstractmethod
    def _expired(self, key: str, overdue: float) -> None:
        """End what ``key``'s token granted: it expired ``overdue`` seconds ago."""

    @abstractmethod
    def deliver(self, batch: Batch) -> None:
        """Send a live batch of a table the session is subscribed to; never block."""

    @abstractmethod
    def deliver_broadcast(self, topic: str, event: str, payload: Any, origin: str) -> None:
        """Send a broadcast on ``topic`` (unless ``origin`` is this session's and it
        asked not to hear itself); never block."""

    @abstractmethod
    def deliver_presence(self, topic: str, joins: Any, leaves: Any) -> None:
        """Send a presence diff of ``topic``; never block."""

    @abstractmethod
    def _leave_everything(self) -> None:
        """Leave every subscription; the session is closing."""

    # Limits

    def _within_rate(self) -> bool:
        """May one more message be handled now? Checked for each message received."""
        return self._rate.take()

    def _count_error(self) -> None:
        """Count a client's error; past the budget, close the connection."""
        now = self._clock()
        if now - self._errors_since > _ERROR_WINDOW:
            self._errors, self._errors_since = 0, now
        self._errors += 1
        if self._errors > self._limits.max_errors:
            self._transport.close(CLOSE_TOO_MANY_ERRORS, "too many protocol errors")

    # Ordering: a message is handled at once unless one before it is still
    # waiting; then it queues, and the worker task handles the queue in order.

    def _dispatch(self, message: M) -> None:
        if self._worker is not None:
            self._inbox.append(message)
            if len(self._inbox) > _INBOX_HIGH and not self._paused:
                self._paused = True
                self._transport.pause_reading()
            return
        continuation = self._handle(message)
        if continuation is not None:
            self._unstarted = continuation
            self._worker = asyncio.get_running_loop().create_task(self._work(message, continuation))

    async def _work(self, message: M, continuation: Continuation) -> None:
        self._unstarted = None
        current: tuple[M, Continuation] | None = (message, continuation)
        try:
            while current is not None:
                await self._guarded(current[1], current[0])
                current = None
                while current is None and self._inbox and not self.closed:
                    queued = self._inbox.pop(0)
                    rest = self._handle(queued)
                    if rest is not None:
                        current = (queued, rest)
                    if self._paused and len(self._inbox) <= _INBOX_LOW:
                        self._paused = False
                        self._transport.resume_reading()
        finally:
            self._worker = None

    async def _guarded(self, continuation: Continuation, about: M | None) -> None:
        try:
            await continuation
        except Exception:
            self._logger.exception("%s failed", self._scope(about))
            if not self.closed:
                self._failed(about)

    # Background work

    def _spawn(self, coroutine: Continuation, about: M | None) -> None:
        """Run ``coroutine`` beside the message handling; cancelled when the session closes."""
        if self.closed:
            coroutine.close()
            return
        task = asyncio.get_running_loop().create_task(coroutine)
        self._tasks.add(task)
        task.add_done_callback(lambda done: self._reap(done, about))

    def _reap(self, task: asyncio.Task[None], about: M | None) -> None:
        self._tasks.discard(task)
        if task.cancelled():
            return
        failure = task.exception()
        if failure is not None:
            self._logger.error("%s failed", self._scope(about), exc_info=failure)
            if not self.closed:
                self._failed(about)

    def _untrack_soon(self, topic: str) -> None:
        """Remove this connection's presence on ``topic`` in the background.

        It outlives the session; should it fail, the process heartbeat expires
        the presence.
        """
        if self._messaging is None:
            return
        untrack = _untrack(self._messaging.store, [self._presence_ref(topic)], self._logger)
        task = asyncio.get_running_loop().create_task(untrack)
        _UNTRACKING.add(task)
        task.add_done_callback(_UNTRACKING.discard)

    def _presence_ref(self, topic: str) -> str:
        """The slot under which this connection tracks its presence on ``topic``."""
        return f"{self._origin}:{topic}"

    # Authentication and expiry

    def _authenticated(self) -> None:
        """The verifier accepted a token: the auth timeout no longer applies."""
        self.authenticated = True
        if self._auth_timer is not None:
            self._auth_timer.cancel()
            self._auth_timer = None

    def _auth_timeout_passed(self) -> None:
        if not self.authenticated and not self.closed:
            self._auth_timed_out()

    def _expire_at(self, key: str, expires_at: float | None) -> None:
        """End what ``key`` grants at ``expires_at`` (unix seconds; ``None``: never).

        Replaces ``key``'s deadline; a time already past ends it at once, but
        not from within this call.
        """
        self._forget_deadline(key)
        if expires_at is None or self.closed:
            return
        delay = max(0.0, expires_at - self._wall_clock())
        timer = asyncio.get_running_loop().call_later(delay, self._deadline_passed, key)
        self._deadlines[key] = (expires_at, timer)
        self._soonest = min(self._soonest, expires_at)

    def _forget_deadline(self, key: str) -> None:
        entry = self._deadlines.pop(key, None)
        if entry is not None:
            entry[1].cancel()
            self._soonest = min((at for at, _ in self._deadlines.values()), default=math.inf)

    def _expire_overdue(self) -> None:
        """End now what a late timer has not ended yet: called before each delivery
        (when there are deadlines), so nothing committed after a token expired
        reaches a subscription it granted."""
        now = self._wall_clock()
        if now >= self._soonest:
            for key in [key for key, (at, _) in self._deadlines.items() if at <= now]:
                self._deadline_passed(key)

    def _deadline_passed(self, key: str) -> None:
        entry = self._deadlines.get(key)
        if entry is None or self.closed:
            return
        self._forget_deadline(key)
        overdue = self._wall_clock() - entry[0]
        self._logger.info("a token expired %.1f s ago: ending %s", max(0.0, overdue), key)
        self._expired(key, overdue)

    # Closing

    def close(self) -> None:
        """Leave everything and stop; the connection is gone or going."""
        if self.closed:
            return
        self.closed = True
        if self._auth_timer is not None:
            self._auth_timer.cancel()
            self._auth_timer = None
        for key in list(self._deadlines):
            self._forget_deadline(key)
        if self._worker is not None:
            self._worker.cancel()
        for task in self._tasks:
            task.cancel()
        if self._unstarted is not None:
            self._unstarted.close()
            self._unstarted = None
        self._inbox.clear()
        self._leave_everything()
