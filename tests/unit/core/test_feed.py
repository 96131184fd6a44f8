"""Unit tests for broadcaster.core.feed: planning reads and routing their results, as values."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from broadcaster.core import cursors
from broadcaster.core.changes import Change
from broadcaster.core.cursors import FOREIGN, MALFORMED, PRUNED, Origin
from broadcaster.core.feed import Feed, Join, JoinResult, Read, ReadResult, Request, Row
from broadcaster.core.hub import Batch

ORIGIN = Origin(7_316_243_112_858_025_123, 16_384)
OTHER_ORIGIN = Origin(7_316_243_112_858_025_123, 16_385)

# Snapshots of successive reads, in Postgres' text form.
S1 = "100:100:"
S2 = "110:115:111,113"
S3 = "120:120:"
S4 = "130:131:130"


def cursor(snapshot: str, origin: Origin = ORIGIN) -> str:
    return cursors.encode(origin, snapshot)


def everyone(_table_id: str | None) -> bool:
    return True


def nobody(_table_id: str | None) -> bool:
    return False


def only_every_table(table_id: str | None) -> bool:
    """Subscribers of every table, and of no table of their own."""
    return table_id is None


def change(table_id: str, row_id: str, version: int, op: str = "UPDATE") -> Change:
    return Change(op, table_id, row_id, version, f'{{"id":"{row_id}","version":{version}}}')


class Answers:
    """An ``on_joined`` callback that records what it is given."""

    def __init__(self) -> None:
        self.results: list[JoinResult] = []

    def __call__(self, result: JoinResult) -> None:
        self.results.append(result)


def join(table_id: str | None, cursor: str | None = None, *, snapshot: bool = False) -> Join:
    return Join(table_id, Answers(), cursor, snapshot)


def result(
    snapshot: str, rows: list[Row] | None = None, resets: dict[int, str] | None = None
) -> ReadResult:
    return ReadResult(snapshot, resets or {}, rows or [])


def planned(feed: Feed, is_subscribed: Callable[[str | None], bool] = everyone) -> Read:
    read = feed.plan(ORIGIN, is_subscribed)
    assert read is not None
    return read


def make_live(feed: Feed, table_id: str, snapshot: str) -> None:
    """Make ``table_id`` live in ``feed`` as of ``snapshot``, by a plain join."""
    feed.join(join(table_id))
    read = planned(feed)
    feed.complete(read, result(snapshot))


@pytest.fixture
def feed() -> Feed:
    return Feed()


# Nothing due


def test_a_new_feed_has_nothing_to_read(feed: Feed) -> None:
    assert not feed.due
    assert feed.live_tables == 0
    assert feed.plan(ORIGIN, everyone) is None


def test_plan_returns_none_when_nothing_is_due(feed: Feed) -> None:
    make_live(feed, "t1", S1)

    assert not feed.due
    assert feed.plan(ORIGIN, everyone) is None
    assert feed.live_tables == 1


def test_a_wake_up_of_a_table_that_is_not_live_is_ignored(feed: Feed) -> None:
    make_live(feed, "t1", S1)

    feed.wake("t2")

    assert not feed.due
    assert feed.plan(ORIGIN, everyone) is None


def test_a_plan_takes_the_wake_ups(feed: Feed) -> None:
    make_live(feed, "t1", S1)
    feed.wake("t1")
    feed.wake("t1")

    assert feed.due
    assert planned(feed).requests == [Request(0, "t1", S1)]
    assert not feed.due
    assert feed.plan(ORIGIN, everyone) is None


# Joins


def test_a_plain_join_reads_no_rows_and_gets_the_reads_cursor(feed: Feed) -> None:
    the_join = join("t1")
    feed.join(the_join)
    assert feed.due

    read = planned(feed)

    assert read.origin == ORIGIN
    assert read.requests == []
    assert read.live == {}
    assert read.joins == [(the_join, None)]
    assert not read.every_live_table
    assert not read.refresh
    batches, answered = feed.complete(read, result(S1))
    assert batches == []
    assert answered == [(the_join, JoinResult(None, [], cursor(S1)))]
    assert feed.live_tables == 1


def test_the_feed_does_not_call_on_joined_itself(feed: Feed) -> None:
    the_join = join("t1", snapshot=True)
    feed.join(the_join)

    feed.complete(planned(feed), result(S1))

    assert isinstance(the_join.on_joined, Answers)
    assert the_join.on_joined.results == []  # the caller answers, after publishing


def test_a_snapshot_join_reads_every_row(feed: Feed) -> None:
    the_join = join("t1", snapshot=True)
    feed.join(the_join)

    read = planned(feed)

    assert read.requests == [Request(0, "t1", None)]
    assert read.joins == [(the_join, 0)]
    rows = [change("t1", "a", 5, "INSERT"), change("t1", "b", 3, "INSERT")]
    _, answered = feed.complete(read, result(S1, [Row(0, c) for c in rows]))
    assert answered == [(the_join, JoinResult(None, [rows[1], rows[0]], cursor(S1)))]


def test_a_cursor_join_reads_since_the_cursors_snapshot(feed: Feed) -> None:
    the_join = join("t1", cursor(S2))
    feed.join(the_join)

    read = planned(feed)

    assert read.requests == [Request(0, "t1", S2, catch_up=True)]
    assert read.joins == [(the_join, 0)]
    assert the_join.reset is None
    the_change = change("t1", "a", 9)
    _, answered = feed.complete(read, result(S3, [Row(0, the_change)]))
    assert answered == [(the_join, JoinResult(None, [the_change], cursor(S3)))]


def test_a_cursor_join_with_snapshot_still_reads_since_the_cursor(feed: Feed) -> None:
    feed.join(join("t1", cursor(S2), snapshot=True))

    assert planned(feed).requests == [Request(0, "t1", S2, catch_up=True)]


def test_a_cursor_with_duplicate_xips_reads_since_its_snapshot(feed: Feed) -> None:
    feed.join(join("t1", cursor("10:20:12,12")))

    assert planned(feed).requests == [Request(0, "t1", "10:20:12,12", catch_up=True)]


@pytest.mark.parametrize(
    ("the_cursor", "reason"),
    [
        pytest.param("garbage", MALFORMED, id="garbage"),
        pytest.param("", MALFORMED, id="empty"),
        pytest.param(cursor("20:10:"), MALFORMED, id="xmin-above-xmax"),
        pytest.param("v9:1:2:10:20:", MALFORMED, id="version"),
        pytest.param(cursor(S2, OTHER_ORIGIN), FOREIGN, id="foreign"),
    ],
)
@pytest.mark.parametrize("snapshot", [False, True])
def test_a_cursor_that_cannot_be_served_is_a_reset_and_every_row(
    feed: Feed, the_cursor: str, reason: str, snapshot: bool
) -> None:
    the_join = join("t1", the_cursor, snapshot=snapshot)
    feed.join(the_join)

    read = planned(feed)

    assert read.requests == [Request(0, "t1", None)]
    assert read.joins == [(the_join, 0)]
    assert the_join.reset == reason
    rows = [change("t1", "a", 1), change("t1", "b", 2)]
    _, answered = feed.complete(read, result(S1, [Row(0, c) for c in rows]))
    assert answered == [(the_join, JoinResult(reason, rows, cursor(S1)))]


def test_a_reset_from_the_read_answers_the_join_with_it(feed: Feed) -> None:
    the_join = join("t1", cursor(S1))
    feed.join(the_join)
    read = planned(feed)
    every_row = [change("t1", "a", 1, "INSERT")]

    _, answered = feed.complete(read, result(S3, [Row(0, every_row[0])], {0: PRUNED}))

    assert answered == [(the_join, JoinResult(PRUNED, every_row, cursor(S3)))]


def test_joins_of_a_table_with_the_same_since_share_one_request(feed: Feed) -> None:
    by_cursor = [join("t1", cursor(S1)), join("t1", cursor(S1))]
    by_snapshot = [join("t1", snapshot=True), join("t1", "not a cursor")]
    for the_join in (by_cursor[0], by_snapshot[0], by_cursor[1], by_snapshot[1]):
        feed.join(the_join)

    read = planned(feed)

    assert read.requests == [Request(0, "t1", S1, catch_up=True), Request(1, "t1", None)]
    assert read.joins == [
        (by_cursor[0], 0),
        (by_snapshot[0], 1),
        (by_cursor[1], 0),
        (by_snapshot[1], 1),
    ]
    since_s1, every_row = change("t1", "a", 7), change("t1", "b", 2)
    _, answered = feed.complete(read, result(S2, [Row(0, since_s1), Row(1, every_row)]))
    assert [answer for _, answer in answered] == [
        JoinResult(None, [since_s1], cursor(S2)),
        JoinResult(None, [every_row], cursor(S2)),
        JoinResult(None, [since_s1], cursor(S2)),
        JoinResult(MALFORMED, [every_row], cursor(S2)),
    ]


def test_joins_with_different_sinces_or_tables_do_not_share(feed: Feed) -> None:
    for the_join in (
        join("t1", cursor(S1)),
        join("t1", cursor(S2)),
        join("t2", cursor(S1)),
        join("t1", snapshot=True),
        join("t2", snapshot=True),
    ):
        feed.join(the_join)

    read = planned(feed)

    assert read.requests == [
        Request(0, "t1", S1, catch_up=True),
        Request(1, "t1", S2, catch_up=True),
        Request(2, "t2", S1, catch_up=True),
        Request(3, "t1", None),
        Request(4, "t2", None),
    ]
    assert [key for _, key in read.joins] == [0, 1, 2, 3, 4]


def test_a_live_table_and_a_join_from_its_cursor_share_one_request(feed: Feed) -> None:
    make_live(feed, "t1", S1)
    feed.wake("t1")
    the_join = join("t1", cursor(S1))
    feed.join(the_join)

    read = planned(feed)

    assert read.requests == [Request(0, "t1", S1)]
    assert read.live == {"t1": 0}
    assert read.joins == [(the_join, 0)]
    the_change = change("t1", "a", 4)
    batches, answered = feed.complete(read, result(S2, [Row(0, the_change)]))
    assert [(b.table_id, list(b.changes), b.cursor, b.reset) for b in batches] == [
        ("t1", [the_change], cursor(S2), None)
    ]
    assert answered == [(the_join, JoinResult(None, [the_change], cursor(S2)))]


def test_a_live_table_and_a_join_from_an_older_cursor_read_separately(feed: Feed) -> None:
    make_live(feed, "t1", S2)
    feed.wake("t1")
    the_join = join("t1", cursor(S1))
    feed.join(the_join)

    read = planned(feed)

    assert read.requests == [Request(0, "t1", S2), Request(1, "t1", S1, catch_up=True)]
    assert read.live == {"t1": 0}
    assert read.joins == [(the_join, 1)]


def test_a_joined_table_is_live_from_the_reads_snapshot(feed: Feed) -> None:
    feed.join(join("t1", snapshot=True))
    feed.complete(planned(feed), result(S2))
    assert feed.live_tables == 1

    feed.wake("t1")

    read = planned(feed)
    assert read.requests == [Request(0, "t1", S2)]
    assert read.live == {"t1": 0}
    assert read.joins == []


def test_a_join_of_a_live_table_does_not_move_its_live_cursor(feed: Feed) -> None:
    # The live stream resumes from where it was; the joiner may see a change
    # twice (catch-up, then live), never miss one.
    make_live(feed, "t1", S1)
    feed.join(join("t1"))
    feed.complete(planned(feed), result(S2))

    feed.wake("t1")

    assert planned(feed).requests == [Request(0, "t1", S1)]


def test_joins_are_answered_in_the_order_they_came(feed: Feed) -> None:
    joins = [join(f"t{n % 3}", snapshot=n % 2 == 0) for n in range(6)]
    for the_join in joins:
        feed.join(the_join)

    _, answered = feed.complete(planned(feed), result(S1))

    assert [j for j, _ in answered] == joins


# Live batches


def test_live_batches_only_for_tables_with_changes(feed: Feed) -> None:
    for table_id in ("t1", "t2", "t3"):
        make_live(feed, table_id, S1)
    feed.wake("t1")
    feed.wake("t2")
    read = planned(feed)
    assert sorted(read.live) == ["t1", "t2"]
    key = read.live["t2"]
    the_change = change("t2", "a", 3)

    batches, answered = feed.complete(read, result(S2, [Row(key, the_change)]))

    assert answered == []
    [batch] = batches
    assert isinstance(batch, Batch)
    assert (batch.table_id, list(batch.changes), batch.cursor, batch.reset) == (
        "t2",
        [the_change],
        cursor(S2),
        None,
    )
    # Every table read moves on, with or without changes; t3 was not read.
    feed.wake(None)
    assert {r.table_id: r.since for r in planned(feed).requests} == {
        "t1": S2,
        "t2": S2,
        "t3": S1,
    }


def test_live_changes_are_sorted_by_version_within_a_table(feed: Feed) -> None:
    make_live(feed, "t1", S1)
    make_live(feed, "t2", S1)
    feed.wake(None)
    read = planned(feed)
    k1, k2 = read.live["t1"], read.live["t2"]
    t1_changes = [change("t1", "a", 8), change("t1", "b", 2, "DELETE"), change("t1", "a", 5)]
    t2_changes = [change("t2", "c", 7), change("t2", "d", 1)]
    rows = [
        Row(k1, t1_changes[0]),
        Row(k2, t2_changes[0]),
        Row(k1, t1_changes[1]),
        Row(k2, t2_changes[1]),
        Row(k1, t1_changes[2]),
    ]

    batches, _ = feed.complete(read, result(S2, rows))

    by_table = {b.table_id: [c.version for c in b.changes] for b in batches}
    assert by_table == {"t1": [2, 5, 8], "t2": [1, 7]}


def test_a_reset_of_a_live_request_is_a_reset_batch(feed: Feed) -> None:
    make_live(feed, "t1", S1)
    make_live(feed, "t2", S1)
    feed.wake(None)
    read = planned(feed)
    every_row = [change("t1", "a", 1, "INSERT"), change("t1", "b", 2, "INSERT")]
    rows = [Row(read.live["t1"], c) for c in reversed(every_row)]

    batches, _ = feed.complete(read, result(S2, rows, {read.live["t1"]: PRUNED}))

    [batch] = batches
    assert (batch.table_id, list(batch.changes), batch.cursor, batch.reset) == (
        "t1",
        every_row,
        cursor(S2),
        PRUNED,
    )


def test_a_reset_of_an_empty_live_table_is_still_a_batch(feed: Feed) -> None:
    make_live(feed, "t1", S1)
    feed.wake("t1")
    read = planned(feed)

    [batch], _ = feed.complete(read, result(S2, [], {read.live["t1"]: PRUNED}))

    assert (batch.table_id, list(batch.changes), batch.reset) == ("t1", [], PRUNED)


def test_a_refresh_reads_every_live_table_and_batches_even_no_change(feed: Feed) -> None:
    for table_id in ("t1", "t2"):
        make_live(feed, table_id, S1)

    feed.refresh()

    assert feed.due
    read = planned(feed)
    assert read.refresh
    assert read.every_live_table
    assert sorted(read.live) == ["t1", "t2"]
    the_change = change("t2", "a", 3)
    batches, _ = feed.complete(read, result(S2, [Row(read.live["t2"], the_change)]))
    assert sorted((b.table_id, list(b.changes), b.cursor) for b in batches) == [
        ("t1", [], cursor(S2)),
        ("t2", [the_change], cursor(S2)),
    ]
    # Only that read was a refresh.
    feed.wake(None)
    assert not planned(feed).refresh


def test_a_refresh_answers_its_joins_but_batches_only_live_tables(feed: Feed) -> None:
    make_live(feed, "t1", S1)
    feed.refresh()
    the_join = join("t2")
    feed.join(the_join)

    batches, answered = feed.complete(planned(feed), result(S2))

    assert [(b.table_id, list(b.changes)) for b in batches] == [("t1", [])]
    assert answered == [(the_join, JoinResult(None, [], cursor(S2)))]


def test_live_batches_carry_the_reads_cursor(feed: Feed) -> None:
    make_live(feed, "t1", S1)
    feed.wake("t1")
    read = planned(feed)

    [batch], _ = feed.complete(read, result(S4, [Row(0, change("t1", "a", 1))]))

    assert batch.cursor == cursor(S4) == f"v1:{ORIGIN.system_identifier}:16384:{S4}"


# Every live table


def test_wake_any_table_reads_every_live_table(feed: Feed) -> None:
    make_live(feed, "t1", S1)
    make_live(feed, "t2", S2)

    feed.wake(None)

    assert feed.due
    read = planned(feed)
    assert read.every_live_table
    assert not read.refresh
    assert sorted((r.table_id, r.since) for r in read.requests) == [("t1", S1), ("t2", S2)]
    assert {t: read.requests[k].table_id for t, k in read.live.items()} == {"t1": "t1", "t2": "t2"}


def test_wake_any_table_with_no_live_table_still_plans_a_read(feed: Feed) -> None:
    # By design: catching up after the LISTEN connection came back ends with a read.
    feed.wake(None)

    assert feed.due
    read = planned(feed)
    assert read.every_live_table
    assert read.requests == []
    assert read.live == {}
    assert read.joins == []
    assert feed.complete(read, result(S1)) == ([], [])
    assert feed.plan(ORIGIN, everyone) is None


def test_a_live_table_shares_its_request_between_wake_ups(feed: Feed) -> None:
    make_live(feed, "t1", S1)
    feed.wake("t1")
    feed.wake(None)
    feed.wake("t1")

    assert planned(feed).requests == [Request(0, "t1", S1)]


# Failed reads


def test_a_failed_read_takes_its_wake_ups_and_joins_back(feed: Feed) -> None:
    make_live(feed, "t1", S1)
    make_live(feed, "t2", S1)
    feed.wake("t1")
    first, second = join("t3", cursor(S1)), join("t4", "garbage")
    feed.join(first)
    feed.join(second)
    read = planned(feed)
    assert not feed.due

    feed.failed(read)
    newer = join("t1", snapshot=True)
    feed.join(newer)

    assert feed.due
    again = planned(feed)
    assert again.live == {"t1": 0}
    assert [j for j, _ in again.joins] == [first, second, newer]
    assert again.requests == [
        Request(0, "t1", S1),
        Request(1, "t3", S1, catch_up=True),
        Request(2, "t4", None),
        Request(3, "t1", None),
    ]
    assert second.reset == MALFORMED
    assert not again.every_live_table


def test_a_failed_read_of_every_live_table_is_planned_again(feed: Feed) -> None:
    make_live(feed, "t1", S1)
    feed.refresh()
    read = planned(feed)

    feed.failed(read)

    again = planned(feed)
    assert again.every_live_table
    assert again.refresh
    assert again.live == {"t1": 0}


def test_a_failed_read_with_no_live_table_is_planned_again(feed: Feed) -> None:
    feed.wake(None)

    feed.failed(planned(feed))

    assert planned(feed).every_live_table


def test_a_read_that_fails_then_completes_answers_each_join_once(feed: Feed) -> None:
    the_join = join("t1", snapshot=True)
    feed.join(the_join)
    feed.failed(planned(feed))

    _, answered = feed.complete(planned(feed), result(S1))

    assert answered == [(the_join, JoinResult(None, [], cursor(S1)))]
    assert feed.plan(ORIGIN, everyone) is None


# Cancelled joins


def test_cancel_removes_a_pending_join(feed: Feed) -> None:
    kept, cancelled = join("t1"), join("t2", snapshot=True)
    feed.join(kept)
    feed.join(cancelled)

    feed.cancel(cancelled)

    read = planned(feed)
    assert read.joins == [(kept, None)]
    assert read.requests == []


def test_cancel_of_the_only_join_leaves_nothing_due(feed: Feed) -> None:
    the_join = join("t1", snapshot=True)
    feed.join(the_join)

    feed.cancel(the_join)

    assert not feed.due
    assert feed.plan(ORIGIN, everyone) is None


def test_cancel_of_an_unknown_join_is_a_no_op(feed: Feed) -> None:
    the_join = join("t1")
    feed.join(the_join)

    feed.cancel(join("t1"))  # equal fields, another join
    feed.cancel(join("t2"))

    assert planned(feed).joins == [(the_join, None)]


# Live tables nobody subscribes to


def test_plan_drops_live_tables_nobody_subscribes_to(feed: Feed) -> None:
    for table_id in ("t1", "t2", "t3"):
        make_live(feed, table_id, S1)
    feed.wake(None)

    read = planned(feed, lambda table_id: table_id == "t2")

    assert read.live == {"t2": 0}
    assert read.requests == [Request(0, "t2", S1)]
    assert feed.live_tables == 1
    feed.wake("t1")
    feed.wake("t3")
    assert not feed.due


def test_plan_drops_an_unsubscribed_table_even_when_nothing_is_due(feed: Feed) -> None:
    make_live(feed, "t1", S1)

    assert feed.plan(ORIGIN, nobody) is None

    assert feed.live_tables == 0


def test_a_table_with_a_join_in_the_read_stays_live(feed: Feed) -> None:
    # The last subscriber left and a new one joins: nobody is subscribed while
    # the join waits, but the read that answers it makes the table live again.
    make_live(feed, "t1", S1)
    feed.wake("t1")
    the_join = join("t1", cursor(S1))
    feed.join(the_join)

    read = planned(feed, nobody)

    assert read.requests == [Request(0, "t1", S1, catch_up=True)]
    assert read.joins == [(the_join, 0)]
    _, answered = feed.complete(read, result(S2))
    assert answered == [(the_join, JoinResult(None, [], cursor(S2)))]
    assert feed.live_tables == 1
    feed.wake("t1")
    assert planned(feed).requests == [Request(0, "t1", S2)]


# Wake-ups during a read


def test_a_wake_up_during_a_read_of_a_live_table_is_kept(feed: Feed) -> None:
    make_live(feed, "t1", S1)
    feed.wake("t1")
    read = planned(feed)

    feed.wake("t1")  # a commit the running read may not see
    feed.complete(read, result(S2))

    assert planned(feed).requests == [Request(0, "t1", S2)]


def test_a_wake_up_during_the_read_that_makes_a_table_live_is_kept(feed: Feed) -> None:
    # The first subscriber of t1 joins. While its read runs, a transaction that
    # the read's snapshot does not see commits, and its wake-up arrives. The
    # read then makes t1 live as of that snapshot: unless the wake-up was kept,
    # the change waits for the next refresh (30 s by default) or the next
    # change of t1, although its wake-up reached the server in time.
    feed.join(join("t1"))
    read = planned(feed, nobody)

    feed.wake("t1")
    feed.complete(read, result(S2))

    assert feed.due
    assert planned(feed).requests == [Request(0, "t1", S2)]


# Every table


def every_table_live(feed: Feed, snapshot: str) -> None:
    feed.join(join(None))
    feed.complete(planned(feed, only_every_table), result(snapshot))


def test_a_join_of_every_table_reads_nothing_and_gets_the_reads_cursor(feed: Feed) -> None:
    the_join = join(None, cursor(S2), snapshot=True)
    feed.join(the_join)

    read = planned(feed, only_every_table)

    assert read.requests == []
    assert read.joins == [(the_join, None)]
    _, answered = feed.complete(read, result(S1))
    assert answered == [(the_join, JoinResult(None, [], cursor(S1)))]


def test_every_table_live_reads_a_woken_table_from_its_join(feed: Feed) -> None:
    every_table_live(feed, S1)

    feed.wake("t9")

    read = planned(feed, only_every_table)
    assert read.requests == [Request(0, "t9", S1)]
    assert read.live == {"t9": 0}
    the_change = change("t9", "a", 4)
    batches, _ = feed.complete(read, result(S2, [Row(0, the_change)]))
    assert [(b.table_id, b.changes, b.since, b.cursor) for b in batches] == [
        ("t9", [the_change], cursor(S1), cursor(S2))
    ]
    feed.wake("t9")
    assert planned(feed, only_every_table).requests == [Request(0, "t9", S2)]


def test_a_wake_up_during_a_join_of_every_table_is_kept(feed: Feed) -> None:
    feed.join(join(None))
    read = planned(feed, only_every_table)

    feed.wake("t5")
    feed.complete(read, result(S1))

    assert planned(feed, only_every_table).requests == [Request(0, "t5", S1)]


def test_a_wake_up_before_a_join_of_every_table_is_read_after_it(feed: Feed) -> None:
    feed.join(join(None))
    feed.wake("t5")

    read = planned(feed, only_every_table)
    assert read.requests == []
    feed.complete(read, result(S1))

    assert planned(feed, only_every_table).requests == [Request(0, "t5", S1)]


def test_a_refresh_reads_every_other_table_from_the_every_table_snapshot(feed: Feed) -> None:
    every_table_live(feed, S1)
    feed.wake("t9")
    feed.complete(planned(feed, only_every_table), result(S2))

    feed.refresh()
    read = planned(feed, only_every_table)

    assert read.requests == [Request(0, "t9", S2), Request(1, None, S1, exclude=("t9",))]
    assert read.every_table == 1
    found = [change("t3", "a", 7), change("t4", "b", 6), change("t3", "c", 5)]
    batches, _ = feed.complete(read, result(S3, [Row(1, c) for c in found]))
    assert [(b.table_id, [c.id for c in b.changes], b.since) for b in batches] == [
        ("t9", [], cursor(S2)),
        ("t3", ["c", "a"], cursor(S1)),
        ("t4", ["b"], cursor(S1)),
    ]
    # Every table is now at S3: t9 needs no snapshot of its own.
    feed.refresh()
    assert planned(feed, only_every_table).requests == [Request(0, None, S3)]


def test_a_table_joined_while_every_table_is_live_is_read_up_to_the_join(feed: Feed) -> None:
    every_table_live(feed, S1)
    the_join = join("t2", cursor(S2))
    feed.join(the_join)

    read = planned(feed, only_every_table)

    assert read.requests == [Request(0, "t2", S1), Request(1, "t2", S2, catch_up=True)]
    assert read.live == {"t2": 0}
    assert read.joins == [(the_join, 1)]
    early, late = change("t2", "a", 3), change("t2", "b", 8)
    batches, answered = feed.complete(read, result(S3, [Row(0, early), Row(0, late), Row(1, late)]))
    assert [(b.table_id, b.changes) for b in batches] == [("t2", [early, late])]
    assert answered == [(the_join, JoinResult(None, [late], cursor(S3)))]


def test_a_history_reset_of_every_table_only_moves_it_on(feed: Feed) -> None:
    every_table_live(feed, S1)
    feed.refresh()
    read = planned(feed, only_every_table)

    batches, _ = feed.complete(read, result(S2, resets={0: PRUNED}))

    assert batches == []
    feed.refresh()
    assert planned(feed, only_every_table).requests == [Request(0, None, S2)]


def test_without_every_table_subscribers_other_tables_are_not_read(feed: Feed) -> None:
    every_table_live(feed, S1)
    feed.wake("t9")
    feed.complete(planned(feed, only_every_table), result(S2))

    assert feed.plan(ORIGIN, nobody) is None
    feed.wake("t9")
    assert not feed.due
