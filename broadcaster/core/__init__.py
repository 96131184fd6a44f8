"""The sans-I/O core of delivery: changes, cursors, the feed, the hub, promises, writes.

The modules here take and return plain values; the adapters in
:mod:`broadcaster.postgres` and :mod:`broadcaster.net` drive them. None of them
loads asyncio, asyncpg, starlette, uvicorn, jwt or urllib.request:
``tests/unit/test_sans_io.py`` imports each (and each of
:mod:`broadcaster.protocols`) in a fresh interpreter and checks.
"""
