"""Create the rows table, or adopt one that already exists.

On a database without ``rows`` this creates the table as schema/models.py
describes it. A database that already has one keeps it and its data: only what
is missing is added (columns, column defaults, the primary key on ``id``, the
``table_id`` index), and rows without a version get one. Existing columns keep
their nullability; one of another type than the model's stops the migration,
since converting it would rewrite the data and leaving it would break the
triggers. Each step reads the catalog first, so nothing that is already in
place takes a lock on ``rows``.

Revision ID: 0001
Revises:
Create Date: 2025-11-26
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any, NamedTuple

import sqlalchemy as sa
from alembic import op

revision: str = "0001"
down_revision: str | tuple[str, ...] | None = None
branch_labels: str | tuple[str, ...] | None = None
depends_on: str | tuple[str, ...] | None = None

logger = logging.getLogger("broadcaster.migrations")


class Column(NamedTuple):
    type: str  # spelled as format_type() spells it, to compare with the catalog
    not_null: bool
    default: str | None


# The table as of this revision; later revisions change it in files of their own.
COLUMNS = {
    "id": Column("text", True, "gen_random_uuid()::text"),
    "table_id": Column("text", True, None),
    "data": Column("jsonb", True, "'{}'::jsonb"),
    "enriching_columns": Column("text[]", True, "'{}'::text[]"),
    "version": Column("bigint", False, "nextval('broadcaster_version_seq')"),
    "created_at": Column("timestamp with time zone", True, "now()"),
    "updated_at": Column("timestamp with time zone", True, "now()"),
}
TABLE_ID_INDEX = "CREATE INDEX CONCURRENTLY rows_table_id_idx ON rows (table_id)"
PRIMARY_KEY_INDEX = "CREATE UNIQUE INDEX CONCURRENTLY rows_pkey ON rows (id)"

# table_id has no default, but rows that predate the column need one.
ADOPTED_TABLE_ID = "default"


def upgrade() -> None:
    bind = op.get_bind()
    if not _relation_exists(bind, "broadcaster_version_seq"):
        op.execute("CREATE SEQUENCE IF NOT EXISTS broadcaster_version_seq")
    if _relation_exists(bind, "rows"):
        _adopt_table(bind)
    else:
        _create_table()


def downgrade() -> None:
    raise NotImplementedError(
        "revision 0001 may have adopted a rows table that holds data; drop it by hand if meant"
    )


def _create_table() -> None:
    columns = ",\n    ".join(
        _definition(name, column, column.default) for name, column in COLUMNS.items()
    )
    op.execute(f"CREATE TABLE rows (\n    {columns},\n    CONSTRAINT rows_pkey PRIMARY KEY (id)\n)")
    op.execute("CREATE INDEX rows_table_id_idx ON rows (table_id)")


def _adopt_table(bind: sa.Connection) -> None:
    existing = {
        row.name: row
        for row in bind.execute(
            sa.text(
                "SELECT attname AS name, format_type(atttypid, atttypmod) AS type, atthasdef"
                " FROM pg_attribute"
                " WHERE attrelid = 'rows'::regclass AND attnum > 0 AND NOT attisdropped"
            )
        )
    }
    mismatched = [
        f"rows.{name} is {existing[name].type}, not {column.type}"
        for name, column in COLUMNS.items()
        if name in existing and existing[name].type != column.type
    ]
    if mismatched:
        raise RuntimeError(
            f"cannot adopt the existing rows table: {'; '.join(mismatched)}. "
            "Convert the columns (ALTER TABLE rows ALTER COLUMN ... TYPE ...) and migrate again."
        )

    primary_key = _primary_key(bind)
    if primary_key and primary_key != ["id"]:
        logger.warning(
            "rows has a primary key on (%s), not on (id); left as it is", ", ".join(primary_key)
        )
    indexes: dict[str, str] = {}
    # Revision 0002 replaced this index with rows_table_id_changed_xid_idx, whose
    # leading column serves the same lookups: re-adopting a later schema must
    # not build it again (and wait for writers doing so) for 0002 to drop it.
    if not _index_is_valid(bind, "rows_table_id_changed_xid_idx"):
        indexes["rows_table_id_idx"] = TABLE_ID_INDEX
    if not primary_key:
        indexes["rows_pkey"] = PRIMARY_KEY_INDEX
    valid = {name: _index_is_valid(bind, name) for name in indexes}

    # A concurrent build that failed leaves an invalid index behind. It goes
    # first: a table rewrite below would rebuild it and fail as it did.
    _run_concurrently(
        f"DROP INDEX CONCURRENTLY {name}" for name, state in valid.items() if state is False
    )
    _add_missing_columns(existing)
    _run_concurrently(statement for name, statement in indexes.items() if not valid[name])
    if not primary_key:
        op.execute("ALTER TABLE rows ADD CONSTRAINT rows_pkey PRIMARY KEY USING INDEX rows_pkey")


def _add_missing_columns(existing: dict[str, sa.Row[Any]]) -> None:
    clauses = []
    for name, column in COLUMNS.items():
        current = existing.get(name)
        if current is None:
            default = f"'{ADOPTED_TABLE_ID}'" if name == "table_id" else column.default
            # A constant default is stored once in the catalog; only id and
            # version, whose defaults are volatile, make Postgres rewrite the table.
            clauses.append(f"ADD COLUMN {_definition(name, column, default)}")
        elif column.default is not None and not current.atthasdef:
            clauses.append(f"ALTER COLUMN {name} SET DEFAULT {column.default}")
    if clauses:
        logger.info("adopting the existing rows table: %s", ", ".join(clauses))
        op.execute(f"ALTER TABLE rows {', '.join(clauses)}")
    if "table_id" not in existing:
        op.execute("ALTER TABLE rows ALTER COLUMN table_id DROP DEFAULT")
    if "version" in existing:
        # Versions must keep growing past those the table already holds, and
        # rows written without the triggers have none yet.
        op.execute(
            "SELECT setval('broadcaster_version_seq',"
            " greatest(max(version), nextval('broadcaster_version_seq'))) FROM rows"
        )
        op.execute(
            "UPDATE rows SET version = nextval('broadcaster_version_seq') WHERE version IS NULL"
        )


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


def _definition(name: str, column: Column, default: str | None) -> str:
    not_null = " NOT NULL" if column.not_null else ""
    default_clause = f" DEFAULT {default}" if default is not None else ""
    return f"{name} {column.type}{not_null}{default_clause}"


def _relation_exists(bind: sa.Connection, name: str) -> bool:
    return bool(
        bind.execute(sa.text("SELECT to_regclass(:name) IS NOT NULL"), {"name": name}).scalar()
    )


def _primary_key(bind: sa.Connection) -> list[str]:
    return list(
        bind.execute(
            sa.text(
                "SELECT a.attname FROM pg_constraint c"
                " JOIN pg_attribute a ON a.attrelid = c.conrelid AND a.attnum = ANY (c.conkey)"
                " WHERE c.conrelid = 'rows'::regclass AND c.contype = 'p'"
            )
        ).scalars()
    )


def _index_is_valid(bind: sa.Connection, name: str) -> bool | None:
    """Whether index ``name`` of ``rows`` is valid; None when there is no such index."""
    valid: bool | None = bind.execute(
        sa.text(
            "SELECT indisvalid FROM pg_index"
            " WHERE indexrelid = to_regclass(:name) AND indrelid = 'rows'::regclass"
        ),
        {"name": name},
    ).scalar()
    return valid
