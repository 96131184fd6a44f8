"""The ``rows`` table, as the broadcaster stores every subscribed row.

This is the target of Alembic's autogenerate (``migrations/env.py`` loads this
file by path: ``schema`` is not a package of the wheel). A row belongs to one
logical table (``table_id``) and carries its content in ``data``. ``version``,
``created_at`` and ``updated_at`` are maintained by the triggers in
``triggers.sql``; the server defaults here only cover rows written while those
triggers are disabled.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import BigInteger, DateTime, Index, Text, text
from sqlalchemy.dialects.postgresql import ARRAY, JSONB
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

__all__ = ["Base", "Row"]


class Base(DeclarativeBase):
    pass


class Row(Base):
    __tablename__ = "rows"
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
