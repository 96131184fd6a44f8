"""Presence: who is on which channel topic, shared by every server process.

Creates ``broadcaster_presence``: one row per tracked presence (a connection's
``track`` on a topic, its ``slot``; each track gets a new ``phx_ref``, as
Phoenix presence expects), with the server process that holds the connection and
when that process last proved it was alive, so the others can remove the
presences of a process that died. A new table holds no data yet, so it is
created with its indexes in the migration's transaction; on a database that
already has it, nothing is done.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-26
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | tuple[str, ...] | None = "0002"
branch_labels: str | tuple[str, ...] | None = None
depends_on: str | tuple[str, ...] | None = None


def upgrade() -> None:
    bind = op.get_bind()
    if bind.execute(sa.text("SELECT to_regclass('broadcaster_presence')")).scalar() is not None:
        return
    op.execute(
        """
        CREATE TABLE broadcaster_presence (
            slot text PRIMARY KEY,
            phx_ref text NOT NULL,
            topic text NOT NULL,
            key text NOT NULL,
            process text NOT NULL,
            meta jsonb NOT NULL DEFAULT '{}',
            seen_at timestamptz NOT NULL DEFAULT now()
        )
        """
    )
    op.execute("CREATE INDEX broadcaster_presence_topic_idx ON broadcaster_presence (topic)")
    op.execute("CREATE INDEX broadcaster_presence_process_idx ON broadcaster_presence (process)")


def downgrade() -> None:
    raise NotImplementedError("broadcaster migrations are not reversible")
