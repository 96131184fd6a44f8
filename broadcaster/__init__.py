"""Stream Postgres row changes to WebSocket clients, subscribed by ``table_id``.

The layout follows the data: ``triggers.sql`` emits payloads that
:mod:`~broadcaster.payloads` decodes; the :mod:`~broadcaster.listener` receives
them on one dedicated connection and the :mod:`~broadcaster.dispatcher` hands
per-table batches to the :mod:`~broadcaster.hub`, whose subscribers are
:mod:`~broadcaster.native` protocol sessions behind :mod:`~broadcaster.websocket`
connections. :mod:`~broadcaster.protocol` defines the wire messages.
"""

from __future__ import annotations

__version__ = "0.1.0"
