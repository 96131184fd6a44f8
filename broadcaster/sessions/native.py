"""One client connection speaking the native protocol: authentication, subscriptions, replies.

The session translates the native protocol onto :class:`~.base.Session`, which
orders messages, applies the limits and ends access at a token's expiry. Most
messages are answered at once; one that must wait (verifying a token, asking a
SQL authorizer, a database write) is finished by the base's worker task.

A subscribe becomes a :class:`~broadcaster.core.feed.Join`; when it is answered the
session sends ``subscribed``, a ``reset`` if the cursor could not be served,
the catch-up, ``synced``, and from then on, as the hub subscriber of that
table, every live batch.
"""

from __future__ import annotations

import functools
import json
import logging
import time
from collections.abc import Awaitable, Callable, Hashable, Mapping, Sequence
from typing import Any, Final

from ..auth.authorization import Authorizer, decided
from ..auth.identity import TokenVerifier
from ..core import broadcasts, presence
from ..core.changes import Change
from ..core.checks import FilterCheck, LeftFilter, passed
from ..core.feed import Join, JoinResult
from ..core.hub import Batch, Hub
from ..exceptions import AuthenticationError, DatabaseError, FilterError, ProtocolError
from ..protocols import native as protocol
from ..protocols.frames import text_frame
from .base import Continuation, Joiner, Limits, Messaging, Session, Transport
from .published import NO_PUBLISHED_TABLES, PublishedTables

__all__ = ["FRAME_BYTES", "NativeSession", "encode_batch"]

logger = logging.getLogger(__name__)

# The key under which a batch memoises its native encoding.
_NATIVE_FRAME: Final = "native.frame"

# Messages are packed into frames of at most this many bytes (one message alone
# may be larger), so a burst or a snapshot never becomes one frame of many
# megabytes: common clients refuse frames over 1 MiB by default.
FRAME_BYTES: Final = 256 * 1024

# The key of the connection's deadline: one token for the whole connection.
_CONNECTION: Final = "the connection"


def _chunks(messages: Sequence[bytes]) -> list[list[bytes]]:
    chunks: list[list[bytes]] = []
    size = FRAME_BYTES
    for message in messages:
        if size + len(message) > FRAME_BYTES:
            chunks.append([])
            size = 0
        chunks[-1].append(message)
        size += len(message) + 1
    return chunks


def _frame(messages: Sequence[bytes]) -> bytes:
    return text_frame(messages[0] if len(messages) == 1 else protocol.batch(list(messages)))


def _encode_passed(check: FilterCheck, batch: Batch) -> bytes:
    """The frames of ``batch`` for a subscription with ``check``: its changes that
    passed, and as DELETEs its UPDATEs whose row left the filter. None: nothing,
    unless the batch had no change to pass (a cursor or a reset, which every
    subscriber gets)."""
    kept = _passed_changes(check, batch.changes, batch.checks)
    if batch.changes and not kept and batch.reset is None:
        return b""
    if kept == batch.changes:
        return encode_batch(batch)
    filtered = Batch(batch.table_id, kept, batch.cursor, batch.reset, since=batch.since)
    return encode_batch(filtered)


def _passed_changes(
    check: FilterCheck, changes: Sequence[Change], checks: Mapping[Hashable, Sequence[bool]]
) -> list[Change]:
    """``changes`` as a subscription filtered by ``check`` sees them. An UPDATE whose row
    passed before it and fails after it is the row leaving the subscription's rows:
    a DELETE of its key, with the row before it (as a key change is logged)."""
    left = LeftFilter(check)
    kept = []
    for index, change in enumerate(changes):
        if passed(checks, check, index):
            kept.append(change)
        elif passed(checks, left, index):
            identity = f'{{"id":{json.dumps(change.id)},"table_id":{json.dumps(change.table_id)}}}'
            kept.append(change._replace(op="DELETE", row_json=identity))
    return kept


