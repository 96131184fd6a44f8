"""Client-to-client broadcast: who listens on which topic, across server processes.

A client's broadcast becomes a NOTIFY on ``broadcaster_broadcast`` (no broker
but Postgres), so every server process of the database receives it on its
LISTEN connection and hands it to :meth:`Broadcasts.notified`, which delivers
it to the local subscribers of the topic. The origin (process and connection)
travels with it, so a sender does not receive its own message unless it asked
to. Sans-I/O: sending is the caller's (:mod:`broadcaster.postgres.queries`).
"""

from __future__ import annotations

import json
import logging
import uuid
from typing import Any, Final, Protocol

from .topics import Topics

__all__ = ["CHANNEL", "MAX_PAYLOAD_BYTES", "BroadcastRecipient", "Broadcasts", "encode"]

logger = logging.getLogger(__name__)

CHANNEL: Final = "broadcaster_broadcast"
# NOTIFY payloads must be shorter than 8000 bytes; the envelope takes a little.
MAX_PAYLOAD_BYTES: Final = 7500


class BroadcastRecipient(Protocol):
    """A client of this process that listens on topics (a session)."""

    def deliver_broadcast(self, topic: str, event: str, payload: Any, origin: str) -> None:
        """Send a broadcast of ``topic`` to the client; never block."""


def encode(topic: str, event: str, payload: Any, origin: str) -> str:
    """The NOTIFY payload of one broadcast."""
    return json.dumps(
        {"topic": topic, "event": event, "payload": payload, "origin": origin},
        ensure_ascii=False,
        separators=(",", ":"),
    )


class Broadcasts:
    """The topics this process's clients listen on."""

    def __init__(self) -> None:
        self.process = uuid.uuid4().hex
        self._topics: Topics[BroadcastRecipient] = Topics()

    def origin(self, recipient: BroadcastRecipient) -> str:
        """A name for ``recipient`` unique across processes."""
        return f"{self.process}:{id(recipient)}"

    def listen(self, topic: str, recipient: BroadcastRecipient) -> None:
        self._topics.add(topic, recipient)

    def stop(self, topic: str, recipient: BroadcastRecipient) -> None:
        self._topics.remove(topic, recipient)

    def notified(self, payload: str) -> None:
        """A broadcast from any process (the LISTEN callback: it only hands on)."""
        try:
            message = json.loads(payload)
            topic, event, origin = message["topic"], message["event"], message["origin"]
        except (ValueError, KeyError, TypeError):
            logger.warning("dropping a malformed broadcast: %.200r", payload)
            return
        for recipient in self._topics.recipients(topic):
            try:
                recipient.deliver_broadcast(topic, event, message.get("payload"), origin)
            except Exception:
                logger.exception("a broadcast recipient failed")
