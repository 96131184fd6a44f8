"""Track the writing transaction of every change, for snapshot-consistent delivery.

Adds to ``rows`` the nullable ``changed_xid`` and ``inserted_xid`` (xid8) and
the index on ``(table_id, changed_xid)``, which replaces ``rows_table_id_idx``;
creates ``broadcaster_tombstones`` (one row per deletion, so that a read can
report rows that are gone) and ``broadcaster_state`` with its single row.
Existing rows keep NULL in the new columns: they predate the tracking. No
row of ``rows`` is rewritten.

Like 0001 this may run on a database that already has some of these objects,
so each step reads the catalog first and only adds what is missing; on a
database that has them all it takes no lock that a writer waits for. Indexes
on ``rows`` and on an existing tombstones table, which may be large, are built
and dropped CONCURRENTLY. Needs Postgres 13 (xid8).

Revision ID: 0002
Revises: 0001
Create Date: 2025-12-03
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import NamedTuple

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | tuple[str, ...] | None = "0001"
branch_labels: str | tuple[str, ...] | None = None
depends_on: str | tuple[str, ...] | None = None

logger = logging.getLogger("broadcaster.migrations")

# xid8 and pg_current_xact_id() appeared in Postgres 13.
MINIMUM_SERVER_VERSION_NUM = 130000


class Column(NamedTuple):
    type: str  # spelled as format_type() spells it, to compare with the catalog
    not_null: bool
    default: str | None


class Index(NamedTuple):
    name: str
    table: str
    columns: tuple[str, ...]

    def create(self, *, concurrently: bool) -> str:
        how = " CONCURRENTLY" if concurrently else ""
        return f"CREATE INDEX{how} {self.name} ON {self.table} ({', '.join(self.columns)})"


# The tables as of this revision; later revisions change them in files of their own.
ROWS_COLUMNS = {
    "changed_xid": Column("xid8", False, None),
    "inserted_xid": Column("xid8", False, None),
}
TOMBSTONE_COLUMNS = {
    "table_id": Column("text", True, None),
    "id": Column("text", True, None),
    "version": Column("bigint", True, None),
    "xid": Column("xid8", True, None),
    "deleted_at": Column("timestamp with time zone", True, "now()"),
}
STATE_COLUMNS = {
    "singleton": Column("boolean", True, "true"),
    "pruned_below": Column("xid8", True, "'1'::xid8"),
}

CHANGED_XID_INDEX = Index("rows_table_id_changed_xid_idx", "rows", ("table_id", "changed_xid"))
# Superseded by CHANGED_XID_INDEX, whose leading column serves the same lookups.
TABLE_ID_INDEX = "rows_table_id_idx"
TOMBSTONE_INDEXES = (
    Index("broadcaster_tombstones_table_id_xid_idx", "broadcaster_tombstones", ("table_id", "xid")),
    Index("broadcaster_tombstones_deleted_at_idx", "broadcaster_tombstones", ("deleted_at",)),
)


def upgrade() -> None:
    bind = op.get_bind()
    _require_server_version(bind)

    # Everything that needs the migration's transaction comes first: the
    # concurrent index builds below commit it.
    concurrent: list[Index] = [CHANGED_XID_INDEX]
    if _relation_exists(bind, "broadcaster_tombstones"):
        _check_existing_table(bind, "broadcaster_tombstones", TOMBSTONE_COLUMNS)
        if not _primary_key(bind, "broadcaster_tombstones"):
            # Adding the identity column now would rewrite the table.
            logger.warning(
                "broadcaster_tombstones has no primary key; left as it is. Pruning it fails"
                " while a publication replicates its deletes."
            )
        concurrent.extend(TOMBSTONE_INDEXES)
    else:
        _create_tombstones()
    if _relation_exists(bind, "broadcaster_state"):
        _check_existing_table(bind, "broadcaster_state", STATE_COLUMNS)
    else:
        _create_state()
    if not bind.execute(sa.text("SELECT EXISTS (SELECT FROM broadcaster_state)")).scalar():
        # ON CONFLICT: another session may have added it since the check.
        op.execute("INSERT INTO broadcaster_state DEFAULT VALUES ON CONFLICT DO NOTHING")
    # Last, so that the brief ACCESS EXCLUSIVE lock on rows is held as
    # shortly as possible before the commit.
    _add_rows_columns(bind)

    valid = {index.name: _index_is_valid(bind, index) for index in concurrent}
    # A concurrent build that failed leaves an invalid index behind; a second
    # CREATE would fail on its name.
    _run_concurrently(
        f"DROP INDEX CONCURRENTLY {index.name}"
        for index in concurrent
        if valid[index.name] is False
    )
    _run_concurrently(
        index.create(concurrently=True) for index in concurrent if not valid[index.name]
    )
    # Only once the replacement is valid, so that lookups by table_id never
    # fall back to scanning rows.
    if _index_exists(bind, "rows", TABLE_ID_INDEX):
        _run_concurrently([f"DROP INDEX CONCURRENTLY IF EXISTS {TABLE_ID_INDEX}"])


def downgrade() -> None:
    raise NotImplementedError(
        "revision 0002 is not reversible: the triggers write the columns and tables it adds,"
        " and broadcaster_tombstones may hold deletions no client has seen yet"
    )


def _require_server_version(bind: sa.Connection) -> None:
    # broadcaster.postgres.migrate.migrate() checks this before any revision runs; this
    # covers the alembic command line, with a clearer message than "type xid8
    # does not exist".
    version_num = int(bind.execute(sa.text("SHOW server_version_num")).scalar_one())
    if version_num < MINIMUM_SERVER_VERSION_NUM:
        version = bind.execute(sa.text("SHOW server_version")).scalar_one()
        raise RuntimeError(
            f"Postgres {version} is too old: the broadcaster needs Postgres"
            f" {MINIMUM_SERVER_VERSION_NUM // 10000} or later (xid8, pg_current_xact_id)"
        )


def _add_rows_columns(bind: sa.Connection) -> None:
    existing = _columns(bind, "rows")
    mismatched = [
        f"rows.{name} is {existing[name]}, not {column.type}"
        for name, column in ROWS_COLUMNS.items()
        if name in existing and existing[name] != column.type
    ]
    if mismatched:
        raise RuntimeError(
            f"cannot track transactions in the existing rows table: {'; '.join(mismatched)}."
            " Convert or rename the columns and migrate again."
        )
    # Nullable and without a default, so Postgres only records them in the
    # catalog: no row is rewritten, and existing rows read NULL.
    clauses = [
        f"ADD COLUMN {_definition(name, column)}"
        for name, column in ROWS_COLUMNS.items()
        if name not in existing
    ]
    if clauses:
        logger.info("ALTER TABLE rows %s", ", ".join(clauses))
        op.execute(f"ALTER TABLE rows {', '.join(clauses)}")


def _create_tombstones() -> None:
    columns = ",\n    ".join(
        _definition(name, column) for name, column in TOMBSTONE_COLUMNS.items()
    )
    # A row id may be deleted many times, so no natural key: the surrogate one
    # gives the table a replica identity, without which Postgres refuses the
    # pruning DELETEs on a database whose publication replicates all tables.
    op.execute(
        "CREATE TABLE broadcaster_tombstones (\n"
        f"    {columns},\n"
        "    tombstone_id bigint GENERATED ALWAYS AS IDENTITY,\n"
        "    CONSTRAINT broadcaster_tombstones_pkey PRIMARY KEY (tombstone_id)\n"
        ")"
    )
    # The table is new and not yet committed: nobody else can write it.
    for index in TOMBSTONE_INDEXES:
        op.execute(index.create(concurrently=False))


def _create_state() -> None:
    columns = ",\n    ".join(_definition(name, column) for name, column in STATE_COLUMNS.items())
    op.execute(
        "CREATE TABLE broadcaster_state (\n"
        f"    {columns},\n"
        "    CONSTRAINT broadcaster_state_pkey PRIMARY KEY (singleton),\n"
        # With the primary key, this allows one row at most.
        "    CONSTRAINT broadcaster_state_singleton_check CHECK (singleton)\n"
        ")"
    )


def _check_existing_table(bind: sa.Connection, table: str, expected: dict[str, Column]) -> None:
    """Accept a table that an earlier, interrupted or unrecorded run created.

    Missing or differently typed columns stop the migration: the triggers
    would fail on them, and fixing them would mean guessing at their data.
    Missing defaults are added, which touches the catalog only.
    """
    existing = _columns(bind, table)
    problems = [
        f"{table}.{name} is missing"
        if name not in existing
        else f"{table}.{name} is {existing[name]}, not {column.type}"
        for name, column in expected.items()
        if existing.get(name) != column.type
    ]
    if problems:
        raise RuntimeError(
            f"cannot adopt the existing {table} table: {'; '.join(problems)}."
            " Fix or drop the table and migrate again."
        )
    with_default = _columns_with_default(bind, table)
    clauses = [
        f"ALTER COLUMN {name} SET DEFAULT {column.default}"
        for name, column in expected.items()
        if column.default is not None and name not in with_default
    ]
    if clauses:
        logger.info("adopting the existing %s table: %s", table, ", ".join(clauses))
        op.execute(f"ALTER TABLE {table} {', '.join(clauses)}")


def _run_concurrently(statements: Iterable[str]) -> None:
    """Run index statements outside a transaction, so that writers keep going.

    Leaving the transaction commits the changes made so far.
    """
    pending = list(statements)
    if pending:
        with op.get_context().autocommit_block():
            for statement in pending:
                logger.info("%s", statement)
                op.execute(statement)


def _definition(name: str, column: Column) -> str:
    not_null = " NOT NULL" if column.not_null else ""
    default = f" DEFAULT {column.default}" if column.default is not None else ""
    return f"{name} {column.type}{not_null}{default}"


def _columns(bind: sa.Connection, table: str) -> dict[str, str]:
    """Name to type (as format_type() spells it) of each column of ``table``."""
    return {
        row.name: row.type
        for row in bind.execute(
            sa.text(
                "SELECT attname AS name, format_type(atttypid, atttypmod) AS type"
                " FROM pg_attribute"
                " WHERE attrelid = to_regclass(:table) AND attnum > 0 AND NOT attisdropped"
            ),
            {"table": table},
        )
    }


def _columns_with_default(bind: sa.Connection, table: str) -> set[str]:
    return set(
        bind.execute(
            sa.text(
                "SELECT attname FROM pg_attribute"
                " WHERE attrelid = to_regclass(:table) AND attnum > 0 AND NOT attisdropped"
                " AND atthasdef"
            ),
            {"table": table},
        ).scalars()
    )


def _relation_exists(bind: sa.Connection, name: str) -> bool:
    return bool(
        bind.execute(sa.text("SELECT to_regclass(:name) IS NOT NULL"), {"name": name}).scalar()
    )


def _primary_key(bind: sa.Connection, table: str) -> bool:
    return bool(
        bind.execute(
            sa.text(
                "SELECT EXISTS (SELECT FROM pg_constraint"
                " WHERE conrelid = to_regclass(:table) AND contype = 'p')"
            ),
            {"table": table},
        ).scalar()
    )


def _index_exists(bind: sa.Connection, table: str, name: str) -> bool:
    return bool(
        bind.execute(
            sa.text(
                "SELECT EXISTS (SELECT FROM pg_index"
                " WHERE indexrelid = to_regclass(:name) AND indrelid = to_regclass(:table))"
            ),
            {"name": name, "table": table},
        ).scalar()
    )


def _index_is_valid(bind: sa.Connection, index: Index) -> bool | None:
    """Whether ``index`` is valid; None when its table has no index of that name.

    A valid index of that name on other columns stops the migration: dropping
    rows_table_id_idx relies on this one serving lookups by table_id.
    """
    found = bind.execute(
        sa.text(
            "SELECT indisvalid AS valid, pg_get_indexdef(indexrelid) AS definition,"
            " indisunique OR indpred IS NOT NULL OR indexprs IS NOT NULL AS restricted,"
            " ARRAY(SELECT pg_get_indexdef(indexrelid, k, true)"
            "       FROM generate_series(1, indnkeyatts) AS k ORDER BY k) AS columns"
            " FROM pg_index"
            " WHERE indexrelid = to_regclass(:name) AND indrelid = to_regclass(:table)"
        ),
        {"name": index.name, "table": index.table},
    ).one_or_none()
    if found is None:
        return None
    if found.valid and (found.restricted or tuple(found.columns) != index.columns):
        raise RuntimeError(
            f"the existing index {index.name} is not the one this revision expects,"
            f" on {index.table} ({', '.join(index.columns)}): {found.definition}."
            " Drop or rename it and migrate again."
        )
    return bool(found.valid)
