"""A published table as the server knows it: its name, columns, key and row-level security.

Plain data, read from Postgres' catalog by :mod:`broadcaster.postgres.catalog`
and used by the Supabase protocol (the ``columns`` of each change, the types
filters compare as) and by row-level security checks. A published table's
changes are logged under its :attr:`PublishedTable.table_id`,
``schema.table``, in the same namespace as ``rows``' own table_ids.
"""

from __future__ import annotations

from dataclasses import dataclass

from .hashing import cached_hash

__all__ = ["Column", "PublishedTable"]


@dataclass(frozen=True)
class Column:
    """A column: its name, its type as Postgres spells it in a cast (``format_type``:
    ``bigint``, ``timestamp with time zone``, ``text[]``, ``public.mood``) and the
    type's own name (``pg_type.typname``: ``int8``, ``timestamptz``, ``_text``),
    which Supabase's ``columns`` send and supabase-js converts values by."""

    name: str
    type: str
    type_name: str


@dataclass(frozen=True)
class PublishedTable:
    """A table whose changes the capture trigger logs.

    ``key`` names the primary key's columns in their order in the key.
    ``row_security`` is whether the table has row-level security enabled
    (``ALTER TABLE ... ENABLE ROW LEVEL SECURITY``).
    """

    __hash__ = cached_hash

    schema: str
    name: str
    columns: tuple[Column, ...]
    key: tuple[str, ...]
    row_security: bool = False

    @property
    def table_id(self) -> str:
        """The table_id its changes are logged under: ``schema.table``."""
        return f"{self.schema}.{self.name}"

    def column(self, name: str) -> Column | None:
        """The column called ``name``, if the table has one."""
        for column in self.columns:
            if column.name == name:
                return column
        return None
