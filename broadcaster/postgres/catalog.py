"""Tables as Postgres' catalog describes them, and which of them are published.

Reads ``pg_class``, ``pg_attribute``, ``pg_index`` and ``pg_trigger`` into the
core's plain data: a :class:`~broadcaster.core.published.PublishedTable`
(columns in their order, each typed as ``format_type`` spells it and by its
type's own name, without dropped or system columns; the primary key's
columns in key order; row-level security), and for publishing a
:class:`~broadcaster.core.publishing.Relation` (its kind, the table it is a
partition of, its capture triggers). A table is published when it carries
the ``broadcaster_capture`` trigger of its own (not the clone a partition
gets of its parent's), ``rows`` included.

Names are resolved as Postgres resolves them (``to_regclass``): a name without
a schema through ``search_path``, unquoted parts folded to lower case,
double-quoted ones as written. Schemas and names come back as stored. Reads
take no lock on the tables. Every function raises
:class:`~broadcaster.exceptions.DatabaseError` when the database or the
network fails.
"""

from __future__ import annotations

from typing import Protocol

import asyncpg

from ..core.published import Column, PublishedTable
from ..core.publishing import (
    CAPTURE_TRIGGER,
    TRUNCATE_TRIGGER,
    Publication,
    Relation,
    RelationKind,
    Trigger,
    publication,
)
from .errors import database_errors

__all__ = ["published_table", "published_table_at", "published_tables", "relation"]

# $1 and $2: the names of the capture and truncate triggers. {where} picks the
# relations, by $3.
_RELATIONS = """
SELECT n.nspname::text AS schema,
       c.relname::text AS name,
       format('%I.%I', n.nspname, c.relname) AS sql_name,
       c.relkind::text AS relkind,
       c.relrowsecurity AS row_security,
       (SELECT pn.nspname || '.' || p.relname
        FROM pg_inherits AS i
        JOIN pg_class AS p ON p.oid = i.inhparent
        JOIN pg_namespace AS pn ON pn.oid = p.relnamespace
        WHERE c.relispartition AND i.inhrelid = c.oid) AS partition_of,
       ARRAY(SELECT a.attname::text FROM pg_attribute AS a
             WHERE a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
             ORDER BY a.attnum) AS column_names,
       ARRAY(SELECT format_type(a.atttypid, a.atttypmod) FROM pg_attribute AS a
             WHERE a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
             ORDER BY a.attnum) AS column_types,
       ARRAY(SELECT t.typname::text FROM pg_attribute AS a JOIN pg_type AS t ON t.oid = a.atttypid
             WHERE a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
             ORDER BY a.attnum) AS column_type_names,
       ARRAY(SELECT a.attname::text
             FROM pg_index AS x
             CROSS JOIN LATERAL unnest(x.indkey::int2[]) WITH ORDINALITY AS k(attnum, position)
             JOIN pg_attribute AS a ON a.attrelid = c.oid AND a.attnum = k.attnum
             WHERE x.indrelid = c.oid AND x.indisprimary
             ORDER BY k.position) AS key,
       capture.function AS capture_function,
       capture.arguments AS capture_arguments,
       capture.count AS capture_count,
       truncation.function AS truncate_function,
       truncation.arguments AS truncate_arguments,
       truncation.count AS truncate_count
FROM pg_class AS c
JOIN pg_namespace AS n ON n.oid = c.relnamespace
LEFT JOIN LATERAL (
    SELECT p.proname::text AS function, t.tgargs AS arguments, t.tgnargs AS count
    FROM pg_trigger AS t JOIN pg_proc AS p ON p.oid = t.tgfoid
    WHERE t.tgrelid = c.oid AND t.tgname = $1 AND t.tgparentid = 0
) AS capture ON true
LEFT JOIN LATERAL (
    SELECT p.proname::text AS function, t.tgargs AS arguments, t.tgnargs AS count
    FROM pg_trigger AS t JOIN pg_proc AS p ON p.oid = t.tgfoid
    WHERE t.tgrelid = c.oid AND t.tgname = $2 AND t.tgparentid = 0
) AS truncation ON true
WHERE {where}
"""

