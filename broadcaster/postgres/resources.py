"""Where the schema (models and Alembic migrations) and ``triggers.sql`` are found.

A wheel carries them inside the package, under ``broadcaster/_bundled/`` (see
the ``force-include`` table in pyproject.toml). A source checkout or an editable
install has them at the top of the repository, next to the package directory.
The bundled copy wins, so an installed server never picks up an unrelated
``schema`` directory that happens to sit beside it in site-packages.
"""

from __future__ import annotations

from pathlib import Path

from ..exceptions import ConfigurationError

__all__ = ["migrations_dir", "schema_dir", "triggers_sql"]

_PACKAGE_DIR = Path(__file__).resolve().parent.parent
_ROOTS = (_PACKAGE_DIR / "_bundled", _PACKAGE_DIR.parent)


def _root_with(marker: str) -> Path:
    """The first of the candidate roots that contains ``marker``."""
    for root in _ROOTS:
        if (root / marker).is_file():
            return root
    searched = ", ".join(str(root / marker) for root in _ROOTS)
    raise ConfigurationError(
        f"cannot find {marker} (looked for {searched}); "
        "reinstall pg-broadcaster or run it from a complete source checkout"
    )


def schema_dir() -> Path:
    """The ``schema/`` directory: ``models.py`` and the Alembic ``migrations/``."""
    return _root_with("schema/migrations/env.py") / "schema"


def migrations_dir() -> Path:
    """The Alembic script location (``env.py``, ``script.py.mako``, ``versions/``)."""
    return schema_dir() / "migrations"


def triggers_sql() -> str:
    """The text of ``triggers.sql``."""
    path = _root_with("triggers.sql") / "triggers.sql"
    try:
        return path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigurationError(f"cannot read {path}: {exc}") from exc
