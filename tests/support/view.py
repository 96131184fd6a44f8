"""What a client holds of its tables, and what the database holds, to compare them.

A :class:`TableView` applies messages as docs/guarantees.md tells clients to: a
change whose version is not newer than what the view holds for that id is
dropped; a ``reset`` empties the table. It also checks that no event was
missed: each change it takes must start from what it holds (an UPDATE's or
DELETE's ``old`` row is the row held, an INSERT finds none). A
:class:`ResumingClient` keeps views of several tables across disconnects by
resubscribing with its cursors.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import asyncpg
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from tests.support.timeouts import within

# What is compared: the fields a client cares about, by row id.
Rows = dict[str, tuple[Any, list[str]]]


@dataclass
class TableView:
    table_id: str
    rows: dict[str, dict[str, Any]] = field(default_factory=dict)
    versions: dict[str, int] = field(default_factory=dict)
    cursor: str | None = None
    received: int = 0
    resets: list[str] = field(default_factory=list)
    gaps: list[str] = field(default_factory=list)
    """Changes that did not start from the row held: an event was missed."""

    def apply(self, message: dict[str, Any]) -> None:
        kind = message["type"]
        if kind == "reset":
            self.rows.clear()
            self.versions.clear()
            self.resets.append(message["reason"])
        elif kind == "change":
            self.received += 1
            row = message["row"]
            if row["version"] > self.versions.get(row["id"], -1):
                self._check_continuity(message)
                self.versions[row["id"]] = row["version"]
                if message["op"] == "DELETE":
                    self.rows.pop(row["id"], None)
                else:
                    self.rows[row["id"]] = row
        if "cursor" in message:
            self.cursor = message["cursor"]

    def _check_continuity(self, message: dict[str, Any]) -> None:
        held = self.rows.get(message["row"]["id"])
        old = message.get("old")
        if message["op"] == "INSERT":
            if held is not None:
                self.gaps.append(f"INSERT of {message['row']['id']} onto a held row")
        elif old is not None and (
            held is None or (old["data"], old["enriching_columns"]) != _fields(held)
        ):
            self.gaps.append(f"{message['op']} of {old} onto {held}")

    def snapshot(self) -> Rows:
        return {row_id: _fields(row) for row_id, row in self.rows.items()}


def _fields(row: dict[str, Any]) -> tuple[Any, list[str]]:
    return row["data"], row["enriching_columns"]


async def database_rows(db: asyncpg.Connection | asyncpg.Pool, table_id: str) -> Rows:
    """The rows of ``table_id`` as a client that has every change holds them."""
    records = await db.fetch(
        "SELECT r.id, r.data, r.enriching_columns FROM rows AS r WHERE r.table_id = $1",
        table_id,
    )
    return {r["id"]: (json.loads(r["data"]), list(r["enriching_columns"])) for r in records}


class ResumingClient:
    """Subscribes to tables and keeps their views, reconnecting with its cursors.

    ``url`` is called at every (re)connection, so a test can move the client to
    another server process.
    """

    def __init__(self, url: Callable[[], str], tables: list[str], *, snapshot: bool = True):
        self._url = url
        self.views = {table_id: TableView(table_id) for table_id in tables}
        self._snapshot = snapshot
        self.connections = 0
        self.synced = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> ResumingClient:
        self._task = asyncio.create_task(self._run())
        await within(self.synced.wait(), 20)
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        assert self._task is not None
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task

    async def _run(self) -> None:
        while True:
            with contextlib.suppress(OSError, ConnectionClosed, InvalidStatus, TimeoutError):
                await self._session()
            await asyncio.sleep(0.05)

    async def _session(self) -> None:
        async with connect(self._url(), open_timeout=5, max_size=None) as ws:
            self.connections += 1
            pending = set(self.views)
            view: TableView | None
            for ref, (table_id, view) in enumerate(self.views.items()):
                message: dict[str, Any] = {"type": "subscribe", "ref": ref, "table_id": table_id}
                if view.cursor is not None:
                    message["cursor"] = view.cursor
                elif self._snapshot:
                    message["snapshot"] = True
                await ws.send(json.dumps(message))
            async for frame in ws:
                messages = json.loads(frame)
                for message in messages if isinstance(messages, list) else [messages]:
                    view = self.views.get(message.get("table_id", ""))
                    if view is None:
                        continue
                    view.apply(message)
                    if message["type"] == "synced":
                        pending.discard(view.table_id)
                        if not pending:
                            self.synced.set()

    async def converged(self, db: asyncpg.Connection, units: float = 30) -> None:
        """Wait until every view equals the database."""

        async def check() -> None:
            while True:
                mismatched = [
                    table_id
                    for table_id, view in self.views.items()
                    if view.snapshot() != await database_rows(db, table_id)
                ]
                if not mismatched:
                    gaps = {t: v.gaps[:3] for t, v in self.views.items() if v.gaps}
                    assert not gaps, f"events were missed: {gaps}"
                    return
                await asyncio.sleep(0.1)

        try:
            await within(check(), units)
        except TimeoutError:
            details = []
            for table_id, view in self.views.items():
                want = await database_rows(db, table_id)
                have = view.snapshot()
                missing = sorted(set(want) - set(have))[:5]
                extra = sorted(set(have) - set(want))[:5]
                stale = sorted(k for k in set(want) & set(have) if want[k] != have[k])[:5]
                details.append(f"{table_id}: missing {missing} extra {extra} stale {stale}")
            raise AssertionError("views did not converge: " + "; ".join(details)) from None
