"""Who follows which topic in this process: the registry behind broadcasts and presence."""

from __future__ import annotations

from typing import Generic, TypeVar

__all__ = ["Topics"]

L = TypeVar("L")


class Topics(Generic[L]):
    """Listeners by topic, in the order they came; empty topics are forgotten."""

    def __init__(self) -> None:
        # dicts as ordered sets.
        self._topics: dict[str, dict[L, None]] = {}

    def add(self, topic: str, listener: L) -> None:
        self._topics.setdefault(topic, {})[listener] = None

    def remove(self, topic: str, listener: L) -> None:
        listeners = self._topics.get(topic)
        if listeners is not None:
            listeners.pop(listener, None)
            if not listeners:
                del self._topics[topic]

    def listeners(self, topic: str) -> tuple[L, ...]:
        """A snapshot: a listener may leave while being delivered to."""
        return tuple(self._topics.get(topic, ()))
