"""Who a client is, once its token is verified: what the sessions and authorizers see.

Kept apart from :mod:`broadcaster.auth.tokens`, so that the sessions and the
authorizers depend on the identity alone and never load the JWT library.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

__all__ = ["Identity", "TokenVerifier"]


@dataclass(frozen=True)
class Identity:
    """A verified token: its claims, when it expires and whom it names."""

    claims: Mapping[str, Any] = field(hash=False)
    #: Unix time (seconds) of the ``exp`` claim; None when the token has none.
    expires_at: float | None
    #: The ``sub`` claim; None when the token has none.
    subject: str | None


class TokenVerifier(Protocol):
    """Anything that turns a bearer token into an :class:`Identity`."""

    async def verify(self, token: str) -> Identity:
        """The token's identity; raises :class:`AuthenticationError` if refused."""
        ...
