"""cached_hash: the hash of a frozen dataclass, computed once, equal for equal values."""

from __future__ import annotations

from dataclasses import dataclass

from broadcaster.core.hashing import cached_hash
from broadcaster.core.published import Column, PublishedTable


@dataclass(frozen=True)
class Pair:
    left: tuple[int, ...]
    right: str

    __hash__ = cached_hash


def test_equal_values_hash_alike_and_the_dataclass_keeps_the_cached_hash() -> None:
    first, second = Pair((1, 2), "a"), Pair((1, 2), "a")

    assert Pair.__dict__["__hash__"] is cached_hash
    assert first == second
    assert hash(first) == hash(second) == hash(((1, 2), "a"))
    assert hash(Pair((1, 2), "b")) != hash(first)


def test_the_hash_is_computed_once_and_stays_out_of_equality_and_repr() -> None:
    table = PublishedTable("public", "todos", (Column("id", "bigint", "int8"),), ("id",))
    again = PublishedTable("public", "todos", (Column("id", "bigint", "int8"),), ("id",))

    hash(table)

    assert table.__dict__["_cached_hash"] == hash(again)
    assert table == again
    assert "_cached_hash" not in repr(table)
