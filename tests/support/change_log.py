"""The change log as tests read it back."""

from __future__ import annotations

import json
from typing import Any

import asyncpg

__all__ = ["entries"]


async def entries(db: asyncpg.Connection) -> list[tuple[str, str, str, Any, Any]]:
    """The change log in order: (op, table_id, id, new image, old image)."""
    records = await db.fetch(
        "SELECT op, table_id, id, new, old FROM broadcaster_changes ORDER BY seq"
    )
    return [
        (
            r["op"],
            r["table_id"],
            r["id"],
            json.loads(r["new"] or "null"),
            json.loads(r["old"] or "null"),
        )
        for r in records
    ]
