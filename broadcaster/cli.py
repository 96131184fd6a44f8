"""The ``broadcaster`` command: ``serve`` and ``migrate``."""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
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
    return parser


def _configure_logging(level: str) -> None:
    logging.basicConfig(
        level=level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )


def _serve(options: argparse.Namespace) -> int:
    from .embedded import EmbeddedPostgres
    from .migrate import migrate
    from .server import Server

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
    from .migrate import migrate

    _configure_logging("info")
    database_url = options.database_url or os.environ.get("DATABASE_URL")
    if not database_url:
        print("broadcaster migrate: set DATABASE_URL or pass --database-url", file=sys.stderr)
        return 2
    report = migrate(database_url)
    print(f"broadcaster: {report}", flush=True)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    options = _parser().parse_args(argv)
    try:
        if options.command == "serve":
            return _serve(options)
        return _migrate(options)
    except BroadcasterError as exc:
        print(f"broadcaster {options.command}: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
