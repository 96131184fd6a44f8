"""Databases as earlier releases left them: some schema revisions only, their triggers."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import asyncpg
from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationInfo

from broadcaster.postgres.resources import migrations_dir

# The last revision of release 0.1.0, the stamping design (version, changed_xid
# and inserted_xid on rows, broadcaster_tombstones).
RELEASE_0X = "0005"
# That release's triggers.sql, verbatim but for a comment on where it comes from.
RELEASE_0X_TRIGGERS = (
    Path(__file__).resolve().parents[1] / "integration" / "fixtures" / "release_0.1.0_triggers.sql"
)


def upgrade_to(url: str, revision: str) -> list[str]:
    """Apply the migrations up to ``revision`` only, as an older release did; no triggers.

    Returns the revisions applied, as ``MigrationReport`` lists them.
    """
    applied: list[str] = []

    def record(*, step: MigrationInfo, **_: Any) -> None:
        if step.is_upgrade and not step.is_stamp:
            applied.extend(step.up_revision_ids)

    config = Config()
    config.set_main_option("script_location", str(migrations_dir()).replace("%", "%%"))
    config.attributes["dsn"] = url
    config.attributes["on_version_apply"] = record
    command.upgrade(config, revision)
    return applied


def upgrade_to_release_0x(url: str) -> list[str]:
    """The schema revisions of release 0.1.0, without its triggers."""
    return upgrade_to(url, RELEASE_0X)


async def install_release_0x_triggers(db: asyncpg.Connection) -> None:
    """Install release 0.1.0's triggers.sql as its ``migrate`` did, comment included."""
    triggers = RELEASE_0X_TRIGGERS.read_text()
    digest = hashlib.sha256(triggers.encode()).hexdigest()
    async with db.transaction():
        await db.execute(triggers)
        await db.execute(
            "COMMENT ON FUNCTION broadcaster_before_write()"
            f" IS 'broadcaster triggers sha256:{digest}'"
        )
