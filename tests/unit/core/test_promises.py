"""broadcaster.core.promises: promises, their polls, and the final read, as values."""

from __future__ import annotations

import pytest

from broadcaster.core.promises import Promises
from broadcaster.core.tables import EVERY_TABLE

WINDOW = 1.0
INTERVAL = 0.01
REMEMBERED = 0.1


@pytest.fixture
def promises() -> Promises:
    return Promises(
        window=WINDOW, interval=INTERVAL, max_check_interval=0.08, remembered_for=REMEMBERED
    )


def register(promises: Promises, tables: list[str], at: float = 0.0) -> None:
    """Register ``tables`` and let their registration's final read pass."""
    new, promised, dropped = promises.changes(promises.registered | set(tables), at)
    assert (promised, dropped) == ([], [])
    promises.made(new, [], at)
    assert promises.observe("100:100:", at + REMEMBERED, set(new), set(), horizon=100) == []


def promise(promises: Promises, tables: list[str], at: float = 0.0) -> None:
    """Register ``tables`` and promise them at ``at``, as a wake-up of each does."""
    register(promises, tables, at)
    for table_id in tables:
        promises.woken(table_id, at)
    new, promised, _ = promises.changes(promises.registered, at)
    assert (new, promised) == ([], sorted(tables))
    promises.made([], promised, at)


def test_nothing_registered_means_nothing_due(promises: Promises) -> None:
    assert promises.changes(set(), 0.0) == ([], [], [])
    assert promises.next_deadline(0.0) is None
    assert promises.to_poll(0.0) == []
    assert not promises.needs_snapshot(0.0)


def test_new_tables_are_registered_and_gone_ones_dropped(promises: Promises) -> None:
    assert promises.changes({"b", "a"}, 0.0) == (["a", "b"], [], [])
    promises.made(["a", "b"], [], 0.0)

    assert promises.changes({"a", "b"}, 0.1) == ([], [], [])
    assert promises.changes({"a"}, 0.1) == ([], [], ["b"])
    promises.dropped(["b"])
    assert promises.registered == {"a"}


def test_a_registration_promises_no_polls_only_a_final_read(promises: Promises) -> None:
    promises.made(["a"], [], 2.0)

    assert promises.to_poll(2.0) == []
    # Writers' sessions may act on what they saw before it for REMEMBERED.
    assert not promises.needs_horizon(2.0 + REMEMBERED / 2)
    assert promises.next_deadline(2.0) == 2.0 + REMEMBERED
    assert promises.to_poll(2.0 + REMEMBERED / 2) == []
    assert promises.needs_horizon(2.0 + REMEMBERED)
    # A writer that checked before the registration may still be running.
    assert promises.observe("100:101:100", 2.1, set(), set(), horizon=101) == []
    assert promises.observe("101:101:", 2.11, set(), set()) == ["a"]
    assert promises.next_deadline(2.11) is None


def test_a_promise_made_while_a_registration_waits_keeps_both() -> None:
    short = Promises(window=0.05, interval=INTERVAL, remembered_for=REMEMBERED)
    short.made(["a"], [], 2.0)
    short.woken("a", 2.0)
    short.made([], ["a"], 2.01)

    assert short.to_poll(2.01) == ["a"]
    assert short.to_poll(2.07) == []
    # The promise ended, but not the registration's wait.
    assert not short.needs_horizon(2.07)
    assert short.needs_horizon(2.0 + REMEMBERED)


def test_a_wake_up_makes_a_promise(promises: Promises) -> None:
    register(promises, ["a", "b"])
    promises.woken("a", 0.4)
    promises.woken("unregistered", 0.4)

    assert promises.changes({"a", "b"}, 0.5) == ([], ["a"], [])
    promises.made([], ["a"], 0.5)
    assert promises.changes({"a", "b"}, 0.6) == ([], [], [])
    assert promises.to_poll(0.6) == ["a"]


def test_a_promised_table_is_polled_every_interval_until_the_promise_ends(
    promises: Promises,
) -> None:
    promise(promises, ["a"])

    assert promises.to_poll(0.0) == ["a"]
    assert promises.to_poll(0.005) == []
    assert promises.next_deadline(0.005) == pytest.approx(INTERVAL)
    assert promises.to_poll(0.01) == ["a"]
    assert promises.to_poll(WINDOW) == []


