"""The sans-I/O core of delivery: changes, cursors, the feed, the hub, promises, writes.

The modules here take and return plain values; the adapters in
:mod:`broadcaster.postgres` and :mod:`broadcaster.net` drive them.
"""
