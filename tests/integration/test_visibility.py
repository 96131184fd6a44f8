"""Row-level security checked as each subscriber, against a real Postgres.

Roles are the cluster's, shared by every database on it: each test creates
its own (``authenticated_<suffix>``, ...), as Supabase's ``authenticated``,
``anon`` and ``service_role``, and drops them after. The server logs in as a
role that is a member of them, or as the superuser the tests connect as
(which bypasses row-level security: the check must not).
"""

from __future__ import annotations

import contextlib
import logging
import uuid
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any

import asyncpg
import pytest

from broadcaster.core.published import Column, PublishedTable
from broadcaster.core.visibility import Viewer, viewer
from broadcaster.exceptions import DatabaseError
from broadcaster.postgres.visibility import RowSecurity

pytestmark = pytest.mark.asyncio

ALICE = "a11ce000-0000-4000-8000-000000000001"
BOB = "b0b00000-0000-4000-8000-000000000002"

NOTES = PublishedTable(
    "public",
    "notes",
    (
        Column("id", "bigint", "int8"),
        Column("owner", "uuid", "uuid"),
        Column("public", "boolean", "bool"),
        Column("body", "text", "text"),
        Column("secret", "text", "text"),
    ),
    ("id",),
    row_security=True,
)
ITEMS = PublishedTable(
    "public",
    "items",
    (Column("id", "uuid", "uuid"), Column("owner", "uuid", "uuid")),
    ("id",),
    row_security=True,
)
# A composite key whose text would not compare equal as text: a timestamp as
# to_jsonb writes it, and an integer.
EVENTS = PublishedTable(
    "app data",
    "Events",
    (
        Column("org", "integer", "int4"),
        Column("at", "timestamp with time zone", "timestamptz"),
        Column("owner", "uuid", "uuid"),
    ),
    ("org", "at"),
    row_security=True,
)


@dataclass(frozen=True)
class Roles:
    authenticated: str
    anon: str
    service: str
    login: str
    outsider: str

    def viewer(self, role: str, **claims: Any) -> Viewer:
        found = viewer({"role": role, **claims})
        assert found is not None
        return found


SCHEMA = """
CREATE SCHEMA auth;
-- Supabase's auth.uid(): the sub claim of request.jwt.claims.
CREATE FUNCTION auth.uid() RETURNS uuid LANGUAGE sql STABLE AS $$
    SELECT (nullif(current_setting('request.jwt.claims', true), '')::jsonb ->> 'sub')::uuid
$$;
GRANT USAGE ON SCHEMA auth TO {authenticated}, {anon}, {service};

CREATE TABLE notes (id bigint PRIMARY KEY, owner uuid, public boolean NOT NULL DEFAULT false,
                    body text, secret text);
ALTER TABLE notes ENABLE ROW LEVEL SECURITY;
CREATE POLICY own ON notes FOR SELECT TO {authenticated} USING (owner = auth.uid());
CREATE POLICY shown ON notes FOR SELECT TO {anon} USING (public);
GRANT SELECT ON notes TO {authenticated}, {anon}, {service};

CREATE TABLE items (id uuid PRIMARY KEY, owner uuid);
ALTER TABLE items ENABLE ROW LEVEL SECURITY;
CREATE POLICY own ON items FOR SELECT TO {authenticated} USING (owner = auth.uid());
GRANT SELECT ON items TO {authenticated};

CREATE SCHEMA "app data";
GRANT USAGE ON SCHEMA "app data" TO {authenticated};
CREATE TABLE "app data"."Events" (org integer, at timestamptz, owner uuid, PRIMARY KEY (org, at));
ALTER TABLE "app data"."Events" ENABLE ROW LEVEL SECURITY;
CREATE POLICY own ON "app data"."Events" FOR SELECT TO {authenticated} USING (owner = auth.uid());
GRANT SELECT ON "app data"."Events" TO {authenticated};

CREATE TRIGGER capture AFTER INSERT OR UPDATE OR DELETE ON items
    FOR EACH ROW EXECUTE FUNCTION broadcaster_capture('', 'id');
CREATE TRIGGER capture AFTER INSERT OR UPDATE OR DELETE ON "app data"."Events"
    FOR EACH ROW EXECUTE FUNCTION broadcaster_capture('', 'org', 'at');
"""


