"""Row-level security as Supabase applies it to changes: who checks, which changes, which columns.

A change of a table with row-level security goes to a subscriber only if the
row is visible to it, checked in Postgres as the subscriber: as the role its
token's ``role`` claim names, with its claims in the setting
``request.jwt.claims`` (what Supabase's ``auth.uid()`` and ``auth.jwt()``
read). Subscribers whose role and claims are the same see the same rows, so
they are grouped into one :class:`Viewer` and checked once per read
(:func:`by_viewer`); :func:`plan` says which changes of a read need the check
and :meth:`KeyPlan.delivered` which of them a viewer gets.

As on Supabase, a DELETE is not checked (its row is gone, so no policy can
be asked), and its old row is cut to the primary key on a table with
row-level security; a subscriber sees only the columns its role may select
(:func:`visible_columns`, :func:`broadcaster.core.members.only_members`).
The adapter that runs the check is :mod:`broadcaster.postgres.visibility`;
docs/security.md says what is checked and what the server's role needs.
"""

from __future__ import annotations

import json
from collections.abc import Collection, Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from .changes import Change
from .published import PublishedTable

__all__ = [
    "ROLE_CLAIM",
    "KeyPlan",
    "Viewer",
    "by_viewer",
    "checked",
    "plan",
    "viewer",
    "visible_columns",
]

ROLE_CLAIM = "role"
"""The claim naming the role a subscriber's rows are checked as."""

# Postgres truncates longer names (NAMEDATALEN - 1 bytes): a longer claim
# could name another role, the one its first 63 bytes name.
_MAX_ROLE_BYTES = 63
# SET ROLE none (and set_config('role', 'none')) means the session's own role,
# whatever role called "none" may exist: checked as it, a subscriber would see
# what the server's login sees.
_SESSION_ROLE = "none"

_S = TypeVar("_S", bound=Hashable)


@dataclass(frozen=True)
class Viewer:
    """A role and claims to check rows as; equal for subscribers who see the same rows.

    ``claims`` is the JSON text set as ``request.jwt.claims``: the token's
    claims, every one of them, with sorted keys so that equal claims give
    equal text.
    """

    role: str
    claims: str


def viewer(claims: Mapping[str, Any]) -> Viewer | None:
    """The viewer a subscriber with these verified claims checks rows as.

    None when the claims name no role that rows can be checked as: no
    ``role`` claim (Supabase refuses such a token outright), one that is not
    a non-empty string, ``none`` (which Postgres reads as the server's own
    role), one longer than Postgres' 63 bytes or that is not valid text for
    it (a NUL character, a lone surrogate); and claims holding NaN or
    Infinity, which are not JSON to Postgres. Such a subscriber sees no
    change of a table with row-level security.
    """
    role = claims.get(ROLE_CLAIM)
    if not isinstance(role, str) or not role or role == _SESSION_ROLE or "\x00" in role:
        return None
    try:
        if len(role.encode()) > _MAX_ROLE_BYTES:
            return None
        # ASCII: a lone surrogate (which JSON's \u escapes can spell) stays an
        # escape, which Postgres refuses in the check, rather than text no
        # driver can encode. NaN and Infinity are not JSON to Postgres either.
        text = json.dumps(dict(claims), sort_keys=True, separators=(",", ":"), allow_nan=False)
    except (UnicodeEncodeError, ValueError, TypeError):
        return None
    return Viewer(role, text)


def by_viewer(subscribers: Iterable[tuple[_S, Mapping[str, Any]]]) -> dict[Viewer | None, list[_S]]:
    """Subscribers, each given with its claims, grouped by the viewer they check rows as.

    Those under None have no viewer (:func:`viewer`) and see no change of a
    table with row-level security.
    """
    groups: dict[Viewer | None, list[_S]] = {}
    for subscriber, claims in subscribers:
        groups.setdefault(viewer(claims), []).append(subscriber)
    return groups


def checked(table: PublishedTable, op: str) -> bool:
    """Does a change ``op`` of ``table`` reach only the viewers who may see its row?

    On a table with row-level security, INSERTs and UPDATEs are; DELETEs are
    not, as on Supabase: the row is gone, and no policy can be asked about
    it. Their old row is cut to the key instead (:func:`visible_columns`).
    """
    return table.row_security and op != "DELETE"


@dataclass(frozen=True)
class KeyPlan:
    """The keys a read's changes need checked, and which change needs which.

    ``keys`` are distinct, in the order of the changes that first name them;
    ``slots`` has, for each change, the index of its key in ``keys``, or None
    for a change that is not checked.
    """

    keys: tuple[str, ...]
    slots: tuple[int | None, ...]

    def delivered(self, visible: Collection[int]) -> list[bool]:
        """For each change, does it go to a viewer who sees the rows of ``keys`` at ``visible``?"""
        return [slot is None or slot in visible for slot in self.slots]


def plan(table: PublishedTable, changes: Sequence[Change]) -> KeyPlan:
    """Which of ``changes`` (all of ``table``) need a check, and of which keys.

    A change's key is its ``id``: the key column's value as text, or for a
    composite key the JSON array of its columns' values, in the key's order
    (as the capture trigger logs it). A row changed several times in a read
    is checked once: the check reads the row as it is when it runs.
    """
    keys: dict[str, int] = {}
    slots: list[int | None] = []
    for change in changes:
        if checked(table, change.op):
            slots.append(keys.setdefault(change.id, len(keys)))
        else:
            slots.append(None)
    return KeyPlan(tuple(keys), tuple(slots))


def visible_columns(table: PublishedTable, op: str, selectable: Collection[str]) -> frozenset[str]:
    """The columns of a change's images a viewer gets, given those its role may select.

    A DELETE of a table with row-level security keeps only its key columns,
    as on Supabase (no policy can be asked about a row that is gone); each
    is still one the role may select.
    """
    if table.row_security and op == "DELETE":
        return frozenset(name for name in table.key if name in selectable)
    return frozenset(selectable)