def test_after_the_promise_the_final_read_waits_for_every_xid_below_a_horizon(
    promises: Promises,
) -> None:
    promise(promises, ["a"])
    assert not promises.needs_snapshot(0.5)
    # A snapshot from before the end of the promise proves nothing.
    assert promises.observe("100:100:", 0.9, set(), set(), horizon=100) == []
    assert promises.needs_horizon(WINDOW)
    assert promises.needs_snapshot(WINDOW)
    # Without a horizon, a snapshot after the end proves nothing either.
    assert promises.observe("100:100:", WINDOW, set(), set()) == []

    # 101 runs; 103 runs but is above xmax, so in no list.
    assert promises.observe("101:102:101", WINDOW, set(), set(), horizon=104) == []
    assert not promises.needs_horizon(WINDOW)
    assert not promises.needs_snapshot(WINDOW)
    assert promises.needs_snapshot(WINDOW + INTERVAL)
    assert promises.observe("103:104:103", WINDOW + INTERVAL, set(), set()) == []
    # Only xids from the horizon up still run.
    assert promises.observe("104:106:104,105", WINDOW + 0.03, set(), set()) == ["a"]
    assert promises.next_deadline(WINDOW + 0.03) is None
    assert promises.registered == {"a"}


def test_the_final_read_is_the_read_that_saw_them_end(promises: Promises) -> None:
    promise(promises, ["a", "b"])

    assert promises.observe("100:100:", WINDOW, {"a"}, set(), horizon=100) == ["b"]


def test_checks_back_off_while_a_long_transaction_runs(promises: Promises) -> None:
    promise(promises, ["a"])
    promises.observe("100:101:100", WINDOW, set(), set(), horizon=101)
    at = WINDOW
    gaps = []
    for _ in range(6):
        deadline = promises.next_deadline(at)
        assert deadline is not None
        gaps.append(round(deadline - at, 3))
        at = deadline
        assert promises.observe("100:101:100", at, set(), set()) == []
    assert gaps == [0.01, 0.02, 0.04, 0.08, 0.08, 0.08]


def test_a_wake_up_after_the_promise_renews_it(promises: Promises) -> None:
    promise(promises, ["a"])
    promises.observe("100:101:100", WINDOW, set(), set(), horizon=101)

    promises.woken("a", 1.4)

    assert promises.changes({"a"}, 1.5) == ([], ["a"], [])
    promises.made([], ["a"], 1.5)
    assert promises.to_poll(1.6) == ["a"]
    # The old horizon is gone with the old promise: the new one takes its own.
    assert promises.needs_horizon(2.5)
    assert promises.observe("100:101:100", 2.5, set(), set(), horizon=102) == []
    assert promises.observe("102:102:", 2.6, set(), set()) == ["a"]


def test_a_busy_table_is_renewed_before_its_promise_runs_out(promises: Promises) -> None:
    promise(promises, ["a", "b"])
    promises.observe("100:100:", 0.2, {"a", "b"}, {"a"})

    assert promises.changes({"a", "b"}, 0.4) == ([], [], [])
    assert promises.to_poll(0.4) == ["a", "b"]
    assert promises.next_deadline(0.4) == pytest.approx(0.4 + INTERVAL)
    assert promises.changes({"a", "b"}, 0.6) == ([], ["a"], [])
    assert promises.renewals(0.6) == ["a"]


def test_an_unconfirmed_statement_keeps_its_promises_and_is_made_again(
    promises: Promises,
) -> None:
    register(promises, ["a"])
    promises.woken("a", 0.0)
    epoch = promises.epoch
    promises.made(["b"], ["a"], 0.0, confirmed=False)

    assert promises.epoch == epoch + 1
    assert promises.registered == {"a"}
    assert promises.to_poll(0.0) == ["a"]
    assert promises.changes({"a", "b"}, 0.1) == (["b"], ["a"], [])


def test_reset_registers_everything_again_and_keeps_running_promises(
    promises: Promises,
) -> None:
    promise(promises, ["a", "b"])
    epoch = promises.epoch
    promises.reset()

    assert promises.epoch == epoch + 1
    assert promises.changes({"a", "b"}, 0.5) == (["a", "b"], [], [])
    promises.made(["a", "b"], [], 0.5)
    assert promises.to_poll(0.5) == ["a", "b"]