@pytest.fixture
async def roles(database_url: str) -> AsyncIterator[Roles]:
    suffix = uuid.uuid4().hex[:10]
    made = Roles(
        authenticated=f"authenticated_{suffix}",
        anon=f"anon_{suffix}",
        service=f"service_{suffix}",
        login=f"login_{suffix}",
        outsider=f"outsider_{suffix}",
    )
    admin = await asyncpg.connect(database_url)
    try:
        await admin.execute(
            f"CREATE ROLE {made.authenticated} NOLOGIN; CREATE ROLE {made.anon} NOLOGIN;"
            f" CREATE ROLE {made.service} NOLOGIN BYPASSRLS;"
            f" CREATE ROLE {made.login} LOGIN; CREATE ROLE {made.outsider} LOGIN;"
            f" GRANT {made.authenticated}, {made.anon}, {made.service} TO {made.login};"
        )
        await admin.execute(
            SCHEMA.format(authenticated=made.authenticated, anon=made.anon, service=made.service)
        )
        await admin.execute(
            "INSERT INTO notes (id, owner, public, body, secret) VALUES"
            f" (1, '{ALICE}', false, 'a1', 's'), (2, '{BOB}', false, 'b2', 's'),"
            f" (3, '{ALICE}', true, 'a3', 's'), (4, NULL, true, 'n4', 's')"
        )
        yield made
    finally:
        everyone = ", ".join(vars(made).values())
        # Privileges in this database keep a role from being dropped.
        with contextlib.suppress(asyncpg.PostgresError):
            await admin.execute(f"DROP OWNED BY {everyone}")
        await admin.execute(f"DROP ROLE IF EXISTS {everyone}")
        await admin.close()


@pytest.fixture
async def login(database_url: str, roles: Roles) -> AsyncIterator[asyncpg.Connection]:
    """A connection as the server's login role: a member of the roles, no superuser."""
    connection = await asyncpg.connect(database_url, user=roles.login)
    yield connection
    await connection.close()


@pytest.fixture
async def superuser(database_url: str, roles: Roles) -> AsyncIterator[asyncpg.Connection]:
    connection = await asyncpg.connect(database_url)
    yield connection
    await connection.close()


class Counting:
    """A connection that counts the statements it runs."""

    def __init__(self, connection: asyncpg.Connection) -> None:
        self.connection = connection
        self.statements: list[str] = []

    async def fetch(self, query: str, *args: object) -> list[asyncpg.Record]:
        self.statements.append(query)
        return await self.connection.fetch(query, *args)


async def session_state(connection: asyncpg.Connection) -> tuple[str, str | None, str]:
    record = await connection.fetchrow(
        "SELECT current_user::text, nullif(current_setting('request.jwt.claims', true), ''),"
        " current_setting('row_security')"
    )
    assert record is not None
    return record[0], record[1], record[2]


async def logged_keys(connection: asyncpg.Connection, table: PublishedTable) -> list[str]:
    """The keys the capture trigger logged for ``table``, in order."""
    records = await connection.fetch(
        "SELECT id FROM broadcaster_changes WHERE table_id = $1 ORDER BY seq", table.table_id
    )
    return [record[0] for record in records]


KEYS = ["1", "2", "3", "4", "99"]


@pytest.mark.parametrize("as_superuser", [False, True])
async def test_each_viewer_sees_exactly_the_rows_its_policies_let_it(
    roles: Roles, login: asyncpg.Connection, superuser: asyncpg.Connection, as_superuser: bool
) -> None:
    connection = superuser if as_superuser else login
    checks = RowSecurity()

    async def seen(viewer: Viewer) -> set[int]:
        return await checks.visible(connection, NOTES, viewer, KEYS)

    assert await seen(roles.viewer(roles.authenticated, sub=ALICE)) == {0, 2}
    assert await seen(roles.viewer(roles.authenticated, sub=BOB)) == {1}
    assert await seen(roles.viewer(roles.anon)) == {2, 3}
    # auth.uid() is null without a sub: no row is its own.
    assert await seen(roles.viewer(roles.authenticated)) == set()
    # A role that bypasses row-level security (Supabase's service_role) sees every row.
    assert await seen(roles.viewer(roles.service)) == {0, 1, 2, 3}


async def test_the_row_is_checked_as_it_is_now(
    roles: Roles, login: asyncpg.Connection, superuser: asyncpg.Connection
) -> None:
    alice = roles.viewer(roles.authenticated, sub=ALICE)
    bob = roles.viewer(roles.authenticated, sub=BOB)
    checks = RowSecurity()
    await superuser.execute(f"UPDATE notes SET owner = '{BOB}' WHERE id = 1")
    await superuser.execute("DELETE FROM notes WHERE id = 3")

    assert await checks.visible(login, NOTES, alice, ["1", "3"]) == set()
    assert await checks.visible(login, NOTES, bob, ["1", "3"]) == {0}


