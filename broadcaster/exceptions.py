"""Every exception the package raises, under one root.

.. code-block:: text

    BroadcasterError
    ├── AuthenticationError     a client's token is refused; ``code`` is
    │                           ``unauthorized`` or ``token_expired``
    ├── ClientError             raised by broadcaster.client (defined there)
    │   ├── ConnectError              the first connection failed for good
    │   ├── ClientClosedError         the client or subscription is closed
    │   ├── SlowConsumerError         a subscription's queue overflowed with no
    │   │                             cursor to resume from
    │   └── SubscriptionError         the server refused or ended a subscription
    │       └── TooManySubscriptionsError
    ├── ConfigurationError      a setting is missing or invalid
    ├── CursorError             a client's cursor cannot be served; ``reason``
    │                           is sent to it in a ``reset`` message
    ├── DatabaseError           a statement or connection to Postgres failed;
    │                           the driver's exception is its ``__cause__``
    ├── EmbeddedPostgresError   the embedded Postgres could not start or stop
    ├── FilterError             a Supabase binding (its filter, event or table)
    │                           cannot be served; the message says why
    ├── MigrationError          applying the schema or triggers failed
    ├── StartupError            the server could not start serving
    └── ProtocolError           a client's message breaks the wire protocol;
                                ``code`` is the error code sent back to it

Catch :class:`BroadcasterError` to handle anything this package raises on
purpose; anything else is a bug.
"""

from __future__ import annotations

__all__ = [
    "AuthenticationError",
    "BroadcasterError",
    "ConfigurationError",
    "CursorError",
    "DatabaseError",
    "EmbeddedPostgresError",
    "FilterError",
    "MigrationError",
    "ProtocolError",
    "StartupError",
]


class BroadcasterError(Exception):
    """Root of every exception raised by this package."""


class AuthenticationError(BroadcasterError):
    """A client's token is refused.

    ``code`` is the stable error code sent to the client: ``token_expired``
    for a token past its ``exp``, ``unauthorized`` for any other refusal.
    ``message`` says why, without repeating the token.
    """

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class ConfigurationError(BroadcasterError):
    """A setting is missing or invalid."""


class CursorError(BroadcasterError):
    """A client's cursor cannot be served.

    ``reason`` is the stable reason sent in the ``reset`` message:
    ``malformed_cursor``, ``foreign_cursor`` or ``history_pruned``.
    """

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


class DatabaseError(BroadcasterError):
    """A statement or the connection to Postgres failed.

    The adapters in :mod:`broadcaster.postgres` raise it in place of the
    driver's exceptions, which stay its ``__cause__``, so the sessions, presence
    and authorization never need to know the driver.
    """


class EmbeddedPostgresError(BroadcasterError):
    """The embedded Postgres could not be started or stopped."""


class FilterError(BroadcasterError, ValueError):
    """A Supabase binding cannot be served: its filter, event or table.

    The message says why in one sentence a user can act on; it is sent to the
    client as is.
    """


class MigrationError(BroadcasterError):
    """Applying the schema or the triggers failed."""


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
