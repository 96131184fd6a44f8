"""Unit tests for broadcaster.core.publishing: plans, refusals, publications, table lists."""

from __future__ import annotations

import dataclasses

import pytest

from broadcaster.core.published import Column, PublishedTable
from broadcaster.core.publishing import (
    CAPTURE_FUNCTION,
    ROWS_FUNCTION,
    TRUNCATE_FUNCTION,
    Action,
    Publication,
    Relation,
    RelationKind,
    Trigger,
    capture_arguments,
    plan_publish,
    plan_unpublish,
    publication,
    table_names,
)

ITEMS = Relation(
    PublishedTable(
        "public",
        "items",
        (Column("id", "bigint", "int8"), Column("name", "text", "text")),
        ("id",),
    ),
    sql_name="public.items",
)
PAIRS = Relation(
    PublishedTable(
        "app", "Pairs", (Column("a", "integer", "int4"), Column("b", "text", "text")), ("a", "b")
    ),
    sql_name='app."Pairs"',
)
MEASURES = Relation(
    PublishedTable(
        "public",
        "measures",
        (Column("id", "integer", "int4"), Column("day", "date", "date")),
        ("id", "day"),
    ),
    sql_name="public.measures",
    kind=RelationKind.PARTITIONED_TABLE,
)
ROWS = Relation(
    PublishedTable(
        "public",
        "rows",
        (Column("id", "text", "text"), Column("table_id", "text", "text")),
        ("id",),
    ),
    sql_name="public.rows",
    capture=Trigger(ROWS_FUNCTION),
    truncate_capture=Trigger(TRUNCATE_FUNCTION, ("table_id", "id")),
)


def published(relation: Relation) -> Relation:
    """``relation`` with the triggers publishing it creates."""
    arguments = capture_arguments(relation)
    return dataclasses.replace(
        relation,
        capture=Trigger(CAPTURE_FUNCTION, arguments),
        truncate_capture=Trigger(TRUNCATE_FUNCTION, arguments),
    )


def with_key(relation: Relation, *key: str) -> Relation:
    return dataclasses.replace(relation, table=dataclasses.replace(relation.table, key=key))


def test_a_table_logs_under_its_own_name_and_a_partitioned_one_under_the_name_it_is_given() -> None:
    assert capture_arguments(ITEMS) == ("", "id")
    assert capture_arguments(PAIRS) == ("", "a", "b")
    assert capture_arguments(MEASURES) == ("=public.measures", "id", "day")


def test_publishing_a_table_creates_both_triggers_with_its_key() -> None:
    plan = plan_publish("items", ITEMS)

    assert plan.outcome.action is Action.PUBLISHED
    assert plan.outcome.table == "public.items"
    assert plan.outcome.message == "public.items: published, key: id"
    assert plan.statements == (
        "CREATE TRIGGER broadcaster_capture AFTER INSERT OR UPDATE OR DELETE ON public.items"
        " FOR EACH ROW EXECUTE FUNCTION broadcaster_capture('', 'id')",
        "CREATE TRIGGER broadcaster_capture_truncate BEFORE TRUNCATE ON public.items"
        " FOR EACH STATEMENT EXECUTE FUNCTION broadcaster_capture_truncate('', 'id')",
    )


def test_a_partitioned_table_is_published_with_its_identity() -> None:
    plan = plan_publish("measures", MEASURES)

    assert plan.outcome.message == "public.measures: published with its partitions, key: id, day"
    assert all("('=public.measures', 'id', 'day')" in s for s in plan.statements)


def test_arguments_are_quoted_as_literals() -> None:
    odd = with_key(ITEMS, "it's", "back\\slash")

    (create, _) = plan_publish("items", odd).statements

    assert create.endswith("broadcaster_capture('', 'it''s', E'back\\\\slash')")


def test_publishing_a_published_table_does_nothing() -> None:
    plan = plan_publish("items", published(ITEMS))

    assert plan.outcome.action is Action.ALREADY_PUBLISHED
    assert plan.outcome.message == "public.items: already published, key: id"
    assert plan.statements == ()
    assert not plan.outcome.changed


def test_a_changed_key_recreates_the_triggers() -> None:
    before = published(ITEMS)
    after = with_key(before, "id", "name")

    plan = plan_publish("items", after)

    assert plan.outcome.action is Action.REPUBLISHED
    assert "key: id, name" in plan.outcome.message
    assert plan.statements[:2] == (
        "DROP TRIGGER IF EXISTS broadcaster_capture ON public.items",
        "DROP TRIGGER IF EXISTS broadcaster_capture_truncate ON public.items",
    )
    assert "broadcaster_capture('', 'id', 'name')" in plan.statements[2]


