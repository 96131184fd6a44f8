"""An embedded Postgres from the ``pgserver`` wheel, for running without ``DATABASE_URL``.

``broadcaster serve`` uses it when no database is configured, and the test suite
uses it when neither ``BROADCASTER_TEST_DATABASE_URL`` nor a Docker daemon is
available. The cluster listens on a Unix socket inside its data directory only.
"""

from __future__ import annotations

import logging
import os
import warnings
from pathlib import Path
from typing import Any

from ..exceptions import EmbeddedPostgresError

__all__ = ["EmbeddedPostgres"]

logger = logging.getLogger(__name__)


def _import_pgserver() -> Any:
    # pgserver resolves a runtime directory for its lock file at import time and
    # warns when XDG_RUNTIME_DIR is unset (containers, CI); the fallback it picks
    # is fine, so that warning is noise, not a problem to surface.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import pgserver
    return pgserver


class EmbeddedPostgres:
    """A Postgres cluster in ``data_dir``, started on :meth:`start`.

    ``delete_on_stop`` removes the data directory on :meth:`stop`: tests want
    that, ``broadcaster serve`` does not (its rows survive a restart).
    """

    def __init__(self, data_dir: str | os.PathLike[str], *, delete_on_stop: bool = False) -> None:
        self.data_dir = Path(data_dir).expanduser().resolve()
        self.delete_on_stop = delete_on_stop
        self._server: Any = None

    @property
    def dsn(self) -> str:
        if self._server is None:
            raise EmbeddedPostgresError("the embedded Postgres is not started")
        return str(self._server.get_uri())

    def start(self) -> str:
        """Initialise the cluster if needed, start it, and return its DSN."""
        pgserver = _import_pgserver()
        self.data_dir.parent.mkdir(parents=True, exist_ok=True)
        try:
            self._server = pgserver.get_server(
                self.data_dir, cleanup_mode="delete" if self.delete_on_stop else "stop"
            )
        except Exception as exc:
            raise EmbeddedPostgresError(
                f"could not start the embedded Postgres in {self.data_dir}: {exc}"
            ) from exc
        logger.info("embedded Postgres running in %s", self.data_dir)
        return self.dsn

    def stop(self) -> None:
        """Stop the cluster (and delete it when ``delete_on_stop``)."""
        if self._server is not None:
            self._server.cleanup()
            self._server = None

    @property
    def psql(self) -> Path:
        """The ``psql`` shipped with the embedded Postgres (the machine may have none)."""
        from pgserver import _commands

        return Path(_commands.POSTGRES_BIN_PATH) / "psql"

    def pg_ctl(self, *args: str) -> str:
        """Run ``pg_ctl`` on this cluster, as the user that owns it (fault tests)."""
        if self._server is None:
            raise EmbeddedPostgresError("the embedded Postgres is not started")
        from pgserver import _commands

        # pgserver generates its command wrappers at import time.
        pg_ctl = getattr(_commands, "pg_ctl")  # noqa: B009
        return str(pg_ctl(list(args), pgdata=self.data_dir, user=self._server.system_user))

    def __enter__(self) -> EmbeddedPostgres:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()
