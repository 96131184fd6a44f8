"""broadcaster.postgres.catalog on a migrated database: tables read from Postgres' catalog."""

from __future__ import annotations

from collections.abc import AsyncIterator

import asyncpg
import pytest

from broadcaster.core.published import Column, PublishedTable
from broadcaster.core.publishing import Publication, RelationKind, Trigger
from broadcaster.exceptions import DatabaseError
from broadcaster.postgres import catalog


@pytest.fixture
async def db(database_url: str) -> AsyncIterator[asyncpg.Connection]:
    conn = await asyncpg.connect(database_url)
    yield conn
    await conn.close()


async def publish_by_hand(db: asyncpg.Connection, table: str, *arguments: str) -> None:
    quoted = ", ".join(f"'{argument}'" for argument in arguments)
    await db.execute(
        f"CREATE TRIGGER broadcaster_capture AFTER INSERT OR UPDATE OR DELETE ON {table}"
        f" FOR EACH ROW EXECUTE FUNCTION broadcaster_capture({quoted})"
    )
    await db.execute(
        f"CREATE TRIGGER broadcaster_capture_truncate BEFORE TRUNCATE ON {table}"
        f" FOR EACH STATEMENT EXECUTE FUNCTION broadcaster_capture_truncate({quoted})"
    )


async def test_a_table_is_read_with_its_columns_in_order_typed_and_its_key_in_key_order(
    db: asyncpg.Connection,
) -> None:
    await db.execute("CREATE TYPE mood AS ENUM ('ok', 'sad')")
    await db.execute(
        "CREATE TABLE items (gone int, a int, b varchar(10), price numeric(5, 2),"
        " tags text[], at timestamptz, feeling mood, PRIMARY KEY (b, a))"
    )
    await db.execute("ALTER TABLE items DROP COLUMN gone")
    await db.execute("ALTER TABLE items ENABLE ROW LEVEL SECURITY")

    relation = await catalog.relation(db, "items")

    assert relation is not None
    assert relation.table == PublishedTable(
        "public",
        "items",
        (
            Column("a", "integer", "int4"),
            Column("b", "character varying(10)", "varchar"),
            Column("price", "numeric(5,2)", "numeric"),
            Column("tags", "text[]", "_text"),
            Column("at", "timestamp with time zone", "timestamptz"),
            Column("feeling", "mood", "mood"),
        ),
        ("b", "a"),
        row_security=True,
    )
    assert relation.sql_name == "public.items"
    assert relation.kind is RelationKind.TABLE
    assert relation.partition_of is None
    assert relation.capture is None
    assert relation.truncate_capture is None


async def test_names_resolve_as_postgres_resolves_them(db: asyncpg.Connection) -> None:
    await db.execute('CREATE SCHEMA "App"')
    await db.execute('CREATE TABLE "App"."My Table" (id int PRIMARY KEY)')
    await db.execute("CREATE SCHEMA hidden")
    await db.execute("CREATE TABLE hidden.only_here (id int PRIMARY KEY)")

    quoted = await catalog.relation(db, '"App"."My Table"')
    assert quoted is not None
    assert (quoted.table.schema, quoted.table.name) == ("App", "My Table")
    assert quoted.table.table_id == "App.My Table"
    assert quoted.sql_name == '"App"."My Table"'
    # Unquoted parts fold to lower case: there is no app.my table.
    assert await catalog.relation(db, "App.MyTable") is None
    # An unqualified name is looked up in search_path.
    assert await catalog.relation(db, "only_here") is None
    await db.execute("SET search_path = hidden, public")
    found = await catalog.relation(db, "only_here")
    assert found is not None
    assert found.table.table_id == "hidden.only_here"
    assert await catalog.relation(db, "ROWS") is not None


@pytest.mark.parametrize(
    "name", ["", "nosuch", "nosuch.items", "a.b.c.d", '"unterminated', "otherdb.public.rows"]
)
async def test_what_names_no_relation_is_none(db: asyncpg.Connection, name: str) -> None:
    assert await catalog.relation(db, name) is None


