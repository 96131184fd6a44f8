"""The adapters to Postgres: the LISTEN connection, the read loop, the SQL, migrations."""
