"""What a trigger-written change log costs writers in WAL, disk and commit rate.

Usage, from the repository root (with the repository's virtualenv)::

    .venv/bin/python bench/log_cost.py                      # every variant, WAL and pgbench
    .venv/bin/python bench/log_cost.py --variant bench/log_variants/2c_daily.sql --no-pgbench

The instructions each variant costs come from ``bench/trigger_cost.py``
(repeatable); this measures what callgrind cannot, in a private cluster (never
a shared one: the rates are the machine's, and the WAL is the cluster's):

1. Creates a cluster in a temporary directory, as ``bench/trigger_cost.py``
   does, with autovacuum off and no checkpoint but the ones asked for, so
   that the WAL counted is the writes' own. Database ``base`` gets our schema
   from ``python -m broadcaster migrate``, 100,000 rows over 10 tables (updated
   once and vacuumed, as there), and 10 rows of 1 MB ``data`` (table ``big``,
   stored out of line: TOAST).
2. Copies ``base`` into one database per variant: no trigger (triggers
   disabled), today's ``triggers.sql``, and each ``--variant`` file (default:
   ``bench/log_variants/*.sql``, which replace our triggers with a change log).
3. WAL: in each database, in turn, with every table's promise remembered (no
   NOTIFY, as under a busy server), counts ``pg_current_wal_lsn()`` over

   - 2,000 single-row UPDATE transactions right after a CHECKPOINT (each first
     change of a page after a checkpoint writes the whole page: full-page
     images), then 2,000 more of the same rows (no full-page images);
   - one UPDATE of 10,000 rows after a CHECKPOINT, then one more;
   - 10 single-row UPDATEs of the 1 MB rows (their ``data`` changes a little)
     after a CHECKPOINT, then 10 more.

   Disk: the change log's size (every partition, indexes and TOAST included)
   over its entries, after the small rows' writes, and what the 10 large
   entries added.
4. Commit rates: pgbench, 8 clients, ``bench/run.py``'s writer transaction,
   ``--seconds`` per variant, variants interleaved round after round (A, B,
   C, A, B, C...) so that the machine's mood spreads over all of them; each
   round's rate is also given as a share of the same round's no-trigger rate.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import shutil
import statistics
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import asyncpg

sys.path.insert(0, str(Path(__file__).resolve().parent))

from trigger_cost import (
    REMEMBER_EVERY_TABLE,
    ROOT,
    ROWS,
    TABLES,
    Cluster,
    bin_dir_default,
    checked,
    execute,
)

SETTINGS = (
    "autovacuum=off",
    "checkpoint_timeout=1h",
    "max_wal_size=50GB",
)
SINGLE_ROW_WRITES = 2_000
BIG_ROWS = 10
BIG_BYTES = 1 << 20
WRITERS = 8

# bench/run.py's writer transaction (WRITER_SCRIPT), for pgbench.
WRITER_SCRIPT = """\\set n :n + 1
\\set k (:base + :client_id + :nc * :n) % :nrows
UPDATE rows
SET data = jsonb_build_object(
    't', round(extract(epoch FROM clock_timestamp()) * 1000, 3), 'r', :run::int)
WHERE id = 'r' || :k;
"""
UPDATE = (
    "UPDATE rows SET data = jsonb_build_object("
    "'t', round(extract(epoch FROM clock_timestamp()) * 1000, 3), 'r', $2::int) "
    "WHERE id = 'r' || $1"
)
STATEMENT = (
    "UPDATE rows SET data = jsonb_build_object("
    "'t', round(extract(epoch FROM clock_timestamp()) * 1000, 3), 'r', $1::int) "
    "WHERE table_id = 't3'"
)
BIG_UPDATE = (
    "UPDATE rows SET data = data || jsonb_build_object("
    "'t', round(extract(epoch FROM clock_timestamp()) * 1000, 3)) WHERE id = 'b' || $1"
)
# A partitioned table's own size is 0; a plain table is its only partition.
LOG_SIZE = (
    "SELECT (pg_total_relation_size('change_log') + coalesce((SELECT"
    " sum(pg_total_relation_size(relid)) FROM pg_partition_tree('change_log')"
    " WHERE relid <> 'change_log'::regclass), 0))::bigint"
)


@dataclass(frozen=True)
class Variant:
    label: str
    database: str
    install: str
    """SQL run once in the variant's database."""
    has_log: bool


@dataclass
class Wal:
    row_after_checkpoint: float
    row: float
    statement_after_checkpoint: float
    statement: float
    big_row_after_checkpoint: float
    big_row: float
    log_entry_bytes: float | None
    big_log_entry_bytes: float | None


