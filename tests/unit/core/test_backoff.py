"""Unit tests for broadcaster.core.backoff: the one capped, jittered exponential backoff."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

import broadcaster.client
from broadcaster.core.backoff import Backoff


def test_backoff_grows_is_capped_and_jittered() -> None:
    exact = Backoff(initial=1, maximum=10, multiplier=2, jitter=0)
    assert [exact.delay(n) for n in range(1, 7)] == [1, 2, 4, 8, 10, 10]
    assert exact.delay(10_000) == 10
    jittered = Backoff(initial=1, maximum=10, multiplier=2, jitter=0.5)
    assert jittered.delay(3, rand=lambda: 0.0) == 4
    assert jittered.delay(3, rand=lambda: 1.0) == 2
    assert 0 <= Backoff(jitter=1).delay(1) <= 0.1
    for bad in ({"initial": 0}, {"maximum": 0.01}, {"multiplier": 0.5}, {"jitter": 2}):
        with pytest.raises(ValueError):  # noqa: PT011
            Backoff(**bad)


def test_the_clients_backoff_is_this_one() -> None:
    assert broadcaster.client.Backoff is Backoff


def test_the_defaults_are_the_listeners_and_the_read_loops() -> None:
    # First delay 0.1 s, doubling up to reconnect_max_delay's default of 10 s;
    # between half of each step and all of it.
    backoff = Backoff()
    steps = [backoff.delay(n, rand=lambda: 0.0) for n in (1, 2, 3, 7, 8, 9)]
    assert steps == [0.1, 0.2, 0.4, 6.4, 10.0, 10.0]
    assert backoff.delay(4, rand=lambda: 0.5) == pytest.approx(0.8 * 0.75)
    assert backoff.delay(4, rand=lambda: 1.0) == pytest.approx(0.4)


@pytest.mark.parametrize("failures", [1_025, 2_000, 10**9, 10**100])
def test_any_count_of_failures_waits_the_cap(failures: int) -> None:
    # 0.1 * 2 ** (failures - 1) overflows a float past 1,024 failures.
    assert Backoff().delay(failures, rand=lambda: 0.0) == 10.0


def test_a_multiplier_of_one_waits_the_same_every_time() -> None:
    backoff = Backoff(initial=0.5, maximum=10, multiplier=1, jitter=0)
    assert {backoff.delay(n) for n in (1, 2, 50, 10**12)} == {0.5}


def test_the_random_source_is_asked_once_per_delay() -> None:
    calls: list[None] = []

    def rand() -> float:
        calls.append(None)
        return 0.25

    assert Backoff(initial=2, maximum=2, jitter=1).delay(7, rand=rand) == 1.5
    assert len(calls) == 1


@pytest.mark.parametrize("failures", [0, -1])
def test_fewer_than_one_failure_is_refused(failures: int) -> None:
    with pytest.raises(ValueError, match="at least 1"):
        Backoff().delay(failures)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"initial": -1}, "initial"),
        ({"initial": math.nan}, "initial"),
        ({"maximum": math.inf}, "finite"),
        ({"maximum": math.nan}, "maximum"),
        ({"multiplier": math.nan}, "multiplier"),
        ({"jitter": -0.1}, "jitter"),
        ({"jitter": math.nan}, "jitter"),
    ],
)
def test_invalid_options_are_refused(options: dict[str, float], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Backoff(**options)


@given(
    initial=st.floats(min_value=1e-3, max_value=10),
    ratio=st.floats(min_value=1, max_value=1e4),
    multiplier=st.floats(min_value=1, max_value=10),
    jitter=st.floats(min_value=0, max_value=1),
    failures=st.integers(min_value=1, max_value=10**6),
    rand=st.floats(min_value=0, max_value=1, exclude_max=True),
)
def test_delays_grow_to_the_cap_and_jitter_takes_at_most_its_share(
    initial: float, ratio: float, multiplier: float, jitter: float, failures: int, rand: float
) -> None:
    maximum = initial * ratio
    exact = Backoff(initial=initial, maximum=maximum, multiplier=multiplier, jitter=0)
    step = exact.delay(failures)
    assert initial <= step <= maximum
    assert exact.delay(failures + 1) >= step
    # Below the cap (compared in logarithms: the power may overflow), the step
    # is the exponential one; past it, the cap.
    if (failures - 1) * math.log(multiplier) < math.log(ratio) - 1e-9:
        assert step == pytest.approx(initial * multiplier ** (failures - 1))
    elif (failures - 1) * math.log(multiplier) > math.log(ratio) + 1e-9:
        assert step == maximum
    jittered = Backoff(initial=initial, maximum=maximum, multiplier=multiplier, jitter=jitter)
    delay = jittered.delay(failures, rand=lambda: rand)
    assert step * (1 - jitter) <= delay * (1 + 1e-12)
    assert delay <= step
    assert delay == pytest.approx(step * (1 - jitter * rand))


@pytest.mark.parametrize(
    ("cap", "first"),
    [(10.0, 0.1), (30.0, 0.1), (0.1, 0.1), (0.05, 0.05)],
)
def test_capped_at_is_the_default_with_its_cap(cap: float, first: float) -> None:
    backoff = Backoff.capped_at(cap)
    assert backoff == Backoff(initial=first, maximum=cap, multiplier=2.0, jitter=0.5)
