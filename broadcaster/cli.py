"""The ``broadcaster`` command: ``serve``, ``migrate``, ``publish``, ``unpublish`` and ``demo``."""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import importlib.util
import logging
import os
import signal
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from . import __version__
from .exceptions import BroadcasterError, ConfigurationError
from .settings import SETTINGS, Setting, Settings

__all__ = ["main"]

logger = logging.getLogger("broadcaster")


def _flag_type(setting: Setting) -> Callable[[str], Any]:
    # argparse reports ArgumentTypeError as a usage error instead of a traceback.
    def parse(raw: str) -> Any:
        try:
            return setting.parse(raw)
        except ConfigurationError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    return parse


def _bounded_int(low: int, high: int) -> Callable[[str], int]:
    def parse(raw: str) -> int:
        try:
            value = int(raw)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {raw!r}") from None
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"must be between {low} and {high}, not {value}")
        return value

    return parse


_port = _bounded_int(0, 65535)
_rows = _bounded_int(1, 100_000)

_TABLE_HELP = (
    "a table: schema.table, or a table of search_path; double-quote a name with capitals "
    """or spaces ('"App"."Order Items"')"""
)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="broadcaster",
        description="Stream Postgres row changes to WebSocket clients.",
    )
    parser.add_argument("--version", action="version", version=f"broadcaster {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    serve = commands.add_parser(
        "serve",
        help="run the server",
        description=(
            "Run the server. Every setting comes from its environment variable or its "
            "flag (the flag wins). Without DATABASE_URL an embedded Postgres is started "
            "in --data-dir, migrated, and its DSN printed."
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    for setting in SETTINGS:
        serve.add_argument(
            setting.flag,
            dest=setting.name,
            type=_flag_type(setting),
            default=None,
            metavar=setting.kind.__name__.upper(),
            help=f"{setting.help} [env {setting.env}; default {setting.default}]",
        )

    migrate = commands.add_parser(
        "migrate",
        help="apply the schema and triggers to DATABASE_URL",
        description=(
            "Apply the migrations and install triggers.sql, then publish the tables of "
            "BROADCASTER_PUBLISH (comma-separated; it never unpublishes). Idempotent: on a "
            "current schema it changes nothing and takes no lock that blocks writers."
        ),
    )
    migrate.add_argument(
        "--database-url",
        default=None,
        help="Postgres to migrate [env DATABASE_URL]",
    )

    publish = commands.add_parser(
        "publish",
        help="log the changes of tables of yours, to serve them like rows",
        description=(
            "Add the capture triggers to each TABLE, whose changes are then logged under the "
            "table_id schema.table, its primary key as id. Idempotent; any table with a "
            "primary key (composite ones included), partitioned ones too; its columns are "
            "not altered, and its writers wait at most half a second at a time for the "
            "triggers' lock. Run it as the table's owner. See docs/publishing.md."
        ),
    )
    publish.add_argument("tables", nargs="*", metavar="TABLE", help=_TABLE_HELP)
    publish.add_argument(
        "--list", action="store_true", help="list the published tables instead, rows included"
    )
    publish.add_argument("--database-url", default=None, help="Postgres [env DATABASE_URL]")

    unpublish = commands.add_parser(
        "unpublish",
        help="stop logging the changes of tables",
        description=(
            "Drop the capture triggers of each TABLE: its changes are no longer logged; those "
            "logged already stay until the log is pruned. rows cannot be unpublished."
        ),
    )
    unpublish.add_argument("tables", nargs="+", metavar="TABLE", help=_TABLE_HELP)
    unpublish.add_argument("--database-url", default=None, help="Postgres [env DATABASE_URL]")

    demo = commands.add_parser(
        "demo",
        help="run the enrichment demo (from a clone of the repository)",
        description=(
            "Run the enrichment demo of examples/enrichment on an embedded Postgres of its "
            "own (in BROADCASTER_DATA_DIR/demo-pgdata): the broadcaster, the example's API "
            "and page, and its worker. Open the URL it prints; Ctrl-C stops everything. "
            "Builds the JS client in clients/js first if it is not built."
        ),
        epilog=(
            "The worker's fake provider answers after ENRICH_MIN_DELAY to ENRICH_MAX_DELAY "
            "seconds (default 0.3 to 2.5) and fails ENRICH_FAILURE_RATE of the cells "
            "(default 0.1). BROADCASTER_HOST and BROADCASTER_LOG_LEVEL apply too."
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    demo.add_argument("--port", type=_port, default=8080, help="port of the page (0: any free)")
    demo.add_argument(
        "--ws-port", type=_port, default=8000, help="port of the broadcaster (0: any free)"
    )
    demo.add_argument(
        "--rows", type=_rows, default=300, help="rows to seed the table 'demo' with when empty"
    )
    return parser


def _configure_logging(level: str) -> None:
    logging.basicConfig(
        level=level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )


def _serve(options: argparse.Namespace) -> int:
    from .net.server import Server
    from .postgres.embedded import EmbeddedPostgres
    from .postgres.migrate import migrate

    overrides = {s.name: getattr(options, s.name) for s in SETTINGS}
    settings = Settings.load(os.environ, overrides)
    _configure_logging(settings.log_level)
    embedded: EmbeddedPostgres | None = None
    database_url = settings.database_url
    if database_url is None:
        if settings.auth is None:
            settings = dataclasses.replace(settings, auth="none")
            logger.warning(
                "anonymous access is on (BROADCASTER_AUTH=none): anyone who can reach "
                "%s:%s may read every table; this is the default only for the embedded "
                "Postgres, for local use",
                settings.host,
                settings.port,
            )
        embedded = EmbeddedPostgres(Path(settings.data_dir) / "pgdata")
        database_url = embedded.start()
        migrate(database_url, publish=settings.tables_to_publish)
        print(f"broadcaster: embedded Postgres ready: {database_url}", flush=True)
        print(f"broadcaster:   write rows with: {embedded.psql} '{database_url}'", flush=True)

    if settings.workers > 1:
        from .net.workers import run_workers

        try:
            return run_workers(settings, database_url, settings.workers)
        finally:
            if embedded is not None:
                embedded.stop()

    async def run() -> None:
        server = Server(settings, database_url)
        await server.start()
        print(
            f"broadcaster: serving on {server.url} (WebSocket {server.ws_url})",
            flush=True,
        )
        await server.wait()

    # uvicorn re-raises the signal it stopped on once it has shut down; with a
    # handler of ours in place that re-raise is a no-op, so SIGTERM exits 0.
    signal.signal(signal.SIGTERM, lambda _signum, _frame: None)
    try:
        asyncio.run(run())
    finally:
        if embedded is not None:
            embedded.stop()
    return 0


def _database_url(options: argparse.Namespace) -> str | None:
    database_url: str | None = options.database_url or os.environ.get("DATABASE_URL")
    if not database_url:
        print(
            f"broadcaster {options.command}: set DATABASE_URL or pass --database-url",
            file=sys.stderr,
        )
    return database_url


def _migrate(options: argparse.Namespace) -> int:
    from .postgres.migrate import migrate

    _configure_logging("info")
    database_url = _database_url(options)
    if not database_url:
        return 2
    # Only the settings migrate uses: the server's others are not its concern.
    publish = next(setting for setting in SETTINGS if setting.name == "publish")
    raw = os.environ.get(publish.env)
    settings = Settings.load({publish.env: raw} if raw else {})
    report = migrate(database_url, publish=settings.tables_to_publish)
    print(f"broadcaster: {report}", flush=True)
    return 0


def _publish(options: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    if options.command == "publish" and options.list == bool(options.tables):
        parser.error("publish: name the tables to publish, or pass --list alone")
    _configure_logging("info")
    database_url = _database_url(options)
    if not database_url:
        return 2
    return asyncio.run(_publish_in(database_url, options))


async def _publish_in(database_url: str, options: argparse.Namespace) -> int:
    import asyncpg

    from .postgres import catalog, publishing
    from .postgres.errors import database_errors

    with database_errors():
        connection = await asyncpg.connect(database_url)
    try:
        if options.command == "publish" and options.list:
            for publication in await catalog.published_tables(connection):
                print(publication.describe(), flush=True)
            return 0
        run = publishing.publish if options.command == "publish" else publishing.unpublish
        refused = False
        for name in options.tables:
            outcome = await run(connection, name)
            if outcome.refused:
                refused = True
                print(f"broadcaster {options.command}: {outcome.message}", file=sys.stderr)
            else:
                print(outcome.message, flush=True)
        return 1 if refused else 0
    finally:
        with database_errors():
            await connection.close()


# The demo's launcher lives beside the example, in a clone of the repository:
# the installed package carries neither the example nor the JS client it serves.
_DEMO = Path(__file__).resolve().parent.parent / "examples" / "enrichment" / "demo.py"


def _demo(options: argparse.Namespace) -> int:
    if not _DEMO.is_file():
        raise BroadcasterError(
            f"{_DEMO} is missing: the demo runs from a clone of the repository "
            "(examples/ and clients/js are not part of the installed package)"
        )
    spec = importlib.util.spec_from_file_location("broadcaster_demo", _DEMO)
    if spec is None or spec.loader is None:
        raise BroadcasterError(f"cannot load {_DEMO}")
    demo = importlib.util.module_from_spec(spec)
    # Its dataclasses look their module up in sys.modules while being defined.
    sys.modules[spec.name] = demo
    spec.loader.exec_module(demo)
    options_type: Any = demo.DemoOptions
    code: int = demo.run_demo(
        options_type(port=options.port, ws_port=options.ws_port, rows=options.rows)
    )
    return code


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    options = parser.parse_args(argv)
    try:
        if options.command == "serve":
            return _serve(options)
        if options.command == "demo":
            return _demo(options)
        if options.command in ("publish", "unpublish"):
            return _publish(options, parser)
        return _migrate(options)
    except BroadcasterError as exc:
        print(f"broadcaster {options.command}: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