async def test_uuid_keys_as_logged(
    roles: Roles, login: asyncpg.Connection, superuser: asyncpg.Connection
) -> None:
    await superuser.execute(
        "INSERT INTO items (id, owner) VALUES"
        f" ('00000000-0000-4000-8000-00000000000a', '{ALICE}'),"
        f" ('00000000-0000-4000-8000-00000000000b', '{BOB}'),"
        f" ('00000000-0000-4000-8000-00000000000c', '{ALICE}')"
    )
    keys = await logged_keys(superuser, ITEMS)
    assert len(keys) == 3
    checks = RowSecurity()

    alice = roles.viewer(roles.authenticated, sub=ALICE)
    assert await checks.visible(login, ITEMS, alice, keys) == {0, 2}
    bob = roles.viewer(roles.authenticated, sub=BOB)
    assert await checks.visible(login, ITEMS, bob, keys) == {1}


async def test_composite_keys_as_logged_are_compared_as_their_columns_types(
    roles: Roles, login: asyncpg.Connection, superuser: asyncpg.Connection
) -> None:
    await superuser.execute(
        'INSERT INTO "app data"."Events" (org, at, owner) VALUES'
        f" (1, '2024-05-01 10:00:00.123456+02', '{ALICE}'),"
        f" (1, '2024-05-01 10:00:00+00', '{BOB}'),"
        f" (2, '2024-05-01 10:00:00.123456+02', '{ALICE}')"
    )
    keys = await logged_keys(superuser, EVENTS)
    # As to_jsonb writes them, in the session's time zone: not the text Postgres
    # would compare a timestamptz column with.
    assert keys[0].startswith("[1, ")
    checks = RowSecurity()

    alice = roles.viewer(roles.authenticated, sub=ALICE)
    assert await checks.visible(login, EVENTS, alice, keys) == {0, 2}
    bob = roles.viewer(roles.authenticated, sub=BOB)
    assert await checks.visible(
        login, EVENTS, bob, [*keys, '[1, "2024-05-01T10:00:00+00:00"]']
    ) == {
        1,
        3,
    }


async def test_one_statement_per_viewer_and_none_without_keys(
    roles: Roles, login: asyncpg.Connection
) -> None:
    counting = Counting(login)
    checks = RowSecurity()
    viewers = [
        roles.viewer(roles.authenticated, sub=ALICE),
        roles.viewer(roles.authenticated, sub=BOB),
        roles.viewer(roles.anon),
    ]
    for each in viewers:
        await checks.visible(counting, NOTES, each, KEYS)
    assert len(counting.statements) == len(viewers)

    assert await checks.visible(counting, NOTES, viewers[0], []) == set()
    assert len(counting.statements) == len(viewers)


async def test_role_and_claims_end_with_the_check(roles: Roles, login: asyncpg.Connection) -> None:
    checks = RowSecurity()
    before = await session_state(login)
    assert before == (roles.login, None, "on")

    await checks.visible(login, NOTES, roles.viewer(roles.authenticated, sub=ALICE), KEYS)
    assert await session_state(login) == before

    # Inside a transaction the function puts them back itself.
    async with login.transaction():
        await checks.visible(login, NOTES, roles.viewer(roles.anon), KEYS)
        assert await session_state(login) == before
    assert await session_state(login) == before


async def test_role_and_claims_end_with_a_check_that_failed(
    roles: Roles, login: asyncpg.Connection, superuser: asyncpg.Connection
) -> None:
    """A policy that fails after the switch, on the claims (a sub that is no uuid)."""
    checks = RowSecurity()
    before = await session_state(login)
    bad = roles.viewer(roles.authenticated, sub="not-a-uuid")

    assert await checks.visible(login, NOTES, bad, KEYS) == set()
    assert await session_state(login) == before
    # The same connection goes on serving every other viewer.
    alice = roles.viewer(roles.authenticated, sub=ALICE)
    assert await checks.visible(login, NOTES, alice, KEYS) == {0, 2}

    # A timeout is the database's failure, not the viewer's: it is raised.
    await superuser.execute(
        f"CREATE POLICY slow ON notes FOR SELECT TO {roles.anon}"
        " USING ((SELECT true FROM pg_sleep(1)))"
    )
    await login.execute("SET statement_timeout = '50ms'")
    with pytest.raises(DatabaseError) as caught:
        await checks.visible(login, NOTES, roles.viewer(roles.anon), KEYS)
    assert isinstance(caught.value.__cause__, asyncpg.QueryCanceledError)
    await login.execute("RESET statement_timeout")
    assert await session_state(login) == before


async def test_the_check_filters_with_row_security_off_in_the_session(
    roles: Roles, login: asyncpg.Connection
) -> None:
    await login.execute("SET row_security = off")
    alice = roles.viewer(roles.authenticated, sub=ALICE)
    assert await RowSecurity().visible(login, NOTES, alice, KEYS) == {0, 2}
    assert await session_state(login) == (roles.login, None, "off")


