"""One client connection speaking Supabase Realtime's protocol: ``postgres_changes`` channels.

Unmodified supabase-js apps subscribe with
``supabase.channel(name).on('postgres_changes', {event, schema: 'public',
table: 'messages', filter: 'room_id=eq.5'}, callback).subscribe()``. This
session serves that on the same hub and feed as the native protocol, and on
the same :class:`~.base.Session`: messages in order, the same limits, access
ended at each token's expiry. Only once every table a channel's bindings
route to is live does it reply to ``phx_join`` (so a change committed after
the client reports SUBSCRIBED is never missed).

- A binding on a published table (:mod:`.published`: looked up when it
  joins; ``*`` for every published table of a schema) routes to its
  table_id, ``schema.table``. Its filter is validated by Postgres at join and
  decided by Postgres once per read (a :class:`~broadcaster.core.checks.FilterCheck`
  the channel holds); on a table with row-level security, the channel's
  token is a viewer whose rows Postgres checks once per read (a
  :class:`~broadcaster.core.checks.RowCheck`), and it gets only the columns
  its role may select.
- A binding on ``public.rows`` routes by its ``table_id=eq.X`` or
  ``table_id=in.(a,b)`` filter; one with no such filter joins every table of
  ``rows`` and checks its filters on each row (filters.py); the authorizer
  must grant it the table_id ``*``.

Each channel holds the token it joined with, or the last ``access_token``
sent on it: when that token expires the channel gets Supabase's ``system``
error and ``phx_close``, as Supabase's server ends it. Broadcast
(broadcasts.py) and presence (presence.py) go through Postgres to every
server process. See ``docs/supabase.md``.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from collections.abc import Callable, Hashable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from ..auth.authorization import EVERY_TABLE_ID, Authorizer, authorizer_table_id, decided
from ..auth.identity import Identity, TokenVerifier
from ..core import broadcasts, presence, visibility
from ..core.checks import Check, FilterCheck, RowCheck
from ..core.feed import Join, JoinResult
from ..core.hub import Batch, Hub, Interest
from ..core.tables import EVERY_TABLE
from ..exceptions import AuthenticationError, DatabaseError, FilterError, ProtocolError
from ..protocols import native, phoenix
from ..protocols import supabase as protocol
from ..protocols.frames import text_frame
from ..protocols.phoenix import Message
from ..protocols.supabase import Binding, Shape
from .base import Continuation, Joiner, Limits, Messaging, Session, Transport
from .published import NO_PUBLISHED_TABLES, PublishedTables

__all__ = ["SupabaseSession"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class _Viewing:
    """What a channel's token may see of its published tables."""

    row_checks: tuple[RowCheck, ...]
    selectable: tuple[tuple[str, frozenset[str]], ...]


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
    waits: set[Join] = field(default_factory=set)
    """Reads it waits for to go live on a table live already (see _wait_for_read)."""
    row_checks: list[RowCheck] = field(default_factory=list)
    """Its viewer's checks on the tables with row-level security it binds."""
    retiring: list[RowCheck] = field(default_factory=list)
    """The checks of its previous token's viewer, until reads answer the new ones."""
    selectable: tuple[tuple[str, frozenset[str]], ...] = ()

    @property
    def checks(self) -> list[Check]:
        """What Postgres checks for it: its bindings' filters, its viewer's rows."""
        filters = [b.check for b in self.bindings if isinstance(b.check, FilterCheck)]
        return [*filters, *self.row_checks, *self.retiring]

    def reshape(self) -> None:
        self.shape = dataclasses.replace(
            self.shape,
            row_checks=(*self.row_checks, *self.retiring),
            selectable=self.selectable,
        )


