"""``broadcaster demo``: the enrichment example, running, from one command.

It lives beside the example, outside the library: it runs only from a clone of
the repository, where ``broadcaster demo`` finds and loads it.

It starts an embedded Postgres of its own (``<data_dir>/demo-pgdata``, kept
between runs), migrates it, seeds the table ``demo`` if it has no rows, and
runs three processes, each what it would be in a real deployment:

- ``broadcaster serve`` on that database, anonymous (``--auth none``);
- ``examples/enrichment/app.py``, the user's API, which serves the page and
  marks cells as being enriched;
- ``examples/enrichment/worker.py``, which fills them.

They are child processes in a process group of their own, so a Ctrl-C in the
terminal reaches only this process, which then stops them in order (worker,
API, broadcaster) and the database last. SIGTERM does the same.

The example and the JS client it loads live in the repository, not in the
wheel: the demo runs from a clone. It builds the JS client (``npm ci`` and
``npm run build`` in ``clients/js``) when ``clients/js/dist`` is missing.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from types import FrameType

from broadcaster.exceptions import BroadcasterError
from broadcaster.settings import Settings

__all__ = ["DemoError", "DemoOptions", "run_demo"]

logger = logging.getLogger("broadcaster.demo")

EXAMPLE = Path(__file__).resolve().parent
REPOSITORY = EXAMPLE.parent.parent
CLIENT = REPOSITORY / "clients" / "js"

TABLE_ID = "demo"

# Generous: the first run of the broadcaster imports a lot; the seeder may wait
# for the migration lock of another run.
_START_TIMEOUT = 60.0
# The broadcaster gives its clients close_timeout (5 s) to close; the others stop at once.
_STOP_TIMEOUT = 15.0


class DemoError(BroadcasterError):
    """The demo cannot start, or one of its processes failed."""


@dataclass(frozen=True)
class DemoOptions:
    port: int = 8080
    ws_port: int = 8000
    rows: int = 300


def _say(text: str) -> None:
    print(f"broadcaster demo: {text}", flush=True)


class _Stop(Exception):
    """SIGTERM arrived while starting: unwind and clean up, like a Ctrl-C."""


def _raise_stop(_signum: int, _frame: FrameType | None) -> None:
    raise _Stop


def run_demo(options: DemoOptions) -> int:
    """Run the demo until Ctrl-C or SIGTERM; 0 when it stopped because it was asked to."""
    from broadcaster.postgres.embedded import EmbeddedPostgres
    from broadcaster.postgres.migrate import migrate

    settings = Settings.load(os.environ)
    logging.basicConfig(
        level=settings.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    if settings.log_level != "debug":
        # pgserver logs every command it runs at info; the demo's terminal is for the demo.
        logging.getLogger("pgserver").setLevel(logging.WARNING)
    for path in (EXAMPLE / "app.py", EXAMPLE / "worker.py", CLIENT / "package.json"):
        if not path.is_file():
            raise DemoError(
                f"{path} is missing: the demo runs from a clone of the repository "
                "(examples/ and clients/js are not part of the installed package)"
            )
    if os.environ.get("DATABASE_URL"):
        logger.info("the demo ignores DATABASE_URL: it runs on an embedded Postgres of its own")
    _ensure_client_built()

    # Outside the event loop (which handles signals itself), SIGTERM unwinds
    # like Ctrl-C, so the database started below is stopped again.
    previous_term = signal.signal(signal.SIGTERM, _raise_stop)
    embedded = EmbeddedPostgres(Path(settings.data_dir) / "demo-pgdata")
    try:
        database_url = embedded.start()
        migrate(database_url)
        _say(f"embedded Postgres ready: {database_url}")
        _say(f"  write rows yourself with: {embedded.psql} '{database_url}'")
        demo = _Demo(options, settings.host, settings.log_level, database_url)
        return asyncio.run(demo.run())
    except (KeyboardInterrupt, _Stop):
        # Ctrl-C is how the demo is stopped: not an error.
        return 0
    finally:
        # Already stopping: more signals must not cut the database's shutdown short.
        previous_int = signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        try:
            embedded.stop()
        finally:
            signal.signal(signal.SIGINT, previous_int)
            signal.signal(signal.SIGTERM, previous_term)
        _say("stopped")


def _ensure_client_built() -> None:
    """Build clients/js/dist when it is missing; warn when it is older than clients/js/src.

    A stale build is not rebuilt behind the user's back: ``npm run build``
    deletes dist first, and a source tree in the middle of an edit would
    leave none.
    """
    built = CLIENT / "dist" / "index.js"
    if built.is_file():
        sources = [p for p in (CLIENT / "src").rglob("*") if p.is_file()]
        if any(p.stat().st_mtime > built.stat().st_mtime for p in sources):
            logger.warning(
                "clients/js/dist is older than clients/js/src; "
                "run `npm run build` in clients/js to use the latest client"
            )
        return
    npm = shutil.which("npm")
    if npm is None:
        raise DemoError(
            "the JS client is not built (clients/js/dist is missing) and npm is not installed: "
            "install Node.js 18 or newer, then run `npm ci && npm run build` in clients/js"
        )
    steps: list[list[str]] = [[npm, "run", "build"]]
    if not (CLIENT / "node_modules").is_dir():
        steps.insert(0, [npm, "ci"])
    commands = " && ".join(" ".join(["npm", *step[1:]]) for step in steps)
    _say(f"building the JS client: {commands} (in clients/js)")
    for step in steps:
        # npm's output goes to stderr: stdout is this command's own banner.
        result = subprocess.run(step, cwd=CLIENT, stdout=sys.stderr, check=False)
        if result.returncode != 0:
            command = " ".join(["npm", *step[1:]])
            raise DemoError(
                f"`{command}` failed in clients/js (exit {result.returncode}); "
                "fix that, or build the client by hand, then run the demo again"
            )


class _Demo:
    """The child processes: started in order, stopped in reverse order."""

    def __init__(self, options: DemoOptions, host: str, log_level: str, database_url: str):
        self.options = options
        self.host = host
        self.log_level = log_level
        self.database_url = database_url
        self.children: list[tuple[str, asyncio.subprocess.Process]] = []
        self.forwarders: list[asyncio.Task[None]] = []
        self.stop = asyncio.Event()

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, self.stop.set)
        stopping = asyncio.create_task(self.stop.wait())
        try:
            starting = asyncio.create_task(self._start())
            await asyncio.wait({starting, stopping}, return_when=asyncio.FIRST_COMPLETED)
            if not starting.done():
                starting.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await starting
                return 0
            url = starting.result()
            _say(f"open {url} in a browser (Ctrl-C stops everything)")
            # Until asked to stop, or until a child dies: then the demo is broken.
            exits = {asyncio.create_task(process.wait()): name for name, process in self.children}
            done, _ = await asyncio.wait({stopping, *exits}, return_when=asyncio.FIRST_COMPLETED)
            for task in exits:
                task.cancel()
            if stopping in done:
                return 0
            exited = next(task for task in exits if task in done)
            raise DemoError(
                f"the {exits[exited]} exited unexpectedly (exit {exited.result()}); "
                "see its log above"
            )
        finally:
            stopping.cancel()
            # Signals stay handled while the children stop, so a second
            # Ctrl-C does not abandon them half-way.
            await self._stop_children()
            for signum in (signal.SIGINT, signal.SIGTERM):
                loop.remove_signal_handler(signum)

    async def _start(self) -> str:
        """Seed, then start the broadcaster, the API and the worker; return the page's URL."""
        seeder = await self._spawn(
            "seeder",
            str(EXAMPLE / "seed.py"),
            "--table-id",
            TABLE_ID,
            "--rows",
            str(self.options.rows),
        )
        await self._banner("seeder", seeder, r"seeded|not seeded")
        if await asyncio.wait_for(seeder.wait(), _START_TIMEOUT) != 0:
            raise DemoError("seeding the demo table failed; see above")
        self.children.remove(("seeder", seeder))

        broadcaster = await self._spawn(
            "broadcaster",
            "-m",
            "broadcaster",
            "serve",
            "--host",
            self.host,
            "--port",
            str(self.options.ws_port),
            "--auth",
            "none",
            "--log-level",
            self.log_level,
        )
        banner = await self._banner(
            "broadcaster", broadcaster, r"serving on \S+ \(WebSocket (ws://\S+)\)"
        )
        ws_url = banner.group(1)
        logger.warning(
            "anonymous access is on (--auth none): anyone who can reach %s may read every "
            "table; the demo is for local use",
            ws_url,
        )

        app = await self._spawn(
            "enrichment app",
            str(EXAMPLE / "app.py"),
            "--host",
            self.host,
            "--port",
            str(self.options.port),
            "--ws-url",
            ws_url,
            "--table-id",
            TABLE_ID,
        )
        url = (await self._banner("enrichment app", app, r"serving on (http://\S+)")).group(1)

        await self._spawn("worker", str(EXAMPLE / "worker.py"))
        return url

    async def _spawn(self, name: str, *args: str) -> asyncio.subprocess.Process:
        env = dict(os.environ)
        env["DATABASE_URL"] = self.database_url
        # Banners are read from the children's stdout as they print them.
        env["PYTHONUNBUFFERED"] = "1"
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            *args,
            env=env,
            stdout=asyncio.subprocess.PIPE,
            # Their logs go where ours go.
            stderr=None,
            # A process group of their own: a terminal's Ctrl-C reaches only
            # this process, which stops them in order.
            process_group=0,
        )
        self.children.append((name, process))
        return process

    async def _banner(
        self, name: str, process: asyncio.subprocess.Process, pattern: str
    ) -> re.Match[str]:
        """Echo ``process``'s stdout until a line matches ``pattern``; keep echoing it after."""
        stdout = process.stdout
        assert stdout is not None

        async def read() -> re.Match[str]:
            while True:
                line = (await stdout.readline()).decode(errors="replace")
                if not line:
                    code = await process.wait()
                    raise DemoError(f"the {name} exited during start-up (exit {code}); see above")
                _say(f"[{name}] {line.rstrip()}")
                if match := re.search(pattern, line):
                    return match

        try:
            match = await asyncio.wait_for(read(), _START_TIMEOUT)
        except TimeoutError:
            raise DemoError(f"the {name} did not start within {_START_TIMEOUT:.0f} s") from None
        self.forwarders.append(asyncio.create_task(self._forward(name, stdout)))
        return match

    @staticmethod
    async def _forward(name: str, stdout: asyncio.StreamReader) -> None:
        # Drained to the end, so a child never blocks on a full pipe.
        while line := await stdout.readline():
            _say(f"[{name}] {line.decode(errors='replace').rstrip()}")

    async def _stop_children(self) -> None:
        for name, process in reversed(self.children):
            if process.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    process.send_signal(signal.SIGTERM)
                try:
                    await asyncio.wait_for(process.wait(), _STOP_TIMEOUT)
                except TimeoutError:
                    logger.warning(
                        "the %s did not stop within %.0f s; killing it", name, _STOP_TIMEOUT
                    )
                    with contextlib.suppress(ProcessLookupError):
                        process.kill()
                    await process.wait()
            # A child stopped by our SIGTERM exits 0 (or -SIGTERM before it set up its handlers).
            if process.returncode not in (0, -signal.SIGTERM):
                logger.warning("the %s exited with %s", name, process.returncode)
        self.children.clear()
        if self.forwarders:
            # Each ends at its child's EOF; one held open by a grandchild is cut off.
            _, pending = await asyncio.wait(self.forwarders, timeout=2)
            for task in pending:
                task.cancel()
            await asyncio.gather(*self.forwarders, return_exceptions=True)
            self.forwarders.clear()
