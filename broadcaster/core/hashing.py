"""A hash computed once, for the frozen dataclasses looked up at every delivery.

A published table (its columns), a binding and a channel's shape are dict
keys of every batch a read brings (``Batch.memo``, ``Batch.checks``): hashed
anew each time, they cost a server with a thousand subscribers half its CPU
(``docs/performance.md``). A class opts in by setting ``__hash__ =
cached_hash`` in its body, where ``dataclass`` leaves an explicit hash alone.
"""

from __future__ import annotations

import dataclasses
from typing import Any

__all__ = ["cached_hash"]

_ATTRIBUTE = "_cached_hash"


def cached_hash(self: Any) -> int:
    """The hash of the dataclass instance's fields, computed at its first use."""
    found: int | None = self.__dict__.get(_ATTRIBUTE)
    if found is None:
        found = hash(tuple(getattr(self, field.name) for field in dataclasses.fields(self)))
        # Frozen: the hash is kept beside the fields, not as one.
        object.__setattr__(self, _ATTRIBUTE, found)
    return found
