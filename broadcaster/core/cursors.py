"""Cursors: a client's resume point in a table's history, as an opaque string.

A cursor is a Postgres snapshot (``pg_snapshot``): everything visible in it has
been delivered. It is tagged with its origin, the cluster's system identifier
and the database's oid, so a cursor from another database is recognised rather
than misread. Format (opaque to clients; may change with the ``v`` tag)::

    v1:<system identifier>:<database oid>:<xmin>:<xmax>:<xip,xip,...>
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from ..exceptions import CursorError

__all__ = [
    "FOREIGN",
    "MALFORMED",
    "PRUNED",
    "Origin",
    "Snapshot",
    "decode",
    "encode",
]

MALFORMED = "malformed_cursor"
FOREIGN = "foreign_cursor"
PRUNED = "history_pruned"

_VERSION = "v1"
# Postgres accepts any number of in-progress xids; a client cannot make us
# parse or send an unbounded one.
_MAX_LENGTH = 64 * 1024
# Postgres reads plain ASCII digits, at most 20 of them (64 bits); Python's
# int() also takes "1_0", other scripts' digits and surrounding spaces.
_DECIMAL = re.compile(r"[0-9]{1,20}")
# system_identifier is a bigint in pg_control_system(), which may print negative.
_SIGNED = re.compile(r"-?[0-9]{1,20}")


@dataclass(frozen=True, slots=True)
class Origin:
    """The database a cursor belongs to."""

    system_identifier: int
    database_oid: int


@dataclass(frozen=True, slots=True)
class Snapshot:
    """A ``pg_snapshot``: xids below ``xmin`` and not in ``xip`` are visible."""

    xmin: int
    xmax: int
    xip: tuple[int, ...] = ()

    @classmethod
    def parse(cls, text: str) -> Snapshot:
        """Parse Postgres' text form, with the checks ``pg_snapshot_in`` makes."""
        parts = text.split(":")
        if len(parts) != 3:
            raise CursorError(MALFORMED, "a snapshot has three parts")
        xips = parts[2].split(",") if parts[2] else []
        if not all(_DECIMAL.fullmatch(x) for x in [parts[0], parts[1], *xips]):
            raise CursorError(MALFORMED, "a snapshot holds decimal xids")
        xmin, xmax = int(parts[0]), int(parts[1])
        xip = tuple(int(x) for x in xips)
        if not 1 <= xmin <= xmax or xmax >= 1 << 64:
            raise CursorError(MALFORMED, "a snapshot needs 1 <= xmin <= xmax < 2**64")
        if any(not xmin <= x < xmax for x in xip) or list(xip) != sorted(xip):
            raise CursorError(MALFORMED, "a snapshot's xids are sorted, within [xmin, xmax)")
        return cls(xmin, xmax, xip)

    @property
    def text(self) -> str:
        return f"{self.xmin}:{self.xmax}:{','.join(map(str, self.xip))}"


def encode(origin: Origin, snapshot: str) -> str:
    """The cursor for ``snapshot`` (Postgres' text form) taken on ``origin``."""
    return f"{_VERSION}:{origin.system_identifier}:{origin.database_oid}:{snapshot}"


def decode(cursor: object, origin: Origin) -> Snapshot:
    """The snapshot in ``cursor``; :class:`CursorError` if it cannot be served here."""
    if not isinstance(cursor, str) or len(cursor) > _MAX_LENGTH:
        raise CursorError(MALFORMED, "a cursor is a string returned by the server")
    parts = cursor.split(":", 3)
    if len(parts) != 4 or parts[0] != _VERSION:
        raise CursorError(MALFORMED, "not a cursor returned by this server")
    if not (_SIGNED.fullmatch(parts[1]) and _DECIMAL.fullmatch(parts[2])):
        raise CursorError(MALFORMED, "not a cursor returned by this server")
    cursor_origin = Origin(int(parts[1]), int(parts[2]))
    snapshot = Snapshot.parse(parts[3])
    if cursor_origin != origin:
        raise CursorError(FOREIGN, "the cursor comes from another database")
    return snapshot
