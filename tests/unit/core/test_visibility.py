"""broadcaster.core.visibility: viewers, which changes are checked, which columns are seen."""

from __future__ import annotations

import json
from typing import Any

import pytest

from broadcaster.core.changes import Change
from broadcaster.core.members import only_members
from broadcaster.core.published import Column, PublishedTable
from broadcaster.core.visibility import (
    KeyPlan,
    Viewer,
    by_viewer,
    checked,
    plan,
    viewer,
    visible_columns,
)

NOTES = PublishedTable(
    "public",
    "notes",
    (
        Column("id", "bigint", "int8"),
        Column("owner", "uuid", "uuid"),
        Column("body", "text", "text"),
    ),
    ("id",),
    row_security=True,
)
OPEN = PublishedTable("public", "open", NOTES.columns, ("id",), row_security=False)
PAIRS = PublishedTable(
    "public",
    "pairs",
    (Column("a", "integer", "int4"), Column("b", "text", "text"), Column("body", "text", "text")),
    ("a", "b"),
    row_security=True,
)


def change(op: str, key: str) -> Change:
    return Change(op, NOTES.table_id, key, 1, "{}")


# Viewers


def test_a_viewer_is_the_role_claim_and_every_claim_as_json() -> None:
    claims = {"sub": "u1", "role": "authenticated", "exp": 1700000000, "app": {"org": 3}}
    found = viewer(claims)
    assert found == Viewer(
        "authenticated", json.dumps(claims, sort_keys=True, separators=(",", ":"))
    )
    assert found is not None
    assert json.loads(found.claims) == claims


def test_equal_claims_in_any_order_are_one_viewer() -> None:
    first = viewer({"role": "authenticated", "sub": "u1"})
    second = viewer({"sub": "u1", "role": "authenticated"})
    assert first == second
    assert hash(first) == hash(second)


def test_other_claims_are_another_viewer() -> None:
    assert viewer({"role": "authenticated", "sub": "u1"}) != viewer(
        {"role": "authenticated", "sub": "u2"}
    )
    assert viewer({"role": "anon"}) != viewer({"role": "authenticated"})


@pytest.mark.parametrize(
    "claims",
    [
        {},
        {"sub": "u1"},
        {"role": None},
        {"role": ""},
        {"role": 7},
        {"role": ["authenticated"]},
        {"role": "none"},
        {"role": "a\x00b"},
        {"role": "r" * 64},
        {"role": "é" * 32},
        {"role": "\ud800"},
        {"role": "authenticated", "score": float("nan")},
        {"role": "authenticated", "score": float("inf")},
    ],
)
def test_claims_that_name_no_role_to_check_as_have_no_viewer(claims: dict[str, Any]) -> None:
    assert viewer(claims) is None


def test_a_role_of_63_bytes_is_a_viewer() -> None:
    assert viewer({"role": "r" * 63}) == Viewer("r" * 63, '{"role":"' + "r" * 63 + '"}')


def test_a_role_other_than_none_in_any_case_is_a_viewer() -> None:
    # Postgres reads only the lowercase name as "no role".
    assert viewer({"role": "NONE"}) is not None


def test_claims_are_ascii_so_a_lone_surrogate_stays_an_escape() -> None:
    found = viewer({"role": "anon", "name": "é\ud800"})
    assert found is not None
    assert found.claims == '{"name":"\\u00e9\\ud800","role":"anon"}'


def test_subscribers_are_grouped_by_viewer() -> None:
    user = {"role": "authenticated", "sub": "u1"}
    groups = by_viewer(
        [
            ("a", user),
            ("b", {"role": "anon"}),
            ("c", dict(reversed(list(user.items())))),
            ("d", {"sub": "u1"}),
            ("e", {"role": ""}),
        ]
    )
    assert groups == {
        viewer(user): ["a", "c"],
        viewer({"role": "anon"}): ["b"],
        None: ["d", "e"],
    }


def test_no_subscribers_no_viewers() -> None:
    assert by_viewer([]) == {}


# Which changes are checked


@pytest.mark.parametrize(
    ("op", "expected"), [("INSERT", True), ("UPDATE", True), ("DELETE", False)]
)
def test_inserts_and_updates_of_a_table_with_row_security_are_checked(
    op: str, expected: bool
) -> None:
    assert checked(NOTES, op) is expected
    assert checked(OPEN, op) is False


def test_a_plan_checks_each_key_once_in_order() -> None:
    changes = [
        change("INSERT", "5"),
        change("UPDATE", "3"),
        change("DELETE", "9"),
        change("UPDATE", "5"),
        change("DELETE", "5"),
    ]
    checks = plan(NOTES, changes)
    assert checks == KeyPlan(("5", "3"), (0, 1, None, 0, None))


def test_a_viewer_gets_the_unchecked_changes_and_those_of_the_rows_it_sees() -> None:
    checks = plan(
        NOTES,
        [
            change("INSERT", "5"),
            change("UPDATE", "3"),
            change("DELETE", "9"),
            change("UPDATE", "5"),
        ],
    )
    assert checks.delivered({1}) == [False, True, True, False]
    assert checks.delivered({0, 1}) == [True, True, True, True]
    assert checks.delivered(set()) == [False, False, True, False]


def test_a_table_without_row_security_needs_no_check() -> None:
    checks = plan(OPEN, [change("INSERT", "5"), change("UPDATE", "3")])
    assert checks == KeyPlan((), (None, None))
    assert checks.delivered(set()) == [True, True]


def test_a_composite_key_is_checked_as_logged() -> None:
    changes = [
        Change("INSERT", PAIRS.table_id, '[1, "x"]', 1, "{}"),
        Change("UPDATE", PAIRS.table_id, '[1, "x"]', 2, "{}"),
        Change("INSERT", PAIRS.table_id, '[2, "x"]', 3, "{}"),
    ]
    assert plan(PAIRS, changes) == KeyPlan(('[1, "x"]', '[2, "x"]'), (0, 0, 1))


def test_an_empty_read_plans_nothing() -> None:
    assert plan(NOTES, []) == KeyPlan((), ())


# Columns


def test_a_viewer_sees_the_columns_its_role_may_select() -> None:
    selectable = frozenset({"id", "body"})
    for op in ("INSERT", "UPDATE"):
        assert visible_columns(NOTES, op, selectable) == selectable
    assert visible_columns(OPEN, "DELETE", selectable) == selectable


def test_a_delete_under_row_security_keeps_only_the_key() -> None:
    assert visible_columns(NOTES, "DELETE", {"id", "owner", "body"}) == {"id"}
    assert visible_columns(PAIRS, "DELETE", {"a", "b", "body"}) == {"a", "b"}


def test_a_delete_keeps_only_the_key_columns_its_role_may_select() -> None:
    assert visible_columns(PAIRS, "DELETE", {"b", "body"}) == {"b"}
    assert visible_columns(NOTES, "DELETE", set()) == frozenset()


def test_an_image_is_cut_to_the_visible_columns() -> None:
    old = '{"id": 5, "owner": "6c1f0d2e-0000-4000-8000-000000000000", "body": "secret"}'
    assert only_members(old, visible_columns(NOTES, "DELETE", {"id", "owner", "body"})) == (
        '{"id": 5}'
    )
    assert only_members(old, visible_columns(NOTES, "UPDATE", {"id", "body"})) == (
        '{"id": 5, "body": "secret"}'
    )
