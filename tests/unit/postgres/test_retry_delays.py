"""Unit tests for the Postgres adapters' retry delays: core.backoff, capped by a setting."""

from __future__ import annotations

import pytest

from broadcaster.core.backoff import Backoff
from broadcaster.postgres.listener import Listener


def listener(reconnect_max_delay: float) -> Listener:
    return Listener(
        "postgresql://unused",
        {},
        lambda: None,
        keepalive_interval=1.0,
        keepalive_timeout=1.0,
        reconnect_max_delay=reconnect_max_delay,
    )


@pytest.mark.parametrize("cap", [10.0, 0.5, 0.05])
@pytest.mark.parametrize("failures", [1, 2, 5, 12, 1_025, 10**6])
def test_the_listener_waits_half_to_all_of_each_capped_step(cap: float, failures: int) -> None:
    # 1,025 failures and more, about two hours of Postgres down at a 10 s cap,
    # used to raise OverflowError and stop the listener for good.
    step = Backoff.capped_at(cap).delay(failures, rand=lambda: 0.0)
    assert step == min(cap, 0.1 * 2.0 ** min(failures - 1, 100))
    for _ in range(20):
        assert step / 2 <= listener(cap)._backoff(failures) <= step
