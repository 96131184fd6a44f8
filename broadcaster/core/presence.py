"""Presence: who is on a channel topic, kept in Postgres and shared by every process.

A ``track`` upserts a row of ``broadcaster_presence`` and NOTIFYs the change on
``broadcaster_presence`` in the same transaction; every server process hears it
on its LISTEN connection and hands it to :meth:`Presences.notified`, which
passes the diff to the local subscribers of the topic. Each process refreshes
``seen_at`` on its rows while it runs, and removes (and announces) the rows of
a process that stopped refreshing: a process that dies does not leave ghosts.

Diffs follow Phoenix presence: ``{"joins": {key: {"metas": [...]}},
"leaves": {...}}``, each meta carrying its ``phx_ref``. Sans-I/O: the SQL is in
:mod:`broadcaster.postgres.queries`.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Sequence
from typing import Any, Final, Protocol

from .topics import Topics

__all__ = ["CHANNEL", "MAX_META_BYTES", "Presences", "Store", "diff", "diffs", "state"]

logger = logging.getLogger(__name__)

CHANNEL: Final = "broadcaster_presence"
# The diff travels by NOTIFY (under 8000 bytes) with its envelope.
MAX_META_BYTES: Final = 6000
# Postgres refuses a NOTIFY payload of 8000 bytes or more.
_NOTIFY_BYTES: Final = 7999

Entry = tuple[str, str, Any]
"""A presence: (key, ref, meta)."""


class Store(Protocol):
    """Where presences are kept (broadcaster.postgres.queries.ChangeReader).

    Each method raises :class:`~broadcaster.exceptions.DatabaseError` when
    Postgres fails it.
    """

    async def track(self, topic: str, key: str, slot: str, process: str, meta: Any) -> None: ...

    async def untrack(self, slots: Sequence[str]) -> None: ...

    async def presence_state(self, topic: str) -> list[Entry]: ...


class PresenceRecipient(Protocol):
    """A client of this process that follows presence on topics (a session)."""

    def deliver_presence(self, topic: str, joins: Any, leaves: Any) -> None:
        """Send a presence diff of ``topic`` to the client; never block."""


def _group(entries: Iterable[Entry]) -> dict[str, dict[str, list[Any]]]:
    grouped: dict[str, dict[str, list[Any]]] = {}
    for key, ref, meta in entries:
        metas = grouped.setdefault(key, {"metas": []})["metas"]
        metas.append({**(meta if isinstance(meta, dict) else {}), "phx_ref": ref})
    return grouped


def state(entries: Iterable[Entry]) -> dict[str, dict[str, list[Any]]]:
    """``presence_state``'s payload: every presence of a topic by key."""
    return _group(entries)


def diff(topic: str, joins: Iterable[Entry], leaves: Iterable[Entry]) -> str:
    """The NOTIFY payload announcing ``joins`` and ``leaves`` on ``topic``."""
    return json.dumps(
        {"topic": topic, "joins": _group(joins), "leaves": _group(leaves)},
        ensure_ascii=False,
        separators=(",", ":"),
    )


def diffs(topic: str, joins: Sequence[Entry], leaves: Sequence[Entry]) -> list[str]:
    """The NOTIFY payloads announcing ``joins`` and ``leaves``, in order.

    One diff when it fits a NOTIFY. A re-track of a large meta carries the old
    meta as a leave beside the new one as a join, which may not fit: then the
    joins go first and the leaves second, which Phoenix clients apply exactly
    as one diff (they apply a diff's joins before its leaves, matched by ref).
    """
    whole = diff(topic, joins, leaves)
    if len(whole.encode()) <= _NOTIFY_BYTES or not joins or not leaves:
        return [whole]
    return [diff(topic, joins, []), diff(topic, [], leaves)]


class Presences:
    """The topics this process's clients follow presence on."""

    def __init__(self) -> None:
        self._topics: Topics[PresenceRecipient] = Topics()

    def follow(self, topic: str, recipient: PresenceRecipient) -> None:
        self._topics.add(topic, recipient)

    def stop(self, topic: str, recipient: PresenceRecipient) -> None:
        self._topics.remove(topic, recipient)

    def notified(self, payload: str) -> None:
        """A diff from any process (the LISTEN callback: it only hands on)."""
        try:
            message = json.loads(payload)
            topic, joins, leaves = message["topic"], message["joins"], message["leaves"]
        except (ValueError, KeyError, TypeError):
            logger.warning("dropping a malformed presence diff: %.200r", payload)
            return
        for recipient in self._topics.recipients(topic):
            try:
                recipient.deliver_presence(topic, joins, leaves)
            except Exception:
                logger.exception("a presence recipient failed")
