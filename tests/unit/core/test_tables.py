"""broadcaster.core.tables: "every table" in Python, and as the database spells it."""

from __future__ import annotations

import pytest

from broadcaster.core.tables import EVERY_TABLE, from_database, ordered, to_database


def test_every_table_is_none() -> None:
    assert EVERY_TABLE is None


def test_the_database_spells_every_table_as_the_empty_string() -> None:
    # triggers.sql: the NOTIFY payload of a wake-up for every table, and the
    # broadcaster_listeners row of a process serving every table.
    assert to_database(EVERY_TABLE) == ""
    assert from_database("") is EVERY_TABLE


@pytest.mark.parametrize("table_id", ["t1", " ", "*", "0", "null", "x" * 8000])
def test_any_other_table_id_is_the_same_on_both_sides(table_id: str) -> None:
    assert to_database(table_id) == table_id
    assert from_database(table_id) == table_id
    assert from_database(to_database(table_id)) == table_id


def test_ordered_puts_every_table_first() -> None:
    assert ordered({"b", EVERY_TABLE, "a"}) == [EVERY_TABLE, "a", "b"]
    assert ordered([]) == []
