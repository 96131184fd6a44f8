"""What our triggers cost a writer, in instructions: repeatable on a noisy machine.

Usage, from the repository root (with the repository's virtualenv)::

    .venv/bin/python bench/trigger_cost.py
    .venv/bin/python bench/trigger_cost.py --triggers old.sql --triggers triggers.sql
    .venv/bin/python bench/trigger_cost.py --statement --triggers triggers.sql \
        --triggers bench/log_variants/1_naive_btree.sql      # docs/design/change-log.md

pgbench's commit rates move by 10% and more from one run to the next on a
shared machine, more than most changes to a trigger. This counts instead the
instructions a Postgres backend executes per single-row UPDATE transaction,
with valgrind's callgrind, which gives the same count run after run.

What it does:

1. Creates a private cluster in a temporary directory (``initdb`` from
   ``--pg-bin``, by default ``pg_config --bindir``; as root, the cluster is run
   by ``--user``), applies our schema with ``python -m broadcaster migrate`` and
   writes 100,000 rows over 10 tables, as ``bench/run.py`` does, then updates
   each once and vacuums, so that pages have room, as in a table in use.
2. For each variant, runs a single-user backend under callgrind that executes
   the benchmark's writer UPDATE (``bench/run.py``), one row per transaction,
   first 200 and then 1,200 times; the difference over 1,000 is the count per
   transaction, without start-up and shutdown.
   With ``--statement``, also one UPDATE statement of 10,000 rows (every row of
   table ``t3``), run once and then three times: the difference over two is the
   count per statement.
3. Prints a table: each variant's instructions per transaction, and the rate
   it would reach, relative to the UPDATE with no trigger, if the writers were
   bound by their backend's CPU alone (they also wait on the network, the WAL
   and each other, so pgbench shows smaller gaps).

The variants: the UPDATE with no trigger (triggers disabled); with an empty
PL/pgSQL row trigger in place of ours (the cost of calling one); and each
``--triggers`` file (default: ``triggers.sql``),
installed over the migrated schema, with every table's promise remembered by
the session: the steady state of a busy table. A file may replace our triggers
altogether. (``bench/log_variants/*.sql``, the design study of
``docs/design/change-log.md``, were written for the schema before the change
log, revision 0005; run them from a checkout of that release.)
Needs valgrind.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import asyncpg

ROOT = Path(__file__).resolve().parent.parent
ROWS = 100_000
TABLES = 10
FEW, MANY = 200, 1_200
STATEMENTS_FEW, STATEMENTS_MANY = 1, 3

# bench/run.py's writer transaction, with the row's number as a parameter.
UPDATE = (
    "PREPARE w(int) AS UPDATE rows SET data = jsonb_build_object("
    "'t', round(extract(epoch FROM clock_timestamp()) * 1000, 3), 'r', 1) "
    "WHERE id = 'r' || $1;"
)
# One statement writing every row of one table (ROWS / TABLES rows); ``{run}``
# makes each run's data differ from the last, so that every row changes.
STATEMENT = (
    "UPDATE rows SET data = jsonb_build_object("
    "'t', round(extract(epoch FROM clock_timestamp()) * 1000, 3), 'r', {run}) "
    "WHERE table_id = 't3';"
)
# Replaces ours in the run's copy of the cluster: what calling any trigger costs.
EMPTY_TRIGGER = (
    "CREATE OR REPLACE FUNCTION broadcaster_capture() RETURNS trigger"
    " LANGUAGE plpgsql AS $$ BEGIN RETURN NULL; END $$;"
    " ALTER TABLE rows DISABLE TRIGGER broadcaster_capture;"
    " CREATE OR REPLACE TRIGGER broadcaster_empty AFTER INSERT OR UPDATE OR DELETE ON rows"
    " FOR EACH ROW EXECUTE FUNCTION broadcaster_capture();"
)
REMEMBER_EVERY_TABLE = (
    "SELECT broadcaster_remember('t' || k, now() + interval '1 day')"
    f" FROM generate_series(0, {TABLES - 1}) AS k;"
)


@dataclass(frozen=True)
class Variant:
    label: str
    setup: str
    """Statements run before the writes, in the writes' session."""
    triggers: Path | None = None


def variants(trigger_files: list[Path]) -> list[Variant]:
    disabled = "ALTER TABLE rows DISABLE TRIGGER USER;"
    return [
        Variant("no trigger", disabled),
        Variant("an empty PL/pgSQL row trigger", EMPTY_TRIGGER),
        *(
            Variant(f"{path.name}, every table remembered", REMEMBER_EVERY_TABLE, triggers=path)
            for path in trigger_files
        ),
    ]


