"""The benchmark (issue 5): our server beside its peers, same writers, same clients, one run.

Usage, from the repository root (with the repository's virtualenv)::

    .venv/bin/python bench/run.py            # every target, under 5 minutes
    .venv/bin/python bench/run.py --quick    # fewer targets, shorter windows, under 1 minute
    .venv/bin/python bench/run.py --targets fanout,bulk --servers ours,node
    .venv/bin/python bench/run.py --targets rls --servers supabase   # row-level security

What it does:

1. Creates two fresh databases on ``BENCH_DATABASE_URL`` (default
   ``postgresql://postgres@127.0.0.1:5432/postgres``): ``bench_<random>`` gets
   our schema from ``python -m broadcaster migrate``; ``bench_<random>_peers``
   gets a plain ``rows`` table with the per-row NOTIFY trigger the peers' docs
   show (``bench/peers/peer.sql``). Both get the same rows. Both are dropped at
   the end.
2. Starts each server as its own process, one target at a time: ours
   (``python -m broadcaster serve``), encode/broadcaster under Starlette and
   uvicorn, the thin asyncpg + ``websockets`` server, and Node ``pg`` + ``ws``
   (``bench/peers``). The peers' Python runs in ``bench/.venv-peers`` (created
   here: encode/broadcaster's PyPI name clashes with ours); Node's modules come
   from ``npm ci``.
3. Drives the same writers (pgbench, single-row UPDATEs of ``rows`` that stamp
   ``data.t``, the commit time in epoch milliseconds) and the same WebSocket
   clients (``bench/wsclient.c``, compiled here with ``cc``, spread over
   several processes; they count change messages without parsing them, a
   sample reads ``data.t`` for latency). The load targets' writers pick each
   row at random among 50 a table (``--load-rows``; at 2,000 updates/s each row
   is written 4 times a second) and count each row's writes: every committed
   UPDATE is one event each subscriber of its table is owed, and ``lost``
   counts the events owed and never received. Target 4a's writers write every
   seeded row in sequence instead, one write a row a run, so that no writer
   waits on another's row lock and the rate measures the triggers alone.
4. Prints a table per target, ours beside theirs.

Target ``rls`` (issue 21; run only when named, on our server alone, whatever
``--servers`` says) measures row-level security on the Supabase endpoint: in
our database it creates ``notes`` (10 rows for each of 100 users, ``owner``
``user<N>``), publishes it (``broadcaster publish``), creates a NOLOGIN role
for the subscribers (this run's own name; dropped at the end) that may
select it, and a policy letting it see the rows whose ``owner`` is the
token's ``sub``. The server runs with JWT auth; 1,000 clients, 10 a user,
each with its user's token (role the new one, ``sub`` ``user<N>``), join a
channel on ``notes`` with realtime-js's join payload; pgbench writers update
200 rows a second, stamping ``t`` and counting each row's writes as above.
Three runs, each owed the same events (each change to its owner's 10
clients): RLS on with that policy, RLS on with the claim read once a
statement (``(select ...)``), and RLS off with each binding filtered on
``owner=eq.<sub>``.

Every figure is measured in this run; nothing is copied from elsewhere.
``docs/performance.md`` ("Benchmark") explains each column.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import hashlib
import json
import os
import re
import resource
import secrets
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, TypedDict, cast
from urllib.parse import urlsplit

import asyncpg
import jwt

sys.path.insert(0, str(Path(__file__).resolve().parent))

from wsclient import connect_client

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench"
PEERS = BENCH / "peers"
PEER_VENV = BENCH / ".venv-peers"
PEER_PYTHON = PEER_VENV / "bin" / "python"
CLIENT_SOURCE = BENCH / "wsclient.c"
CLIENT_BINARY = BENCH / ".build" / "wsclient"
NODE_DIR = PEERS / "node"
DEFAULT_ADMIN_URL = "postgresql://postgres@127.0.0.1:5432/postgres"

SERVERS = ("ours", "encode", "thin", "node")
# Run only when named: our server again, its clients on the Supabase endpoint.
OPTIONAL_SERVERS = ("supabase",)
OURS = ("ours", "supabase")
LABELS = {
    "ours": "ours",
    "supabase": "ours, Supabase clients",
    "encode": "encode/broadcaster",
    "thin": "thin Python",
    "node": "Node pg+ws",
}
TARGETS = ("fanout", "ceiling", "fanout1k", "conns", "writers", "bulk", "workers")
QUICK_TARGETS = ("fanout", "conns", "writers", "bulk", "workers")
# Not issue-5 targets, run only when asked for: what serving costs while little
# changes; what row-level security costs (issue 21, our Supabase endpoint).
OPTIONAL_TARGETS = ("quiet", "rls")
TABLES = tuple(f"t{i}" for i in range(10))
BULK_TABLE = "bulk"
BULK_ROWS = 10_000
WRITERS = 8
CLK_TCK = os.sysconf("SC_CLK_TCK")

# The writers' transaction: one single-row UPDATE of the next row of this
# writer's sequence (rows r0..r{nrows-1}, table t{k % 10}). Target 4a's
# writers run it over every seeded row, so none waits on another's row lock
# and the rate is the triggers' cost alone (bench/trigger_cost.py and
# bench/log_cost.py measure this same UPDATE).
WRITER_SCRIPT = """\\set n :n + 1
\\set k (:base + :client_id + :nc * :n) % :nrows
UPDATE rows
SET data = jsonb_build_object(
    't', round(extract(epoch FROM clock_timestamp()) * 1000, 3), 'r', :run::int)
WHERE id = 'r' || :k;
"""

# The load targets' transaction: the same UPDATE of a row drawn at random from
# a few a table (--load-rows), so each is rewritten several times a second and
# now and then twice within a few milliseconds, as an app's rows are (in
# WRITER_SCRIPT's sequence, a row's writes come a whole lap of the rows apart);
# it also counts in data.n the row's writes in this run. Every committed UPDATE
# is one event each subscriber of its table is owed, and a row's count is exact
# however the writers' UPDATEs of it interleave (a waiting UPDATE recomputes it
# from the version it waited for), so the events owed are the sum of data.n
# over the run's rows (expected_changes).
COUNTED_WRITER_SCRIPT = """\\set k random(0, :nrows - 1)
UPDATE rows
SET data = jsonb_build_object(
    't', round(extract(epoch FROM clock_timestamp()) * 1000, 3), 'r', :run::int,
    'n', CASE WHEN (data->>'r')::int = :run::int THEN (data->>'n')::int + 1 ELSE 1 END)
WHERE id = 'r' || :k;
"""


# --------------------------------------------------------------------------
# Processes: CPU, memory, the machine


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process (all its threads), in seconds."""
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def rss_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def machine_ticks() -> tuple[int, int]:
    """(busy, total) CPU ticks of the whole machine since boot."""
    with open("/proc/stat") as stat:
        values = [int(value) for value in stat.readline().split()[1:]]
    idle = values[3] + values[4]
    total = sum(values[:8])
    return total - idle, total


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def raise_fd_limit() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


# --------------------------------------------------------------------------
# Environments of the peers


def ensure_peer_venv(log: Path) -> None:
    """bench/.venv-peers with bench/peers/requirements.txt, rebuilt when that changes."""
    requirements = PEERS / "requirements.txt"
    digest = hashlib.sha256(requirements.read_bytes()).hexdigest()
    stamp = PEER_VENV / ".requirements.sha256"
    if stamp.exists() and stamp.read_text() == digest and PEER_PYTHON.exists():
        return
    print("setup: creating bench/.venv-peers (encode/broadcaster, websockets, asyncpg)", flush=True)
    with open(log, "ab") as out:
        subprocess.run(
            [sys.executable, "-m", "venv", "--clear", str(PEER_VENV)],
            check=True,
            stdout=out,
            stderr=out,
        )
        subprocess.run(
            [str(PEER_PYTHON), "-m", "pip", "install", "-q", "-r", str(requirements)],
            check=True,
            stdout=out,
            stderr=out,
        )
    stamp.write_text(digest)


def ensure_client_binary(log: Path) -> None:
    """bench/.build/wsclient, compiled from bench/wsclient.c when missing or older."""
    if CLIENT_BINARY.exists() and CLIENT_BINARY.stat().st_mtime >= CLIENT_SOURCE.stat().st_mtime:
        return
    compiler = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        raise SystemExit("bench: a C compiler (cc) is needed to build bench/wsclient.c")
    print(f"setup: compiling {CLIENT_SOURCE.relative_to(ROOT)}", flush=True)
    CLIENT_BINARY.parent.mkdir(exist_ok=True)
    flags = ["-O2", "-Wall", "-Wextra", "-std=gnu11"]
    with open(log, "ab") as out:
        subprocess.run(
            [compiler, *flags, "-o", str(CLIENT_BINARY), str(CLIENT_SOURCE)],
            check=True,
            stdout=out,
            stderr=out,
        )


def ensure_node_modules(log: Path) -> None:
    """``npm ci`` in bench/peers/node, unless node_modules matches package-lock.json."""
    lock = NODE_DIR / "package-lock.json"
    installed = NODE_DIR / "node_modules" / ".package-lock.json"
    if installed.exists() and installed.stat().st_mtime >= lock.stat().st_mtime:
        return
    print("setup: npm ci in bench/peers/node", flush=True)
    with open(log, "ab") as out:
        subprocess.run(
            ["npm", "ci", "--no-audit", "--no-fund"],
            cwd=NODE_DIR,
            check=True,
            stdout=out,
            stderr=out,
        )


# --------------------------------------------------------------------------
# Databases


def database_url(admin_url: str, name: str) -> str:
    return urlsplit(admin_url)._replace(path="/" + name).geturl()


@contextlib.asynccontextmanager
async def fresh_database(admin_url: str, name: str) -> AsyncIterator[str]:
    admin = await asyncpg.connect(admin_url)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    try:
        yield database_url(admin_url, name)
    finally:
        admin = await asyncpg.connect(admin_url)
        try:
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await admin.close()


SEED = """
INSERT INTO rows (id, table_id, data)
SELECT 'r' || k, 't' || (k % 10), '{}' FROM generate_series(0, $1::int - 1) AS k;
"""
SEED_BULK = """
INSERT INTO rows (id, table_id, data)
SELECT 'b' || k, 'bulk', '{}' FROM generate_series(0, $1::int - 1) AS k;
"""


def migrate(url: str, log: Path) -> None:
    """``python -m broadcaster migrate`` on ``url``, as a user runs it."""
    env = {**os.environ, "DATABASE_URL": url}
    with open(log, "ab") as out:
        done = subprocess.run(
            [sys.executable, "-m", "broadcaster", "migrate"], env=env, stdout=out, stderr=out
        )
    if done.returncode != 0:
        raise RuntimeError(f"broadcaster migrate failed; see {log}")


