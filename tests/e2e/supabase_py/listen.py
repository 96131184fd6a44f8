"""An app written with Supabase's Python client (``realtime``), run in .venv-realtime.

``python listen.py URL SCHEMA.TABLE FILTER``: joins a channel with two
``postgres_changes`` bindings on the table, both with FILTER (such as
``table_id=eq.t1`` on ``public.rows``), one for every event and one for UPDATE
alone, as an app would; prints the join's outcome, then each event
as the client hands it to a callback, one JSON line each:
``{"status": ..., "error": ...}`` then ``{"binding": "*" | "UPDATE", "data": {...}}``.
Leaves the channel and exits when its standard input closes.
tests/e2e/test_supabase_python.py runs it and does the writes.
"""

from __future__ import annotations

import asyncio
import json
import sys
from typing import Any

from realtime import AsyncRealtimeClient


def emit(message: dict[str, Any]) -> None:
    print(json.dumps(message), flush=True)


async def main(url: str, relation: str, filter: str) -> None:
    schema, table = relation.split(".")
    # No retries: a failed connection is the test's failure, told at once.
    client = AsyncRealtimeClient(url, token="anon-key", auto_reconnect=False, max_retries=1)
    channel = client.channel(f"{table}:{filter}")
    for event in ("*", "UPDATE"):
        channel.on_postgres_changes(
            event,
            # The binding's name, bound now: the loop variable moves on.
            lambda payload, binding=event: emit({"binding": binding, "data": payload["data"]}),
            table=table,
            schema=schema,
            filter=filter,
        )
    await channel.subscribe(
        lambda status, error: emit({"status": str(status.value), "error": str(error or "")})
    )
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
    await client.remove_all_channels()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2], sys.argv[3]))
