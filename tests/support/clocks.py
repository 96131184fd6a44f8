"""A clock that moves only when the test says so, for rate limits, caches and expiry."""

from __future__ import annotations


class FakeClock:
    """Seconds, monotonic or wall, that move only when the test says so."""

    def __init__(self, now: float = 1_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, by: float) -> None:
        self.now += by
