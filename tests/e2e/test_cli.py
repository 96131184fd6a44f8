"""The ``broadcaster`` command as a user runs it: serve (embedded Postgres), migrate, publish."""

from __future__ import annotations

import asyncio
import signal
import sys
from pathlib import Path

import asyncpg
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from broadcaster.postgres.listener import APPLICATION_NAME
from broadcaster.settings import SETTINGS
from tests.support.process import environment, serve
from tests.support.server import Client
from tests.support.timeouts import seconds, within

pytestmark = pytest.mark.asyncio


async def _run(*args: str, env: dict[str, str]) -> tuple[int, str, str]:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "broadcaster",
        *args,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    stdout, stderr = await within(process.communicate(), 60)
    assert process.returncode is not None
    return process.returncode, stdout.decode(), stderr.decode()


async def test_serve_on_the_embedded_default_delivers_and_stops_cleanly_on_sigterm(
    tmp_path: Path,
) -> None:
    async with serve(tmp_path / "serve.log", BROADCASTER_DATA_DIR=str(tmp_path / "data")) as server:
        assert server.dsn.startswith("postgresql://")
        async with connect(server.ws_url, open_timeout=seconds(10)) as connection:
            c = Client(connection)
            await c.subscribe("t1")
            writer = await asyncpg.connect(server.dsn)
            try:
                await writer.execute("INSERT INTO rows (id, table_id) VALUES ('r1', 't1')")
            finally:
                await writer.close()
            (change,) = await c.changes(1)
            assert change["row"]["id"] == "r1"

            server.process.send_signal(signal.SIGTERM)
            with pytest.raises(ConnectionClosed) as closed:
                await within(connection.recv(), 10)
            assert closed.value.rcvd is not None
            assert closed.value.rcvd.code == 1001
        assert await within(server.process.wait(), 30) == 0, server.log.read_text()

    # The embedded cluster keeps its rows across restarts.
    async with serve(tmp_path / "serve.log", BROADCASTER_DATA_DIR=str(tmp_path / "data")) as again:
        writer = await asyncpg.connect(again.dsn)
        try:
            assert await writer.fetchval("SELECT count(*) FROM rows WHERE id = 'r1'") == 1
        finally:
            await writer.close()
        again.process.send_signal(signal.SIGTERM)
        assert await within(again.process.wait(), 30) == 0


async def test_migrate_twice(empty_database_url: str) -> None:
    env = environment(DATABASE_URL=empty_database_url)
    code, first, stderr = await _run("migrate", env=env)
    assert code == 0, stderr
    code, second, stderr = await _run("migrate", env=env)
    assert code == 0, stderr
    assert first != second  # the first applied something, the second nothing
    connection = await asyncpg.connect(empty_database_url)
    try:
        await connection.execute("INSERT INTO rows (table_id) VALUES ('t1')")
        # The triggers are installed: the change log has the row's INSERT.
        assert await connection.fetchval("SELECT op FROM broadcaster_changes") == "INSERT"
    finally:
        await connection.close()


async def test_migrate_without_a_database_says_how_to_give_one() -> None:
    code, _, stderr = await _run("migrate", env=environment())
    assert code == 2
    assert "DATABASE_URL" in stderr


async def test_serve_help_documents_every_setting() -> None:
    code, stdout, _ = await _run("serve", "--help", env=environment())
    assert code == 0
    for setting in SETTINGS:
        assert setting.flag in stdout
        assert setting.env in stdout


async def test_a_bad_setting_is_a_clear_error() -> None:
    code, _, stderr = await _run(
        "serve", env=environment(BROADCASTER_PORT="eighty", BROADCASTER_DATA_DIR="/nonexistent")
    )
    assert code == 1
    assert "BROADCASTER_PORT" in stderr


async def test_serve_with_a_database_but_no_key_refuses_to_start(empty_database_url: str) -> None:
    code, _, stderr = await _run(
        "serve", "--port", "0", env=environment(DATABASE_URL=empty_database_url)
    )
    assert code == 1
    assert "BROADCASTER_JWT_SECRET" in stderr
    assert "BROADCASTER_AUTH=none" in stderr