async def setup_ours(url: str, nrows: int, log: Path) -> None:
    await asyncio.to_thread(migrate, url, log)
    connection = await asyncpg.connect(url)
    try:
        # A bulk load needs no wake-ups (docs/guarantees.md); rows are stamped anyway.
        await connection.execute("SET broadcaster.wake = 'off'")
        await connection.execute(SEED, nrows)
        await connection.execute(SEED_BULK, BULK_ROWS)
        await connection.execute("VACUUM ANALYZE rows")
    finally:
        await connection.close()


async def setup_peers(url: str, nrows: int) -> None:
    connection = await asyncpg.connect(url)
    try:
        await connection.execute((PEERS / "peer.sql").read_text())
        await connection.execute(SEED, nrows)
        await connection.execute(SEED_BULK, BULK_ROWS)
        await connection.execute("VACUUM ANALYZE rows")
        await connection.execute((PEERS / "peer_trigger.sql").read_text())
    finally:
        await connection.close()


async def expected_changes(url: str, run: int) -> dict[str, int]:
    """Events each table had in counted writer run ``run``: what each subscriber is owed.

    Each of the run's committed UPDATEs is one event: a row's ``data.n`` counts
    its writes in the run (``COUNTED_WRITER_SCRIPT``).
    """
    connection = await asyncpg.connect(url)
    try:
        records = await connection.fetch(
            "SELECT table_id, sum((data->>'n')::int) AS n FROM rows WHERE data->>'r' = $1"
            " GROUP BY table_id",
            str(run),
        )
    finally:
        await connection.close()
    return {record["table_id"]: int(record["n"]) for record in records}


# --------------------------------------------------------------------------
# Writers


@dataclass
class WriterRun:
    run: int
    seconds: float
    commits: int
    tps: float
    cpu: float
    failed: int = 0


class Writers:
    """pgbench processes doing single-row UPDATEs of rows r0..r{nrows-1}.

    Each run marks the rows it writes with ``run``. ``counted`` writers draw
    each row at random and count each row's writes in the run
    (``COUNTED_WRITER_SCRIPT``); the others write the rows in sequence, each run
    starting past the last (``WRITER_SCRIPT``). ``script`` (a name and its
    text) replaces either: the rls target's writers of ``notes``.
    """

    def __init__(
        self,
        workdir: Path,
        nrows: int,
        *,
        counted: bool = False,
        script: tuple[str, str] | None = None,
    ) -> None:
        if script is None:
            script = (
                ("writer-counted", COUNTED_WRITER_SCRIPT) if counted else ("writer", WRITER_SCRIPT)
            )
        name, text = script
        self.script = workdir / f"{name}.sql"
        self.script.write_text(text)
        self.log = workdir / "pgbench.log"
        self.nrows = nrows
        self.base = 0
        self.run_id = 0

    def _pgbench(self, argv: list[str]) -> tuple[str, float, int]:
        """Run pgbench to the end; its output, its CPU seconds (from wait4) and exit code."""
        with tempfile.TemporaryFile() as out:
            process = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT)
            _pid, status, usage = os.wait4(process.pid, 0)
            process.returncode = os.waitstatus_to_exitcode(status)
            out.seek(0)
            text = out.read().decode(errors="replace")
        with open(self.log, "a") as log:
            log.write(f"$ {' '.join(argv)}\n{text}\n")
        if process.returncode != 0:
            raise RuntimeError(f"pgbench failed ({process.returncode}):\n{text}")
        return text, usage.ru_utime + usage.ru_stime, process.returncode

    async def run(
        self, url: str, seconds: float, rate: float | None, clients: int = WRITERS
    ) -> WriterRun:
        """One writer run of ``seconds``, at ``rate`` commits/s or unthrottled."""
        self.run_id += 1
        run = self.run_id
        argv = ["pgbench", "-n", "-M", "prepared", "-c", str(clients), "-j", "2"]
        argv += ["-T", str(max(1, round(seconds))), "-f", str(self.script)]
        for name, value in (
            ("n", -1),
            ("base", self.base),
            ("nc", clients),
            ("nrows", self.nrows),
            ("run", run),
        ):
            argv += ["-D", f"{name}={value}"]
        if rate is not None:
            argv += ["-R", str(rate)]
        argv.append(url)
        started = time.perf_counter()
        text, cpu, _code = await asyncio.to_thread(self._pgbench, argv)
        elapsed = time.perf_counter() - started
        commits = _parse_int(r"number of transactions actually processed: (\d+)", text)
        failed = _parse_int(r"number of failed transactions: (\d+)", text)
        tps_match = re.search(r"tps = ([\d.]+)", text)
        tps = float(tps_match.group(1)) if tps_match else commits / elapsed
        # The next run starts past the rows this one wrote (pgbench clients
        # need not have run the same number of transactions): target 4a's
        # variants start on rows the run before did not just write, as they
        # did before the load targets rewrote rows, so its figures compare.
        self.base = (self.base + 2 * commits + 64 * clients) % self.nrows
        return WriterRun(run, elapsed, commits, tps, cpu, failed)

    async def builtin(self, url: str, seconds: float) -> WriterRun:
        """pgbench's own simple-update (pgbench_accounts), the machine's reference."""
        argv = ["pgbench", "-n", "-M", "prepared", "-b", "simple-update"]
        argv += ["-c", str(WRITERS), "-j", "2", "-T", str(max(1, round(seconds))), url]
        text, cpu, _code = await asyncio.to_thread(self._pgbench, argv)
        commits = _parse_int(r"number of transactions actually processed: (\d+)", text)
        tps_match = re.search(r"tps = ([\d.]+)", text)
        tps = float(tps_match.group(1)) if tps_match else 0.0
        return WriterRun(0, seconds, commits, tps, cpu)


def _parse_int(pattern: str, text: str) -> int:
    match = re.search(pattern, text)
    return int(match.group(1)) if match else 0


# --------------------------------------------------------------------------
# Servers


@dataclass
class ServerProcess:
    name: str
    process: subprocess.Popen[bytes]
    port: int
    log: Path
    workers: int = 1
    pids: list[int] = field(default_factory=list)

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def label(self) -> str:
        return LABELS[self.name] + (f", --workers {self.workers}" if self.workers > 1 else "")

    def cpu(self) -> float:
        """CPU seconds of the server's processes (a --workers parent and its workers)."""
        return backends_cpu(self.pids)

    def rss(self) -> int:
        total = 0
        for pid in self.pids:
            with contextlib.suppress(OSError):
                total += rss_bytes(pid)
        return total

    @property
    def ours(self) -> bool:
        return self.name in OURS

    @property
    def phoenix(self) -> bool:
        """Its clients join with Phoenix (vsn 2.0.0) on the Supabase endpoint."""
        return self.name == "supabase"


def _server_argv(name: str, port: int, workers: int) -> list[str]:
    if name in OURS:
        argv = [sys.executable, "-m", "broadcaster", "serve"]
        return argv + (["--workers", str(workers)] if workers > 1 else [])
    if name == "encode":
        return [
            str(PEER_PYTHON),
            "-m",
            "uvicorn",
            "encode_app:app",
            "--app-dir",
            str(PEERS),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--log-level",
            "warning",
            "--no-access-log",
        ]
    if name == "thin":
        return [str(PEER_PYTHON), str(PEERS / "thin.py")]
    if name == "node":
        return ["node", str(NODE_DIR / "server.js")]
    raise ValueError(name)


def _spawn(argv: list[str], env: dict[str, str], log: Path, cwd: Path) -> subprocess.Popen[bytes]:
    with open(log, "wb") as out:
        return subprocess.Popen(argv, env=env, stdout=out, stderr=out, cwd=cwd)


async def _http_status(port: int, path: str) -> int:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(
            f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n".encode()
        )
        line = await reader.readline()
        return int(line.split()[1])
    finally:
        writer.close()


