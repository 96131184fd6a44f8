"""The ``broadcaster`` command: ``serve``, ``migrate`` and ``demo``."""

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
            "Apply the migrations and install triggers.sql. Idempotent: on a current "
            "schema it changes nothing and takes no lock that blocks writers."
        ),
    )
    migrate.add_argument(
        "--database-url",
        default=None,
        help="Postgres to migrate [env DATABASE_URL]",
    )

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
        migrate(database_url)
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


def _migrate(options: argparse.Namespace) -> int:
    from .postgres.migrate import migrate

    _configure_logging("info")
    database_url = options.database_url or os.environ.get("DATABASE_URL")
    if not database_url:
        print("broadcaster migrate: set DATABASE_URL or pass --database-url", file=sys.stderr)
        return 2
    report = migrate(database_url)
    print(f"broadcaster: {report}", flush=True)
    return 0


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
    options = _parser().parse_args(argv)
    try:
        if options.command == "serve":
            return _serve(options)
        if options.command == "demo":
            return _demo(options)
        return _migrate(options)
    except BroadcasterError as exc:
        print(f"broadcaster {options.command}: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