def test_a_missing_truncate_trigger_is_recreated() -> None:
    half = dataclasses.replace(published(ITEMS), truncate_capture=None)

    plan = plan_publish("items", half)

    assert plan.outcome.action is Action.REPUBLISHED
    assert plan.statements[0] == "DROP TRIGGER IF EXISTS broadcaster_capture ON public.items"
    assert len(plan.statements) == 3


def test_a_renamed_partitioned_table_is_republished_under_its_new_name() -> None:
    renamed = dataclasses.replace(
        published(MEASURES), table=dataclasses.replace(MEASURES.table, name="readings")
    )
    assert publication(renamed) == Publication(
        renamed.table, "public.measures", partitioned=True, current=False
    )

    plan = plan_publish("readings", renamed)

    assert plan.outcome.action is Action.REPUBLISHED
    assert "'=public.readings'" in plan.statements[-1]


@pytest.mark.parametrize(
    ("relation", "expected"),
    [
        (
            with_key(ITEMS),
            "public.items has no primary key: add one (ALTER TABLE public.items ADD PRIMARY KEY"
            " (...)) so that its changes can be identified",
        ),
        (
            dataclasses.replace(ITEMS, kind=RelationKind.VIEW),
            "public.items is a view: only tables can be published; publish the tables it reads",
        ),
        (
            dataclasses.replace(ITEMS, kind=RelationKind.FOREIGN_TABLE),
            "public.items is a foreign table, whose rows change on another server:"
            " only tables can be published",
        ),
        (
            dataclasses.replace(ITEMS, kind=RelationKind.MATERIALIZED_VIEW),
            "public.items is a materialized view, whose refresh fires no row triggers:"
            " only tables can be published",
        ),
        (
            dataclasses.replace(ITEMS, kind=RelationKind.OTHER),
            "public.items is not a table (a sequence, an index or a type):"
            " only tables can be published",
        ),
        (
            dataclasses.replace(ITEMS, partition_of="public.measures"),
            "public.items is a partition of public.measures: publish public.measures,"
            " whose changes are its partitions'",
        ),
        (
            dataclasses.replace(
                ITEMS, table=dataclasses.replace(ITEMS.table, schema="pg_catalog", name="pg_class")
            ),
            "pg_catalog.pg_class is a system catalog: only your own tables can be published",
        ),
        (
            dataclasses.replace(
                ITEMS, table=dataclasses.replace(ITEMS.table, name="broadcaster_changes")
            ),
            "public.broadcaster_changes is the broadcaster's own table: it cannot be published",
        ),
        (
            dataclasses.replace(
                ITEMS, table=dataclasses.replace(ITEMS.table, name="a.b"), sql_name='public."a.b"'
            ),
            'the name of public."a.b" holds a dot, which would make its table_id public.a.b'
            ' ambiguous: rename it without one (ALTER TABLE public."a.b" RENAME TO ...)',
        ),
        (
            dataclasses.replace(ITEMS, capture=Trigger("audit")),
            "public.items has a trigger broadcaster_capture that calls audit(), not the"
            " broadcaster's: rename or drop it (ALTER TRIGGER broadcaster_capture ON"
            " public.items RENAME TO ...), then publish again",
        ),
    ],
    ids=[
        "no-key",
        "view",
        "foreign",
        "matview",
        "sequence",
        "partition",
        "catalog",
        "own",
        "dot",
        "foreign-trigger",
    ],
)
def test_refusals_say_why_and_what_to_do(relation: Relation, expected: str) -> None:
    plan = plan_publish("x", relation)

    assert plan.outcome.refused
    assert plan.outcome.message == expected
    assert plan.statements == ()


def test_a_missing_table_is_refused_under_the_name_given() -> None:
    plan = plan_publish("Items", None)

    assert plan.outcome.refused
    assert plan.outcome.table == "Items"
    assert plan.outcome.message.startswith("Items: no such table (")
    assert '"My Table"' in plan.outcome.message
    assert plan_unpublish("Items", None).outcome.refused


