"""Stream Postgres row changes to WebSocket clients: a self-hosted Supabase Realtime.

The subpackages follow the roles, from the database to the client:

- :mod:`broadcaster.core`: the sans-I/O core of delivery. Wake-ups, changes,
  cursors, the feed (what to read next and where its results go), the hub
  (who is subscribed to what), promises, coalesced writes, broadcasts and
  presence. Plain data in and out; it imports no I/O library.
- :mod:`broadcaster.protocols`: the wire, sans-I/O. The native protocol's
  messages, Phoenix framing for Supabase clients, ``postgres_changes``
  filters, server WebSocket frames.
- :mod:`broadcaster.sessions`: one client connection per protocol, translating
  its messages onto the feed and the hub.
- :mod:`broadcaster.auth`: token verification and authorization.
- :mod:`broadcaster.postgres`: the adapters to Postgres. The LISTEN connection,
  the read loop, the SQL, migrations, the embedded Postgres.
- :mod:`broadcaster.net`: the adapters to the network. WebSocket connections,
  the HTTP app, the uvicorn server, worker processes, and the runtime that
  wires everything together.
- :mod:`broadcaster.client`: the Python client.

The names below are the package's public API; they are loaded on first use, so
``import broadcaster`` (and importing the sans-I/O core) loads no I/O library.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from .exceptions import (
    AuthenticationError,
    BroadcasterError,
    ConfigurationError,
    CursorError,
    DatabaseError,
    EmbeddedPostgresError,
    FilterError,
    MigrationError,
    ProtocolError,
    StartupError,
)

if TYPE_CHECKING:
    from .net.app import create_app
    from .net.server import Server
    from .postgres.migrate import MigrationReport, migrate
    from .settings import Settings

__version__ = "0.1.0"

__all__ = [
    "AuthenticationError",
    "BroadcasterError",
    "ConfigurationError",
    "CursorError",
    "DatabaseError",
    "EmbeddedPostgresError",
    "FilterError",
    "MigrationError",
    "MigrationReport",
    "ProtocolError",
    "Server",
    "Settings",
    "StartupError",
    "__version__",
    "create_app",
    "migrate",
]

_LAZY = {
    "Server": ".net.server",
    "Settings": ".settings",
    "create_app": ".net.app",
    "MigrationReport": ".postgres.migrate",
    "migrate": ".postgres.migrate",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'broadcaster' has no attribute {name!r}")
    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value
    return value