def make_variants(files: list[Path]) -> list[Variant]:
    return [
        Variant("no trigger", "v_none", "ALTER TABLE rows DISABLE TRIGGER USER;", False),
        Variant("triggers.sql (today)", "v_today", "", False),
        *(
            Variant(path.stem, f"v_{index}", path.read_text(), True)
            for index, path in enumerate(files)
        ),
    ]


async def prepare_base(url: str) -> None:
    connection = await asyncpg.connect(url)
    try:
        await connection.execute("SET broadcaster.wake = 'off'")
        await connection.execute(
            "INSERT INTO rows (id, table_id, data) SELECT 'r' || k, 't' || (k % "
            f"{TABLES}), '{{}}' FROM generate_series(0, {ROWS - 1}) AS k"
        )
        # 1 MB of hex digits from md5: pglz finds too few repeats to compress it.
        await connection.execute(
            "INSERT INTO rows (id, table_id, data) SELECT 'b' || k, 'big', "
            "jsonb_build_object('blob', (SELECT string_agg(md5(k || ':' || i), '') "
            f"FROM generate_series(1, {BIG_BYTES // 32}) AS i)) "
            f"FROM generate_series(0, {BIG_ROWS - 1}) AS k"
        )
        await connection.execute("UPDATE rows SET data = '{\"w\": 1}' WHERE table_id <> 'big'")
        await connection.execute("VACUUM ANALYZE rows")
    finally:
        await connection.close()


async def lsn(connection: asyncpg.Connection) -> int:
    value = await connection.fetchval("SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), '0/0')")
    return int(value)


async def measure_wal(url: str, variant: Variant) -> Wal:
    connection = await asyncpg.connect(url)
    try:
        await connection.execute(REMEMBER_EVERY_TABLE)
        update = await connection.prepare(UPDATE)
        # Warms the caches and the plans; rows other than the measured ones.
        for k in range(200):
            await update.fetch(f"{(k * 83 + 50_000) % ROWS}", 1)

        async def single_rows(run: int) -> float:
            start = await lsn(connection)
            for k in range(SINGLE_ROW_WRITES):
                await update.fetch(f"{k * 83 % ROWS}", run)
            return (await lsn(connection) - start) / SINGLE_ROW_WRITES

        await connection.execute("CHECKPOINT")
        row_after_checkpoint = await single_rows(2)
        row = await single_rows(3)

        async def statement(run: int) -> float:
            start = await lsn(connection)
            await connection.execute(STATEMENT, run)
            return float(await lsn(connection) - start)

        await connection.execute("CHECKPOINT")
        statement_after_checkpoint = await statement(4)
        statement_bytes = await statement(5)
        entries_bytes: float | None = None
        log_size = 0
        if variant.has_log:
            log_size = int(await connection.fetchval(LOG_SIZE))
            entries = int(await connection.fetchval("SELECT count(*) FROM change_log"))
            entries_bytes = log_size / entries

        async def big_rows() -> float:
            start = await lsn(connection)
            for k in range(BIG_ROWS):
                await connection.execute(BIG_UPDATE, str(k))
            return (await lsn(connection) - start) / BIG_ROWS

        # The first pass after a checkpoint also logs the whole pages of the old
        # value's TOAST chunks, which it marks deleted.
        await connection.execute("CHECKPOINT")
        big_row_after_checkpoint = await big_rows()
        big_row = await big_rows()
        big_entry_bytes: float | None = None
        if variant.has_log:
            added = int(await connection.fetchval(LOG_SIZE)) - log_size
            big_entry_bytes = added / (2 * BIG_ROWS)
        return Wal(
            row_after_checkpoint,
            row,
            statement_after_checkpoint,
            statement_bytes,
            big_row_after_checkpoint,
            big_row,
            entries_bytes,
            big_entry_bytes,
        )
    finally:
        await connection.close()


def pgbench(bin_dir: Path, url: str, script: Path, seconds: int, run: int) -> float:
    argv = [str(bin_dir / "pgbench"), "-n", "-M", "prepared", "-c", str(WRITERS), "-j", "2"]
    argv += ["-T", str(seconds), "-f", str(script)]
    for name, value in (("n", -1), ("base", run * 7919), ("nc", WRITERS), ("nrows", ROWS)):
        argv += ["-D", f"{name}={value}"]
    argv += ["-D", f"run={run}", url]
    text = checked(argv).stdout
    match = re.search(r"tps = ([\d.]+)", text)
    if match is None:
        raise RuntimeError(f"no tps in pgbench's output:\n{text}")
    return float(match.group(1))


def spread(values: list[float]) -> str:
    return f"{min(values):,.0f} to {max(values):,.0f} (median {statistics.median(values):,.0f})"