class SupabaseSession(Session[Message]):
    """Channels of one connection; the hub subscriber for every table they route to.

    With a ``verifier``, the connection has ``limits.auth_timeout`` seconds to
    join a channel (or send an ``access_token``) with a token it accepts.
    """

    _logger = logger
    # Never None here: every Supabase channel has broadcast and presence.
    _messaging: Messaging

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
        messaging: Messaging,
        limits: Limits,
        publishable_keys: Mapping[str, str] | None = None,
        published: PublishedTables | None = None,
        authorizer_decides_published: bool = False,
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
        self._vsn = vsn
        self._authorizer = authorizer
        self._apikey = apikey
        self._publishable_keys = publishable_keys or {}
        self._published = NO_PUBLISHED_TABLES if published is None else published
        self._authorizer_decides_published = authorizer_decides_published
        self._channels: dict[str, _Channel] = {}
        # table_id (EVERY_TABLE: every table) -> its pending Join, or None once live.
        self.tables: dict[str | None, Join | None] = {}

    # Input

    def receive_text(self, data: bytes) -> None:
        if self.closed:
            return
        if self._too_large(data):
            return
        try:
            message = phoenix.decode_text(data.decode("utf-8", "replace"), self._vsn)
        except ProtocolError as exc:
            # Nothing to answer: without a topic and a ref the client could not
            # tell what the answer is about.
            logger.debug("ignoring a bad Phoenix message: %s", exc)
            self._count_error()
            return
        self._receive(message)

    def receive_binary(self, data: bytes) -> None:
        if self.closed:
            return
        if self._too_large(data):
            return
        try:
            message = phoenix.decode_binary(data)
        except ProtocolError as exc:
            logger.debug("ignoring a bad binary message: %s", exc)
            self._count_error()
            return
        self._receive(message)

    def _too_large(self, data: bytes) -> bool:
        limit = self._limits.max_message_bytes
        if len(data) <= limit:
            return False
        self._send(protocol.system("", "error", f"message over {limit} bytes ignored"))
        self._count_error()
        return True

    def _receive(self, message: Message) -> None:
        # Checked after parsing so the refusal can answer the message's ref.
        if not self._within_rate():
            limited = protocol.TOO_MANY_JOINS if message.event == "phx_join" else None
            self._reject(message, limited or protocol.TOO_MANY_MESSAGES)
            return
        self._dispatch(message)

    def _handle(self, message: Message) -> Continuation | None:
        if self.closed:
            return None
        event = message.event
        if message.topic == "phoenix" and event == "heartbeat":
            self._reply(message, "ok", {})
        elif event == "phx_join":
            return self._join(message)
        elif event == "phx_leave":
            self._leave(message.topic)
            self._reply(message, "ok", {})
        elif event == "access_token":
            return self._refresh(message)
        elif event == "broadcast":
            return self._broadcast(message)
        elif event == "presence":
            return self._presence(message)
        else:
            self._reject(message, f"unknown event {event[:64]!r}")
        return None

    # Failures

    def _scope(self, about: Message | None) -> str:
        return "the connection" if about is None else f"a channel of {about.topic}"

    def _failed(self, about: Message | None) -> None:
        # A bug in one channel must not pass unnoticed, nor take the
        # connection down: phx_error makes the client rejoin it.
        if about is not None:
            self._send(Message(about.topic, "phx_error", {}))

    # Channels

    async def _join(self, message: Message) -> None:
        topic = message.topic
        payload = message.payload if isinstance(message.payload, dict) else {}
        config = payload.get("config")
        entries = (config.get("postgres_changes") if isinstance(config, dict) else None) or []
        if not isinstance(entries, list):
            return self._reject(message, "config.postgres_changes must be a list")
        try:
            bindings = [Binding.parse(entry) for entry in entries]
        except FilterError as exc:
            self._send(protocol.system(topic, "error", str(exc)))
            return self._reject(message, str(exc))
        if topic not in self._channels and len(self._channels) >= self._limits.max_subscriptions:
            return self._reject(message, protocol.TOO_MANY_CHANNELS)
        token = payload.get("access_token") or self._apikey
        try:
            identity = await self._verify(token if isinstance(token, str) else None)
        except AuthenticationError as exc:
            return self._refuse(message, f"{exc.code}: {exc.message}")
        try:
            bindings = [await self._resolve(binding) for binding in bindings]
            viewing = await self._viewing(identity, bindings)
        except FilterError as exc:
            self._send(protocol.system(topic, "error", str(exc)))
            return self._reject(message, str(exc))
        except DatabaseError:
            logger.warning("could not look up a channel's tables", exc_info=True)
            return self._reject(message, "the database could not be reached: join again")
        if self.closed:
            return None
        tables = frozenset(t for binding in bindings for t in (binding.tables or (EVERY_TABLE,)))
        forbidden = await self._forbidden(identity, bindings, viewing)
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
        if len(set(self.tables) | tables) > self._limits.max_subscriptions:
            return self._reject(message, "too many subscriptions on this connection")
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
            Shape(self._vsn, topic, tuple(bindings), viewing.row_checks, viewing.selectable),
            row_checks=list(viewing.row_checks),
            selectable=viewing.selectable,
            broadcast_self=broadcast.get("self") is True,
            broadcast_ack=broadcast.get("ack") is True,
            # Like Supabase: without a key of its own, a connection is one presence.
            presence_key=key if isinstance(key, str) and key else self._origin,
        )
        self._channels[topic] = channel
        self._update_interest(tables)
        self._expire_at(topic, identity.expires_at if identity is not None else None)
        self._messaging.broadcasts.listen(topic, self)
        # Follow diffs before reading the state: a diff that arrives first is
        # held by the client until presence_state comes.
        self._messaging.presences.follow(topic, self)
        echoed = [{**entry, "id": b.id} for entry, b in zip(entries, bindings, strict=True)]

        def reply() -> None:
            channel.live = True
            self._reply(message, "ok", {"postgres_changes": echoed})
            self._spawn(self._send_presence_state(channel), message)
            if bindings:
                self._send(protocol.system(topic, "ok", "Subscribed to PostgreSQL"))

        channel.reply = reply
        for check in channel.checks:
            self._published.checks.add(check)
        for routed in tables:
            if routed not in self.tables:
                self._join_table(routed)
            if self.tables.get(routed) is not None:
                channel.pending.add(routed)
            elif routed is not EVERY_TABLE and any(
                c.table.table_id == routed for c in channel.checks
            ):
                # Live already, but the reads so far did not ask Postgres about
                # this channel's filters: it goes live with the next read, which does.
                self._wait_for_read(channel, routed)
        self._maybe_live(channel)
        return None

    async def _resolve(self, binding: Binding) -> Binding:
        """``binding`` on the published tables it names, its filter checked by Postgres."""
        if binding.relation is None:
            return binding
        schema, name = binding.relation
        if name == "*":
            # The tables published when the channel joins (docs/supabase.md).
            listed = await self._published.listed(None if schema == "*" else schema)
            return binding.resolve(listed, None)
        table = await self._published.lookup(schema, name)
        if table is None:
            raise FilterError(
                f"{schema}.{name} is not published here: publish it with "
                f"`broadcaster publish {schema}.{name}`"
            )
        if not binding.filter:
            return binding.resolve([table], None)
        await self._published.validate(table, binding.filter)
        return binding.resolve([table], FilterCheck(table, binding.filter))

    async def _viewing(self, identity: Identity | None, bindings: list[Binding]) -> _Viewing:
        """What ``identity`` may see of the published tables ``bindings`` resolved to:
        raises FilterError, saying why, when it may see none of a table."""
        tables = {t.table_id: t for b in bindings for t in b.published or ()}
        if not tables:
            return _Viewing((), ())
        viewer = visibility.viewer(identity.claims) if identity is not None else None
        row_checks: list[RowCheck] = []
        selectable: list[tuple[str, frozenset[str]]] = []
        for table_id, table in sorted(tables.items()):
            if viewer is None:
                if table.row_security:
                    raise FilterError(
                        f"{table_id} has row-level security: join with a token whose "
                        "role claim names the Postgres role to check its rows as"
                    )
                continue
            columns = await self._published.selectable(table, viewer.role)
            if columns is None:
                if table.row_security:
                    raise FilterError(
                        f"{table_id} has row-level security and role {viewer.role!r} does not "
                        f"exist in Postgres: CREATE ROLE {viewer.role} NOLOGIN, and grant it"
                    )
                # No such role to ask about columns: the table has no policies to
                # apply either, and a Supabase app's anon role need not exist here.
                continue
            if not columns:
                raise FilterError(
                    f"role {viewer.role!r} may not select any column of {table_id}: "
                    f"GRANT SELECT ON {table_id} TO {viewer.role}"
                )
            selectable.append((table_id, columns))
            if table.row_security:
                row_checks.append(RowCheck(table, viewer))
        return _Viewing(tuple(row_checks), tuple(selectable))

    def _wait_for_read(self, channel: _Channel, table_id: str) -> None:
        def read(result: JoinResult) -> None:
            channel.waits.discard(wait)
            channel.pending.discard(table_id)
            self._maybe_live(channel)

        wait = Join(table_id, read)
        channel.waits.add(wait)
        channel.pending.add(table_id)
        self._joiner.join(wait)

    def _join_table(self, table_id: str | None) -> None:
        def joined(result: JoinResult) -> None:
            if self.closed or self.tables.get(table_id) is not join:
                return
            self.tables[table_id] = None
            self._hub.subscribe(table_id, self, self._interest(table_id))
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
        self._forget_deadline(topic)
        for check in channel.checks:
            self._published.checks.remove(check)
        for wait in channel.waits:
            self._joiner.cancel(wait)
        self._messaging.broadcasts.stop(topic, self)
        self._messaging.presences.stop(topic, self)
        if channel.tracked:
            self._untrack_soon(topic)
        still = {t for other in self._channels.values() for t in other.tables}
        for table_id in channel.tables - still:
            join = self.tables.pop(table_id, None)
            if join is None:
                self._hub.unsubscribe(table_id, self)
            else:
                self._joiner.cancel(join)
        self._update_interest(channel.tables & still)

    def _interest(self, table_id: str | None) -> Interest:
        """The checks of which one must pass for a batch of ``table_id`` to bring this
        connection anything (None: any batch may): a filtered binding needs its
        filter passed, one on a table with row-level security its viewer's check."""
        wanted: set[Hashable] = set()
        for channel in self._channels.values():
            for binding in channel.bindings:
                if binding.tables is not None and table_id not in binding.tables:
                    continue
                if binding.check is not None:
                    wanted.add(binding.check)
                    continue
                rows = [
                    c
                    for c in (*channel.row_checks, *channel.retiring)
                    if c.table.table_id == table_id
                ]
                if not rows:
                    return None
                wanted.update(rows)
        return frozenset(wanted)

    def _update_interest(self, table_ids: Iterable[str | None]) -> None:
        """Tell the hub what the live tables of ``table_ids`` now need."""
        for table_id in table_ids:
            if table_id in self.tables and self.tables[table_id] is None:
                self._hub.subscribe(table_id, self, self._interest(table_id))

    def _leave_everything(self) -> None:
        for topic in list(self._channels):
            self._leave(topic)

    # Tokens

    async def _verify(self, token: str | None) -> Identity | None:
        if self._verifier is None:
            return None
        if not token:
            raise AuthenticationError(native.UNAUTHORIZED, "no access_token and no JWT apikey")
        role = self._publishable_keys.get(token)
        if role is not None:
            # Supabase's non-JWT publishable keys name a role and nothing else.
            identity = Identity(claims={"role": role}, expires_at=None, subject=None)
        else:
            identity = await self._verifier.verify(token)
        if not self.closed:
            self._authenticated()
        return identity

    async def _refresh(self, message: Message) -> None:
        payload = message.payload if isinstance(message.payload, dict) else {}
        token = payload.get("access_token")
        try:
            identity = await self._verify(token if isinstance(token, str) else None)
        except AuthenticationError as exc:
            return self._end_channel(message.topic, message.join_ref, f"{exc.code}: {exc.message}")
        # A fresh token may grant less than the one the channel joined with.
        channel = self._channels.get(message.topic)
        bindings = channel.bindings if channel is not None else []
        try:
            viewing = await self._viewing(identity, bindings)
        except FilterError as exc:
            return self._end_channel(message.topic, message.join_ref, str(exc))
        except DatabaseError:
            logger.warning("could not look up a role's columns", exc_info=True)
            return self._end_channel(
                message.topic, message.join_ref, "the database could not be reached: join again"
            )
        forbidden = await self._forbidden(identity, bindings, viewing)
        if forbidden is not None:
            return self._end_channel(
                message.topic,
                message.join_ref,
                f"forbidden: the new token may not read {forbidden!r}",
            )
        if channel is not None and self._channels.get(channel.topic) is channel:
            self._view_as(channel, viewing)
        self.identity = identity
        if channel is not None and self._channels.get(channel.topic) is channel:
            # As Supabase: the channel now lasts as long as this token.
            self._expire_at(channel.topic, identity.expires_at if identity is not None else None)
        return None

    def _view_as(self, channel: _Channel, viewing: _Viewing) -> None:
        """The channel's rows checked as a new token's viewer from the next read on."""
        new = [check for check in viewing.row_checks if check not in channel.row_checks]
        for check in new:
            self._published.checks.add(check)
        if new:
            # Until a read answers the new checks, the previous ones decide:
            # one generation of them, those of the token this one replaces.
            for check in channel.retiring:
                self._published.checks.remove(check)
            channel.retiring = [c for c in channel.row_checks if c not in viewing.row_checks]
        channel.row_checks = list(viewing.row_checks)
        channel.selectable = viewing.selectable
        channel.reshape()
        self._update_interest(channel.tables)

    def _retire(self, channel: _Channel, batch: Batch) -> None:
        """Forget the previous viewer's checks of ``batch``'s table once it answers the new."""
        answered = [
            c
            for c in channel.row_checks
            if c.table.table_id == batch.table_id and c in batch.checks
        ]
        if not answered:
            return
        retired = [c for c in channel.retiring if c.table.table_id == batch.table_id]
        for check in retired:
            channel.retiring.remove(check)
            self._published.checks.remove(check)
        if retired:
            channel.reshape()
            self._update_interest([batch.table_id])

    def _auth_timed_out(self) -> None:
        self._transport.close(native.CLOSE_UNAUTHORIZED, "authentication timeout")

    def _expired(self, key: str, overdue: float) -> None:
        channel = self._channels.get(key)
        if channel is not None:
            reason = protocol.token_expired(overdue)
            self._end_channel(channel.topic, channel.join_ref, reason)

    async def _forbidden(
        self, identity: Identity | None, bindings: Iterable[Binding], viewing: _Viewing
    ) -> str | None:
        """The first table_id ``bindings`` route to that ``identity`` may not read, if any
        (EVERY_TABLE is asked about, and answered, as EVERY_TABLE_ID).

        The authorizer decides, but not about a published table whose rights
        Postgres decided already (``viewing``), as Supabase has them decide: one
        with row-level security (its policies, per change) and, unless the
        authorizer is a SQL function, one the token's role may select from.
        """
        decided_already = {c.table.table_id for c in viewing.row_checks}
        if not self._authorizer_decides_published:
            decided_already.update(table_id for table_id, _ in viewing.selectable)
        for binding in bindings:
            routed = [t for t in binding.tables or (EVERY_TABLE,) if t not in decided_already]
            for table_id in sorted(authorizer_table_id(t) for t in routed):
                verdict = self._authorizer.allowed(identity, table_id, binding.spec)
                if not await decided(verdict):
                    return table_id
        return None

    def _end_channel(self, topic: str, join_ref: str | None, reason: str) -> None:
        """Tell the channel why with a ``system`` error, close it and leave it.

        The error's extension is ``system``, as in Supabase's
        ``shutdown_response``: the channel ends, not just its bindings.
        """
        self._send(protocol.system(topic, "error", reason, "system"))
        # Phoenix's socket closes a channel with ref and join_ref both the join's.
        self._send(Message(topic, "phx_close", {}, join_ref, join_ref))
        self._leave(topic)

    # Broadcast and presence

    async def _broadcast(self, message: Message) -> None:
        channel = self._channels.get(message.topic)
        if channel is None or not channel.live:
            return self._reject(message, "join the channel before broadcasting")
        event = message.payload.get("event") if isinstance(message.payload, dict) else None
        if not isinstance(event, str):
            return self._reject(message, "a broadcast needs a string event")
        payload = broadcasts.encode(message.topic, event, message.payload, self._origin)
        if len(payload.encode()) > broadcasts.MAX_PAYLOAD_BYTES:
            reason = f"broadcast over {broadcasts.MAX_PAYLOAD_BYTES} bytes: it travels by NOTIFY"
            return self._reject(message, reason)
        try:
            await self._messaging.store.broadcast(payload)
        except DatabaseError:
            logger.warning("sending a broadcast failed", exc_info=True)
            return self._refuse(message, "the broadcast could not be sent")
        if channel.broadcast_ack:
            self._reply(message, "ok", {})
        return None

    async def _send_presence_state(self, channel: _Channel) -> None:
        try:
            entries = await self._messaging.store.presence_state(channel.topic)
        except DatabaseError:
            logger.warning("reading presence state failed", exc_info=True)
            return
        if self._channels.get(channel.topic) is channel:
            self._send(Message(channel.topic, "presence_state", presence.state(entries)))

    async def _presence(self, message: Message) -> None:
        channel = self._channels.get(message.topic)
        payload = message.payload if isinstance(message.payload, dict) else {}
        event = payload.get("event")
        if channel is None or not channel.live or channel.presence_key is None:
            return self._reject(message, "join the channel before tracking presence")
        ref = self._presence_ref(channel.topic)
        store = self._messaging.store
        try:
            if event == "track":
                meta = payload.get("payload")
                meta = meta if isinstance(meta, dict) else {}
                if len(json.dumps(meta)) > presence.MAX_META_BYTES:
                    return self._reject(message, f"presence over {presence.MAX_META_BYTES} bytes")
                process = self._messaging.broadcasts.process
                await store.track(channel.topic, channel.presence_key, ref, process, meta)
                channel.tracked = True
            elif event == "untrack":
                await store.untrack([ref])
                channel.tracked = False
            else:
                return self._reject(message, "presence events are track and untrack")
        except DatabaseError:
            logger.warning("updating presence failed", exc_info=True)
            return self._refuse(message, "presence could not be updated")
        self._reply(message, "ok", {})
        return None

    def deliver_presence(self, topic: str, joins: Any, leaves: Any) -> None:
        if self._deadlines:
            self._expire_overdue()
        channel = self._channels.get(topic)
        if channel is not None and channel.live:
            self._send(Message(topic, "presence_diff", {"joins": joins, "leaves": leaves}))

    def deliver_broadcast(self, topic: str, event: str, payload: Any, origin: str) -> None:
        if self._deadlines:
            self._expire_overdue()
        channel = self._channels.get(topic)
        if channel is None or not channel.live:
            return
        if origin == self._origin and not channel.broadcast_self:
            return
        self._send(Message(topic, "broadcast", payload))

    # Output

    def deliver(self, batch: Batch) -> None:
        if self._deadlines:
            self._expire_overdue()
        for channel in self._channels.values():
            if not channel.live or (
                batch.table_id not in channel.tables
                and (batch.published or EVERY_TABLE not in channel.tables)
            ):
                continue
            frames = batch.memo(channel.shape, channel.shape)
            if frames:
                self._transport.send(frames)
            if channel.retiring:
                self._retire(channel, batch)

    def _refuse(self, message: Message, reason: str) -> None:
        """Answer ``message`` with an error: it could not be served."""
        self._reply(message, "error", {"reason": reason})

    def _reject(self, message: Message, reason: str) -> None:
        """Answer ``message`` with an error that is the client's own: it counts."""
        self._refuse(message, reason)
        self._count_error()

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

    def _send(self, message: Message) -> None:
        self._transport.send(text_frame(phoenix.encode(message, self._vsn)))
