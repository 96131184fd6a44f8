"""The broadcaster's tables: ``rows``, the change log and the state.

This is the target of Alembic's autogenerate (``migrations/env.py`` loads this
file by path: ``schema`` is not a package of the wheel).

``rows`` holds every subscribed row. A row belongs to one logical table
(``table_id``) and carries its content in ``data``. The capture trigger
(``triggers.sql``) appends each committed change of a row to
``broadcaster_changes``, with the writer's transaction id: the server delivers
from snapshot-consistent reads of that log, the changes whose transaction a
snapshot (a cursor) does not see as committed. ``broadcaster_state`` records
how far the log has been pruned.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    Column,
    DateTime,
    Index,
    SmallInteger,
    Table,
    Text,
    text,
)
from sqlalchemy.dialects.postgresql import ARRAY, JSONB
from sqlalchemy.dialects.postgresql.base import ischema_names
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.types import UserDefinedType

__all__ = ["BUCKETS", "XID8", "Base", "BroadcasterState", "Row", "changes", "include_name"]


class XID8(UserDefinedType[int]):
    """Postgres ``xid8``: a 64-bit transaction id that never wraps around (Postgres 13+).

    asyncpg reads and writes it as an int.
    """

    cache_ok = True

    def get_col_spec(self, **_: Any) -> str:
        return "xid8"


# Without this, reflecting a table (as Alembic's compare does) warns that it
# does not know the type and reports a NullType that never matches the model.
ischema_names.setdefault("xid8", XID8)


class Base(DeclarativeBase):
    pass


class Row(Base):
    __tablename__ = "rows"
    # Snapshot loads read one table_id's rows.
    __table_args__ = (Index("rows_table_id_idx", "table_id"),)

    id: Mapped[str] = mapped_column(
        Text, primary_key=True, server_default=text("gen_random_uuid()::text")
    )
    table_id: Mapped[str] = mapped_column(Text, nullable=False)
    data: Mapped[dict[str, Any]] = mapped_column(
        JSONB, nullable=False, server_default=text("'{}'::jsonb")
    )
    enriching_columns: Mapped[list[str]] = mapped_column(
        ARRAY(Text), nullable=False, server_default=text("'{}'::text[]")
    )
    created_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), nullable=False, server_default=text("now()")
    )
    # The writer's to move: the change log says when each change committed.
    updated_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), nullable=False, server_default=text("now()")
    )


BUCKETS = 32
"""Hourly buckets of the change log's ring: the retention is at most ``BUCKETS - 3`` hours."""

# One committed change of a published row, appended by the capture trigger
# (triggers.sql). A ring of BUCKETS list partitions, each an hour of writing
# transactions (by their start): the server prunes a bucket whole, by TRUNCATE,
# once its newest entry is older than the retention, which never locks the
# parent table writers insert through. `seq`, drawn by the AFTER trigger from
# one sequence, orders each row's changes as they committed. No primary key:
# the log only ever gets INSERTs and TRUNCATEs, which logical replication
# publishes without a replica identity.
changes = Table(
    "broadcaster_changes",
    Base.metadata,
    Column(
        "bucket",
        SmallInteger,
        nullable=False,
        server_default=text(f"((date_part('epoch'::text, now()))::bigint / 3600 % {BUCKETS})"),
    ),
    Column("xid", XID8, nullable=False, server_default=text("pg_current_xact_id()")),
    Column(
        "seq", BigInteger, nullable=False, server_default=text("nextval('broadcaster_change_seq')")
    ),
    # The writing transaction's start: the commit timestamp clients see
    # unless Postgres tracks commit timestamps.
    Column("at", DateTime(timezone=True), nullable=False, server_default=text("now()")),
    # The logical table (rows.table_id for rows) and the row's primary key as text.
    Column("table_id", Text, nullable=False),
    Column("id", Text, nullable=False),
    Column("op", Text, nullable=False),
    # to_jsonb() of the row after the change (INSERT, UPDATE) and before it (UPDATE, DELETE).
    Column("new", JSONB),
    Column("old", JSONB),
    Index("broadcaster_changes_xid_idx", "xid"),
    postgresql_partition_by="LIST (bucket)",
)

_PARTITION = re.compile(r"broadcaster_changes_[0-9]+(_xid_idx)?")


def include_name(name: str | None, type_: str, parent_names: Mapping[str, str | None]) -> bool:
    """Leave the change log's partitions and their indexes out of Alembic's comparisons.

    They are created by revision 0007 from :data:`BUCKETS`, not modelled one by one.
    """
    return name is None or not _PARTITION.fullmatch(name)


class BroadcasterState(Base):
    """The broadcaster's one row of database-wide state."""

    __tablename__ = "broadcaster_state"
    __table_args__ = (CheckConstraint("singleton", name="broadcaster_state_singleton_check"),)

    # Always true, and the primary key: the table cannot hold a second row.
    singleton: Mapped[bool] = mapped_column(Boolean, primary_key=True, server_default=text("true"))
    # Changes of transactions below this one may have been pruned: a client
    # whose state is older cannot be told about every change it missed.
    pruned_below: Mapped[int] = mapped_column(
        XID8, nullable=False, server_default=text("'1'::xid8")
    )
    # The transaction that started the change log (revision 0007): a cursor
    # that does not see it committed predates the log, and is refused too.
    logged_since: Mapped[int] = mapped_column(
        XID8, nullable=False, server_default=text("'1'::xid8")
    )


class Presence(Base):
    """One tracked presence: a connection's ``track`` on a channel topic."""

    __tablename__ = "broadcaster_presence"
    __table_args__ = (
        Index("broadcaster_presence_topic_idx", "topic"),
        Index("broadcaster_presence_process_idx", "process"),
    )

    # One per connection and topic; each track gives it a new phx_ref.
    slot: Mapped[str] = mapped_column(Text, primary_key=True)
    phx_ref: Mapped[str] = mapped_column(Text, nullable=False)
    topic: Mapped[str] = mapped_column(Text, nullable=False)
    key: Mapped[str] = mapped_column(Text, nullable=False)
    # The server process holding the connection; its presences go when it stops
    # proving it is alive (seen_at).
    process: Mapped[str] = mapped_column(Text, nullable=False)
    meta: Mapped[dict[str, Any]] = mapped_column(
        JSONB, nullable=False, server_default=text("'{}'::jsonb")
    )
    seen_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), nullable=False, server_default=text("now()")
    )


class Listener(Base):
    """A table one server process serves, and until when it promised to read it unasked."""

    __tablename__ = "broadcaster_listeners"
    __table_args__ = (
        Index("broadcaster_listeners_process_idx", "process"),
        {"prefixes": ["UNLOGGED"]},
    )

    # '' for the process's subscribers of every table (never promised).
    table_id: Mapped[str] = mapped_column(Text, primary_key=True)
    process: Mapped[str] = mapped_column(Text, primary_key=True)
    # While in the future, writers of the table skip their NOTIFY.
    polling_until: Mapped[datetime] = mapped_column(DateTime(timezone=True), nullable=False)
    seen_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), nullable=False, server_default=text("now()")
    )
