"""Locating schema/ and triggers.sql: bundled in a wheel, or at the top of a checkout."""

from __future__ import annotations

from pathlib import Path

import pytest

from broadcaster.exceptions import ConfigurationError
from broadcaster.postgres import resources

REPO_ROOT = Path(__file__).resolve().parents[3]


def make_root(root: Path, triggers: str) -> Path:
    (root / "schema" / "migrations").mkdir(parents=True)
    (root / "schema" / "migrations" / "env.py").write_text("")
    (root / "triggers.sql").write_text(triggers)
    return root


@pytest.fixture
def roots(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, Path]:
    """Stand-ins for the bundled directory and the checkout, both still empty."""
    bundled, checkout = tmp_path / "site-packages" / "broadcaster" / "_bundled", tmp_path / "repo"
    monkeypatch.setattr(resources, "_ROOTS", (bundled, checkout))
    return bundled, checkout


def test_source_checkout_uses_the_repository_root() -> None:
    assert resources.schema_dir() == REPO_ROOT / "schema"
    assert (resources.migrations_dir() / "env.py").is_file()
    assert resources.triggers_sql() == (REPO_ROOT / "triggers.sql").read_text(encoding="utf-8")


def test_bundled_copy_wins(roots: tuple[Path, Path]) -> None:
    bundled, checkout = roots
    make_root(bundled, "-- bundled")
    make_root(checkout, "-- checkout")

    assert resources.migrations_dir() == bundled / "schema" / "migrations"
    assert resources.triggers_sql() == "-- bundled"


def test_checkout_is_used_without_a_bundled_copy(roots: tuple[Path, Path]) -> None:
    bundled, checkout = roots
    make_root(checkout, "-- checkout")
    # A schema directory that is not ours (no migrations/env.py) is not taken.
    (bundled / "schema").mkdir(parents=True)

    assert resources.schema_dir() == checkout / "schema"
    assert resources.triggers_sql() == "-- checkout"


def test_missing_resources_raise_configuration_error(roots: tuple[Path, Path]) -> None:
    bundled, checkout = roots

    with pytest.raises(ConfigurationError, match=r"schema/migrations/env\.py") as raised:
        resources.schema_dir()
    assert str(bundled) in str(raised.value)
    assert str(checkout) in str(raised.value)
    with pytest.raises(ConfigurationError, match=r"triggers\.sql"):
        resources.triggers_sql()