def process_tree(root: int) -> list[int]:
    """``root`` and every process descended from it."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                stat = (entry / "stat").read_text()
                parents[int(entry.name)] = int(stat.rsplit(")", 1)[1].split()[1])
    tree = [root]
    for pid in tree:
        tree += [child for child, parent in parents.items() if parent == pid]
    return tree


@contextlib.asynccontextmanager
async def running_server(
    name: str,
    url: str,
    workdir: Path,
    tag: str,
    workers: int = 1,
    settings: Mapping[str, str] | None = None,
) -> AsyncIterator[ServerProcess]:
    """``name`` serving ``url``, ready; ``settings``: environment over the defaults."""
    port = free_port()
    env = {
        **os.environ,
        "DATABASE_URL": url,
        "PORT": str(port),
        "BROADCASTER_AUTH": "none",
        "BROADCASTER_PORT": str(port),
        "BROADCASTER_HOST": "127.0.0.1",
        "BROADCASTER_LOG_LEVEL": "warning",
        **(settings or {}),
    }
    log = workdir / f"server-{name}-{tag}.log"
    # The peers run outside the repository: from its root, our package would
    # shadow encode/broadcaster's (both are `broadcaster`).
    argv = _server_argv(name, port, workers)
    process = _spawn(argv, env, log, ROOT if name in OURS else workdir)
    server = ServerProcess(name, process, port, log, workers)
    try:
        deadline = time.monotonic() + 30
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"{name} exited during start-up; see {log}")
            try:
                if name in OURS:
                    # With --workers, /readyz answers from whichever worker
                    # accepts; each worker holds a LISTEN and a read connection
                    # once it is ready.
                    if await _http_status(port, "/readyz") == 200 and (
                        workers == 1 or len(await server_backends(url)) >= 2 * workers
                    ):
                        break
                else:
                    _reader, writer = await asyncio.open_connection("127.0.0.1", port)
                    writer.close()
                    break
            except (OSError, ValueError, IndexError):
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"{name} did not become ready in 30 s; see {log}")
            await asyncio.sleep(0.05)
        server.pids = await asyncio.to_thread(process_tree, process.pid)
        yield server
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                await asyncio.to_thread(process.wait, 10)
            except subprocess.TimeoutExpired:
                process.kill()
                await asyncio.to_thread(process.wait)


# --------------------------------------------------------------------------
# Client processes

# One connection of a client process: its index in the target, its table, and
# whether it samples latencies; on the Supabase endpoint, optionally the JSON
# text of its phx_join payload (the rls target's, with its own token).
ClientSpec = tuple[int, str, bool] | tuple[int, str, bool, str]


class ConnectCommand(TypedDict):
    """``connect``: open ``clients`` to the server at ``host``:``port``."""

    cmd: Literal["connect"]
    host: str
    port: int
    ours: bool
    phoenix: bool
    clients: list[ClientSpec]
    sequential: bool


# The answers of bench/wsclient.c, as its header describes them.


class ConnectAnswer(TypedDict):
    ready: int
    errors: list[str]
    """The first few errors; ``error_count`` counts them all."""
    error_count: int
    seconds: float


class TotalAnswer(TypedDict):
    received: int
    frames: int


class ReportAnswer(TypedDict):
    clients: list[list[int]]
    """``[index, received, frames, closed]`` per connection (``closed``: a JSON boolean)."""
    latencies: list[float]


class ClientPool:
    """Processes of ``bench/wsclient.c``, each holding a share of the connections."""

    def __init__(self, processes: list[asyncio.subprocess.Process]) -> None:
        self.processes = processes
        self.lock = asyncio.Lock()

    @classmethod
    async def start(cls, count: int) -> ClientPool:
        processes = [
            await asyncio.create_subprocess_exec(
                str(CLIENT_BINARY),
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                limit=1 << 26,
            )
            for _ in range(count)
        ]
        return cls(processes)

    @property
    def pids(self) -> list[int]:
        return [process.pid for process in self.processes]

    async def _call(self, index: int, command: Mapping[str, object]) -> object:
        """Process ``index``'s answer to ``command``, decoded."""
        process = self.processes[index]
        assert process.stdin is not None
        assert process.stdout is not None
        process.stdin.write((json.dumps(command) + "\n").encode())
        await process.stdin.drain()
        line = await process.stdout.readline()
        if not line:
            raise RuntimeError("a client process died")
        answer: object = json.loads(line)
        if isinstance(answer, dict) and "error" in answer:
            raise RuntimeError(f"a client process refused {command['cmd']}: {answer['error']}")
        return answer

    async def _each(self, cmd: str) -> list[object]:
        return list(
            await asyncio.gather(*(self._call(i, {"cmd": cmd}) for i in range(len(self.processes))))
        )

    async def connect(self, index: int, command: ConnectCommand) -> ConnectAnswer:
        return cast(ConnectAnswer, await self._call(index, command))

    async def connect_each(self, commands: Sequence[ConnectCommand]) -> list[ConnectAnswer]:
        """Process i runs ``commands[i]``."""
        return list(
            await asyncio.gather(*(self.connect(i, command) for i, command in enumerate(commands)))
        )

    async def reset_each(self) -> None:
        """Zero every connection's counters and latency samples."""
        await self._each("reset")

    async def received(self) -> int:
        """Changes received so far, over every connection."""
        totals = cast(list[TotalAnswer], await self._each("total"))
        return sum(total["received"] for total in totals)

    async def reports(self) -> list[ReportAnswer]:
        return cast(list[ReportAnswer], await self._each("report"))

    async def close(self, index: int) -> None:
        """Close process ``index``'s connections."""
        await self._call(index, {"cmd": "close"})

    async def close_each(self) -> None:
        await self._each("close")

    def cpu(self) -> list[float]:
        return [cpu_seconds(pid) for pid in self.pids]

    async def stop(self) -> None:
        for process in self.processes:
            if process.returncode is None and process.stdin is not None:
                process.stdin.write(b'{"cmd": "exit"}\n')
                with contextlib.suppress(ConnectionError):
                    await process.stdin.drain()
        for process in self.processes:
            try:
                await asyncio.wait_for(process.wait(), 5)
            except TimeoutError:
                process.kill()
                await process.wait()


# --------------------------------------------------------------------------
# Load targets


@dataclass
class LoadSpec:
    key: str
    title: str
    clients: int
    rate: float | None
    seconds: float
    goal: str = ""


@dataclass
class LoadResult:
    server: str
    clients: int
    label: str = ""
    connected: int = 0
    connect_errors: int = 0
    connect_seconds: float = 0.0
    error_sample: list[str] = field(default_factory=list)
    asked: float | None = None
    achieved: float = 0.0
    window: float = 0.0
    events: int = 0
    """UPDATEs the writers committed: each one event every subscriber of its table is owed."""
    expected: int = 0
    """Events owed, over every client."""
    delivered: int = 0
    frames: int = 0
    lost: int = 0
    """Events owed and never received, over every client."""
    extra: int = 0
    dropped: int = 0
    p50: float | None = None
    p99: float | None = None
    max: float | None = None
    samples: int = 0
    cpu_us_per_msg: float | None = None
    server_cpu_pct: float = 0.0
    pg_cpu_pct: float = 0.0
    rss_idle: int = 0
    rss_connected: int = 0
    rss: int = 0
    gen_cpu_pct: float = 0.0
    gen_max_proc_pct: float = 0.0
    writer_cpu_pct: float = 0.0
    machine_pct: float = 0.0
    note: str = ""
    phases: dict[str, float] = field(default_factory=dict)

    @property
    def rss_per_conn(self) -> float | None:
        if not self.connected:
            return None
        return (self.rss_connected - self.rss_idle) / self.connected


def percentile(ordered: Sequence[float], fraction: float) -> float:
    index = min(len(ordered) - 1, max(0, round(fraction * (len(ordered) - 1))))
    return ordered[index]


@dataclass
class Snapshot:
    at: float
    server_cpu: float
    clients_cpu: list[float]
    machine: tuple[int, int]
    delivered: int
    backends_cpu: float


def backends_cpu(pids: Sequence[int]) -> float:
    total = 0.0
    for pid in pids:
        with contextlib.suppress(OSError):
            total += cpu_seconds(pid)
    return total


async def server_backends(url: str) -> list[int]:
    """The Postgres backends of the server's own sessions (its LISTEN and its reads)."""
    connection = await asyncpg.connect(url)
    try:
        records = await connection.fetch(
            "SELECT pid FROM pg_stat_activity WHERE datname = current_database()"
            " AND pid <> pg_backend_pid() AND backend_type = 'client backend'"
            " AND coalesce(application_name, '') <> 'pgbench'"
        )
    finally:
        await connection.close()
    return [int(record["pid"]) for record in records]


async def _snapshot(
    server: ServerProcess, pool: ClientPool, delivered: int, backends: Sequence[int]
) -> Snapshot:
    return Snapshot(
        time.perf_counter(),
        server.cpu(),
        pool.cpu(),
        machine_ticks(),
        delivered,
        backends_cpu(backends),
    )


def connect_command(
    server: ServerProcess, clients: list[ClientSpec], *, sequential: bool = False
) -> ConnectCommand:
    """A client process's ``connect`` command: ``clients`` to ``server``."""
    return {
        "cmd": "connect",
        "host": "127.0.0.1",
        "port": server.port,
        "ours": server.ours,
        "phoenix": server.phoenix,
        "clients": clients,
        "sequential": sequential,
    }


async def run_load(
    spec: LoadSpec,
    server: ServerProcess,
    url: str,
    pool: ClientPool,
    writers: Writers,
    drain_limit: float,
) -> LoadResult:
    """Connect ``spec.clients`` clients over ten tables, write at ``spec.rate``, count."""
    workers = len(pool.processes)
    # Client i reads table i % 10 and lives in process i % workers; in each
    # process the first client of each table is sampled for latency.
    plan: list[list[ClientSpec]] = [[] for _ in range(workers)]
    tables_of: dict[int, str] = {}
    sampled: set[tuple[int, str]] = set()
    for i in range(spec.clients):
        table = TABLES[i % len(TABLES)]
        worker = i % workers
        sample = (worker, table) not in sampled
        sampled.add((worker, table))
        plan[worker].append((i, table, sample))
        tables_of[i] = table

    async def connect() -> list[ConnectAnswer]:
        if server.name != "encode":
            return await pool.connect_each([connect_command(server, part) for part in plan])
        # encode/broadcaster loses subscribers when the first ones of a channel
        # subscribe at once (and its one asyncpg connection refuses concurrent
        # LISTENs): the first client of each table connects alone, one table at
        # a time; the rest follow together once every table is listened to.
        answers: list[ConnectAnswer] = []
        firsts = [[spec_ for spec_ in part if spec_[0] < len(TABLES)] for part in plan]
        rests = [[spec_ for spec_ in part if spec_[0] >= len(TABLES)] for part in plan]
        for worker, part in enumerate(firsts):
            if part:
                answers.append(
                    await pool.connect(worker, connect_command(server, part, sequential=True))
                )
        return answers + await pool.connect_each([connect_command(server, part) for part in rests])

    async def owed(run: int) -> dict[str, int]:
        return await expected_changes(url, run)

    return await measure_load(
        spec, server, url, pool, writers, drain_limit, connect=connect, keys=tables_of, owed=owed
    )


