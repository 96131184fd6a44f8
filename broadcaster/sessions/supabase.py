"""One client connection speaking Supabase Realtime's protocol: ``postgres_changes`` channels.

Unmodified supabase-js apps subscribe with
``supabase.channel(name).on('postgres_changes', {event, schema: 'public',
table: 'rows', filter: 'table_id=eq.' + id}, callback).subscribe()``. This
session serves that on the same hub and feed as the native protocol: each
channel's bindings name the table_ids they route to (``table_id=eq.X`` or
``table_id=in.(a,b)``), the session joins those tables through the feed, and
only once they are live does it reply to ``phx_join`` (so a change committed
after the client reports SUBSCRIBED is never missed). A binding with no such
filter (none at all, or filters on other columns, see filters.py) joins
every table and checks its filters on each row; the authorizer must grant it
the table_id ``*``. Bindings and the messages a batch brings each channel
shape are :mod:`broadcaster.protocols.supabase`.

Broadcast (broadcasts.py) and presence (presence.py) go through Postgres to
every server process. Bindings on a table other than ``public.rows`` are
refused with the reason. See ``docs/supabase.md``.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable, Coroutine, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from ..auth.authorization import Authorizer, decided
from ..auth.tokens import Identity, TokenVerifier
from ..core import broadcasts, presence
from ..core.broadcasts import Broadcasts
from ..core.feed import Join, JoinResult
from ..core.hub import EVERY_TABLE, Batch, Hub
from ..core.presence import Presences
from ..exceptions import AuthenticationError, FilterError, ProtocolError
from ..postgres.queries import DATABASE_ERRORS
from ..protocols import phoenix
from ..protocols.frames import text_frame
from ..protocols.phoenix import Message
from ..protocols.supabase import EVERY_TABLE_ID, Binding, Shape
from .native import Joiner, Transport

__all__ = ["SupabaseSession"]

logger = logging.getLogger(__name__)


@dataclass(eq=False)
class _Channel:
    topic: str
    join_ref: str | None
    bindings: list[Binding]
    tables: frozenset[str | None]
    """Where its bindings route: table_ids, and EVERY_TABLE if one routes to every table."""
    shape: Shape
    broadcast_self: bool = False
    broadcast_ack: bool = False
    presence_key: str | None = None
    tracked: bool = False
    live: bool = False
    pending: set[str | None] = field(default_factory=set)
    reply: Callable[[], None] | None = None


class SupabaseSession:
    """Channels of one connection; the hub subscriber for every table they route to."""

    def __init__(
        self,
        hub: Hub,
        joiner: Joiner,
        transport: Transport,
        *,
        vsn: str,
        authorizer: Authorizer,
        verifier: TokenVerifier | None,
        apikey: str | None,
        max_subscriptions: int,
        max_message_bytes: int,
        broadcasts: Broadcasts,
        send_broadcast: Callable[[str], Awaitable[None]],
        presences: Presences,
        presence_store: presence.Store,
        publishable_keys: Mapping[str, str] | None = None,
    ) -> None:
        self._hub = hub
        self._joiner = joiner
        self._transport = transport
        self._vsn = vsn
        self._authorizer = authorizer
        self._verifier = verifier
        self._apikey = apikey
        self._max_subscriptions = max_subscriptions
        self._max_message_bytes = max_message_bytes
        self._publishable_keys = publishable_keys or {}
        self._presences = presences
        self._presence_store = presence_store
        self._broadcasts = broadcasts
        self._send_broadcast = send_broadcast
        self._origin = broadcasts.origin(self)
        self._channels: dict[str, _Channel] = {}
        # table_id (EVERY_TABLE: every table) -> its pending Join, or None once live.
        self.tables: dict[str | None, Join | None] = {}
        self.identity: Identity | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self.closed = False

    # Input

    def receive_text(self, data: bytes) -> None:
        if self.closed:
            return
        if len(data) > self._max_message_bytes:
            self._system_error("", f"message over {self._max_message_bytes} bytes ignored")
            return
        try:
            message = phoenix.decode_text(data.decode("utf-8", "replace"), self._vsn)
        except ProtocolError as exc:
            logger.debug("ignoring a bad Phoenix message: %s", exc)
            return
        self._handle(message)

    def receive_binary(self, data: bytes) -> None:
        if self.closed:
            return
        try:
            message = phoenix.decode_binary(data)
        except ProtocolError as exc:
            logger.debug("ignoring a bad binary message: %s", exc)
            return
        self._handle(message)

    def _handle(self, message: Message) -> None:
        if message.topic == "phoenix" and message.event == "heartbeat":
            self._reply(message, "ok", {})
        elif message.event == "phx_join":
            self._spawn(self._join(message), message.topic)
        elif message.event == "phx_leave":
            self._leave(message.topic)
            self._reply(message, "ok", {})
        elif message.event == "access_token":
            self._spawn(self._refresh(message), message.topic)
        elif message.event == "broadcast":
            self._spawn(self._broadcast(message), message.topic)
        elif message.event == "presence":
            self._spawn(self._presence(message), message.topic)
        else:
            self._reply(message, "error", {"reason": f"unknown event {message.event[:64]!r}"})

    def _spawn(self, coroutine: Coroutine[Any, Any, None], topic: str | None = None) -> None:
        async def guarded() -> None:
            try:
                await coroutine
            except Exception:
                # A bug in one channel must not pass unnoticed, nor take the
                # connection down: phx_error makes the client rejoin it.
                logger.exception("a channel of %s failed", topic or "the connection")
                if topic is not None and not self.closed:
                    self._send(Message(topic, "phx_error", {}))

        task = asyncio.get_running_loop().create_task(guarded())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # Channels

    async def _join(self, message: Message) -> None:
        topic = message.topic
        payload = message.payload if isinstance(message.payload, dict) else {}
        config = payload.get("config")
        entries = (config.get("postgres_changes") if isinstance(config, dict) else None) or []
        if not isinstance(entries, list):
            return self._refuse(message, "config.postgres_changes must be a list")
        try:
            bindings = [Binding.parse(entry) for entry in entries]
        except FilterError as exc:
            self._system_error(topic, str(exc))
            return self._refuse(message, str(exc))
        token = payload.get("access_token") or self._apikey
        try:
            identity = await self._verify(token if isinstance(token, str) else None)
        except AuthenticationError as exc:
            return self._refuse(message, f"{exc.code}: {exc.message}")
        tables = frozenset(t for binding in bindings for t in (binding.tables or (EVERY_TABLE,)))
        forbidden = await self._forbidden(identity, tables)
        if forbidden == EVERY_TABLE_ID:
            return self._refuse(
                message,
                "forbidden: a binding without a table_id=eq or table_id=in filter reads "
                "every table, and this token may not (the authorizer must grant table_id '*')",
            )
        if forbidden is not None:
            return self._refuse(message, f"forbidden: this token may not read {forbidden!r}")
        if self.closed:
            return None
        if len(set(self.tables) | tables) > self._max_subscriptions:
            return self._refuse(message, "too many subscriptions on this connection")
        self.identity = identity
        self._leave(topic)
        broadcast = config.get("broadcast") if isinstance(config, dict) else None
        broadcast = broadcast if isinstance(broadcast, dict) else {}
        presence_config = config.get("presence") if isinstance(config, dict) else None
        presence_config = presence_config if isinstance(presence_config, dict) else {}
        key = presence_config.get("key")
        channel = _Channel(
            topic,
            message.join_ref,
            bindings,
            tables,
            Shape(self._vsn, topic, tuple(bindings)),
            broadcast_self=broadcast.get("self") is True,
            broadcast_ack=broadcast.get("ack") is True,
            # Like Supabase: without a key of its own, a connection is one presence.
            presence_key=key if isinstance(key, str) and key else self._origin,
        )
        self._channels[topic] = channel
        self._broadcasts.listen(topic, self)
        # Follow diffs before reading the state: a diff that arrives first is
        # held by the client until presence_state comes.
        self._presences.follow(topic, self)
        echoed = [{**entry, "id": b.id} for entry, b in zip(entries, bindings, strict=True)]

        def reply() -> None:
            channel.live = True
            self._reply(message, "ok", {"postgres_changes": echoed})
            self._spawn(self._send_presence_state(channel), channel.topic)
            if bindings:
                name = topic.removeprefix("realtime:")
                self._send(
                    Message(
                        topic,
                        "system",
                        {
                            "extension": "postgres_changes",
                            "status": "ok",
                            "message": "Subscribed to PostgreSQL",
                            "channel": name,
                        },
                    )
                )

        channel.reply = reply
        for routed in tables:
            if routed not in self.tables:
                self._join_table(routed)
            if self.tables.get(routed) is not None:
                channel.pending.add(routed)
        self._maybe_live(channel)
        return None

    def _join_table(self, table_id: str | None) -> None:
        def joined(result: JoinResult) -> None:
            if self.closed or self.tables.get(table_id) is not join:
                return
            self.tables[table_id] = None
            self._hub.subscribe(table_id, self)
            for channel in list(self._channels.values()):
                channel.pending.discard(table_id)
                self._maybe_live(channel)

        join = Join(table_id, joined)
        self.tables[table_id] = join
        self._joiner.join(join)

    def _maybe_live(self, channel: _Channel) -> None:
        if not channel.live and not channel.pending and channel.reply is not None:
            channel.reply()

    def _leave(self, topic: str) -> None:
        channel = self._channels.pop(topic, None)
        if channel is None:
            return
        self._broadcasts.stop(topic, self)
        self._presences.stop(topic, self)
        if channel.tracked:
            presence.untrack_soon(self._presence_store, [self._presence_ref(topic)])
        still = {t for other in self._channels.values() for t in other.tables}
        for table_id in channel.tables - still:
            join = self.tables.pop(table_id, None)
            if join is None:
                self._hub.unsubscribe(table_id, self)
            else:
                self._joiner.cancel(join)

    async def _verify(self, token: str | None) -> Identity | None:
        if self._verifier is None:
            return None
        if not token:
            raise AuthenticationError("unauthorized", "no access_token and no JWT apikey")
        role = self._publishable_keys.get(token)
        if role is not None:
            # Supabase's non-JWT publishable keys name a role and nothing else.
            return Identity(claims={"role": role}, expires_at=None, subject=None)
        return await self._verifier.verify(token)

    async def _refresh(self, message: Message) -> None:
        payload = message.payload if isinstance(message.payload, dict) else {}
        token = payload.get("access_token")
        try:
            identity = await self._verify(token if isinstance(token, str) else None)
        except AuthenticationError as exc:
            return self._close_channel(message, f"{exc.code}: {exc.message}")
        # A fresh token may grant less than the one the channel joined with.
        channel = self._channels.get(message.topic)
        forbidden = await self._forbidden(identity, channel.tables if channel else frozenset())
        if forbidden is not None:
            return self._close_channel(
                message, f"forbidden: the new token may not read {forbidden!r}"
            )
        self.identity = identity
        return None

    async def _forbidden(
        self, identity: Identity | None, routed: Iterable[str | None]
    ) -> str | None:
        """The first table_id of ``routed`` that ``identity`` may not read, if any
        (EVERY_TABLE is asked about, and answered, as EVERY_TABLE_ID)."""
        for table_id in sorted(t if t is not None else EVERY_TABLE_ID for t in routed):
            if not await decided(self._authorizer.allowed(identity, table_id)):
                return table_id
        return None

    def _close_channel(self, message: Message, reason: str) -> None:
        self._system_error(message.topic, reason)
        self._send(Message(message.topic, "phx_close", {}, None, message.join_ref))
        self._leave(message.topic)

    async def _broadcast(self, message: Message) -> None:
        channel = self._channels.get(message.topic)
        if channel is None or not channel.live:
            self._reply(message, "error", {"reason": "join the channel before broadcasting"})
            return
        event = message.payload.get("event") if isinstance(message.payload, dict) else None
        if not isinstance(event, str):
            self._reply(message, "error", {"reason": "a broadcast needs a string event"})
            return
        payload = broadcasts.encode(message.topic, event, message.payload, self._origin)
        if len(payload.encode()) > broadcasts.MAX_PAYLOAD_BYTES:
            reason = f"broadcast over {broadcasts.MAX_PAYLOAD_BYTES} bytes: it travels by NOTIFY"
            self._reply(message, "error", {"reason": reason})
            return
        try:
            await self._send_broadcast(payload)
        except DATABASE_ERRORS:
            logger.warning("sending a broadcast failed", exc_info=True)
            self._reply(message, "error", {"reason": "the broadcast could not be sent"})
            return
        if channel.broadcast_ack:
            self._reply(message, "ok", {})

    def _presence_ref(self, topic: str) -> str:
        return f"{self._origin}:{topic}"

    async def _send_presence_state(self, channel: _Channel) -> None:
        try:
            entries = await self._presence_store.presence_state(channel.topic)
        except DATABASE_ERRORS:
            logger.warning("reading presence state failed", exc_info=True)
            return
        if self._channels.get(channel.topic) is channel:
            self._send(Message(channel.topic, "presence_state", presence.state(entries)))

    async def _presence(self, message: Message) -> None:
        channel = self._channels.get(message.topic)
        payload = message.payload if isinstance(message.payload, dict) else {}
        event = payload.get("event")
        if channel is None or not channel.live or channel.presence_key is None:
            self._reply(message, "error", {"reason": "join the channel before tracking presence"})
            return
        ref = self._presence_ref(channel.topic)
        try:
            if event == "track":
                meta = payload.get("payload")
                meta = meta if isinstance(meta, dict) else {}
                if len(json.dumps(meta)) > presence.MAX_META_BYTES:
                    reason = f"presence over {presence.MAX_META_BYTES} bytes"
                    self._reply(message, "error", {"reason": reason})
                    return
                await self._presence_store.track(
                    channel.topic, channel.presence_key, ref, self._broadcasts.process, meta
                )
                channel.tracked = True
            elif event == "untrack":
                await self._presence_store.untrack([ref])
                channel.tracked = False
            else:
                self._reply(message, "error", {"reason": "presence events are track and untrack"})
                return
        except DATABASE_ERRORS:
            logger.warning("updating presence failed", exc_info=True)
            self._reply(message, "error", {"reason": "presence could not be updated"})
            return
        self._reply(message, "ok", {})

    def deliver_presence(self, topic: str, joins: Any, leaves: Any) -> None:
        channel = self._channels.get(topic)
        if channel is not None and channel.live:
            self._send(Message(topic, "presence_diff", {"joins": joins, "leaves": leaves}))

    def deliver_broadcast(self, topic: str, event: str, payload: Any, origin: str) -> None:
        channel = self._channels.get(topic)
        if channel is None or not channel.live:
            return
        if origin == self._origin and not channel.broadcast_self:
            return
        self._send(Message(topic, "broadcast", payload))

    def _refuse(self, message: Message, reason: str) -> None:
        self._reply(message, "error", {"reason": reason})

    # Output

    def deliver(self, batch: Batch) -> None:
        for channel in self._channels.values():
            if not channel.live or (
                batch.table_id not in channel.tables and EVERY_TABLE not in channel.tables
            ):
                continue
            frames = batch.memo(channel.shape, channel.shape)
            if frames:
                self._transport.send(frames)

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        for task in self._tasks:
            task.cancel()
        for topic in list(self._channels):
            self._leave(topic)

    def _reply(self, message: Message, status: str, response: dict[str, Any]) -> None:
        self._send(
            Message(
                message.topic,
                "phx_reply",
                {"status": status, "response": response},
                message.ref,
                message.join_ref,
            )
        )

    def _system_error(self, topic: str, reason: str) -> None:
        self._send(
            Message(
                topic,
                "system",
                {
                    "extension": "postgres_changes",
                    "status": "error",
                    "message": reason,
                    "channel": topic.removeprefix("realtime:"),
                },
            )
        )

    def _send(self, message: Message) -> None:
        self._transport.send(text_frame(phoenix.encode(message, self._vsn)))
