"""Running ``broadcaster demo`` from a test, and talking to its API."""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import shutil
import signal
import sys
import urllib.error
import urllib.request
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.support.process import environment
from tests.support.timeouts import seconds, within

TABLE = "demo"


# The demo builds the JS client when clients/js/dist is missing; without npm it cannot.
needs_js_client = pytest.mark.skipif(
    not (Path(__file__).resolve().parents[2] / "clients/js/dist/index.js").is_file()
    and shutil.which("npm") is None,
    reason="the JS client is not built (clients/js/dist) and there is no npm to build it: "
    "install Node.js 18 or newer",
)


@dataclass
class Demo:
    """A running ``broadcaster demo`` and what its banner said."""

    process: asyncio.subprocess.Process
    log: Path
    url: str = ""
    ws_url: str = ""
    dsn: str = ""
    stdout: list[str] = field(default_factory=list)

    async def read_banner(self) -> None:
        assert self.process.stdout is not None
        while not self.url:
            line = (await within(self.process.stdout.readline(), 120)).decode()
            if not line:
                await within(self.process.wait(), 30)
                raise AssertionError(
                    f"demo exited early ({self.process.returncode}):\n"
                    + "".join(self.stdout)
                    + self.log.read_text()
                )
            self.stdout.append(line)
            if match := re.search(r"embedded Postgres ready: (\S+)", line):
                self.dsn = match.group(1)
            if match := re.search(r"\(WebSocket (ws://\S+)\)", line):
                self.ws_url = match.group(1)
            if match := re.search(r"open (http://\S+)", line):
                self.url = match.group(1)

    async def drain(self) -> None:
        # The demo echoes its children's stdout: read it so it never blocks.
        assert self.process.stdout is not None
        while line := await self.process.stdout.readline():
            self.stdout.append(line.decode())

    async def stop(self) -> int:
        """SIGTERM, as a service manager stops it; the exit code."""
        if self.process.returncode is None:
            self.process.send_signal(signal.SIGTERM)
        return await within(self.process.wait(), 60)


@contextlib.asynccontextmanager
async def running_demo(
    data_dir: Path, log: Path, *, rows: int = 40, **env: str
) -> AsyncIterator[Demo]:
    """``broadcaster demo`` on free ports with ``env``; stopped (or killed) on exit."""
    with log.open("ab") as stderr:
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "broadcaster",
            "demo",
            "--port",
            "0",
            "--ws-port",
            "0",
            "--rows",
            str(rows),
            env=environment(BROADCASTER_DATA_DIR=str(data_dir), **env),
            stdout=asyncio.subprocess.PIPE,
            stderr=stderr,
        )
    demo = Demo(process, log)
    drain: asyncio.Task[None] | None = None
    try:
        await demo.read_banner()
        drain = asyncio.create_task(demo.drain())
        yield demo
    finally:
        if process.returncode is None:
            # Politely first: a killed demo would leave its children and database behind.
            process.send_signal(signal.SIGTERM)
            try:
                await within(process.wait(), 60)
            except TimeoutError:
                process.kill()
                await within(process.wait(), 30)
        if drain is not None:
            await within(drain, 10)


async def http(
    method: str, url: str, body: object = None, *, raw: bytes | None = None
) -> tuple[int, dict[str, str], bytes]:
    """One HTTP request; the status, the headers and the body (4xx and 5xx included)."""
    data = raw if raw is not None else None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method=method)
    if data is not None:
        request.add_header("Content-Type", "application/json")

    def send() -> tuple[int, dict[str, str], bytes]:
        try:
            with urllib.request.urlopen(request, timeout=seconds(10)) as response:
                return response.status, dict(response.headers), response.read()
        except urllib.error.HTTPError as error:
            with error:
                return error.code, dict(error.headers), error.read()

    return await within(asyncio.to_thread(send), 15)