async def measure_load(
    spec: LoadSpec,
    server: ServerProcess,
    url: str,
    pool: ClientPool,
    writers: Writers,
    drain_limit: float,
    *,
    connect: Callable[[], Awaitable[list[ConnectAnswer]]],
    keys: Mapping[int, str],
    owed: Callable[[int], Awaitable[dict[str, int]]],
) -> LoadResult:
    """``connect`` the clients, write at ``spec.rate``, count what each received.

    ``owed(run)`` maps a key to the events writer run ``run`` owes each client
    under that key; client ``i``'s key is ``keys[i]`` (its table, its user).
    """
    result = LoadResult(server.name, spec.clients, asked=spec.rate, label=server.label)
    result.rss_idle = server.rss()
    started = time.perf_counter()
    answers = await connect()
    result.connect_seconds = time.perf_counter() - started
    result.phases["connect"] = result.connect_seconds
    result.connected = sum(answer["ready"] for answer in answers)
    result.connect_errors = sum(answer["error_count"] for answer in answers)
    result.error_sample = [error for answer in answers for error in answer["errors"]][:3]
    await asyncio.sleep(0.3)
    result.rss = result.rss_connected = server.rss()
    try:
        await pool.reset_each()
        backends = await server_backends(url)
        first = await _snapshot(server, pool, 0, backends)
        writer = await writers.run(url, spec.seconds, spec.rate)
        result.phases["write"] = writer.seconds
        result.achieved = writer.tps
        expected = await owed(writer.run)
        result.events = sum(expected.values())
        result.expected = sum(expected.get(key, 0) for key in keys.values())
        # Drain: wait until every client has what it is owed, or nothing moves.
        last = await _snapshot(server, pool, await pool.received(), backends)
        drain_started = time.perf_counter()
        deadline = time.perf_counter() + drain_limit
        while last.delivered < result.expected and time.perf_counter() < deadline:
            await asyncio.sleep(0.1)
            delivered = await pool.received()
            if delivered != last.delivered:
                last = await _snapshot(server, pool, delivered, backends)
            elif time.perf_counter() - last.at > 2.0:
                break
        result.phases["drain"] = time.perf_counter() - drain_started
        reports = await pool.reports()
        result.rss = max(result.rss, server.rss())
    finally:
        closing = time.perf_counter()
        await pool.close_each()
        result.phases["close"] = time.perf_counter() - closing
    window = last.at - first.at
    result.window = window
    latencies: list[float] = []
    for report in reports:
        latencies += report["latencies"]
        for index, received, frames, closed in report["clients"]:
            due = expected.get(keys[index], 0)
            result.delivered += received
            result.frames += frames
            result.lost += max(0, due - received)
            result.extra += max(0, received - due)
            if closed or (due and not received):
                result.dropped += 1
    result.dropped += result.connect_errors
    latencies.sort()
    result.samples = len(latencies)
    if latencies:
        result.p50 = percentile(latencies, 0.50)
        result.p99 = percentile(latencies, 0.99)
        result.max = latencies[-1]
    server_cpu = last.server_cpu - first.server_cpu
    if result.delivered:
        result.cpu_us_per_msg = server_cpu / result.delivered * 1e6
    if window > 0:
        result.server_cpu_pct = server_cpu / window * 100
        result.pg_cpu_pct = (last.backends_cpu - first.backends_cpu) / window * 100
        client_cpu = [b - a for a, b in zip(first.clients_cpu, last.clients_cpu, strict=True)]
        result.gen_cpu_pct = (sum(client_cpu) + writer.cpu) / window * 100
        result.gen_max_proc_pct = max(client_cpu) / window * 100
        result.writer_cpu_pct = writer.cpu / window * 100
        busy = last.machine[0] - first.machine[0]
        total = last.machine[1] - first.machine[1]
        result.machine_pct = busy / total * 100 if total else 0.0
    notes = []
    if writer.failed:
        notes.append(f"{writer.failed} writer transactions failed")
    if result.events != writer.commits:
        # Each committed UPDATE counts once in data.n: a difference is the
        # bench's own error, not the server's.
        notes.append(f"events counted {result.events}, pgbench committed {writer.commits}")
    result.note = "; ".join(notes)
    return result


# --------------------------------------------------------------------------
# Writers, notifications, catch-up


@dataclass
class WriterVariant:
    label: str
    commits_per_s: float
    cpu_pct: float
    server_cpu_pct: float | None = None
    """Ours serving: its process, and its sessions' Postgres backends."""
    server_pg_cpu_pct: float | None = None
    events: int = 0
    """Ours serving: the UPDATEs committed, each one event for its table's subscriber."""
    received: int = 0
    """Ours serving: the events the subscribers received (summed over the rounds)."""
    runs: list[WriterVariant] = field(default_factory=list, repr=False)
    """Each round's run of a variant measured in rounds (this one is their median)."""
    shares: list[float] = field(default_factory=list)
    """Each round's commits/s as a % of that round's no-trigger run."""

    def summarize(self, references: Sequence[WriterVariant]) -> None:
        """Become the median of ``runs``; ``references``: each round's no-trigger run."""
        self.shares = [
            run.commits_per_s / reference.commits_per_s * 100
            for run, reference in zip(self.runs, references, strict=True)
        ]
        self.commits_per_s = statistics.median(run.commits_per_s for run in self.runs)
        self.cpu_pct = statistics.median(run.cpu_pct for run in self.runs)
        # A variant's runs all have our server's figures, or none has.
        self.server_cpu_pct = _median([run.server_cpu_pct for run in self.runs])
        self.server_pg_cpu_pct = _median([run.server_pg_cpu_pct for run in self.runs])
        self.events = sum(run.events for run in self.runs)
        self.received = sum(run.received for run in self.runs)


async def drained(pool: ClientPool, owed: int, idle: float = 1.0, limit: float = 10.0) -> int:
    """What the clients received once they have ``owed``, or nothing moved for ``idle`` s."""
    received = await pool.received()
    moved = time.perf_counter()
    deadline = moved + limit
    while received < owed and time.perf_counter() < deadline:
        await asyncio.sleep(0.1)
        now = await pool.received()
        if now != received:
            received, moved = now, time.perf_counter()
        elif time.perf_counter() - moved > idle:
            break
    return received


def _median(values: Sequence[float | None]) -> float | None:
    """The median of ``values``, or None if one is missing."""
    present = [value for value in values if value is not None]
    return statistics.median(present) if len(present) == len(values) else None


@dataclass
class BulkResult:
    label: str
    rows: int
    statement_ms: float
    notifications: int


@dataclass
class CatchUpResult:
    changes: int
    received: int
    synced_ms: float


async def settle(url: str) -> None:
    """The same start for every writer variant, whatever ran before it.

    The variants write the same rows in turn, and earlier targets write them
    too: without this, a variant pays for the dead rows of the ones before it
    (pruning, longer index scans) and for the full-page writes after a
    checkpoint that happens to fall in its run.
    """
    connection = await asyncpg.connect(url)
    try:
        await connection.execute("VACUUM rows")
        with contextlib.suppress(asyncpg.InsufficientPrivilegeError):
            await connection.execute("CHECKPOINT")
    finally:
        await connection.close()


async def writers_target(
    our_url: str,
    peer_url: str,
    writers: Writers,
    pool: ClientPool,
    seconds: float,
    builtin: bool,
    workdir: Path,
    profiles: dict[str, str] | None = None,
    rounds: int = 1,
) -> list[WriterVariant]:
    """The writer variants; with ``profiles``, py-spy our server while it serves.

    Ours, with and without our server, and the no-trigger reference run
    ``rounds`` times in turn: pgbench's rate drifts by tens of percent over a
    minute on a shared machine, so each variant's share is the median of its
    share of the same round's no-trigger rate.
    """
    variants: list[WriterVariant] = []
    by_label: dict[str, WriterVariant] = {}

    async def measure(label: str, url: str, server: ServerProcess | None = None) -> WriterVariant:
        await settle(url)
        backends = await server_backends(url) if server else []
        before = (server.cpu(), backends_cpu(backends)) if server else (0.0, 0.0)
        profiling = None
        # The first serving round's profile; later rounds would only replace it.
        if server and profiles is not None and "ours" not in profiles:
            profiling = asyncio.create_task(
                profile_server(server, seconds, workdir / "profile-ours-writers.txt")
            )
        run = await writers.run(url, seconds, None)
        if profiling is not None and profiles is not None:
            profiles["ours"] = await profiling
        variant = WriterVariant(label, run.tps, run.cpu / run.seconds * 100)
        if server:
            variant.server_cpu_pct = (server.cpu() - before[0]) / run.seconds * 100
            variant.server_pg_cpu_pct = (backends_cpu(backends) - before[1]) / run.seconds * 100
        if label not in by_label:
            by_label[label] = dataclasses.replace(variant, runs=[], shares=[])
            variants.append(by_label[label])
        by_label[label].runs.append(variant)
        if server:
            # Each commit changed one row of one table, which has one subscriber.
            variant.events = run.commits
            variant.received = await drained(pool, run.commits)
        return variant

    serving = "ours: our triggers, our server serving every table"
    reference = "no trigger: same rows, triggers disabled"
    for _ in range(rounds):
        # Writers skip their wake-up while every server serving their table has
        # promised to read it, and when none serves it: the honest figure is with
        # our server running and a subscriber on every table the writers touch.
        # They are C clients, as in the load targets: Python ones, in this
        # process, took 3% of a core from the writers (5 µs a frame against 20).
        async with running_server("ours", our_url, workdir, "writers") as server:
            connect = connect_command(server, [(i, table, False) for i, table in enumerate(TABLES)])
            try:
                answer = await pool.connect(0, connect)
                if answer["ready"] != len(TABLES):
                    raise RuntimeError(f"writers target: subscribers failed: {answer['errors']}")
                await pool.reset_each()
                served = await measure(serving, our_url, server)
                if not served.received:
                    # Writers skip their wake-up for tables a server serves: a
                    # rate measured while it served nothing would flatter us.
                    raise RuntimeError(
                        f"writers target: our server delivered nothing; see {server.log}"
                    )
            finally:
                await pool.close(0)
        connection = await asyncpg.connect(our_url)
        try:
            await measure("ours: our triggers, no server running", our_url)
            await connection.execute("ALTER TABLE rows DISABLE TRIGGER USER")
            try:
                await measure(reference, our_url)
            finally:
                await connection.execute("ALTER TABLE rows ENABLE TRIGGER USER")
        finally:
            await connection.close()
    for variant in variants:
        variant.summarize(by_label[reference].runs)
    await measure("per-row NOTIFY of the row (the peers' trigger)", peer_url)
    if builtin:
        process = await asyncio.create_subprocess_exec(
            "pgbench",
            "-i",
            "-q",
            "-s",
            "1",
            peer_url,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL,
        )
        await process.wait()
        run = await writers.builtin(peer_url, seconds)
        variants.append(
            WriterVariant(
                "pgbench -b simple-update (3 statements, no trigger)",
                run.tps,
                run.cpu / seconds * 100,
            )
        )
    return variants


async def bulk_update(url: str, channel: str, label: str) -> BulkResult:
    """One UPDATE of the 10,000 rows of table ``bulk``; count the notifications it sends."""
    listener = await asyncpg.connect(url)
    writer = await asyncpg.connect(url)
    heard: list[object] = []

    def notified(_connection: object, _pid: int, _channel: str, payload: object) -> None:
        heard.append(payload)

    try:
        await listener.add_listener(channel, notified)
        started = time.perf_counter()
        status = await writer.execute(
            "UPDATE rows SET data = jsonb_build_object("
            "'t', round(extract(epoch FROM clock_timestamp()) * 1000, 3), 'bulk', random())"
            " WHERE table_id = $1",
            BULK_TABLE,
        )
        statement_ms = (time.perf_counter() - started) * 1000
        # Wait until the notifications stop arriving.
        count = -1
        while count != len(heard):
            count = len(heard)
            await asyncio.sleep(0.5)
    finally:
        await writer.close()
        await listener.close()
    return BulkResult(label, int(status.split()[-1]), statement_ms, len(heard))


async def catch_up_target(server: ServerProcess, url: str) -> tuple[BulkResult, CatchUpResult]:
    """A client synced on ``bulk`` leaves; 10,000 rows change; it resumes with its cursor."""
    first = await connect_client(host="127.0.0.1", port=server.port, table_id=BULK_TABLE, ours=True)
    cursor = first.synced_cursor
    first.close()
    bulk = await bulk_update(url, "broadcaster_changes", "ours (our triggers)")
    started = time.perf_counter()
    second = await connect_client(
        host="127.0.0.1", port=server.port, table_id=BULK_TABLE, ours=True, cursor=cursor
    )
    synced_ms = (second.synced_at - started) * 1000
    second.close()
    return bulk, CatchUpResult(bulk.rows, second.catch_up, synced_ms)


