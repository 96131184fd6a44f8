"""What each layer may load: the core, the wire formats and ``import broadcaster`` no
I/O library; the sessions the event loop alone.

Each module is imported in a fresh interpreter (PYTHONPATH inherited), which
then lists the I/O libraries it loaded. The modules are found with pkgutil, so
a new module of ``broadcaster.core`` or ``broadcaster.protocols`` is checked
without touching this file.
"""

from __future__ import annotations

import importlib
import json
import pkgutil
import subprocess
import sys

import pytest

from tests.support.timeouts import seconds

IO_MODULES = ("asyncio", "asyncpg", "starlette", "uvicorn", "jwt", "urllib.request")
SANS_IO_PACKAGES = ("broadcaster.core", "broadcaster.protocols")


def modules_of(package_name: str) -> list[str]:
    package = importlib.import_module(package_name)
    return [
        package_name,
        *(info.name for info in pkgutil.walk_packages(package.__path__, package_name + ".")),
    ]


def sans_io_modules() -> list[str]:
    return ["broadcaster", *(name for p in SANS_IO_PACKAGES for name in modules_of(p))]


def loaded_io_modules(module: str) -> list[str]:
    """The I/O libraries a fresh interpreter has loaded once it imported ``module``."""
    script = (
        "import importlib, json, sys\n"
        f"importlib.import_module({module!r})\n"
        f"print(json.dumps([name for name in {IO_MODULES!r} if name in sys.modules]))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        check=True,
        timeout=seconds(20),
    )
    loaded: list[str] = json.loads(done.stdout)
    return loaded


def test_the_modules_are_found() -> None:
    modules = sans_io_modules()
    assert {"broadcaster.core.feed", "broadcaster.protocols.native"} <= set(modules)


def test_the_check_sees_an_io_library() -> None:
    """Without this, a check that never saw anything would pass for ever."""
    assert {"asyncio", "asyncpg"} <= set(loaded_io_modules("broadcaster.postgres.queries"))


@pytest.mark.parametrize("module", sans_io_modules())
def test_importing_loads_no_io_library(module: str) -> None:
    assert loaded_io_modules(module) == []


@pytest.mark.parametrize("module", modules_of("broadcaster.sessions"))
def test_the_sessions_load_the_event_loop_alone(module: str) -> None:
    """Sessions run timers and tasks, so asyncio; never the driver, the JWT library or the app."""
    assert set(loaded_io_modules(module)) <= {"asyncio"}


@pytest.mark.parametrize("module", ["broadcaster.auth.identity", "broadcaster.auth.authorization"])
def test_what_the_sessions_know_of_auth_loads_no_io_library(module: str) -> None:
    assert loaded_io_modules(module) == []
