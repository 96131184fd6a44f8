"""Capped, jittered exponential backoff: how long to wait before the next attempt.

One :class:`Backoff` serves every retry loop of the package: the Python
client's reconnections (where it is public, as :class:`broadcaster.client.Backoff`),
the LISTEN connection's reconnections and the read loop's retries. It is
arithmetic on plain values: the caller counts its consecutive failures, sleeps
for the delay and decides when the count starts over, and the random source is
a parameter, so a test can pin it.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

__all__ = ["Backoff"]

_INITIAL: Final = 0.1


@dataclass(frozen=True, slots=True)
class Backoff:
    """Delays between attempts: capped, jittered, exponential.

    After ``n`` consecutive failures the wait is
    ``min(maximum, initial * multiplier ** (n - 1))``, less a random part of up
    to ``jitter`` of it (``jitter=0`` waits exactly that, ``1`` anything from
    zero to that; the default, one half, between half of it and all of it).
    Jitter keeps many processes from retrying in step after a shared failure.
    The caller decides when its count starts over (the client: once a
    connection has stayed open for ``maximum`` seconds).
    """

    initial: float = _INITIAL
    maximum: float = 10.0
    multiplier: float = 2.0
    jitter: float = 0.5

    def __post_init__(self) -> None:
        # Written as "not ..." so that NaN is refused too.
        if not self.initial > 0:
            raise ValueError("Backoff.initial must be positive")
        if not self.maximum >= self.initial:
            raise ValueError("Backoff.maximum must be at least Backoff.initial")
        if not math.isfinite(self.maximum):
            raise ValueError("Backoff.maximum must be finite")
        if not self.multiplier >= 1:
            raise ValueError("Backoff.multiplier must be at least 1")
        if not 0 <= self.jitter <= 1:
            raise ValueError("Backoff.jitter must be between 0 and 1")

    @classmethod
    def capped_at(cls, maximum: float) -> Backoff:
        """The default backoff with its cap at ``maximum`` (a setting, such as
        ``reconnect_max_delay``); a cap below the default first delay lowers
        that too, rather than being refused."""
        return cls(initial=min(_INITIAL, maximum), maximum=maximum)

    def delay(self, failures: int, rand: Callable[[], float] = random.random) -> float:
        """Seconds to wait after ``failures`` (at least 1) consecutive failures.

        ``rand`` returns a number in ``[0, 1)``, as :func:`random.random` does;
        it is called once per delay.
        """
        if failures < 1:
            raise ValueError(f"failures must be at least 1, not {failures}")
        exponent = failures - 1
        # Compared in logarithms, so that no count of failures overflows a
        # float (2.0 ** 1024 does) or costs more than one power.
        if exponent == 0 or self.multiplier == 1:
            base = self.initial
        elif exponent >= math.log(self.maximum / self.initial, self.multiplier):
            base = self.maximum
        else:
            base = min(self.maximum, self.initial * self.multiplier**exponent)
        return base * (1 - self.jitter * rand())