# --------------------------------------------------------------------------
# Row-level security (issue 21)

RLS_TABLE = "notes"
RLS_TABLE_ID = f"public.{RLS_TABLE}"
RLS_USERS = 100
RLS_CONNECTIONS_PER_USER = 10
RLS_ROWS_PER_USER = 10
RLS_RATE = 200.0

# t is the commit stamp in epoch milliseconds, as rows' data.t (the clients
# read the newest number after "t": in a change); double precision keeps its
# fraction, which a bigint would round to whole milliseconds. r and n are
# COUNTED_WRITER_SCRIPT's run marker and write count.
RLS_SETUP = """
CREATE TABLE notes (
    id bigint PRIMARY KEY,
    owner text NOT NULL,
    body text NOT NULL,
    t double precision,
    r int,
    n int
)
"""
# Row k belongs to user k % users: each user owns RLS_ROWS_PER_USER rows.
RLS_SEED = """
INSERT INTO notes (id, owner, body)
SELECT k, 'user' || (k % $1::int), 'note ' || k FROM generate_series(0, $2::int - 1) AS k
"""
# "Users see their own rows" as Supabase's docs write it (auth.uid() reads the
# same setting), on a text owner: the tokens' subs are not uuids. Postgres
# evaluates the claim for each row a check scans; Supabase's advice for
# policies' speed, (select auth.uid()), reads it once a statement
# (RLS_POLICY_ONCE, the target's second run).
RLS_SUB = "current_setting('request.jwt.claims', true)::jsonb ->> 'sub'"
RLS_POLICY = f"""
CREATE POLICY owner_reads ON notes FOR SELECT TO "{{role}}" USING (owner = {RLS_SUB})
"""
RLS_POLICY_ONCE = f"""
CREATE POLICY owner_reads ON notes FOR SELECT TO "{{role}}" USING (owner = (SELECT {RLS_SUB}))
"""
# COUNTED_WRITER_SCRIPT's UPDATE on notes: a row drawn at random among every
# user's, stamped and counted, so each user is owed the sum of n over its rows.
RLS_WRITER_SCRIPT = """\\set k random(0, :nrows - 1)
UPDATE notes
SET t = round(extract(epoch FROM clock_timestamp()) * 1000, 3),
    r = :run::int, n = CASE WHEN r = :run::int THEN n + 1 ELSE 1 END
WHERE id = :k;
"""


@contextlib.asynccontextmanager
async def subscriber_role(admin_url: str, name: str) -> AsyncIterator[str]:
    """The rls target's subscribers' role, NOLOGIN (Supabase's ``authenticated``).

    Roles are the cluster's, not a database's: a name of this run's own, so
    that no one else's role is touched, dropped at the end (after the
    database, whose grants and policy name it). The benchmark's login is
    made a member unless it is a superuser: the server, logged in as it,
    switches to the role for each check.
    """
    admin = await asyncpg.connect(admin_url)
    try:
        await admin.execute(f'CREATE ROLE "{name}" NOLOGIN')
        if not await admin.fetchval("SELECT rolsuper FROM pg_roles WHERE rolname = current_user"):
            await admin.execute(f'GRANT "{name}" TO CURRENT_USER')
    finally:
        await admin.close()
    try:
        yield name
    finally:
        admin = await asyncpg.connect(admin_url)
        try:
            await admin.execute(f'DROP ROLE IF EXISTS "{name}"')
        finally:
            await admin.close()


def publish(url: str, table: str, log: Path) -> None:
    """``python -m broadcaster publish TABLE``, as a user runs it."""
    env = {**os.environ, "DATABASE_URL": url}
    with open(log, "ab") as out:
        done = subprocess.run(
            [sys.executable, "-m", "broadcaster", "publish", table], env=env, stdout=out, stderr=out
        )
    if done.returncode != 0:
        raise RuntimeError(f"broadcaster publish {table} failed; see {log}")


async def setup_rls(url: str, role: str, log: Path) -> None:
    """``notes``, its owners' rows, ``role`` may select it, the policy, RLS on; published."""
    connection = await asyncpg.connect(url)
    try:
        await connection.execute(RLS_SETUP)
        await connection.execute(RLS_SEED, RLS_USERS, RLS_USERS * RLS_ROWS_PER_USER)
        await connection.execute(
            f'GRANT USAGE ON SCHEMA public TO "{role}"; GRANT SELECT ON notes TO "{role}";'
            + RLS_POLICY.format(role=role)
            + "; ALTER TABLE notes ENABLE ROW LEVEL SECURITY"
        )
        await connection.execute("VACUUM ANALYZE notes")
        # Each check is a call of broadcaster_visible(): counted (calls, time)
        # in the sessions that start from now on, the server's. Superusers only.
        name = await connection.fetchval("SELECT current_database()")
        with contextlib.suppress(asyncpg.InsufficientPrivilegeError):
            await connection.execute(f"ALTER DATABASE \"{name}\" SET track_functions = 'pl'")
    finally:
        await connection.close()
    await asyncio.to_thread(publish, url, RLS_TABLE_ID, log)


async def expected_notes(url: str, run: int) -> dict[str, int]:
    """Events each user's rows had in writer run ``run``: what each of its subscribers is owed."""
    connection = await asyncpg.connect(url)
    try:
        records = await connection.fetch(
            "SELECT owner, sum(n) AS n FROM notes WHERE r = $1 GROUP BY owner", run
        )
    finally:
        await connection.close()
    return {record["owner"]: int(record["n"]) for record in records}


async def visible_calls(url: str) -> tuple[int, float] | None:
    """Calls of broadcaster_visible() so far and their milliseconds in Postgres; None
    when the database does not count them (``track_functions``, set by a superuser)."""
    connection = await asyncpg.connect(url)
    try:
        if await connection.fetchval("SELECT current_setting('track_functions')") == "none":
            return None
        record = await connection.fetchrow(
            "SELECT sum(calls) AS calls, sum(total_time) AS ms FROM pg_stat_user_functions"
            " WHERE funcname = 'broadcaster_visible'"
        )
    finally:
        await connection.close()
    if record is None or record["calls"] is None:
        return 0, 0.0
    return int(record["calls"]), float(record["ms"])


def rls_token(secret: str, role: str, user: str) -> str:
    """A user's token, as Supabase's auth mints them (``role``, ``sub``), plus the
    ``table_ids`` claim our default authorizer reads. Its 10 connections share it:
    one viewer (role and claims) a user."""
    claims = {
        "role": role,
        "sub": user,
        "table_ids": [RLS_TABLE_ID],
        "exp": int(time.time()) + 3600,
    }
    return jwt.encode(claims, secret, algorithm="HS256")


def realtime_join(token: str, row_filter: str | None) -> str:
    """realtime-js's phx_join payload (``RealtimeChannel.subscribe()``) for one
    ``postgres_changes`` binding on ``notes``, as JSON text."""
    binding = {"event": "*", "schema": "public", "table": RLS_TABLE}
    if row_filter is not None:
        binding["filter"] = row_filter
    payload = {
        "config": {
            "broadcast": {"ack": False, "self": False},
            "presence": {"key": "", "enabled": False},
            "postgres_changes": [binding],
            "private": False,
        },
        "access_token": token,
    }
    return json.dumps(payload, separators=(",", ":"))


RlsVariant = Literal["per row", "once", "off"]
RLS_LABELS: dict[RlsVariant, str] = {
    "per row": "RLS on, policy reads the claims per row",
    "once": "RLS on, (select ...) reads them once",
    "off": "RLS off, filter owner=eq.<sub>",
}


@dataclass
class RlsResult:
    load: LoadResult
    variant: RlsVariant
    checks: int | None = None
    """Calls of broadcaster_visible() during the run: one per viewer per read of changes."""
    check_ms: float | None = None
    """Their time in Postgres, in all."""


async def rls_target(
    url: str,
    workdir: Path,
    pool: ClientPool,
    writers: Writers,
    seconds: float,
    drain_limit: float,
    role: str,
) -> list[RlsResult]:
    """1,000 Supabase clients of 100 users on ``notes``, 200 updates/s, three runs.

    RLS on, each client's binding without a filter, the policy deciding as
    each user: first as setup_rls made it (RLS_POLICY), then reading the
    claims once a statement (RLS_POLICY_ONCE). Then RLS off (``DISABLE ROW
    LEVEL SECURITY``), the same tokens and writers, each binding filtered on
    ``owner=eq.<sub>``: without a policy, that is what keeps each client to
    its owner's changes (unfiltered, every client would be owed every change,
    100 times the messages), so every run delivers the same events. Our
    server on its Supabase endpoint, with JWT auth.
    """
    secret = secrets.token_urlsafe(32)
    tokens = {f"user{u}": rls_token(secret, role, f"user{u}") for u in range(RLS_USERS)}
    results: list[RlsResult] = []
    changes = {
        "per row": "",
        "once": "DROP POLICY owner_reads ON notes; " + RLS_POLICY_ONCE.format(role=role),
        "off": "ALTER TABLE notes DISABLE ROW LEVEL SECURITY",
    }
    variant: RlsVariant
    for variant in ("per row", "once", "off"):
        if changes[variant]:
            connection = await asyncpg.connect(url)
            try:
                await connection.execute(changes[variant])
            finally:
                await connection.close()
        results.append(
            await rls_run(
                url, workdir, pool, writers, seconds, drain_limit, secret, tokens, variant
            )
        )
    return results