_BY_NAME = _RELATIONS.format(where="c.oid = to_regclass($3)")
_AT = _RELATIONS.format(where="n.nspname = $3 AND c.relname = $4")
# $3: the schema, or NULL for every schema.
_PUBLISHED = _RELATIONS.format(
    where="""c.oid IN (SELECT t.tgrelid FROM pg_trigger AS t
                       WHERE t.tgname = $1 AND t.tgparentid = 0)
  AND ($3::text IS NULL OR n.nspname = $3)
ORDER BY n.nspname, c.relname"""
)


# What to_regclass raises for a text that is not a name at all: improper
# syntax, too many dots, a database other than this one.
class Statements(Protocol):
    """What reads the catalog: a connection, or a pool."""

    async def fetch(self, query: str, *args: object) -> list[asyncpg.Record]: ...

    async def fetchrow(self, query: str, *args: object) -> asyncpg.Record | None: ...


_NOT_A_NAME = (
    asyncpg.InvalidNameError,
    asyncpg.PostgresSyntaxError,
    asyncpg.FeatureNotSupportedError,
)


async def relation(connection: Statements, name: str) -> Relation | None:
    """The relation ``name`` resolves to; None when there is none, or ``name`` is not a name."""
    with database_errors():
        try:
            record = await connection.fetchrow(_BY_NAME, CAPTURE_TRIGGER, TRUNCATE_TRIGGER, name)
        except _NOT_A_NAME:
            return None
    return None if record is None else _relation(record)


async def published_table(connection: Statements, name: str) -> PublishedTable | None:
    """The table ``name`` resolves to, if it is published."""
    found = await relation(connection, name)
    if found is None or publication(found) is None:
        return None
    return found.table


async def published_table_at(
    connection: Statements, schema: str, name: str
) -> PublishedTable | None:
    """The table whose changes are logged under the table_id ``schema.name``, ``rows`` aside.

    ``schema`` and ``name`` as stored: nothing is folded or looked up in
    ``search_path``. None when there is no such table, or it is not published
    under that table_id: ``rows`` (each row under its own table_id), or a
    partitioned table renamed since it was published (still logged under its
    old name until it is published again).
    """
    with database_errors():
        record = await connection.fetchrow(_AT, CAPTURE_TRIGGER, TRUNCATE_TRIGGER, schema, name)
    if record is None:
        return None
    found = publication(_relation(record))
    if found is None or found.table_id != f"{schema}.{name}":
        return None
    return found.table


async def published_tables(connection: Statements, schema: str | None = None) -> list[Publication]:
    """Every published table, ``rows`` included, by schema and name; only ``schema``'s if given.

    Those whose :attr:`~broadcaster.core.publishing.Publication.table_id` is
    not None are the ones a client subscribes to by ``schema.table``.
    """
    with database_errors():
        records = await connection.fetch(_PUBLISHED, CAPTURE_TRIGGER, TRUNCATE_TRIGGER, schema)
    publications = (publication(_relation(record)) for record in records)
    return [found for found in publications if found is not None]


def _relation(record: asyncpg.Record) -> Relation:
    columns = tuple(
        Column(name, type_, type_name)
        for name, type_, type_name in zip(
            record["column_names"],
            record["column_types"],
            record["column_type_names"],
            strict=True,
        )
    )
    table = PublishedTable(
        record["schema"],
        record["name"],
        columns,
        tuple(record["key"]),
        row_security=record["row_security"],
    )
    return Relation(
        table,
        record["sql_name"],
        kind=RelationKind.of(record["relkind"]),
        partition_of=record["partition_of"],
        capture=_trigger(record, "capture"),
        truncate_capture=_trigger(record, "truncate"),
    )


def _trigger(record: asyncpg.Record, prefix: str) -> Trigger | None:
    function = record[f"{prefix}_function"]
    if function is None:
        return None
    # tgargs: each argument followed by a NUL byte.
    raw: bytes = record[f"{prefix}_arguments"]
    arguments = raw.split(b"\0")[: record[f"{prefix}_count"]]
    return Trigger(function, tuple(argument.decode() for argument in arguments))
