"""The broadcaster's tables: ``rows``, its tombstones and its state.

This is the target of Alembic's autogenerate (``migrations/env.py`` loads this
file by path: ``schema`` is not a package of the wheel).

``rows`` holds every subscribed row. A row belongs to one logical table
(``table_id``) and carries its content in ``data``. ``version``, ``created_at``,
``updated_at``, ``changed_xid`` and ``inserted_xid`` are maintained by the
triggers in ``triggers.sql``; the server defaults here only cover rows written
while those triggers are disabled.

The transaction ids let the server deliver from snapshot-consistent reads:
the rows that changed since a snapshot are those whose ``changed_xid`` that
snapshot does not see as committed. ``broadcaster_tombstones`` records
deletions the same way, since ``rows`` no longer holds the deleted rows, and
``broadcaster_state`` records how far the tombstones have been pruned.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    DateTime,
    Identity,
    Index,
    Text,
    text,
)
from sqlalchemy.dialects.postgresql import ARRAY, JSONB
from sqlalchemy.dialects.postgresql.base import ischema_names
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.types import UserDefinedType

__all__ = ["XID8", "Base", "BroadcasterState", "Row", "Tombstone"]


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
    # Every lookup by table_id can use this index's leading column, so rows
    # has no index on table_id alone: one index fewer to update per write.
    __table_args__ = (Index("rows_table_id_changed_xid_idx", "table_id", "changed_xid"),)

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
    # The sequence is created by triggers.sql and by migration 0001.
    version: Mapped[int | None] = mapped_column(
        BigInteger, server_default=text("nextval('broadcaster_version_seq')")
    )
    created_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), nullable=False, server_default=text("now()")
    )
    updated_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), nullable=False, server_default=text("now()")
    )
    # The transaction that last changed the row in a way clients see, and the
    # one that inserted it. NULL: the row predates migration 0002 (or was
    # written with the triggers disabled) and is older than any client's state.
    changed_xid: Mapped[int | None] = mapped_column(XID8)
    inserted_xid: Mapped[int | None] = mapped_column(XID8)


class Tombstone(Base):
    """A deleted row, kept so that a snapshot-consistent read can report the deletion.

    A row id may be deleted, re-inserted and deleted again, so (table_id, id)
    is not unique.
    """

    __tablename__ = "broadcaster_tombstones"
    __table_args__ = (
        Index("broadcaster_tombstones_table_id_xid_idx", "table_id", "xid"),
        # Pruning deletes by age.
        Index("broadcaster_tombstones_deleted_at_idx", "deleted_at"),
        # The newest tombstone of a row id: the version of a re-insert that
        # raced its deletion (broadcaster/postgres/queries.py).
        Index("broadcaster_tombstones_table_id_id_idx", "table_id", "id", "version"),
    )

    table_id: Mapped[str] = mapped_column(Text, nullable=False)
    id: Mapped[str] = mapped_column(Text, nullable=False)
    version: Mapped[int] = mapped_column(BigInteger, nullable=False)
    # The deleting transaction.
    xid: Mapped[int] = mapped_column(XID8, nullable=False)
    deleted_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), nullable=False, server_default=text("now()")
    )
    # A surrogate key only: without a primary key (or another replica
    # identity) Postgres refuses the pruning DELETEs on a database that
    # publishes all its tables for logical replication. It comes last so
    # that an INSERT listing values in column order need not mention it.
    tombstone_id: Mapped[int] = mapped_column(BigInteger, Identity(always=True), primary_key=True)


class BroadcasterState(Base):
    """The broadcaster's one row of database-wide state."""

    __tablename__ = "broadcaster_state"
    __table_args__ = (CheckConstraint("singleton", name="broadcaster_state_singleton_check"),)

    # Always true, and the primary key: the table cannot hold a second row.
    singleton: Mapped[bool] = mapped_column(Boolean, primary_key=True, server_default=text("true"))
    # Tombstones of transactions below this one may have been pruned: a client
    # whose state is older cannot be told about every deletion it missed.
    pruned_below: Mapped[int] = mapped_column(
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
