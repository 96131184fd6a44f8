"""The driver's errors as the package's: :class:`~broadcaster.exceptions.DatabaseError`.

For the adapters whose functions are not :mod:`broadcaster.postgres.queries`'
methods (which convert their own with a decorator): the catalog and
publishing.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from ..exceptions import DatabaseError
from .queries import DRIVER_ERRORS

__all__ = ["database_errors"]


@contextlib.contextmanager
def database_errors() -> Iterator[None]:
    """Raise :class:`DatabaseError` from what the driver raises inside, its ``__cause__``."""
    try:
        yield
    except DRIVER_ERRORS as exc:
        raise DatabaseError(str(exc) or type(exc).__name__) from exc