async def test_serve_with_workers_runs_a_listener_each_and_stops_cleanly(
    tmp_path: Path, empty_database_url: str
) -> None:
    code, _, stderr = await _run("migrate", env=environment(DATABASE_URL=empty_database_url))
    assert code == 0, stderr
    async with serve(
        tmp_path / "serve.log",
        "--workers",
        "2",
        DATABASE_URL=empty_database_url,
        BROADCASTER_AUTH="none",
    ) as server:
        db = await asyncpg.connect(empty_database_url)
        try:

            async def listeners() -> int:
                return int(
                    await db.fetchval(
                        "SELECT count(*) FROM pg_stat_activity WHERE application_name = $1",
                        APPLICATION_NAME,
                    )
                )

            for _ in range(300):
                if await listeners() == 2:
                    break
                await asyncio.sleep(0.1)
            assert await listeners() == 2
            clients = []
            for _ in range(6):
                connection = await connect(server.ws_url, open_timeout=seconds(10)).__aenter__()
                clients.append(Client(connection))
            try:
                for c in clients:
                    await c.subscribe("t1")
                await db.execute("INSERT INTO rows (id, table_id) VALUES ('w', 't1')")
                for c in clients:
                    assert (await c.changes(1))[0]["row"]["id"] == "w"
            finally:
                for c in clients:
                    await c.connection.close()
        finally:
            await db.close()
        server.process.send_signal(signal.SIGTERM)
        assert await within(server.process.wait(), 30) == 0, server.log.read_text()


async def test_publish_list_and_unpublish_tables(database_url: str) -> None:
    connection = await asyncpg.connect(database_url)
    try:
        await connection.execute("CREATE TABLE items (id int PRIMARY KEY, name text)")
        await connection.execute("CREATE TABLE loose (id int)")
        env = environment(DATABASE_URL=database_url)

        code, stdout, stderr = await _run("publish", "items", "loose", env=env)
        assert code == 1
        assert stdout == "public.items: published, key: id\n"
        assert "broadcaster publish: public.loose has no primary key: add one" in stderr

        code, stdout, stderr = await _run("publish", "public.items", env=env)
        assert (code, stdout) == (0, "public.items: already published, key: id\n"), stderr

        code, stdout, stderr = await _run("publish", "--list", env=env)
        assert code == 0, stderr
        assert stdout.splitlines() == [
            "public.items (key: id)",
            "public.rows (key: id; each row logged under its table_id column;"
            " published by broadcaster migrate)",
        ]

        await connection.execute("INSERT INTO items VALUES (1, 'a')")
        assert await connection.fetchval("SELECT table_id FROM broadcaster_changes") == (
            "public.items"
        )

        code, stdout, stderr = await _run(
            "unpublish", "items", "rows", "--database-url", database_url, env=environment()
        )
        assert code == 1
        assert stdout.startswith("public.items: unpublished")
        assert "broadcaster unpublish: public.rows is the broadcaster's rows table" in stderr
        code, stdout, _ = await _run("unpublish", "items", env=env)
        assert (code, stdout) == (0, "public.items: not published\n")
    finally:
        await connection.close()


@pytest.mark.parametrize(
    "args", [("publish",), ("publish", "--list", "items"), ("unpublish",)], ids=" ".join
)
async def test_publish_needs_tables_or_list_alone(args: tuple[str, ...]) -> None:
    code, _, stderr = await _run(*args, env=environment(DATABASE_URL="postgresql://unused"))
    assert code == 2
    assert "usage:" in stderr


async def test_publish_without_a_database_says_how_to_give_one() -> None:
    code, _, stderr = await _run("publish", "items", env=environment())
    assert code == 2
    assert "broadcaster publish: set DATABASE_URL or pass --database-url" in stderr


async def test_migrate_publishes_the_tables_of_its_setting(empty_database_url: str) -> None:
    env = environment(DATABASE_URL=empty_database_url, BROADCASTER_PUBLISH="items, nosuch")
    code, _, _ = await _run("migrate", env=environment(DATABASE_URL=empty_database_url))
    assert code == 0
    connection = await asyncpg.connect(empty_database_url)
    try:
        await connection.execute("CREATE TABLE items (id int PRIMARY KEY)")
    finally:
        await connection.close()

    code, _, stderr = await _run("migrate", env=env)
    assert code == 1
    assert "broadcaster migrate: cannot publish every table of BROADCASTER_PUBLISH:" in stderr
    assert "nosuch: no such table" in stderr

    code, stdout, stderr = await _run(
        "migrate", env=environment(DATABASE_URL=empty_database_url, BROADCASTER_PUBLISH="items")
    )
    assert code == 0, stderr
    assert "published=[]" in stdout  # published by the run that failed on nosuch
    code, stdout, _ = await _run("publish", "--list", env=env)
    assert "public.items (key: id)" in stdout.splitlines()
