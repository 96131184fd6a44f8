"""The adapters to Postgres: the LISTEN connection, the read loop, the SQL, filters, migrations.

The driver's errors stop here: a statement or a connection that fails reaches
the rest of the package as one of its own exceptions, with the driver's as its
``__cause__`` (:class:`~broadcaster.exceptions.DatabaseError` while serving,
:class:`~broadcaster.exceptions.MigrationError` from ``migrate``), so no module
outside this package imports the driver.
"""
