"""The JavaScript client's own test suite (clients/js, Node's test runner), run from pytest.

So that one command runs every test: it installs the package's dependencies
when missing, then runs ``npm test``, which builds the client and tests it
against real servers started with this interpreter. Skipped, saying why,
where Node is not installed.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import sys
from pathlib import Path

import pytest

from tests.support.timeouts import within

pytestmark = pytest.mark.asyncio

PACKAGE = Path(__file__).parents[2] / "clients" / "js"


async def _run(*command: str) -> tuple[int, str]:
    process = await asyncio.create_subprocess_exec(
        *command,
        cwd=PACKAGE,
        env={**os.environ, "BROADCASTER_PYTHON": sys.executable},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    output, _ = await within(process.communicate(), 600)
    assert process.returncode is not None
    return process.returncode, output.decode(errors="replace")


async def test_the_javascript_client_suite_passes() -> None:
    if shutil.which("node") is None or shutil.which("npm") is None:
        pytest.skip("Node.js and npm are needed for the JavaScript client's tests (Node 20)")
    if not (PACKAGE / "node_modules").exists():
        code, output = await _run("npm", "ci", "--no-audit", "--no-fund")
        assert code == 0, output
    code, output = await _run("npm", "test")
    assert code == 0, output[-20_000:]
