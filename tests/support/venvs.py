"""Virtualenvs of their own for clients whose pins clash with ours.

Supabase's Python client (``realtime``) pins ``websockets<16``; installed in
.venv it would hold back the server's own websockets. So a test that runs it
builds a virtualenv beside .venv from a pinned requirements file, as
bench/run.py builds bench/.venv-peers: once, and again when the file or the
interpreter changes. CI runs ``pytest`` on a clean clone, so the test builds it.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import sys
from pathlib import Path

import pytest

from tests.support.timeouts import within

ROOT = Path(__file__).parents[2]

# pip's own waits, so that an unreachable index fails the build well within
# BUILD_UNITS rather than after pip's default retries.
PIP_TIMEOUT_SECONDS = 30
PIP_RETRIES = 2
BUILD_UNITS = 300


async def ensure_venv(venv: Path, requirements: Path) -> Path:
    """``venv`` with ``requirements`` installed, (re)built when missing, when
    ``requirements`` changed or for another interpreter; its python."""
    python = venv / "bin" / "python"
    stamp = venv / ".requirements.sha256"
    digest = _digest(requirements)
    if _stamped(python, stamp, digest):
        return python
    await _run(
        f"create {venv.name}",
        sys.executable,
        "-m",
        "venv",
        "--clear",
        str(venv),
    )
    await _run(
        f"install {requirements.relative_to(ROOT)} into {venv.name} (is PyPI reachable?)",
        str(python),
        "-m",
        "pip",
        "install",
        "--quiet",
        "--timeout",
        str(PIP_TIMEOUT_SECONDS),
        "--retries",
        str(PIP_RETRIES),
        "--requirement",
        str(requirements),
    )
    # Written last: a build that failed halfway is redone next time.
    stamp.write_text(digest)
    return python


def _digest(requirements: Path) -> str:
    """What a venv built from ``requirements`` by this interpreter is stamped with."""
    return hashlib.sha256(requirements.read_bytes() + sys.version.encode()).hexdigest()


def _stamped(python: Path, stamp: Path, digest: str) -> bool:
    return python.exists() and stamp.exists() and stamp.read_text() == digest


async def _run(what: str, *command: str) -> None:
    process = await asyncio.create_subprocess_exec(
        *command,
        env={**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1", "PIP_NO_INPUT": "1"},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    try:
        output, _ = await within(process.communicate(), BUILD_UNITS)
    except TimeoutError:
        process.kill()
        await within(process.wait(), 30)
        pytest.fail(f"could not {what}: still running after {BUILD_UNITS} units")
    if process.returncode != 0:
        text = output.decode(errors="replace")
        pytest.fail(f"could not {what}: exit {process.returncode}\n{text}")
