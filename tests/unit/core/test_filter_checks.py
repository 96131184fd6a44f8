"""FilterChecks: which filters Postgres decides for which changes, and where the answers go."""

from __future__ import annotations

from broadcaster.core.changes import Change
from broadcaster.core.filter_checks import FilterCheck, FilterChecks
from broadcaster.core.hub import Batch
from broadcaster.core.published import Column, PublishedTable

TODOS = PublishedTable("public", "todos", (Column("id", "bigint", "int8"),), ("id",))
MESSAGES = PublishedTable("public", "messages", (Column("id", "bigint", "int8"),), ("id",))


def change(op: str, table: PublishedTable, version: int) -> Change:
    row = f'{{"id": {version}}}'
    old = f'{{"id": {version}, "old": true}}' if op != "INSERT" else None
    return Change(op, table.table_id, str(version), version, row, old)


def test_checks_are_counted_and_shared_by_table() -> None:
    checks = FilterChecks()
    done, five = FilterCheck(TODOS, "done=is.true"), FilterCheck(TODOS, "id=eq.5")
    checks.add(done)
    checks.add(five)
    checks.add(done)

    checks.remove(done)
    assert checks.on("public.todos") == (done, five)
    checks.remove(done)
    checks.remove(done)
    assert checks.on("public.todos") == (five,)
    checks.remove(five)
    assert checks.on("public.todos") == ()


def test_pending_asks_once_per_table_with_checks_and_once_per_change() -> None:
    checks = FilterChecks()
    check = FilterCheck(TODOS, "id=eq.1")
    checks.add(check)
    inserted, deleted = change("INSERT", TODOS, 1), change("DELETE", TODOS, 2)

    # The same entry read twice (a catch-up and a live request) is asked once.
    [pending] = checks.pending([inserted, change("INSERT", MESSAGES, 3), deleted, inserted])

    assert pending.table == TODOS
    assert pending.checks == (check,)
    assert pending.changes == (inserted, deleted)
    # A DELETE is checked on the row it removed.
    assert pending.images == [inserted.row_json, deleted.old_json]


def test_answers_hang_on_the_batches_of_their_table() -> None:
    checks = FilterChecks()
    one, two = FilterCheck(TODOS, "id=eq.1"), FilterCheck(TODOS, "id=eq.2")
    checks.add(one)
    checks.add(two)
    first, second = change("INSERT", TODOS, 1), change("UPDATE", TODOS, 2)
    [pending] = checks.pending([first, second])
    decided = FilterChecks.decided(pending, [[True, False], [False, True]])
    todos = Batch("public.todos", [second, first], "c2", since="c1")
    messages = Batch("public.messages", [change("INSERT", MESSAGES, 3)], "c2", since="c1")

    FilterChecks.attach([todos, messages], [pending], decided)

    assert todos.checks == {one: [False, True], two: [True, False]}
    assert messages.checks == {}