async def rls_run(
    url: str,
    workdir: Path,
    pool: ClientPool,
    writers: Writers,
    seconds: float,
    drain_limit: float,
    secret: str,
    tokens: Mapping[str, str],
    variant: RlsVariant,
) -> RlsResult:
    """One run of the rls target: bindings without a filter, or filtered with RLS off."""
    clients = RLS_USERS * RLS_CONNECTIONS_PER_USER
    spec = LoadSpec("rls", "", clients, RLS_RATE, seconds)
    workers = len(pool.processes)
    # Client i is user{i % 100}'s and lives in process i % workers; in each
    # process the first client of each user is sampled for latency.
    plan: list[list[ClientSpec]] = [[] for _ in range(workers)]
    users: dict[int, str] = {}
    sampled: set[tuple[int, str]] = set()
    for i in range(clients):
        user = f"user{i % RLS_USERS}"
        worker = i % workers
        join = realtime_join(tokens[user], f"owner=eq.{user}" if variant == "off" else None)
        plan[worker].append((i, RLS_TABLE, (worker, user) not in sampled, join))
        sampled.add((worker, user))
        users[i] = user
    settings = {"BROADCASTER_AUTH": "jwt", "BROADCASTER_JWT_SECRET": secret}
    tag = "rls-" + variant.replace(" ", "-")
    async with running_server("supabase", url, workdir, tag, settings=settings) as server:

        async def connect() -> list[ConnectAnswer]:
            return await pool.connect_each([connect_command(server, part) for part in plan])

        async def owed(run: int) -> dict[str, int]:
            return await expected_notes(url, run)

        before = await visible_calls(url)
        result = await measure_load(
            spec, server, url, pool, writers, drain_limit, connect=connect, keys=users, owed=owed
        )
        # A backend reports its counts once idle, at most once a second.
        await asyncio.sleep(1.5)
        after = await visible_calls(url)
    result.label = RLS_LABELS[variant]
    rls = RlsResult(result, variant)
    if before is not None and after is not None:
        rls.checks = after[0] - before[0]
        rls.check_ms = after[1] - before[1]
    return rls


# --------------------------------------------------------------------------
# Output


def fmt(value: float | None, digits: int = 0) -> str:
    if value is None:
        return "-"
    return f"{value:,.{digits}f}"