def test_rows_is_published_by_migrate_and_never_unpublished() -> None:
    plan = plan_publish("rows", ROWS)
    assert plan.outcome.action is Action.ALREADY_PUBLISHED
    assert "broadcaster migrate" in plan.outcome.message
    assert plan.statements == ()

    plan = plan_unpublish("rows", ROWS)
    assert plan.outcome.refused
    assert plan.outcome.message == (
        "public.rows is the broadcaster's rows table: broadcaster migrate publishes it,"
        " and it cannot be unpublished"
    )

    # Without its trigger, it is still not published as a table of its own.
    bare = dataclasses.replace(ROWS, capture=None, truncate_capture=None)
    plan = plan_publish("rows", bare)
    assert plan.outcome.refused
    assert "run broadcaster migrate" in plan.outcome.message


def test_unpublishing_drops_both_triggers_and_is_idempotent() -> None:
    plan = plan_unpublish("items", published(ITEMS))
    assert plan.outcome.action is Action.UNPUBLISHED
    assert plan.outcome.message == (
        "public.items: unpublished (the changes logged so far stay in the log until pruned)"
    )
    assert plan.statements == (
        "DROP TRIGGER IF EXISTS broadcaster_capture ON public.items",
        "DROP TRIGGER IF EXISTS broadcaster_capture_truncate ON public.items",
    )

    plan = plan_unpublish("items", ITEMS)
    assert plan.outcome.action is Action.NOT_PUBLISHED
    assert plan.statements == ()


def test_unpublishing_leaves_a_trigger_that_is_not_ours() -> None:
    plan = plan_unpublish("items", dataclasses.replace(ITEMS, capture=Trigger("audit")))

    assert plan.outcome.action is Action.NOT_PUBLISHED


def test_unpublishing_a_partition_names_its_table() -> None:
    plan = plan_unpublish("m1", dataclasses.replace(ITEMS, partition_of="public.measures"))

    assert plan.outcome.refused
    assert "unpublish public.measures" in plan.outcome.message


def test_publications_say_where_changes_are_logged() -> None:
    assert publication(ITEMS) is None
    assert publication(dataclasses.replace(ITEMS, capture=Trigger("audit"))) is None
    assert publication(published(ITEMS)) == Publication(ITEMS.table, "public.items")
    assert publication(published(MEASURES)) == Publication(
        MEASURES.table, "public.measures", partitioned=True
    )
    assert publication(ROWS) == Publication(ROWS.table, None, table_id_column="table_id")
    # The generic function given a column, as revision 0007 gave rows.
    by_column = dataclasses.replace(ROWS, capture=Trigger(CAPTURE_FUNCTION, ("table_id", "id")))
    assert publication(by_column) == Publication(
        ROWS.table, None, table_id_column="table_id", current=False
    )


def test_publications_describe_themselves_in_one_line() -> None:
    assert Publication(ITEMS.table, "public.items").describe() == "public.items (key: id)"
    assert (
        Publication(MEASURES.table, "public.measures", partitioned=True).describe()
        == "public.measures (key: id, day; partitioned)"
    )
    assert Publication(ROWS.table, None, table_id_column="table_id").describe() == (
        "public.rows (key: id; each row logged under its table_id column;"
        " published by broadcaster migrate)"
    )
    renamed = dataclasses.replace(MEASURES.table, name="readings")
    assert Publication(renamed, "public.measures", partitioned=True, current=False).describe() == (
        "public.readings (key: id, day; partitioned; logged as public.measures;"
        " out of date: publish it again)"
    )


@pytest.mark.parametrize(
    ("raw", "names"),
    [
        ("", ()),
        ("items", ("items",)),
        (" public.items , app.orders,", ("public.items", "app.orders")),
        ('"a,b", "Weird ""q"", name"', ('"a,b"', '"Weird ""q"", name"')),
        (",, ,", ()),
    ],
)
def test_table_names_split_on_commas_outside_quotes(raw: str, names: tuple[str, ...]) -> None:
    assert table_names(raw) == names


def test_an_open_quote_is_refused() -> None:
    with pytest.raises(ValueError, match="double quote is left open"):
        table_names('"a, b')


def test_relation_kinds_from_relkind() -> None:
    assert RelationKind.of("r") is RelationKind.TABLE
    assert RelationKind.of("p") is RelationKind.PARTITIONED_TABLE
    assert RelationKind.of("v") is RelationKind.VIEW
    assert RelationKind.of("S") is RelationKind.OTHER
    assert RelationKind.of("i") is RelationKind.OTHER