def test_every_table_is_never_promised_only_read_after_its_registration(
    promises: Promises,
) -> None:
    promises.made([EVERY_TABLE], [], 2.0)

    assert promises.to_poll(2.0) == []
    assert promises.needs_horizon(2.0 + REMEMBERED)
    assert promises.observe("100:102:101", 2.1, set(), set(), horizon=102) == []
    promises.woken(EVERY_TABLE, 2.1)
    assert promises.changes({EVERY_TABLE}, 2.1) == ([], [], [])
    assert promises.observe("102:102:", 2.2, {EVERY_TABLE}, {EVERY_TABLE}) == [EVERY_TABLE]


def test_below_the_minimum_rate_a_wake_up_makes_no_promise() -> None:
    promises = Promises(window=WINDOW, interval=INTERVAL, remembered_for=REMEMBERED, min_rate=50)
    register(promises, ["a"])
    # 40 wake-ups in a second: each read follows one, fewer reads than polls.
    for n in range(40):
        promises.woken("a", 1.0 + n / 40)

    assert promises.changes({"a"}, 2.0) == ([], [], [])
    assert promises.to_poll(2.0) == []
    assert promises.next_deadline(2.0) is None


def test_from_the_minimum_rate_a_wake_up_makes_a_promise() -> None:
    promises = Promises(window=WINDOW, interval=INTERVAL, remembered_for=REMEMBERED, min_rate=50)
    register(promises, ["a", "b"])
    # A burst: the rate is reached within 50 wake-ups of it, not a second later.
    for n in range(80):
        promises.woken("a", 1.0 + n / 10_000)
    promises.woken("b", 1.01)

    assert promises.changes({"a", "b"}, 1.01) == ([], ["a", "b"], [])


def promised_from_a_burst(min_rate: float) -> Promises:
    """Table ``a`` promised at 1.01 after a burst of 60 wake-ups."""
    promises = Promises(
        window=WINDOW, interval=INTERVAL, remembered_for=REMEMBERED, min_rate=min_rate
    )
    register(promises, ["a"])
    for n in range(60):
        promises.woken("a", 1.0 + n / 10_000)
    promises.made([], promises.changes({"a"}, 1.01)[1], 1.01)
    return promises


def test_changes_found_by_reads_keep_a_promise_renewed() -> None:
    promises = promised_from_a_burst(min_rate=50)
    # Promised, its writers no longer wake the process: its reads count the changes.
    for n in range(1, 60):
        promises.observe("100:100:", 1.01 + n * 0.01, {"a"}, {"a"}, changes={"a": 2})

    assert promises.renewals(1.6) == ["a"]


def test_a_promise_lapses_when_the_process_falls_below_the_minimum_rate() -> None:
    promises = promised_from_a_burst(min_rate=50)
    # The table stays busy, at 10 changes a second.
    for n in range(1, 7):
        promises.observe("100:100:", 1.01 + n * 0.1, {"a"}, {"a"}, changes={"a": 1})

    assert not promises.worth_polling(1.61)
    assert promises.renewals(1.61) == []
    assert promises.to_poll(2.0) == ["a"], "a promise made is kept to its end"
    assert promises.to_poll(2.02) == []
    # The same reads with no minimum rate renew it.
    control = promised_from_a_burst(min_rate=0)
    for n in range(1, 7):
        control.observe("100:100:", 1.01 + n * 0.1, {"a"}, {"a"}, changes={"a": 1})
    assert control.renewals(1.61) == ["a"]


def test_a_minimum_rate_of_zero_promises_at_the_first_wake_up() -> None:
    promises = Promises(window=WINDOW, interval=INTERVAL, remembered_for=REMEMBERED, min_rate=0)
    register(promises, ["a"])
    promises.woken("a", 5.0)

    assert promises.worth_polling(5.0)
    assert promises.changes({"a"}, 5.0) == ([], ["a"], [])


def test_changes_of_a_table_not_polled_are_not_counted_twice() -> None:
    """Its wake-up counted it: a read after a wake-up finds the change it stood for."""
    promises = Promises(window=WINDOW, interval=INTERVAL, remembered_for=REMEMBERED, min_rate=50)
    register(promises, ["a"])
    for n in range(40):
        promises.woken("a", 1.0 + n / 1000)
        promises.observe("100:100:", 1.0 + n / 1000, {"a"}, {"a"}, changes={"a": 1})

    assert not promises.worth_polling(1.04)