def table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(h), *(len(row[i]) for row in rows)) for i, h in enumerate(headers)]
    lines = [
        "| " + " | ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)) + " |",
        "|" + "|".join("-" * (w + 2) for w in widths) + "|",
    ]
    for row in rows:
        cells = [
            cell.ljust(w) if i == 0 else cell.rjust(w)
            for i, (cell, w) in enumerate(zip(row, widths, strict=True))
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def lost_cell(r: LoadResult) -> str:
    """Events lost, and as a share of the events owed when any was."""
    if not r.lost or not r.expected:
        return fmt(r.lost)
    return f"{r.lost:,} ({r.lost / r.expected * 100:.1f}%)"


def load_table(results: Sequence[LoadResult]) -> str:
    headers = [
        "server",
        "upd/s asked",
        "upd/s done",
        "msgs/s",
        "frames/s",
        "lost",
        "dropped",
        "p50 ms",
        "p99 ms",
        "max ms",
        "CPU µs/msg",
        "srv CPU %",
        "its PG CPU %",
        "RSS MB",
        "gen CPU %",
        "machine %",
    ]
    rows = []
    for r in results:
        rate = r.delivered / r.window if r.window else 0.0
        frames = r.frames / r.window if r.window else 0.0
        rows.append(
            [
                r.label,
                "max" if r.asked is None else fmt(r.asked),
                fmt(r.achieved),
                fmt(rate),
                fmt(frames),
                lost_cell(r),
                fmt(r.dropped),
                fmt(r.p50, 1),
                fmt(r.p99, 1),
                fmt(r.max, 1),
                fmt(r.cpu_us_per_msg, 1),
                fmt(r.server_cpu_pct),
                fmt(r.pg_cpu_pct),
                fmt(r.rss / 2**20, 1),
                f"{fmt(r.gen_cpu_pct)} ({fmt(r.gen_max_proc_pct)})",
                fmt(r.machine_pct),
            ]
        )
    return table(headers, rows)


def conns_table(results: Sequence[LoadResult]) -> str:
    headers = [
        "server",
        "connections",
        "subscribed",
        "errors",
        "subscribe s",
        "RSS idle MB",
        "RSS subscribed MB",
        "KB/conn",
        "check: msgs",
        "lost",
        "p99 ms",
        "CPU µs/msg",
        "gen CPU %",
        "machine %",
    ]
    rows = [
        [
            r.label,
            fmt(r.clients),
            fmt(r.connected),
            fmt(r.connect_errors),
            fmt(r.connect_seconds, 2),
            fmt(r.rss_idle / 2**20, 1),
            fmt(r.rss_connected / 2**20, 1),
            fmt(None if r.rss_per_conn is None else r.rss_per_conn / 1024, 1),
            fmt(r.delivered),
            lost_cell(r),
            fmt(r.p99, 1),
            fmt(r.cpu_us_per_msg, 1),
            f"{fmt(r.gen_cpu_pct)} ({fmt(r.gen_max_proc_pct)})",
            fmt(r.machine_pct),
        ]
        for r in results
    ]
    return table(headers, rows)


# --------------------------------------------------------------------------
# The run


@dataclass
class Plan:
    quick: bool
    targets: tuple[str, ...]
    servers: tuple[str, ...]
    window: float
    writers_window: float
    writers_rounds: int
    drain: float
    nrows: int
    load_rows: int
    """Rows a table the load targets write (rows r0..r{10 * load_rows - 1})."""
    connections: int
    client_procs: int
    scale_clients: int
    scale_rate: float | None

    @property
    def check_seconds(self) -> float:
        return 1.0 if self.quick else 2.0

    def loads(self) -> list[LoadSpec]:
        specs = {
            "fanout": LoadSpec(
                "fanout",
                "1. 100 clients / 10 tables / 2,000 updates/s",
                100,
                2000,
                self.window,
                "ours: server CPU per delivered message at most 5 µs (half of Node's)",
            ),
            "ceiling": LoadSpec(
                "ceiling",
                "2a. 100 clients / 10 tables / writers' ceiling (8 pgbench writers, unthrottled)",
                100,
                None,
                self.window,
                "ours: p99 at most 10 ms, nothing lost",
            ),
            "fanout1k": LoadSpec(
                "fanout1k",
                "2b. 1,000 clients / 10 tables / 600 updates/s",
                1000,
                600,
                self.window,
                "ours: p99 at most 50 ms, nothing lost",
            ),
            "conns": LoadSpec(
                "conns",
                f"3. {self.connections:,} connections, each subscribed (10 tables), "
                f"then 50 updates/s for {self.check_seconds:g} s as a delivery check",
                self.connections,
                50,
                self.check_seconds,
                "ours: at most 20 KB RSS per connection; all subscribed within 10 s, no error",
            ),
            "quiet": LoadSpec(
                "quiet",
                "Quiet (not an issue-5 target): 100 clients / 10 tables / 10 updates/s",
                100,
                10,
                self.window,
                "none in issue 5: what a server and its Postgres sessions spend while "
                "little changes",
            ),
        }
        return [
            specs[key]
            for key in ("fanout", "ceiling", "fanout1k", "conns", "quiet")
            if key in self.targets
        ]

    def scale_out(self) -> LoadSpec:
        rate = "writers' ceiling" if self.scale_rate is None else f"{self.scale_rate:,g} updates/s"
        return LoadSpec(
            "workers",
            f"5. Scale-out: {self.scale_clients:,} clients / 10 tables / {rate}, "
            "serve --workers 1 and --workers 2",
            self.scale_clients,
            self.scale_rate,
            self.window if not self.quick else 2.0,
            "2 workers deliver at least 1.6 times what 1 worker does at the same p99",
        )


class Options(argparse.Namespace):
    """The command line, as ``main`` parses it; None: not given, the plan decides."""

    quick: bool
    targets: str | None
    servers: str | None
    window: float | None
    writers_window: float | None
    writers_rounds: int | None
    connections: int | None
    rows: int
    load_rows: int
    client_procs: int
    scale_clients: int
    scale_rate: float | None
    profile: bool
    json: Path | None


def make_plan(args: Options) -> Plan:
    quick = args.quick
    targets = (
        tuple(args.targets.split(",")) if args.targets else (QUICK_TARGETS if quick else TARGETS)
    )
    unknown = set(targets) - set(TARGETS) - set(OPTIONAL_TARGETS)
    if unknown:
        raise SystemExit(
            f"unknown targets: {', '.join(sorted(unknown))}; "
            f"known: {', '.join(TARGETS + OPTIONAL_TARGETS)}"
        )
    servers = tuple(args.servers.split(",")) if args.servers else SERVERS
    unknown = set(servers) - set(SERVERS) - set(OPTIONAL_SERVERS)
    if unknown:
        raise SystemExit(
            f"unknown servers: {', '.join(sorted(unknown))}; "
            f"known: {', '.join(SERVERS + OPTIONAL_SERVERS)}"
        )
    if not 0 < args.load_rows * len(TABLES) <= args.rows:
        raise SystemExit(
            f"--load-rows {args.load_rows}: the load targets write {len(TABLES)} tables' "
            f"worth of the --rows {args.rows} seeded rows; between 1 and "
            f"{args.rows // len(TABLES)}"
        )
    window = args.window or (2.0 if quick else 6.0)
    return Plan(
        quick=quick,
        targets=targets,
        servers=servers,
        window=window,
        writers_window=args.writers_window or (1.0 if quick else 3.0),
        writers_rounds=args.writers_rounds or (1 if quick else 3),
        drain=3.0 if quick else 8.0,
        nrows=args.rows,
        load_rows=args.load_rows,
        connections=args.connections or (2_000 if quick else 10_000),
        client_procs=args.client_procs,
        scale_clients=args.scale_clients,
        scale_rate=args.scale_rate,
    )


def has_workers_flag() -> bool:
    result = subprocess.run(
        [sys.executable, "-m", "broadcaster", "serve", "--help"],
        capture_output=True,
        text=True,
        check=False,
    )
    return "--workers" in result.stdout


def header(plan: Plan, admin_url: str) -> str:
    load1, load5, _ = os.getloadavg()
    postgres = subprocess.run(
        ["psql", admin_url, "-tAc", "SHOW server_version"],
        capture_output=True,
        text=True,
        check=False,
    ).stdout.strip()
    return (
        f"broadcaster bench ({'--quick' if plan.quick else 'full'}), "
        f"{time.strftime('%Y-%m-%d %H:%M:%S')}, {os.cpu_count()} CPUs, "
        f"Postgres {postgres or '?'}, Python {sys.version.split()[0]}, "
        f"load average {load1:.2f} / {load5:.2f} at start\n"
        f"targets: {', '.join(plan.targets)}; servers: {', '.join(plan.servers)}; "
        f"window {plan.window:g} s; client processes {plan.client_procs}; writers: "
        f"{WRITERS} pgbench clients"
    )


async def profile_server(server: ServerProcess, seconds: float, out: Path) -> str:
    """py-spy's view of a Python server over ``seconds``: the functions it runs most.

    Only samples holding the GIL count (``--gil``): Python's own CPU. Without
    it a sample taken while the server waits for a core inside a ``send``
    counts as time in ``send``, which on a busy 2-core machine inflated the
    sends several times over.
    """
    py_spy = PEER_VENV / "bin" / "py-spy"
    if not py_spy.exists():
        return "py-spy not installed"
    process = await asyncio.create_subprocess_exec(
        str(py_spy),
        "record",
        "--gil",
        "--pid",
        str(server.pid),
        "--duration",
        str(max(1, round(seconds))),
        "--rate",
        "1000",
        "--format",
        "raw",
        "--nonblocking",
        "--output",
        str(out),
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    _, stderr = await process.communicate()
    if process.returncode != 0:
        return f"py-spy failed: {stderr.decode(errors='replace').strip()[-300:]}"
    return summarize_profile(out)


def summarize_profile(path: Path, top: int = 12) -> str:
    own: Counter[str] = Counter()
    total = 0
    for line in path.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack:
            continue
        count = int(count_text)
        total += count
        frames = stack.split(";")
        own[_short_frame(frames[-1])] += count
    lines = [f"{count / total * 100:5.1f}%  {name}" for name, count in own.most_common(top)]
    return f"{total} samples; self time by function:\n" + "\n".join(lines)


def _short_frame(frame: str) -> str:
    match = re.match(r"(.*) \((.*):(\d+)\)", frame)
    if not match:
        return frame
    function, path, _line = match.groups()
    parts = Path(path).parts
    short = "/".join(parts[-2:]) if len(parts) >= 2 else path
    return f"{function} ({short})"


@dataclass
class Results:
    """Everything one run measured (``--json`` writes it out)."""

    loads: dict[str, list[LoadResult]] = field(default_factory=dict)
    writers: list[WriterVariant] = field(default_factory=list)
    bulk: list[BulkResult] = field(default_factory=list)
    catch_up: CatchUpResult | None = None
    workers_flag: bool = False
    scale: list[LoadResult] = field(default_factory=list)
    profiled: str = ""
    profiles: dict[str, str] = field(default_factory=dict)
    writers_profiles: dict[str, str] = field(default_factory=dict)
    """Ours during the serving writer variant, with ``--profile``."""
    rls: list[RlsResult] = field(default_factory=list)
    seconds: float = 0.0
    machine_pct: float = 0.0


async def run(plan: Plan, admin_url: str, json_out: Path | None, profile: bool) -> int:
    raise_fd_limit()
    workdir = Path(tempfile.mkdtemp(prefix="broadcaster-bench-"))
    setup_log = workdir / "setup.log"
    print(header(plan, admin_url), flush=True)
    print(f"logs: {workdir}", flush=True)
    started = time.perf_counter()
    machine_before = machine_ticks()
    if {"encode", "thin"} & set(plan.servers) or profile:
        ensure_peer_venv(setup_log)
    if "node" in plan.servers:
        ensure_node_modules(setup_log)
    ensure_client_binary(setup_log)
    name = f"bench_{secrets.token_hex(4)}"
    loads = plan.loads()
    results = Results(loads={spec.key: [] for spec in loads})
    if "workers" in plan.targets:
        results.workers_flag = has_workers_flag()
    # Profile the busiest load target of the run.
    keys = [spec.key for spec in loads]
    if profile:
        results.profiled = next(
            (k for k in ("fanout1k", "fanout", "ceiling", "conns") if k in keys), ""
        )
    pool = await ClientPool.start(plan.client_procs)
    try:
        async with contextlib.AsyncExitStack() as stack:
            # Entered first, left last: the databases' grants name it.
            role = None
            if "rls" in plan.targets:
                role = await stack.enter_async_context(
                    subscriber_role(admin_url, f"{name}_authenticated")
                )
            our_url = await stack.enter_async_context(fresh_database(admin_url, name))
            peer_url = await stack.enter_async_context(fresh_database(admin_url, name + "_peers"))
            await asyncio.gather(
                setup_ours(our_url, plan.nrows, setup_log), setup_peers(peer_url, plan.nrows)
            )
            if role is not None:
                await setup_rls(our_url, role, setup_log)
            print(f"setup: databases ready ({time.perf_counter() - started:.1f} s)", flush=True)
            # Target 4a writes every seeded row (see WRITER_SCRIPT); the load
            # targets a few rows a table, each several times a second, counted.
            writers_4a = Writers(workdir, plan.nrows)
            load_rows = plan.load_rows * len(TABLES)
            our_writers = Writers(workdir, load_rows, counted=True)
            peer_writers = Writers(workdir, load_rows, counted=True)
            # Keep the run markers apart: 4a's writers write the load targets'
            # rows too, in both databases.
            peer_writers.run_id = 1_000_000
            writers_4a.run_id = 2_000_000
            if "writers" in plan.targets:
                results.writers = await writers_target(
                    our_url,
                    peer_url,
                    writers_4a,
                    pool,
                    plan.writers_window,
                    builtin=not plan.quick,
                    workdir=workdir,
                    profiles=results.writers_profiles if profile else None,
                    rounds=plan.writers_rounds,
                )
                print(f"done: writers ({time.perf_counter() - started:.0f} s)", flush=True)
            if "bulk" in plan.targets and any(s not in OURS for s in plan.servers):
                results.bulk.append(
                    await bulk_update(peer_url, BULK_TABLE, "peers (per-row NOTIFY trigger)")
                )
            for server_name in plan.servers:
                url = our_url if server_name in OURS else peer_url
                writers = our_writers if server_name in OURS else peer_writers
                for spec in loads:
                    starting = time.perf_counter()
                    async with running_server(server_name, url, workdir, spec.key) as server:
                        start_seconds = time.perf_counter() - starting
                        profiling = None
                        if spec.key == results.profiled and server_name != "node":
                            profiling = asyncio.create_task(
                                profile_server(
                                    server,
                                    plan.window + 2,
                                    workdir / f"profile-{server_name}.txt",
                                )
                            )
                        result = await run_load(spec, server, url, pool, writers, plan.drain)
                        if profiling is not None:
                            results.profiles[server_name] = await profiling
                        stopping = time.perf_counter()
                    result.phases = {
                        "start": start_seconds,
                        **result.phases,
                        "stop": time.perf_counter() - stopping,
                    }
                    results.loads[spec.key].append(result)
                    _done(spec, result, started)
                if server_name == "ours" and results.workers_flag:
                    spec = plan.scale_out()
                    for workers_count in (1, 2):
                        async with running_server(
                            "ours", url, workdir, f"workers{workers_count}", workers_count
                        ) as server:
                            result = await run_load(spec, server, url, pool, writers, plan.drain)
                        results.scale.append(result)
                        _done(spec, result, started)
                if server_name == "ours" and "bulk" in plan.targets:
                    async with running_server("ours", url, workdir, "bulk") as server:
                        bulk, results.catch_up = await catch_up_target(server, url)
                    results.bulk.insert(0, bulk)
                    print(f"done: bulk and catch-up ({time.perf_counter() - started:.0f} s)")
            if role is not None:
                rls_writers = Writers(
                    workdir,
                    RLS_USERS * RLS_ROWS_PER_USER,
                    script=("writer-notes", RLS_WRITER_SCRIPT),
                )
                results.rls = await rls_target(
                    our_url, workdir, pool, rls_writers, plan.window, plan.drain, role
                )
                print(f"done: rls ({time.perf_counter() - started:.0f} s)", flush=True)
    finally:
        await pool.stop()
    results.seconds = time.perf_counter() - started
    print()
    print_report(plan, results)
    busy = machine_ticks()[0] - machine_before[0]
    total = machine_ticks()[1] - machine_before[1]
    results.machine_pct = busy / total * 100 if total else 0.0
    load1, _, _ = os.getloadavg()
    print(
        f"total {results.seconds:.0f} s; machine busy {results.machine_pct:.0f}% over the run "
        f"(every process, this benchmark's and others'), load average {load1:.2f} at the end; "
        f"logs in {workdir}"
    )
    if json_out is not None:
        write_json(json_out, dataclasses.asdict(results))
    return 0


def _done(spec: LoadSpec, result: LoadResult, started: float) -> None:
    phases = ", ".join(f"{k} {v:.1f}" for k, v in result.phases.items())
    print(
        f"done: {spec.key} on {result.label} ({time.perf_counter() - started:.0f} s; {phases})",
        flush=True,
    )


def verdict(met: bool) -> str:
    return "met" if met else "MISSED"


def events_goal(r: LoadResult) -> str:
    """Issue 20's goal for every load target: each event reaches each client it is owed to."""
    return (
        f"goal: every committed UPDATE reaches every subscriber of its table as its own event "
        f"(issue 20) -> {r.label}: {r.lost:,} of {r.expected:,} lost, {verdict(r.lost == 0)}"
    )


def print_report(plan: Plan, results: Results) -> None:
    ours = {
        key: next((r for r in value if r.server == "ours"), None)
        for key, value in results.loads.items()
    }
    for spec in plan.loads():
        rows = results.loads.get(spec.key, [])
        print(f"## {spec.title} (window {spec.seconds:g} s)")
        print()
        print(conns_table(rows) if spec.key == "conns" else load_table(rows))
        print()
        mine = ours.get(spec.key)
        outcome = ""
        if mine is not None:
            if spec.key == "fanout" and mine.cpu_us_per_msg is not None:
                outcome = f"{mine.cpu_us_per_msg:.1f} µs"
                node = next((r for r in rows if r.server == "node"), None)
                if node is not None and node.cpu_us_per_msg:
                    share = mine.cpu_us_per_msg / node.cpu_us_per_msg
                    outcome += f" (Node's {node.cpu_us_per_msg:.1f}: x{share:.2f})"
                outcome += f", {verdict(mine.cpu_us_per_msg <= 5)}"
            elif spec.key in ("ceiling", "fanout1k") and mine.p99 is not None:
                limit = 10 if spec.key == "ceiling" else 50
                met = mine.p99 <= limit and mine.lost == 0
                outcome = f"p99 {mine.p99:.1f} ms, lost {mine.lost}, {verdict(met)}"
            elif spec.key == "quiet":
                outcome = (
                    f"{mine.server_cpu_pct:.1f}% of a core, its Postgres sessions "
                    f"{mine.pg_cpu_pct:.1f}%"
                )
            elif spec.key == "conns" and mine.rss_per_conn is not None:
                met = (
                    mine.rss_per_conn <= 20 * 1024
                    and mine.connect_seconds <= 10
                    and mine.connect_errors == 0
                )
                outcome = (
                    f"{mine.rss_per_conn / 1024:.1f} KB/conn, {mine.connect_seconds:.1f} s, "
                    f"{mine.connect_errors} errors, {verdict(met)}"
                )
                if spec.clients != 10_000:
                    outcome += f" (at {spec.clients:,} connections, not 10,000)"
        print(f"goal: {spec.goal}" + (f" -> ours: {outcome}" if outcome else ""))
        for r in rows:
            if r.server in OURS:
                print(events_goal(r))
        for r in rows:
            notes = []
            if r.connect_errors:
                notes.append(f"{r.connect_errors} connect errors, e.g. {r.error_sample[:1]}")
            if r.extra:
                notes.append(f"{r.extra} deliveries beyond what was owed")
            if r.note:
                notes.append(r.note)
            if notes:
                print(f"note: {r.label}: {'; '.join(notes)}")
        print()
    if results.writers:
        print(
            f"## 4a. Writers: {WRITERS} pgbench clients, single-row UPDATEs, unthrottled, "
            f"{plan.writers_window:g} s each, {plan.writers_rounds} round(s) of ours and the "
            "no-trigger reference (medians; ours first, with our server serving the tables)"
        )
        print()
        variants = results.writers
        reference = next((v.commits_per_s for v in variants if v.label.startswith("no ")), 0.0)

        def share_of(v: WriterVariant) -> float | None:
            if v.shares:
                return statistics.median(v.shares)
            return v.commits_per_s / reference * 100 if reference else None

        print(
            table(
                [
                    "writers",
                    "commits/s",
                    "% of no-trigger",
                    "rounds %",
                    "pgbench CPU %",
                    "srv CPU %",
                    "its PG CPU %",
                ],
                [
                    [
                        v.label,
                        fmt(v.commits_per_s),
                        fmt(share_of(v)),
                        " ".join(f"{x:.0f}" for x in v.shares) if len(v.shares) > 1 else "-",
                        fmt(v.cpu_pct),
                        fmt(v.server_cpu_pct),
                        fmt(v.server_pg_cpu_pct),
                    ]
                    for v in variants
                ],
            )
        )
        print()
        serving = variants[0]
        share = share_of(serving) or 0.0
        print(
            "goal: ours, while our server serves every table, at least 75% of the no-trigger "
            f"commit rate (issue 20) -> ours: {share:.0f}%, {verdict(share >= 75)}"
        )
        lost = serving.events - serving.received
        print(
            f"note: {serving.label}: its subscribers received {serving.received:,} of the "
            f"{serving.events:,} events committed" + (f" ({lost:,} lost)" if lost > 0 else "")
        )
        print()
    if results.bulk:
        print("## 4b. One UPDATE statement touching 10,000 rows of one table")
        print()
        print(
            table(
                ["database", "rows", "statement ms", "notifications (LISTEN count)"],
                [
                    [b.label, fmt(b.rows), fmt(b.statement_ms, 1), fmt(b.notifications)]
                    for b in results.bulk
                ],
            )
        )
        print()
        mine_bulk = next((b for b in results.bulk if b.label.startswith("ours")), None)
        outcome = ""
        if mine_bulk is not None:
            outcome = (
                f" -> ours: {mine_bulk.notifications}, {verdict(mine_bulk.notifications <= 100)}"
            )
        print(f"goal: far fewer than 10,000 notifications{outcome}")
        print()
    if "workers" in plan.targets:
        spec = plan.scale_out()
        print(f"## {spec.title} (window {spec.seconds:g} s)")
        print()
        if not results.workers_flag:
            print("not implemented: `broadcaster serve` has no --workers option")
        elif len(results.scale) < 2:
            print("not measured (needs our server: --servers ours)")
        else:
            print(load_table(results.scale))
            one, two = results.scale[0], results.scale[1]
            rate_one = one.delivered / one.window if one.window else 0.0
            rate_two = two.delivered / two.window if two.window else 0.0
            ratio = rate_two / rate_one if rate_one else 0.0
            met = ratio >= 1.6 and (two.p99 or 0.0) <= (one.p99 or 0.0)
            print()
            print(
                f"goal: {spec.goal} -> ours: x{ratio:.2f} msgs/s, p99 {fmt(one.p99, 1)} -> "
                f"{fmt(two.p99, 1)} ms, {verdict(met)}"
            )
            for result in results.scale:
                print(events_goal(result))
            print(
                "note: the same writers run against both; more delivered per second "
                "shows only where one worker is the bottleneck"
            )
        print()
    if "bulk" in plan.targets:
        print("## 6. Catch-up: a client resumes with its cursor after 10,000 changes to its table")
        print()
        catch_up = results.catch_up
        if catch_up is None:
            print("not measured (needs our server: --servers ours)")
        else:
            print(
                table(
                    ["server", "changes", "changes received", "synced after ms"],
                    [
                        [
                            "ours",
                            fmt(catch_up.changes),
                            fmt(catch_up.received),
                            fmt(catch_up.synced_ms, 1),
                        ],
                        ["peers", "-", "-", "n/a: no resume (no cursors)"],
                    ],
                )
            )
            met = catch_up.synced_ms <= 500 and catch_up.received >= catch_up.changes
            print()
            print(
                f"goal: synced within 500 ms -> ours: {catch_up.synced_ms:.0f} ms, "
                f"{catch_up.received:,} of {catch_up.changes:,} changes, {verdict(met)}"
            )
        print()
    if results.rls:
        print_rls(plan, results.rls)
    for server_name, text in results.profiles.items():
        print(f"## Profile: {LABELS[server_name]} during target {results.profiled} (py-spy)")
        print()
        print(text)
        print()
    for server_name, text in results.writers_profiles.items():
        print(f"## Profile: {LABELS[server_name]} serving the writers of target 4a (py-spy)")
        print()
        print(text)
        print()


def print_rls(plan: Plan, runs: Sequence[RlsResult]) -> None:
    print(
        f"## Row-level security (issue 21): {RLS_USERS * RLS_CONNECTIONS_PER_USER:,} Supabase "
        f"clients of {RLS_USERS} users ({RLS_CONNECTIONS_PER_USER} each, one token a user) / "
        f"{RLS_TABLE_ID}, {RLS_ROWS_PER_USER} rows a user / {RLS_RATE:,g} updates/s "
        f"(window {plan.window:g} s)"
    )
    print()
    headers = [
        "run",
        "upd/s done",
        "msgs/s",
        "lost",
        "dropped",
        "p50 ms",
        "p99 ms",
        "max ms",
        "CPU µs/msg",
        "srv CPU %",
        "its PG CPU %",
        "checks/s",
        "checked reads/s",
        "PG µs/check",
        "subscribe s",
        "machine %",
    ]
    rows = []
    for run in runs:
        r = run.load
        window = r.window or 1.0
        per_check = run.check_ms / run.checks * 1000 if run.check_ms and run.checks else None
        rows.append(
            [
                r.label,
                fmt(r.achieved),
                fmt(r.delivered / window),
                lost_cell(r),
                fmt(r.dropped),
                fmt(r.p50, 1),
                fmt(r.p99, 1),
                fmt(r.max, 1),
                fmt(r.cpu_us_per_msg, 1),
                fmt(r.server_cpu_pct),
                fmt(r.pg_cpu_pct),
                fmt(None if run.checks is None else run.checks / window),
                fmt(None if run.checks is None else run.checks / window / RLS_USERS, 1),
                fmt(per_check),
                fmt(r.connect_seconds, 2),
                fmt(r.machine_pct),
            ]
        )
    print(table(headers, rows))
    print()
    print(
        "checks: calls of broadcaster_visible(), one per viewer (role and claims) per read "
        f"that brings changes of the table; checked reads/s: checks/s / {RLS_USERS} viewers; "
        "PG µs/check: their time in Postgres (pg_stat_user_functions)"
    )
    for run in runs:
        r = run.load
        print(
            f"goal: each change reaches the {RLS_CONNECTIONS_PER_USER} clients of its owner "
            f"-> {r.label}: {r.lost:,} of {r.expected:,} lost, {verdict(r.lost == 0)}"
        )
        notes = []
        if r.connect_errors:
            notes.append(f"{r.connect_errors} connect errors, e.g. {r.error_sample[:1]}")
        if r.extra:
            notes.append(f"{r.extra} deliveries beyond what was owed")
        if r.note:
            notes.append(r.note)
        if notes:
            print(f"note: {r.label}: {'; '.join(notes)}")
    print()


def write_json(path: Path, value: object) -> None:
    path.write_text(json.dumps(value, indent=2))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Benchmark our server beside encode/broadcaster, a thin Python server and "
        "Node, with the same writers and clients (issue 5)."
    )
    parser.add_argument("--quick", action="store_true", help="fewer targets, shorter windows")
    parser.add_argument(
        "--targets",
        help=f"comma-separated subset of: {', '.join(TARGETS)}; "
        f"or, run only when named: {', '.join(OPTIONAL_TARGETS)}",
    )
    parser.add_argument(
        "--servers",
        help=f"comma-separated subset of: {', '.join(SERVERS)}; or, run only when named: "
        f"{', '.join(OPTIONAL_SERVERS)} (our server, its clients on the Supabase endpoint)",
    )
    parser.add_argument("--window", type=float, help="seconds of writing per load target")
    parser.add_argument("--writers-window", type=float, help="seconds per writer variant")
    parser.add_argument(
        "--writers-rounds",
        type=int,
        help="rounds of ours and the no-trigger reference in the writers target (medians)",
    )
    parser.add_argument("--connections", type=int, help="connections in the conns target")
    parser.add_argument(
        "--rows",
        type=int,
        default=100_000,
        help="rows in each database's table, over 10 tables; target 4a's writers write "
        "them in sequence, each run past the last",
    )
    parser.add_argument(
        "--load-rows",
        type=int,
        default=50,
        help="rows a table the load targets write (default 50: at 2,000 updates/s over 10 "
        "tables, each row 4 times a second)",
    )
    parser.add_argument("--client-procs", type=int, default=4, help="client processes")
    parser.add_argument(
        "--scale-clients", type=int, default=1000, help="clients in the workers target"
    )
    parser.add_argument(
        "--scale-rate",
        type=float,
        help="updates/s in the workers target (default: the writers' ceiling)",
    )
    parser.add_argument(
        "--profile",
        action="store_true",
        help="py-spy the Python servers (the busiest load target; ours while serving target 4a)",
    )
    parser.add_argument("--json", type=Path, help="also write the results as JSON here")
    args = parser.parse_args(argv, namespace=Options())
    if shutil.which("pgbench") is None:
        raise SystemExit("pgbench not found (it comes with the postgresql client packages)")
    plan = make_plan(args)
    admin_url = os.environ.get("BENCH_DATABASE_URL", DEFAULT_ADMIN_URL)
    return asyncio.run(run(plan, admin_url, args.json, args.profile))


if __name__ == "__main__":
    sys.exit(main())
