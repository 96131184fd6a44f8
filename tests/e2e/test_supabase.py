"""The real @supabase/supabase-js (2.109.0, in Node) against a live server.

The JavaScript tests live in tests/e2e/supabase/; this test starts the server
and the database they use, installs their packages when missing, and runs them
with Node's test runner. It is skipped, saying why, where Node is not installed.
"""

from __future__ import annotations

import asyncio
import os
import shutil
from pathlib import Path
from typing import Any

import pytest

from tests.support.server import running_server
from tests.support.timeouts import within

pytestmark = pytest.mark.asyncio

HERE = Path(__file__).parent / "supabase"


async def _run(*command: str, env: dict[str, str] | None = None) -> tuple[int, str]:
    process = await asyncio.create_subprocess_exec(
        *command,
        cwd=HERE,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    output, _ = await within(process.communicate(), 300)
    assert process.returncode is not None
    return process.returncode, output.decode(errors="replace")


async def _node_tests(
    database_url: str, file: str, extra_env: dict[str, str] | None = None, **server: Any
) -> None:
    if shutil.which("node") is None or shutil.which("npm") is None:
        pytest.skip("Node.js and npm are needed for the supabase-js tests (Node 20)")
    if not (HERE / "node_modules").exists():
        code, output = await _run("npm", "ci", "--no-audit", "--no-fund")
        assert code == 0, output
    async with running_server(database_url, **server) as running:
        env = {
            **os.environ,
            "BROADCASTER_URL": running.url,
            "DATABASE_URL": database_url,
            "JWT_SECRET": server.get("jwt_secret", ""),
            **(extra_env or {}),
        }
        code, output = await _run("node", "--test", "--test-reporter=spec", file, env=env)
    assert code == 0, output


async def test_supabase_js_postgres_changes(database_url: str) -> None:
    await _node_tests(database_url, "postgres_changes.test.mjs")


async def test_supabase_js_broadcast_across_two_server_processes(database_url: str) -> None:
    async with running_server(database_url) as other:
        await _node_tests(database_url, "broadcast.test.mjs", {"BROADCASTER_URL_2": other.url})


async def test_supabase_js_presence_across_two_server_processes(database_url: str) -> None:
    async with running_server(database_url) as other:
        await _node_tests(database_url, "presence.test.mjs", {"BROADCASTER_URL_2": other.url})


async def test_supabase_js_with_authentication(database_url: str) -> None:
    await _node_tests(
        database_url,
        "auth.test.mjs",
        auth="jwt",
        jwt_secret="supabase-compat-test-secret-32-bytes!",
        publishable_keys="sb_publishable_test_key=anon",
    )
