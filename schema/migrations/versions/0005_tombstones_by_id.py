"""Tombstones by row id: the version a re-insert that raced a deletion is read with.

A read gives such a row its tombstone's version + 1 (broadcaster/postgres/queries.py),
looking up the newest tombstone of the row's ``(table_id, id)``; this index
serves that lookup. Built CONCURRENTLY, since
``broadcaster_tombstones`` may be large and deleting writers must not wait; an
index of that name left invalid by an interrupted build is dropped and built
again.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-04
"""

from __future__ import annotations

import logging

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | tuple[str, ...] | None = "0004"
branch_labels: str | tuple[str, ...] | None = None
depends_on: str | tuple[str, ...] | None = None

logger = logging.getLogger("broadcaster.migrations")

INDEX = "broadcaster_tombstones_table_id_id_idx"
CREATE = f"CREATE INDEX CONCURRENTLY {INDEX} ON broadcaster_tombstones (table_id, id, version)"


def upgrade() -> None:
    valid = (
        op.get_bind()
        .execute(
            sa.text("SELECT indisvalid FROM pg_index WHERE indexrelid = to_regclass(:name)"),
            {"name": INDEX},
        )
        .scalar()
    )
    if valid:
        return
    statements = [CREATE] if valid is None else [f"DROP INDEX CONCURRENTLY {INDEX}", CREATE]
    # Outside the migration's transaction (which this commits), so writers keep going.
    with op.get_context().autocommit_block():
        for statement in statements:
            logger.info("%s", statement)
            op.execute(statement)


def downgrade() -> None:
    raise NotImplementedError("broadcaster migrations are not reversible")