class Options(argparse.Namespace):
    """The command line, as ``main`` parses it."""

    variant: list[Path] | None
    rounds: int
    seconds: int
    no_pgbench: bool
    pg_bin: Path | None
    user: str


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--variant",
        type=Path,
        action="append",
        help="a triggers file to measure (repeatable; default: bench/log_variants/*.sql)",
    )
    parser.add_argument("--rounds", type=int, default=3, help="pgbench rounds (default: 3)")
    parser.add_argument(
        "--seconds", type=int, default=10, help="pgbench seconds per variant and round"
    )
    parser.add_argument("--no-pgbench", action="store_true", help="measure WAL and disk only")
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
    if args.pg_bin is None or not (args.pg_bin / "postgres").exists():
        raise SystemExit("no Postgres server binaries: pass --pg-bin")
    files = args.variant or sorted((ROOT / "bench" / "log_variants").glob("*.sql"))
    variants = make_variants([path.resolve() for path in files])

    directory = Path(tempfile.mkdtemp(prefix="broadcaster-log-cost-"))
    user = args.user if os.geteuid() == 0 else None
    if user:
        shutil.chown(directory, user)
    cluster = Cluster(args.pg_bin, directory, user)
    # Beside a bench/trigger_cost.py run, whose cluster takes 5499.
    cluster.port = 5498
    data = directory / "data"
    cluster.initdb(data)
    cluster.start(data, SETTINGS)
    try:
        postgres = cluster.url()
        base = postgres.replace("/postgres?", "/base?")
        asyncio.run(execute(postgres, "CREATE DATABASE base"))
        env = {**os.environ, "DATABASE_URL": base}
        checked([sys.executable, "-m", "broadcaster", "migrate"], env=env, cwd=ROOT)
        asyncio.run(prepare_base(base))
        for variant in variants:
            asyncio.run(execute(postgres, f"CREATE DATABASE {variant.database} TEMPLATE base"))
            if variant.install:
                url = postgres.replace("/postgres?", f"/{variant.database}?")
                asyncio.run(execute(url, variant.install))
        version = cluster.run([str(args.pg_bin / "postgres"), "--version"]).stdout.strip()
        print(f"{version}; WAL bytes per transaction (pg_current_wal_lsn), log bytes per entry\n")
        print(
            "| writer | 1-row txn after CHECKPOINT | 1-row txn | 10,000-row UPDATE after"
            " CHECKPOINT | 10,000-row UPDATE | 1 MB row after CHECKPOINT | 1 MB row"
            " | log bytes/entry | log bytes/1 MB entry |"
        )
        print("|---|---|---|---|---|---|---|---|---|")
        for variant in variants:
            url = postgres.replace("/postgres?", f"/{variant.database}?")
            wal = asyncio.run(measure_wal(url, variant))
            entry = "" if wal.log_entry_bytes is None else f"{wal.log_entry_bytes:,.0f}"
            big = "" if wal.big_log_entry_bytes is None else f"{wal.big_log_entry_bytes:,.0f}"
            print(
                f"| {variant.label} | {wal.row_after_checkpoint:,.0f} | {wal.row:,.0f}"
                f" | {wal.statement_after_checkpoint:,.0f} | {wal.statement:,.0f}"
                f" | {wal.big_row_after_checkpoint:,.0f} | {wal.big_row:,.0f}"
                f" | {entry} | {big} |",
                flush=True,
            )
        if args.no_pgbench:
            return 0
        script = directory / "writer.sql"
        script.write_text(WRITER_SCRIPT)
        rates: dict[str, list[float]] = {variant.label: [] for variant in variants}
        shares: dict[str, list[float]] = {variant.label: [] for variant in variants}
        for round_number in range(1, args.rounds + 1):
            for variant in variants:
                url = postgres.replace("/postgres?", f"/{variant.database}?")
                rate = pgbench(args.pg_bin, url, script, args.seconds, 100 + round_number)
                rates[variant.label].append(rate)
                share = rate / rates[variants[0].label][-1]
                shares[variant.label].append(share)
                print(
                    f"round {round_number}: {variant.label}: {rate:,.0f}/s ({100 * share:.0f}%)",
                    file=sys.stderr,
                    flush=True,
                )
        print(
            f"\npgbench, {WRITERS} clients, {args.seconds} s per variant, {args.rounds}"
            " interleaved rounds\n"
        )
        print("| writer | commits/s | share of the round's no-trigger rate |")
        print("|---|---|---|")
        for variant in variants:
            share_text = ", ".join(f"{100 * share:.0f}%" for share in shares[variant.label])
            print(f"| {variant.label} | {spread(rates[variant.label])} | {share_text} |")
    finally:
        cluster.stop(data)
        shutil.rmtree(directory, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