async def test_kinds_and_partitions(db: asyncpg.Connection) -> None:
    await db.execute(
        "CREATE TABLE m (id int, day date, PRIMARY KEY (id, day)) PARTITION BY RANGE (day)"
    )
    await db.execute(
        "CREATE TABLE m_2026 PARTITION OF m FOR VALUES FROM ('2026-01-01') TO ('2027-01-01')"
    )
    await db.execute("CREATE VIEW v AS SELECT 1 AS one")
    await db.execute("CREATE MATERIALIZED VIEW mv AS SELECT 1 AS one")
    await db.execute("CREATE SEQUENCE s")

    kinds: dict[str, RelationKind] = {}
    for name in ("m", "m_2026", "v", "mv", "s", "rows_pkey"):
        relation = await catalog.relation(db, name)
        assert relation is not None
        kinds[name] = relation.kind
    assert kinds == {
        "m": RelationKind.PARTITIONED_TABLE,
        "m_2026": RelationKind.TABLE,
        "v": RelationKind.VIEW,
        "mv": RelationKind.MATERIALIZED_VIEW,
        "s": RelationKind.OTHER,
        "rows_pkey": RelationKind.OTHER,
    }
    partition = await catalog.relation(db, "m_2026")
    assert partition is not None
    assert partition.partition_of == "public.m"
    assert partition.table.key == ("id", "day")


async def test_published_tables_are_those_with_the_capture_trigger(db: asyncpg.Connection) -> None:
    await db.execute("CREATE TABLE items (id bigint PRIMARY KEY, name text)")
    await db.execute("CREATE TABLE plain (id bigint PRIMARY KEY)")
    await db.execute("CREATE TABLE m (id int, r text, PRIMARY KEY (id, r)) PARTITION BY LIST (r)")
    await db.execute("CREATE TABLE m_a PARTITION OF m FOR VALUES IN ('a')")
    await publish_by_hand(db, "items", "", "id")
    await publish_by_hand(db, "m", "=public.m", "id", "r")

    items = await catalog.relation(db, "items")
    assert items is not None
    assert items.capture == Trigger("broadcaster_capture", ("", "id"))
    assert items.truncate_capture == Trigger("broadcaster_capture_truncate", ("", "id"))

    listed = await catalog.published_tables(db)

    assert [(p.table.table_id, p.table_id, p.table_id_column) for p in listed] == [
        ("public.items", "public.items", None),
        ("public.m", "public.m", None),
        ("public.rows", None, "table_id"),
    ]
    assert listed[1] == Publication(
        PublishedTable(
            "public",
            "m",
            (Column("id", "integer", "int4"), Column("r", "text", "text")),
            ("id", "r"),
        ),
        "public.m",
        partitioned=True,
    )
    assert listed[0].current
    assert listed[2].current

    assert await catalog.published_table(db, "items") == items.table
    assert await catalog.published_table(db, "plain") is None
    # A partition carries its table's trigger, cloned: it is not published itself.
    assert await catalog.published_table(db, "m_a") is None
    assert await catalog.published_table(db, "nosuch") is None
    rows = await catalog.published_table(db, "rows")
    assert rows is not None
    assert rows.key == ("id",)


async def test_published_tables_are_looked_up_by_their_table_id(db: asyncpg.Connection) -> None:
    await db.execute('CREATE SCHEMA "App"')
    await db.execute('CREATE TABLE "App"."My Items" (id int PRIMARY KEY)')
    await db.execute("CREATE TABLE plain (id int PRIMARY KEY)")
    await db.execute("CREATE TABLE m (id int, r text, PRIMARY KEY (id, r)) PARTITION BY LIST (r)")
    await publish_by_hand(db, '"App"."My Items"', "", "id")
    await publish_by_hand(db, "m", "=public.m", "id", "r")

    found = await catalog.published_table_at(db, "App", "My Items")
    assert found is not None
    assert found.table_id == "App.My Items"
    assert await catalog.published_table_at(db, "app", "my items") is None
    assert await catalog.published_table_at(db, "public", "plain") is None
    assert await catalog.published_table_at(db, "public", "nosuch") is None
    # rows' changes are each logged under the row's table_id, never public.rows.
    assert await catalog.published_table_at(db, "public", "rows") is None
    assert await catalog.published_table_at(db, "public", "m") is not None
    # Renamed, a partitioned table is still logged under its old name.
    await db.execute("ALTER TABLE m RENAME TO m2")
    assert await catalog.published_table_at(db, "public", "m2") is None

    in_app = await catalog.published_tables(db, "App")
    assert [p.table.table_id for p in in_app] == ["App.My Items"]
    assert await catalog.published_tables(db, "nosuch") == []


async def test_a_failing_connection_raises_database_error(database_url: str) -> None:
    conn = await asyncpg.connect(database_url)
    await conn.close()

    with pytest.raises(DatabaseError):
        await catalog.relation(conn, "rows")
    with pytest.raises(DatabaseError):
        await catalog.published_tables(conn)
    with pytest.raises(DatabaseError):
        await catalog.published_table_at(conn, "public", "rows")
