"""An index on ``rows (table_id)``, for the change log's revision to drop ``changed_xid``.

Snapshot loads read one table_id's rows. Until now the index on
``(table_id, changed_xid)`` served them; revision 0007 drops ``changed_xid``
and that index with it, so this one is built first. CONCURRENTLY, since
``rows`` may be large and writers must not wait; an index of that name left
invalid by an interrupted build is dropped and built again.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-07
"""

from __future__ import annotations

import logging

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | tuple[str, ...] | None = "0005"
branch_labels: str | tuple[str, ...] | None = None
depends_on: str | tuple[str, ...] | None = None

logger = logging.getLogger("broadcaster.migrations")

INDEX = "rows_table_id_idx"
CREATE = f"CREATE INDEX CONCURRENTLY {INDEX} ON rows (table_id)"


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