def encode_batch(batch: Batch) -> bytes:
    """The frames carrying a live batch, as one string of bytes.

    Changes carry the batch's cursor, except in frames before the last, which
    carry the cursor the read started from: a client cut off between two frames
    resumes from there and receives the batch again instead of skipping part of
    it. A batch with no change becomes a ``cursor`` message; a ``reset`` goes first.
    """
    head = [] if batch.reset is None else [protocol.encode_reset(batch.table_id, batch.reset)]
    if not batch.changes:
        return _frame([*head, protocol.encode_cursor(batch.table_id, batch.cursor)])
    final = protocol.encode_changes(batch.changes, batch.cursor)
    chunks = _chunks(head + final)
    if len(chunks) == 1:
        return _frame(chunks[0])
    early = protocol.encode_changes(batch.changes, batch.since)
    messages = head + early
    frames = []
    start = 0
    for number, chunk in enumerate(chunks):
        end = start + len(chunk)
        frames.append(_frame(chunk if number == len(chunks) - 1 else messages[start:end]))
        start = end
    return b"".join(frames)


def _topic(table_id: str) -> str:
    # Native topics cannot meet Supabase channel topics ("realtime:...").
    return "native:" + table_id


class NativeSession(Session[protocol.ClientMessage]):
    """Authentication, subscriptions and request handling for one connection.

    ``verifier`` is ``None`` when authentication is off: the connection is then
    anonymous from the start and ``authorizer`` decides alone. With a verifier,
    the client has ``limits.auth_timeout`` seconds to authenticate (``token``
    is one that came with the upgrade request) and nothing but ``auth`` and
    ``ping`` is served before it has.
    """

    _logger = logger

    def __init__(
        self,
        hub: Hub,
        joiner: Joiner,
        transport: Transport,
        *,
        authorizer: Authorizer,
        limits: Limits,
        verifier: TokenVerifier | None = None,
        token: str | None = None,
        messaging: Messaging | None = None,
        published: PublishedTables | None = None,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        super().__init__(
            hub,
            joiner,
            transport,
            verifier=verifier,
            limits=limits,
            messaging=messaging,
            clock=clock,
            wall_clock=wall_clock,
        )
        self._authorizer = authorizer
        self._published = NO_PUBLISHED_TABLES if published is None else published
        # table_id -> the filter Postgres checks for that subscription.
        self._filters: dict[str, FilterCheck] = {}
        # Tables whose presence this connection follows, and tracks.
        self._presence: set[str] = set()
        self._tracked: set[str] = set()
        # table_id -> its pending Join, or None once live.
        self.tables: dict[str, Join | None] = {}
        if verifier is not None and token is not None:
            self._dispatch(protocol.Auth(None, token))

    # Input from the transport

    def receive_text(self, data: bytes) -> None:
        """Handle one complete text message from the client."""
        if self.closed:
            return
        if len(data) > self._limits.max_message_bytes:
            self._error(
                protocol.TOO_LARGE,
                f"message of {len(data)} bytes exceeds the limit of "
                f"{self._limits.max_message_bytes} bytes",
            )
            return
        try:
            text = data.decode()
        except UnicodeDecodeError:
            self._transport.close(protocol.CLOSE_INVALID_DATA, "text frame is not valid UTF-8")
            return
        try:
            message = protocol.parse_client_message(text)
        except ProtocolError as exc:
            self._error(exc.code, exc.message, exc.ref)
            return
        # Checked after parsing so the error can answer the message's ref: a
        # client then knows which of its requests was dropped.
        if not self._within_rate():
            self._error(
                protocol.RATE_LIMITED,
                f"more than {self._limits.messages_per_second:g} messages a second; "
                "this one was dropped",
                message.ref,
            )
            return
        self._dispatch(message)

    def receive_binary(self, data: bytes) -> None:
        """Handle one binary message: the native protocol has none."""
        if not self.closed:
            self._error(protocol.BINARY_NOT_SUPPORTED, "the native protocol uses text frames only")

    def _handle(self, message: protocol.ClientMessage) -> Continuation | None:
        if self.closed:
            return None
        try:
            if isinstance(message, protocol.Ping):
                self._reply(protocol.encode_pong(message.ref))
                return None
            if isinstance(message, protocol.Auth):
                return self._authenticate(message)
            if not self.authenticated:
                raise ProtocolError(
                    protocol.UNAUTHORIZED, "authenticate first: send an auth message", message.ref
                )
            if isinstance(message, protocol.Broadcast | protocol.Track | protocol.Untrack):
                return self._message_others(message)
            if isinstance(message, protocol.Subscribe):
                self._check_room(message)
                verdict = self._authorizer.allowed(self.identity, message.table_id)
                if message.filter is not None and "." not in message.table_id:
                    raise ProtocolError(
                        protocol.BAD_FILTER,
                        "filter is served on published tables, named schema.table: "
                        "subscribe to a rows table_id without one",
                        message.ref,
                    )
                if isinstance(verdict, bool) and "." not in message.table_id:
                    self._subscribe(message, verdict, None)
                    return None
                return self._subscribe_when_decided(message, verdict)
            self._leave(message.table_id)
            self._reply(protocol.encode_unsubscribed(message.ref, message.table_id))
        except ProtocolError as exc:
            self._error(exc.code, exc.message, exc.ref)
        return None

    # Authentication

    async def _authenticate(self, message: protocol.Auth) -> None:
        if self._verifier is None:
            # Authentication is off: nothing to check, nothing to expire.
            self._reply(protocol.encode_authenticated(message.ref, None))
            return
        try:
            identity = await self._verifier.verify(message.token)
        except AuthenticationError as exc:
            self._reply(protocol.encode_error(exc.code, exc.message, message.ref))
            expired = exc.code == protocol.TOKEN_EXPIRED
            self._transport.close(
                protocol.CLOSE_TOKEN_EXPIRED if expired else protocol.CLOSE_UNAUTHORIZED,
                exc.code,
            )
            return
        if self.closed:
            return
        self.identity = identity
        self._authenticated()
        self._expire_at(_CONNECTION, identity.expires_at)
        self._reply(protocol.encode_authenticated(message.ref, identity.expires_at))
        # A refreshed token may grant fewer tables than the one it replaces.
        for table_id in list(self.tables):
            allowed = await decided(self._authorizer.allowed(identity, table_id))
            if not allowed and table_id in self.tables:
                self._leave(table_id)
                self._reply(
                    protocol.encode_error(
                        protocol.FORBIDDEN,
                        "the new token does not allow this table; unsubscribed",
                        table_id=table_id,
                    )
                )

    def _auth_timed_out(self) -> None:
        self._reply(
            protocol.encode_error(
                protocol.UNAUTHORIZED,
                f"no valid auth message within {self._limits.auth_timeout:g} seconds",
            )
        )
        self._transport.close(protocol.CLOSE_UNAUTHORIZED, "authentication timeout")

    def _expired(self, key: str, overdue: float) -> None:
        self._reply(
            protocol.encode_error(
                protocol.TOKEN_EXPIRED, "the token expired and no fresh one arrived"
            )
        )
        self._transport.close(protocol.CLOSE_TOKEN_EXPIRED, protocol.TOKEN_EXPIRED)

    # Failures

    def _scope(self, about: protocol.ClientMessage | None) -> str:
        return "handling a client message"

    def _failed(self, about: protocol.ClientMessage | None) -> None:
        self._transport.close(protocol.CLOSE_INTERNAL_ERROR, "internal error")

    # Subscriptions

    def _check_room(self, message: protocol.Subscribe) -> None:
        table_id = message.table_id
        if table_id not in self.tables and len(self.tables) >= self._limits.max_subscriptions:
            raise ProtocolError(
                protocol.TOO_MANY_SUBSCRIPTIONS,
                f"a connection may hold at most {self._limits.max_subscriptions} subscriptions",
                message.ref,
            )

    async def _subscribe_when_decided(
        self, message: protocol.Subscribe, verdict: Awaitable[bool] | bool
    ) -> None:
        allowed = verdict if isinstance(verdict, bool) else await verdict
        check = None
        if allowed and "." in message.table_id:
            try:
                check = await self._published_check(message)
            except ProtocolError as refused:
                self._reply(
                    protocol.encode_error(
                        refused.code, refused.message, message.ref, table_id=message.table_id
                    )
                )
                return
        if not self.closed:
            self._subscribe(message, allowed, check)

    async def _published_check(self, message: protocol.Subscribe) -> FilterCheck | None:
        """The filter Postgres checks for a subscription to a published table (its
        table_id is schema.table), if it has one. Raises ProtocolError for a table
        this protocol cannot serve (one with row-level security: the Supabase endpoint
        checks it per change), or a filter Postgres refuses."""
        try:
            table = await self._published.lookup_id(message.table_id)
            if table is not None and table.row_security:
                raise ProtocolError(
                    protocol.FORBIDDEN,
                    f"{table.table_id} has row-level security, which this protocol does not "
                    "check: subscribe on the Supabase endpoint, which checks it per change",
                )
            if message.filter is None:
                return None
            if table is None:
                raise ProtocolError(
                    protocol.BAD_FILTER,
                    f"{message.table_id} is not a published table: a filter is served on "
                    "published tables only (broadcaster publish)",
                )
            await self._published.validate(table, message.filter)
        except DatabaseError:
            logger.warning("could not look up table %r", message.table_id, exc_info=True)
            raise ProtocolError(
                protocol.UNAVAILABLE, "the database could not be reached: subscribe again"
            ) from None
        except FilterError as exc:
            raise ProtocolError(protocol.BAD_FILTER, str(exc)) from None
        return FilterCheck(table, message.filter)

    def _subscribe(
        self, message: protocol.Subscribe, allowed: bool, check: FilterCheck | None
    ) -> None:
        table_id = message.table_id
        if not allowed:
            self._reply(
                protocol.encode_error(
                    protocol.FORBIDDEN,
                    "this token does not allow subscribing to this table",
                    message.ref,
                    table_id=table_id,
                )
            )
            return
        if table_id in self.tables:
            # Subscribing again starts over from the cursor given this time.
            self._leave(table_id)

        def joined(result: JoinResult) -> None:
            self._joined(table_id, join, message.ref, result)

        join = Join(table_id, joined, message.cursor, message.snapshot)
        self.tables[table_id] = join
        if check is not None:
            # Held before the join's read, which then decides it on the catch-up.
            self._filters[table_id] = check
            self._published.checks.add(check)
        if message.presence:
            self._presence.add(table_id)
        self._joiner.join(join)

    def _joined(self, table_id: str, join: Join, ref: protocol.Ref, result: JoinResult) -> None:
        if self.closed or self.tables.get(table_id) is not join:
            return
        self._reply(protocol.encode_subscribed(ref, table_id))
        if result.reset is not None:
            self._reply(protocol.encode_reset(table_id, result.reset))
        check = self._filters.get(table_id)
        changes = result.changes
        if check is not None:
            changes = _passed_changes(check, changes, result.checks)
        self._send_catch_up(changes)
        self._reply(protocol.encode_synced(table_id, result.cursor))
        # Sending may have closed the session (a slow consumer): it must not
        # become a subscriber after close() has run.
        if self.closed or self.tables.get(table_id) is not join:
            return
        self.tables[table_id] = None
        check = self._filters.get(table_id)
        interest = None if check is None else frozenset({check, LeftFilter(check)})
        self._hub.subscribe(table_id, self, interest)
        messaging = self._messaging
        if messaging is not None:
            messaging.broadcasts.listen(_topic(table_id), self)
            if table_id in self._presence:
                # Diffs are followed before the state is read: the client
                # applies those that come first once presence_state arrives.
                messaging.presences.follow(_topic(table_id), self)
                self._spawn(self._send_presence_state(messaging, table_id), None)

    # Broadcast and presence

    def _message_others(
        self, message: protocol.Broadcast | protocol.Track | protocol.Untrack
    ) -> Continuation | None:
        messaging = self._messaging
        if messaging is None or self.tables.get(message.table_id, join_pending) is not None:
            raise ProtocolError(
                protocol.NOT_SUBSCRIBED,
                "subscribe to the table (and wait for synced) first",
                message.ref,
            )
        topic = _topic(message.table_id)
        if isinstance(message, protocol.Broadcast):
            # An origin nobody has makes the sender hear its own message too.
            origin = "" if message.echo else self._origin
            payload = broadcasts.encode(topic, message.event, message.payload, origin)
            if len(payload.encode()) > broadcasts.MAX_PAYLOAD_BYTES:
                raise ProtocolError(
                    protocol.TOO_LARGE,
                    f"a broadcast travels by NOTIFY: at most {broadcasts.MAX_PAYLOAD_BYTES} bytes",
                    message.ref,
                )
            return self._done(
                messaging.store.broadcast(payload), "sent", message.ref, message.table_id
            )
        ref = self._presence_ref(topic)
        if isinstance(message, protocol.Track):
            if len(json.dumps(message.meta)) > presence.MAX_META_BYTES:
                raise ProtocolError(
                    protocol.TOO_LARGE,
                    f"a presence meta travels by NOTIFY: at most {presence.MAX_META_BYTES} bytes",
                    message.ref,
                )
            self._tracked.add(message.table_id)
            key = message.key or self._origin
            process = messaging.broadcasts.process
            stored = messaging.store.track(topic, key, ref, process, message.meta)
            return self._done(stored, "tracked", message.ref, message.table_id)
        self._tracked.discard(message.table_id)
        return self._done(
            messaging.store.untrack([ref]), "untracked", message.ref, message.table_id
        )

    async def _done(
        self, operation: Awaitable[None], kind: str, ref: protocol.Ref, table_id: str
    ) -> None:
        try:
            await operation
        except DatabaseError:
            logger.warning("a %s request failed", kind, exc_info=True)
            self._reply(
                protocol.encode_error(
                    protocol.UNAVAILABLE, "the database could not be reached", ref
                )
            )
            return
        self._reply(protocol.encode_done(kind, ref, table_id))

    async def _send_presence_state(self, messaging: Messaging, table_id: str) -> None:
        try:
            entries = await messaging.store.presence_state(_topic(table_id))
        except DatabaseError:
            logger.warning("reading presence state failed", exc_info=True)
            return
        if table_id in self._presence and self.tables.get(table_id, join_pending) is None:
            self._reply(protocol.encode_presence_state(table_id, presence.state(entries)))

    def deliver_broadcast(self, topic: str, event: str, payload: Any, origin: str) -> None:
        if self._deadlines:
            self._expire_overdue()
        if origin != self._origin and not self.closed:
            self._reply(protocol.encode_broadcast(topic.removeprefix("native:"), event, payload))

    def deliver_presence(self, topic: str, joins: Any, leaves: Any) -> None:
        if self._deadlines:
            self._expire_overdue()
        if not self.closed:
            table_id = topic.removeprefix("native:")
            self._reply(protocol.encode_presence_diff(table_id, joins, leaves))

    def _send_catch_up(self, changes: Sequence[Change]) -> None:
        for chunk in _chunks(protocol.encode_changes(changes)):
            self._transport.send(_frame(chunk))

    def _leave(self, table_id: str) -> None:
        if table_id not in self.tables:
            return
        check = self._filters.pop(table_id, None)
        if check is not None:
            self._published.checks.remove(check)
        messaging = self._messaging
        if messaging is not None:
            topic = _topic(table_id)
            messaging.broadcasts.stop(topic, self)
            messaging.presences.stop(topic, self)
            if table_id in self._tracked:
                self._untrack_soon(topic)
        self._presence.discard(table_id)
        self._tracked.discard(table_id)
        join = self.tables.pop(table_id)
        if join is None:
            self._hub.unsubscribe(table_id, self)
        else:
            self._joiner.cancel(join)

    def deliver(self, batch: Batch) -> None:
        if self._deadlines:
            self._expire_overdue()
            if self.closed:
                return
        check = self._filters.get(batch.table_id)
        if check is None:
            self._transport.send(batch.memo(_NATIVE_FRAME, encode_batch))
            return
        frames = batch.memo((_NATIVE_FRAME, check), functools.partial(_encode_passed, check))
        if frames:
            self._transport.send(frames)

    def _leave_everything(self) -> None:
        for table_id in list(self.tables):
            self._leave(table_id)

    # Replies

    def _reply(self, message: bytes) -> None:
        self._transport.send(text_frame(message))

    def _error(self, code: str, message: str, ref: protocol.Ref = None) -> None:
        logger.debug("client error %s: %s", code, message)
        self._reply(protocol.encode_error(code, message, ref))
        self._count_error()


# A pending join stands for "subscribed but not synced yet" in lookups.
join_pending: Final = object()
