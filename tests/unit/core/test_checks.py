"""HeldChecks and Pending: which checks Postgres answers for which changes, and where."""

from __future__ import annotations

from broadcaster.core.changes import Change
from broadcaster.core.checks import FilterCheck, HeldChecks, LeftFilter, RowCheck, passed
from broadcaster.core.hub import Batch
from broadcaster.core.published import Column, PublishedTable
from broadcaster.core.visibility import Viewer

TODOS = PublishedTable("public", "todos", (Column("id", "bigint", "int8"),), ("id",))
MESSAGES = PublishedTable("public", "messages", (Column("id", "bigint", "int8"),), ("id",))
ADA = Viewer("authenticated", '{"role":"authenticated","sub":"ada"}')


def change(op: str, table: PublishedTable, version: int) -> Change:
    row = f'{{"id": {version}}}'
    old = f'{{"id": {version}, "old": true}}' if op != "INSERT" else None
    return Change(op, table.table_id, str(version), version, row, old)


def test_checks_are_counted_and_shared_by_table() -> None:
    checks = HeldChecks()
    done, ada = FilterCheck(TODOS, "done=is.true"), RowCheck(TODOS, ADA)
    checks.add(done)
    checks.add(ada)
    checks.add(done)

    checks.remove(done)
    assert checks.on("public.todos") == (done, ada)
    checks.remove(done)
    checks.remove(done)
    assert checks.on("public.todos") == (ada,)
    checks.remove(ada)
    assert checks.on("public.todos") == ()


def test_pending_asks_once_per_table_with_checks_and_once_per_change() -> None:
    checks = HeldChecks()
    check, row_check = FilterCheck(TODOS, "id=eq.1"), RowCheck(TODOS, ADA)
    checks.add(check)
    checks.add(row_check)
    inserted, deleted = change("INSERT", TODOS, 1), change("DELETE", TODOS, 2)

    # The same entry read twice (a catch-up and a live request) is asked once.
    [pending] = checks.pending([inserted, change("INSERT", MESSAGES, 3), deleted, inserted])

    assert pending.table == TODOS
    assert pending.filters == (check,)
    assert pending.rows == (row_check,)
    assert pending.changes == (inserted, deleted)
    # A DELETE is checked on the row it removed.
    assert pending.images == [inserted.row_json, deleted.old_json]


def test_answers_hang_on_the_batches_of_their_table() -> None:
    checks = HeldChecks()
    one, two, ada = (
        FilterCheck(TODOS, "id=eq.1"),
        FilterCheck(TODOS, "id=eq.2"),
        RowCheck(TODOS, ADA),
    )
    for check in (one, two, ada):
        checks.add(check)
    first, second = change("INSERT", TODOS, 1), change("UPDATE", TODOS, 2)
    [pending] = checks.pending([first, second])
    # The rows after each change, then the UPDATE's row before it.
    assert pending.images == [first.row_json, second.row_json, second.old_json]
    pending.answer_filters([[True, False], [False, True], [True, True]])
    pending.answer(ada, [False, True])
    todos = Batch("public.todos", [second, first], "c2", since="c1")
    messages = Batch("public.messages", [change("INSERT", MESSAGES, 3)], "c2", since="c1")

    pending.attach([todos, messages])

    assert todos.checks == {
        one: [False, True],
        two: [True, False],
        LeftFilter(one): [True, False],
        LeftFilter(two): [True, False],
        ada: [True, False],
    }
    assert messages.checks == {}
    assert passed(todos.checks, ada, 0)
    assert not passed(todos.checks, ada, 1)
    assert not passed(todos.checks, RowCheck(TODOS, Viewer("anon", "{}")), 0)


def test_a_snapshots_rows_are_asked_about_each_though_they_share_version_0() -> None:
    checks = HeldChecks()
    check = FilterCheck(TODOS, "id=eq.1")
    checks.add(check)
    one = Change("INSERT", "public.todos", "1", 0, '{"id": 1}')
    two = Change("INSERT", "public.todos", "2", 0, '{"id": 2}')

    [pending] = checks.pending([one, two])
    pending.answer_filters([[True], [False]])

    assert pending.changes == (one, two)
    assert pending.answers_for([two, one]) == {
        check: [False, True],
        LeftFilter(check): [False, False],
    }
