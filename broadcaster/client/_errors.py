"""The exceptions the client raises on purpose: :class:`ClientError` and its subclasses.

The tree, under :class:`broadcaster.exceptions.BroadcasterError`, is drawn in
the docstring of :mod:`broadcaster.client`.
"""

from __future__ import annotations

from ..exceptions import BroadcasterError

__all__ = [
    "BadFilterError",
    "ClientClosedError",
    "ClientError",
    "ConnectError",
    "SlowConsumerError",
    "SubscriptionError",
    "TooManySubscriptionsError",
    "subscription_error",
]


class ClientError(BroadcasterError):
    """Root of every exception :mod:`broadcaster.client` raises on purpose."""


class ConnectError(ClientError):
    """The first connection could not be opened.

    Raised by :meth:`Client.open` (``async with connect(...)``) when the server
    refused the handshake for good (a bad URI, an HTTP 4xx answer) or when no
    connection opened within ``connect_timeout``. Connections lost later are
    re-established without raising.
    """


class ClientClosedError(ClientError):
    """The client, or the subscription or table view used, is closed."""


class SlowConsumerError(ClientError):
    """A subscription's queue overflowed where no cursor can resume it.

    That is while the first snapshot of the subscription (or the snapshot after
    a reset) is arriving: there is no cursor to resume from. The iterator
    yields what it queued, then raises this; the subscription is closed.
    """


class SubscriptionError(ClientError):
    """The server answered a ``subscribe`` with an ``error``, or ended a
    subscription with a ``forbidden`` error naming its table.

    ``code`` is the protocol's stable error code (``docs/protocol.md``),
    ``message`` the server's explanation and ``table_id`` the table.
    """

    def __init__(self, table_id: str, code: str, message: str) -> None:
        super().__init__(f"subscribing to {table_id!r} failed: {code}: {message}")
        self.table_id = table_id
        self.code = code
        self.message = message


class TooManySubscriptionsError(SubscriptionError):
    """The connection already holds the server's maximum of subscriptions."""


class BadFilterError(SubscriptionError):
    """The server refused the subscription's ``filter`` (code ``bad_filter``).

    The table is not a published table, or Postgres refused the filter (an
    unknown column, a value that does not cast to the column's type, an
    operator the type lacks); ``message`` says which.
    """


def subscription_error(table_id: str, code: str, message: str) -> SubscriptionError:
    """The :class:`SubscriptionError`, or the subclass for ``code``, of a server's error."""
    if code == "too_many_subscriptions":
        return TooManySubscriptionsError(table_id, code, message)
    if code == "bad_filter":
        return BadFilterError(table_id, code, message)
    return SubscriptionError(table_id, code, message)
