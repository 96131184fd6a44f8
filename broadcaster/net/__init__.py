"""The adapters to the network: WebSocket connections, the HTTP app, the server, workers.

:mod:`~broadcaster.net.runtime` wires the core, the sessions and the Postgres
adapters together for one server process.
"""
