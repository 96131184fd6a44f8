"""The real @supabase/supabase-js (2.109.0, in Node) against a live server.

The JavaScript tests live in tests/e2e/supabase/; this test starts the server
and the database they use, installs their packages when missing, and runs them
with Node's test runner. It is skipped, saying why, where Node is not installed.
The tables the published-table tests bind are made here and published with
``broadcaster publish``, as a user publishes them.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import sys
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from tests.support.process import environment
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


async def _publish(database_url: str, *tables: str) -> None:
    """``broadcaster publish TABLES``, as a user runs it."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "broadcaster",
        "publish",
        *tables,
        env=environment(DATABASE_URL=database_url),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    stdout, stderr = await within(process.communicate(), 60)
    assert process.returncode == 0, stderr.decode()
    assert stdout.decode().count(": published, key: ") == len(tables), stdout.decode()


async def _execute(database_url: str, sql: str) -> None:
    connection = await asyncpg.connect(database_url)
    try:
        await connection.execute(sql)
    finally:
        await connection.close()


# Three published tables, one in a schema of its own with a name to quote and a
# composite key; and one that is not published.
PUBLISHED_TABLES = """
CREATE TABLE messages (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, room_id int,
    body text, tags text[], at timestamptz DEFAULT now(), meta jsonb);
CREATE TABLE rooms (id int PRIMARY KEY, name text);
CREATE SCHEMA app;
CREATE TABLE app."Room Members" (room_id int, "user" text, since date,
    PRIMARY KEY (room_id, "user"));
CREATE TABLE drafts (id int PRIMARY KEY, body text);
"""

# A table with row-level security as a Supabase app has it: each user reads the
# notes it owns (auth.uid() is the sub claim), the role may not read `secret`.
NOTES = """
CREATE TABLE notes (id bigint PRIMARY KEY, owner text, body text, secret text);
ALTER TABLE notes ENABLE ROW LEVEL SECURITY;
CREATE POLICY own ON notes FOR SELECT TO {role}
    USING (owner = current_setting('request.jwt.claims', true)::jsonb ->> 'sub');
GRANT SELECT (id, owner, body) ON notes TO {role};
"""


@contextlib.asynccontextmanager
async def _authenticated_role(database_url: str) -> AsyncIterator[str]:
    """Supabase's ``authenticated`` role, granted to the server's login (this
    connection's user); named apart, since roles are the whole cluster's."""
    role = f"authenticated_{uuid.uuid4().hex[:10]}"
    await _execute(database_url, f"CREATE ROLE {role} NOLOGIN; GRANT {role} TO CURRENT_USER")
    try:
        yield role
    finally:
        # Its privileges in this database would keep it from being dropped.
        await _execute(database_url, f"DROP OWNED BY {role}; DROP ROLE {role}")


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


async def test_supabase_js_published_tables(database_url: str) -> None:
    await _execute(database_url, PUBLISHED_TABLES)
    await _publish(database_url, "public.messages", "public.rooms", 'app."Room Members"')
    await _node_tests(database_url, "published_tables.test.mjs", {"PYTHON": sys.executable})


async def test_supabase_js_row_level_security(database_url: str) -> None:
    secret = "supabase-compat-test-secret-32-bytes!"
    async with _authenticated_role(database_url) as role:
        await _execute(database_url, NOTES.format(role=role))
        await _publish(database_url, "public.notes")
        await _node_tests(
            database_url, "row_security.test.mjs", {"ROLE": role}, auth="jwt", jwt_secret=secret
        )
