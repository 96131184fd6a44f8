"""Who follows which topic in this process: the registry behind broadcasts and presence."""

from __future__ import annotations

from typing import Generic, TypeVar

__all__ = ["Topics"]

R = TypeVar("R")


class Topics(Generic[R]):
    """Recipients by topic, in the order they came; empty topics are forgotten."""

    def __init__(self) -> None:
        # dicts as ordered sets.
        self._topics: dict[str, dict[R, None]] = {}

    def add(self, topic: str, recipient: R) -> None:
        self._topics.setdefault(topic, {})[recipient] = None

    def remove(self, topic: str, recipient: R) -> None:
        recipients = self._topics.get(topic)
        if recipients is not None:
            recipients.pop(recipient, None)
            if not recipients:
                del self._topics[topic]

    def recipients(self, topic: str) -> tuple[R, ...]:
        """A snapshot: a recipient may leave while being delivered to."""
        return tuple(self._topics.get(topic, ()))
