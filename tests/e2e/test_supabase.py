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
# What the servers with authentication on sign tokens with; the tests sign theirs alike.
JWT_SECRET = "supabase-compat-test-secret-32-bytes!"


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


# What Supabase provides and plain Postgres lacks: the auth schema's helpers,
# reading the claims the server sets for each check, as docs/supabase.md
# ("Moving a multi-table app") gives them.
AUTH_HELPERS = """
CREATE SCHEMA auth;
CREATE FUNCTION auth.jwt() RETURNS jsonb LANGUAGE sql STABLE AS $$
    SELECT nullif(current_setting('request.jwt.claims', true), '')::jsonb
$$;
CREATE FUNCTION auth.uid() RETURNS uuid LANGUAGE sql STABLE AS $$
    SELECT (auth.jwt() ->> 'sub')::uuid
$$;
CREATE FUNCTION auth.role() RETURNS text LANGUAGE sql STABLE AS $$
    SELECT auth.jwt() ->> 'role'
$$;
GRANT USAGE ON SCHEMA auth TO {anon}, {authenticated};
"""

# A chat app as Supabase apps have it: members read their rooms' messages (a
# policy reading request.jwt.claims itself) and their rooms (one calling
# auth.uid()); profiles have no row-level security, and the authorizer lets
# every token read them. `anon` may select every table, and no policy grants
# it a row.
CHAT = """
CREATE TABLE rooms (id uuid PRIMARY KEY DEFAULT gen_random_uuid(), name text);
CREATE TABLE memberships (room_id uuid, user_id uuid, PRIMARY KEY (room_id, user_id));
CREATE TABLE messages (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, room_id uuid,
    author uuid, body text, sent_at timestamptz DEFAULT now(), pinned bool DEFAULT false,
    meta jsonb, n int);
CREATE TABLE profiles (id uuid PRIMARY KEY, name text);

ALTER TABLE memberships ENABLE ROW LEVEL SECURITY;
CREATE POLICY own ON memberships FOR SELECT TO {authenticated} USING (user_id = auth.uid());
ALTER TABLE messages ENABLE ROW LEVEL SECURITY;
CREATE POLICY members_read ON messages FOR SELECT TO {authenticated} USING (
    EXISTS (SELECT 1 FROM memberships m
            WHERE m.room_id = messages.room_id
              AND m.user_id = (current_setting('request.jwt.claims', true)::jsonb
                               ->> 'sub')::uuid));
ALTER TABLE rooms ENABLE ROW LEVEL SECURITY;
CREATE POLICY members_read ON rooms FOR SELECT TO {authenticated} USING (
    EXISTS (SELECT 1 FROM memberships m WHERE m.room_id = rooms.id AND m.user_id = auth.uid()));
GRANT SELECT ON rooms, memberships, messages, profiles TO {anon}, {authenticated};

CREATE FUNCTION broadcaster_authorize(claims jsonb, table_id text) RETURNS boolean
LANGUAGE sql STABLE AS $$
    SELECT table_id = 'public.profiles'
$$;
"""


@contextlib.asynccontextmanager
async def _supabase_roles(database_url: str, *kinds: str) -> AsyncIterator[list[str]]:
    """Supabase's roles of ``kinds`` (``authenticated``, ``anon``), NOLOGIN,
    granted to the server's login (this connection's user); named apart, since
    roles are the whole cluster's, and dropped at the end whatever happened."""
    suffix = uuid.uuid4().hex[:10]
    made: list[str] = []
    try:
        for kind in kinds:
            role = f"{kind}_{suffix}"
            await _execute(database_url, f"CREATE ROLE {role} NOLOGIN")
            made.append(role)
            await _execute(database_url, f"GRANT {role} TO CURRENT_USER")
        yield made
    finally:
        if made:
            # Their privileges in this database would keep them from being dropped.
            roles = ", ".join(made)
            await _execute(database_url, f"DROP OWNED BY {roles}; DROP ROLE {roles}")


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
        jwt_secret=JWT_SECRET,
        publishable_keys="sb_publishable_test_key=anon",
    )


async def test_supabase_js_published_tables(database_url: str) -> None:
    await _execute(database_url, PUBLISHED_TABLES)
    await _publish(database_url, "public.messages", "public.rooms", 'app."Room Members"')
    await _node_tests(database_url, "published_tables.test.mjs", {"PYTHON": sys.executable})


async def test_supabase_js_row_level_security(database_url: str) -> None:
    async with _supabase_roles(database_url, "authenticated") as [role]:
        await _execute(database_url, NOTES.format(role=role))
        await _publish(database_url, "public.notes")
        await _node_tests(
            database_url, "row_security.test.mjs", {"ROLE": role}, auth="jwt", jwt_secret=JWT_SECRET
        )


async def test_supabase_js_chat_app(database_url: str) -> None:
    async with _supabase_roles(database_url, "authenticated", "anon") as [role, anon]:
        names = {"authenticated": role, "anon": anon}
        await _execute(database_url, AUTH_HELPERS.format(**names) + CHAT.format(**names))
        await _publish(database_url, "public.rooms", "public.messages", "public.profiles")
        await _node_tests(
            database_url,
            "app.test.mjs",
            {"ROLE": role, "ANON": anon},
            auth="jwt",
            jwt_secret=JWT_SECRET,
            authorizer="broadcaster_authorize",
        )