def checked(
    argv: list[str],
    *,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
    input: str | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run ``argv`` to the end; on failure, raise with what it printed."""
    done = subprocess.run(argv, capture_output=True, text=True, env=env, cwd=cwd, input=input)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed:\n{done.stdout}{done.stderr}"[-4000:])
    return done


class Cluster:
    """A private cluster in ``directory``, run as ``user`` when we are root."""

    def __init__(self, bin_dir: Path, directory: Path, user: str | None) -> None:
        self.bin_dir = bin_dir
        self.directory = directory
        self.user = user
        self.port = 5499

    def command(self, argv: list[str]) -> list[str]:
        return ["runuser", "-u", self.user, "--", *argv] if self.user else argv

    def run(self, argv: list[str], *, input: str | None = None) -> subprocess.CompletedProcess[str]:
        return checked(self.command(argv), input=input)

    def initdb(self, data: Path) -> None:
        self.run([str(self.bin_dir / "initdb"), "-D", str(data), "-A", "trust", "-U", "postgres"])

    def url(self) -> str:
        return f"postgresql://postgres@/postgres?host={self.directory}&port={self.port}"

    def start(self, data: Path, settings: tuple[str, ...] = ()) -> None:
        """Start the cluster in ``data``; ``settings`` are ``name=value`` server settings."""
        options = f"-p {self.port} -k {self.directory} -c listen_addresses=''"
        options += "".join(f" -c {setting}" for setting in settings)
        log = str(self.directory / "server.log")
        self.run(
            [str(self.bin_dir / "pg_ctl"), "-D", str(data), "-o", options, "-l", log, "-w", "start"]
        )

    def stop(self, data: Path) -> None:
        self.run([str(self.bin_dir / "pg_ctl"), "-D", str(data), "-w", "stop"])

    def copy(self, source: Path, target: Path) -> None:
        shutil.rmtree(target, ignore_errors=True)
        self.run(["cp", "-a", str(source), str(target)])


async def execute(url: str, *statements: str) -> None:
    connection = await asyncpg.connect(url)
    try:
        for statement in statements:
            await connection.execute(statement)
    finally:
        await connection.close()


def prepare_base(cluster: Cluster) -> Path:
    """A data directory with our schema and the rows, shut down cleanly."""
    base = cluster.directory / "base"
    cluster.initdb(base)
    cluster.start(base)
    try:
        env = {**os.environ, "DATABASE_URL": cluster.url()}
        checked([sys.executable, "-m", "broadcaster", "migrate"], env=env, cwd=ROOT)
        asyncio.run(
            execute(
                cluster.url(),
                # A bulk load needs no wake-ups; its changes are logged anyway.
                "SET broadcaster.wake = 'off'",
                "INSERT INTO rows (id, table_id, data) SELECT 'r' || k, 't' || (k % "
                f"{TABLES}), '{{}}' FROM generate_series(0, {ROWS - 1}) AS k",
                # Every row once more, then a VACUUM: pages with room, as in
                # a table that has been written for a while, where an UPDATE
                # that changes no indexed column stays on its page (HOT).
                "UPDATE rows SET data = '{\"w\": 1}'",
                "VACUUM ANALYZE rows",
            )
        )
    finally:
        cluster.stop(base)
    return base


def with_triggers(cluster: Cluster, base: Path, variant: Variant) -> Path:
    """``base``, with the variant's triggers file installed over ours."""
    if variant.triggers is None:
        return base
    data = cluster.directory / f"base-{variant.triggers.name}"
    cluster.copy(base, data)
    cluster.start(data)
    try:
        asyncio.run(execute(cluster.url(), variant.triggers.read_text()))
    finally:
        cluster.stop(data)
    return data


def single_row_writes(variant: Variant, writes: int) -> list[str]:
    """``writes`` one-row transactions, each row written once, as the benchmark's writers do."""
    statements = [variant.setup, UPDATE]
    return statements + [f"EXECUTE w({k * 83 % ROWS});" for k in range(writes)]


def whole_table_writes(variant: Variant, writes: int) -> list[str]:
    """``writes`` statements (and transactions) updating every row of one table."""
    return [variant.setup] + [STATEMENT.format(run=run) for run in range(1, writes + 1)]


def instructions(cluster: Cluster, data: Path, variant: Variant, statements: list[str]) -> int:
    """Instructions a single-user backend executes for ``statements``, each its own transaction."""
    run = cluster.directory / "run"
    cluster.copy(data, run)
    # -j: a statement ends at a semicolon followed by an empty line.
    script = "\n\n".join(statements) + "\n\n"
    out = cluster.directory / "callgrind.out"
    argv = [
        "valgrind",
        "--tool=callgrind",
        f"--callgrind-out-file={out}",
        str(cluster.bin_dir / "postgres"),
        "--single",
        "-j",
        "-D",
        str(run),
        "-c",
        "jit=off",
        "postgres",
    ]
    done = cluster.run(argv, input=script)
    errors = [line for line in (done.stdout + done.stderr).splitlines() if "ERROR" in line]
    if errors:
        raise RuntimeError(f"{variant.label}: " + "\n".join(errors[:5]))
    for line in out.read_text().splitlines():
        if line.startswith(("totals:", "summary:")):
            return int(line.split()[1])
    raise RuntimeError(f"{variant.label}: no totals in {out}")


def bin_dir_default() -> Path | None:
    try:
        done = subprocess.run(["pg_config", "--bindir"], capture_output=True, text=True)
    except FileNotFoundError:
        return None
    path = Path(done.stdout.strip())
    return path if (path / "postgres").exists() else None


class Options(argparse.Namespace):
    """The command line, as ``main`` parses it."""

    triggers: list[Path] | None
    statement: bool
    pg_bin: Path | None
    user: str


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--triggers",
        type=Path,
        action="append",
        help="a triggers file to measure (repeatable; default: triggers.sql)",
    )
    parser.add_argument(
        "--statement",
        action="store_true",
        help="also count one UPDATE statement of 10,000 rows",
    )
    parser.add_argument(
        "--pg-bin",
        type=Path,
        default=bin_dir_default(),
        help="Postgres' bin directory (default: pg_config --bindir)",
    )
    parser.add_argument(
        "--user", default="postgres", help="the user that runs the cluster when this runs as root"
    )
    args = parser.parse_args(namespace=Options())
    if shutil.which("valgrind") is None:
        raise SystemExit("valgrind not found (Debian: apt-get install valgrind)")
    if args.pg_bin is None or not (args.pg_bin / "postgres").exists():
        raise SystemExit("no Postgres server binaries: pass --pg-bin")
    trigger_files = [path.resolve() for path in args.triggers or [ROOT / "triggers.sql"]]

    directory = Path(tempfile.mkdtemp(prefix="broadcaster-trigger-cost-"))
    user = args.user if os.geteuid() == 0 else None
    if user:
        shutil.chown(directory, user)
    cluster = Cluster(args.pg_bin, directory, user)
    try:
        base = prepare_base(cluster)
        version = cluster.run([str(args.pg_bin / "postgres"), "--version"]).stdout.strip()
        print(f"{version}; instructions per single-row UPDATE transaction (callgrind)\n")
        rows: list[tuple[str, float, float | None]] = []
        for variant in variants(trigger_files):
            data = with_triggers(cluster, base, variant)
            few = instructions(cluster, data, variant, single_row_writes(variant, FEW))
            many = instructions(cluster, data, variant, single_row_writes(variant, MANY))
            per_statement = None
            if args.statement:
                once = instructions(
                    cluster, data, variant, whole_table_writes(variant, STATEMENTS_FEW)
                )
                thrice = instructions(
                    cluster, data, variant, whole_table_writes(variant, STATEMENTS_MANY)
                )
                per_statement = (thrice - once) / (STATEMENTS_MANY - STATEMENTS_FEW)
            rows.append((variant.label, (many - few) / (MANY - FEW), per_statement))
            print(f"measured: {rows[-1]}", file=sys.stderr, flush=True)
        width = max(len(label) for label, _, _ in rows)
        header = f"| {'writer':<{width}} | instructions | % of no trigger's rate |"
        rule = f"|{'-' * (width + 2)}|--------------|------------------------|"
        if args.statement:
            header += " 10,000-row UPDATE | x no trigger's |"
            rule += "-------------------|----------------|"
        print(header)
        print(rule)
        baseline, statement_baseline = rows[0][1], rows[0][2]
        for label, count, per_statement in rows:
            line = f"| {label:<{width}} | {count:>12,.0f} | {100 * baseline / count:>22.0f} |"
            if per_statement is not None and statement_baseline:
                ratio = per_statement / statement_baseline
                line += f" {per_statement:>17,.0f} | {ratio:>14.2f} |"
            print(line)
    finally:
        shutil.rmtree(directory, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