async def test_a_role_that_does_not_exist_sees_nothing_and_is_logged_once(
    roles: Roles, login: asyncpg.Connection, caplog: pytest.LogCaptureFixture
) -> None:
    checks = RowSecurity()
    ghost = roles.viewer(f"ghost_{roles.login}", sub=ALICE)
    with caplog.at_level(logging.WARNING, logger="broadcaster.postgres.visibility"):
        assert await checks.visible(login, NOTES, ghost, KEYS) == set()
        assert await checks.visible(login, NOTES, ghost, KEYS) == set()
    assert len(caplog.records) == 1
    record = caplog.records[0]
    assert ghost.role in record.getMessage()
    assert "create the role" in record.getMessage()
    assert record.exc_info is not None
    assert await session_state(login) == (roles.login, None, "on")


async def test_a_role_the_login_may_not_switch_to_sees_nothing(
    database_url: str, roles: Roles, caplog: pytest.LogCaptureFixture
) -> None:
    outsider = await asyncpg.connect(database_url, user=roles.outsider)
    try:
        alice = roles.viewer(roles.authenticated, sub=ALICE)
        with caplog.at_level(logging.WARNING, logger="broadcaster.postgres.visibility"):
            assert await RowSecurity().visible(outsider, NOTES, alice, KEYS) == set()
        assert await session_state(outsider) == (roles.outsider, None, "on")
    finally:
        await outsider.close()
    (record,) = caplog.records
    assert "42501" in record.getMessage()
    assert "GRANT" in record.getMessage()


async def test_a_role_that_may_not_select_the_key_sees_nothing(
    roles: Roles, login: asyncpg.Connection, superuser: asyncpg.Connection
) -> None:
    await superuser.execute(
        f"REVOKE SELECT ON notes FROM {roles.anon}; GRANT SELECT (body) ON notes TO {roles.anon}"
    )
    assert await RowSecurity().visible(login, NOTES, roles.viewer(roles.anon), KEYS) == set()


async def test_the_columns_a_role_may_select(
    roles: Roles, login: asyncpg.Connection, superuser: asyncpg.Connection
) -> None:
    checks = RowSecurity()
    every = {column.name for column in NOTES.columns}
    assert await checks.selectable_columns(login, NOTES, roles.authenticated) == every

    await superuser.execute(
        f"REVOKE SELECT ON notes FROM {roles.authenticated};"
        f" GRANT SELECT (id, owner, public, body) ON notes TO {roles.authenticated}"
    )
    assert await checks.selectable_columns(login, NOTES, roles.authenticated) == every - {"secret"}
    assert await checks.selectable_columns(login, ITEMS, roles.anon) == frozenset()


async def test_the_columns_of_a_role_that_does_not_exist_are_none(
    roles: Roles, login: asyncpg.Connection, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="broadcaster.postgres.visibility"):
        assert await RowSecurity().selectable_columns(login, NOTES, "ghost_" + roles.login) == (
            frozenset()
        )
    (record,) = caplog.records
    assert record.exc_info is not None


async def test_a_lost_connection_raises_database_error(roles: Roles, database_url: str) -> None:
    connection = await asyncpg.connect(database_url, user=roles.login)
    await connection.close()
    checks = RowSecurity()
    alice = roles.viewer(roles.authenticated, sub=ALICE)
    with pytest.raises(DatabaseError):
        await checks.visible(connection, NOTES, alice, KEYS)
    with pytest.raises(DatabaseError):
        await checks.selectable_columns(connection, NOTES, roles.authenticated)


async def test_the_function_refuses_the_role_none(
    roles: Roles, superuser: asyncpg.Connection
) -> None:
    """``none`` is the session's own role; core.visibility never makes such a viewer."""
    args: Sequence[object] = ("public", "notes", ["id"], ["bigint"], "none", "{}", KEYS)
    with pytest.raises(asyncpg.InvalidParameterValueError, match="none"):
        await superuser.fetchval(
            "SELECT broadcaster_visible($1, $2, $3::text[], $4::text[], $5, $6, $7::text[])", *args
        )


async def test_a_table_without_a_key_cannot_be_checked(
    roles: Roles, login: asyncpg.Connection
) -> None:
    checks = RowSecurity()
    alice = roles.viewer(roles.authenticated, sub=ALICE)
    keyless = PublishedTable("public", "notes", NOTES.columns, (), row_security=True)
    with pytest.raises(ValueError, match="no primary key"):
        await checks.visible(login, keyless, alice, KEYS)
    unknown = PublishedTable("public", "notes", NOTES.columns, ("nope",), row_security=True)
    with pytest.raises(ValueError, match="nope"):
        await checks.visible(login, unknown, alice, KEYS)
