"""``broadcaster serve`` in a child process, as a user (or a fault test) runs it."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import sys
from collections.abc import AsyncIterator
from pathlib import Path

from tests.support.timeouts import within


def environment(**extra: str) -> dict[str, str]:
    """This process's environment without DATABASE_URL, plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if k != "DATABASE_URL"}
    env.update(extra)
    return env


class ServeProcess:
    """A running ``broadcaster serve`` and what its banner said."""

    def __init__(self, process: asyncio.subprocess.Process, log: Path) -> None:
        self.process = process
        self.log = log
        self.dsn = ""
        self.url = ""
        self.ws_url = ""

    async def read_banner(self) -> None:
        assert self.process.stdout is not None
        while not self.ws_url:
            line = (await within(self.process.stdout.readline(), 60)).decode()
            if not line:
                raise AssertionError(f"serve exited early:\n{self.log.read_text()}")
            if match := re.search(r"embedded Postgres ready: (\S+)", line):
                self.dsn = match.group(1)
            if match := re.search(r"serving on (\S+) \(WebSocket (ws://\S+)\)", line):
                self.url, self.ws_url = match.group(1), match.group(2)


@contextlib.asynccontextmanager
async def serve(log: Path, *args: str, **env: str) -> AsyncIterator[ServeProcess]:
    """``broadcaster serve --port 0 ARGS`` with ``env``; killed on exit if still running."""
    with log.open("ab") as stderr:
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "broadcaster",
            "serve",
            "--port",
            "0",
            *args,
            env=environment(**env),
            stdout=asyncio.subprocess.PIPE,
            stderr=stderr,
        )
    running = ServeProcess(process, log)
    try:
        await running.read_banner()
        yield running
    finally:
        if process.returncode is None:
            process.kill()
            await within(process.wait(), 30)
