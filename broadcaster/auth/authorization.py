"""Who may subscribe to which table: a claim of the token, or a SQL function.

By default a token's ``table_ids`` claim (the name is a setting) lists the
table_ids it may subscribe to; ``"*"`` or ``["*"]`` means all. Optionally a SQL
function ``f(claims jsonb, table_id text) returns boolean`` decides instead, so
authorization can live beside the data, or ``f(claims jsonb, table_id text,
binding jsonb)``, which is also given the Supabase binding asking (its
``event``, ``schema``, ``table`` and ``filter``; null for the native protocol);
its answers are cached briefly, and its errors deny (and are logged), never
crash. A published table is asked about as its table_id, ``schema.table``.

Both spell every table ``"*"`` (:data:`EVERY_TABLE_ID`), a documented contract
(docs/security.md, docs/supabase.md): a subscription to every table is asked
about as that table_id (:func:`authorizer_table_id`).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Awaitable, Callable, Coroutine, Generator, Mapping
from typing import Any, Final, Protocol

from ..core.tables import EVERY_TABLE
from ..exceptions import DatabaseError
from .identity import Identity

__all__ = [
    "EVERY_TABLE_ID",
    "Authorizer",
    "AuthorizerFunction",
    "ClaimAuthorizer",
    "OpenAuthorizer",
    "SqlAuthorizer",
    "authorizer_table_id",
    "decided",
]

logger = logging.getLogger(__name__)

# A cache that clients fill (one entry per distinct claims and table_id) must
# not grow without bound.
_CACHE_ENTRIES = 10_000

EVERY_TABLE_ID: Final = "*"
"""Every table, as the authorizers spell it: in a token's claim, and to the SQL function."""


def authorizer_table_id(table_id: str | None) -> str:
    """``table_id`` as the authorizers are asked about it (:data:`EVERY_TABLE_ID` for
    :data:`~broadcaster.core.tables.EVERY_TABLE`)."""
    return EVERY_TABLE_ID if table_id is EVERY_TABLE else table_id


class Authorizer(Protocol):
    def allowed(
        self, identity: Identity | None, table_id: str, binding: str | None = None
    ) -> bool | Awaitable[bool]:
        """May ``identity`` (``None``: anonymous access) subscribe to ``table_id``?

        ``binding`` is the Supabase binding asking, as a JSON object (None for
        the native protocol). An answer known at once is returned as is, so
        the session need not wait.
        """


async def decided(verdict: bool | Awaitable[bool]) -> bool:
    """The answer of :meth:`Authorizer.allowed`, awaited if it was not known at once."""
    return verdict if isinstance(verdict, bool) else await verdict


class OpenAuthorizer:
    """Every table for everyone: ``BROADCASTER_AUTH=none``."""

    def allowed(self, identity: Identity | None, table_id: str, binding: str | None = None) -> bool:
        return True


class ClaimAuthorizer:
    """The tables a token lists in one of its claims."""

    def __init__(self, claim: str) -> None:
        self.claim = claim

    def allowed(self, identity: Identity | None, table_id: str, binding: str | None = None) -> bool:
        if identity is None:
            return False
        granted: Any = identity.claims.get(self.claim)
        if granted is None and "." in self.claim:
            # Not a claim of that exact name (namespaced claims such as
            # "https://example.com/tables" contain dots): a path into objects.
            granted = identity.claims
            for part in self.claim.split("."):
                granted = granted.get(part) if isinstance(granted, Mapping) else None
        if granted == EVERY_TABLE_ID:
            return True
        return isinstance(granted, list) and (EVERY_TABLE_ID in granted or table_id in granted)


class AuthorizerFunction(Protocol):
    """The SQL function that decides, called by the Postgres adapter.

    :class:`~broadcaster.postgres.queries.PostgresAuthorizerFunction` is the one.
    """

    name: str

    async def allows(self, claims: str, table_id: str, binding: str | None) -> bool:
        """Its answer for ``claims`` (a JSON object), ``table_id`` and ``binding`` (a JSON
        object, or None).

        Raises :class:`~broadcaster.exceptions.DatabaseError` when it could not be asked.
        """
        ...


class SqlAuthorizer:
    """A SQL function decides, with answers cached for ``cache_seconds``."""

    def __init__(
        self,
        function: AuthorizerFunction,
        *,
        cache_seconds: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._function = function
        self._cache_seconds = cache_seconds
        self._clock = clock
        self._cache: dict[tuple[str, str, str | None], tuple[float, bool]] = {}

    def allowed(
        self, identity: Identity | None, table_id: str, binding: str | None = None
    ) -> bool | Awaitable[bool]:
        claims = _canonical(identity.claims if identity is not None else {})
        cached = self._cache.get((claims, table_id, binding))
        if cached is not None and cached[0] > self._clock():
            return cached[1]
        return _Deferred(lambda: self._ask(claims, table_id, binding))

    async def _ask(self, claims: str, table_id: str, binding: str | None) -> bool:
        try:
            allowed = await self._function.allows(claims, table_id, binding)
        except DatabaseError:
            logger.exception(
                "authorizer %s failed for table %r: denied", self._function.name, table_id
            )
            return False
        if len(self._cache) >= _CACHE_ENTRIES:
            self._cache.clear()
        self._cache[(claims, table_id, binding)] = (self._clock() + self._cache_seconds, allowed)
        return allowed


class _Deferred:
    """An awaitable that creates its coroutine only when awaited.

    A session may drop an answer it has not started waiting for (the client
    left); a coroutine created but never awaited would be reported as a bug.
    """

    __slots__ = ("_start",)

    def __init__(self, start: Callable[[], Coroutine[Any, Any, bool]]) -> None:
        self._start = start

    def __await__(self) -> Generator[Any, None, bool]:
        return self._start().__await__()


def _canonical(claims: Mapping[str, Any]) -> str:
    # dict(): the claims are a read-only mapping, which json cannot serialise.
    return json.dumps(dict(claims), sort_keys=True, separators=(",", ":"))
