"""Every exception the package raises, under one root.

.. code-block:: text

    BroadcasterError
    ├── ConfigurationError      a setting is missing or invalid
    ├── EmbeddedPostgresError   the embedded Postgres could not start or stop
    ├── MigrationError          applying the schema or triggers failed
    ├── PayloadError            a NOTIFY payload does not follow triggers.sql
    ├── StartupError            the server could not start serving
    └── ProtocolError           a client's message breaks the wire protocol;
                                ``code`` is the error code sent back to it

Catch :class:`BroadcasterError` to handle anything this package raises on
purpose; anything else is a bug.
"""

from __future__ import annotations

__all__ = [
    "BroadcasterError",
    "ConfigurationError",
    "EmbeddedPostgresError",
    "MigrationError",
    "PayloadError",
    "ProtocolError",
    "StartupError",
]


class BroadcasterError(Exception):
    """Root of every exception raised by this package."""


class ConfigurationError(BroadcasterError):
    """A setting is missing or invalid."""


class EmbeddedPostgresError(BroadcasterError):
    """The embedded Postgres could not be started or stopped."""


class MigrationError(BroadcasterError):
    """Applying the schema or the triggers failed."""


class PayloadError(BroadcasterError):
    """A NOTIFY payload does not follow the format defined in ``triggers.sql``."""


class StartupError(BroadcasterError):
    """The server could not start serving (port taken, start-up failed)."""


class ProtocolError(BroadcasterError):
    """A client's message breaks the wire protocol.

    ``code`` is the stable error code sent to the client (see
    ``docs/protocol.md``); ``ref`` is the client's ``ref`` when the offending
    message carried one, so the error can answer it.
    """

    def __init__(self, code: str, message: str, ref: str | int | float | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.ref = ref
