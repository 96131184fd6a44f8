"""Listeners: which server process reads which table, and until when it promised to.

Creates ``broadcaster_listeners``, one row per table a server process serves
(``table_id`` ``''`` for its subscribers of every table): ``polling_until`` is
the end of its promise to read the table unasked, which lets the trigger skip
the NOTIFY (see broadcaster/core/promises.py); ``seen_at`` is when the process last
proved it was alive, so the rows of a dead process can be removed. UNLOGGED: it
is rewritten often and worthless after a crash (servers register again when
they reconnect). A new table holds no data yet, so it is created in the
migration's transaction; on a database that already has it, nothing is done.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-26
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | tuple[str, ...] | None = "0003"
branch_labels: str | tuple[str, ...] | None = None
depends_on: str | tuple[str, ...] | None = None


def upgrade() -> None:
    bind = op.get_bind()
    if bind.execute(sa.text("SELECT to_regclass('broadcaster_listeners')")).scalar() is not None:
        return
    op.execute(
        """
        CREATE UNLOGGED TABLE broadcaster_listeners (
            table_id text NOT NULL,
            process text NOT NULL,
            polling_until timestamptz NOT NULL,
            seen_at timestamptz NOT NULL DEFAULT now(),
            PRIMARY KEY (table_id, process)
        )
        """
    )
    op.execute("CREATE INDEX broadcaster_listeners_process_idx ON broadcaster_listeners (process)")


def downgrade() -> None:
    raise NotImplementedError("broadcaster migrations are not reversible")
