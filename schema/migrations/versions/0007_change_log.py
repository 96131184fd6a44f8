"""The change log: every committed change of a row, appended by a trigger.

Creates ``broadcaster_changes``, a ring of hourly list partitions with a btree
on ``xid`` in each, the sequence ``broadcaster_change_seq`` and
``broadcaster_state.logged_since``; swaps the stamping triggers on ``rows`` for
an AFTER trigger that appends to the log; drops what the stamps needed:
``rows.version``, ``changed_xid``, ``inserted_xid`` (and the index on them),
``broadcaster_tombstones`` and ``broadcaster_version_seq``.

The swap and the drops run in this revision's transaction, under an ACCESS
EXCLUSIVE lock on ``rows``, the tombstones and the state taken with a short
``lock_timeout`` and retried: writers of ``rows`` wait for at most that long at
a time, and no write falls between the old triggers and the new one. The
capture function installed here is this revision's own minimal copy;
``triggers.sql``, which ``migrate`` installs next, replaces it with the current
one (which also wakes the servers).

A database of the change log that lost ``alembic_version`` has the log already,
and the stamping objects that revisions 0001 to 0005 added back when they
adopted it: those are dropped again, and the installed capture function kept.
Where nothing of the stamps is left, this revision takes no lock.

Cursors issued before this revision name changes that only the stamps
recorded: ``broadcaster_state.logged_since`` records this transaction, and a
cursor that does not see it committed gets ``reset`` (``history_pruned``) and
every row, once. Not ``pruned_below``, which reads compare with a cursor's
xmin: moved past this transaction, it would also refuse every cursor issued
after it for as long as any transaction that began before it stays open,
anywhere in the cluster, each read resetting again. Servers of the
previous release fail their reads from here on (the columns they read are
gone) until they are upgraded; their clients resume on upgraded ones.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-07
"""

from __future__ import annotations

import logging
import time

import sqlalchemy as sa
from alembic import op
from sqlalchemy.exc import DBAPIError

revision: str = "0007"
down_revision: str | tuple[str, ...] | None = "0006"
branch_labels: str | tuple[str, ...] | None = None
depends_on: str | tuple[str, ...] | None = None

logger = logging.getLogger("broadcaster.migrations")

# As in schema/models.py at this revision.
BUCKETS = 32
LOCK_TIMEOUT = "500ms"
LOCK_ATTEMPTS = 40

CREATE_LOG = (
    f"""
CREATE SEQUENCE broadcaster_change_seq;
CREATE TABLE broadcaster_changes (
    bucket smallint NOT NULL
        DEFAULT (date_part('epoch', now())::bigint / 3600 % {BUCKETS}),
    xid xid8 NOT NULL DEFAULT pg_current_xact_id(),
    seq bigint NOT NULL DEFAULT nextval('broadcaster_change_seq'),
    at timestamptz NOT NULL DEFAULT now(),
    table_id text NOT NULL,
    id text NOT NULL,
    op text NOT NULL,
    new jsonb,
    old jsonb
) PARTITION BY LIST (bucket);
ALTER SEQUENCE broadcaster_change_seq OWNED BY broadcaster_changes.seq;
"""
    + "".join(
        f"CREATE TABLE broadcaster_changes_{b} PARTITION OF broadcaster_changes"
        f" FOR VALUES IN ({b});\n"
        for b in range(BUCKETS)
    )
    + "CREATE INDEX broadcaster_changes_xid_idx ON broadcaster_changes (xid)"
)

# This revision's capture: every change of rows as one entry, nothing else.
CAPTURE_FUNCTION = """
CREATE FUNCTION broadcaster_capture() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'INSERT' THEN
        INSERT INTO broadcaster_changes (table_id, id, op, new)
        VALUES (NEW.table_id, NEW.id, 'INSERT', to_jsonb(NEW));
    ELSIF TG_OP = 'DELETE' THEN
        INSERT INTO broadcaster_changes (table_id, id, op, old)
        VALUES (OLD.table_id, OLD.id, 'DELETE', to_jsonb(OLD));
    ELSIF NEW IS DISTINCT FROM OLD THEN
        INSERT INTO broadcaster_changes (table_id, id, op, new, old)
        VALUES (NEW.table_id, NEW.id, 'UPDATE', to_jsonb(NEW), to_jsonb(OLD));
    END IF;
    RETURN NULL;
END
$$
"""
CAPTURE_TRIGGER = """
CREATE TRIGGER broadcaster_capture AFTER INSERT OR UPDATE OR DELETE ON rows
    FOR EACH ROW EXECUTE FUNCTION broadcaster_capture('table_id', 'id')
"""

SWAP = """
DROP TRIGGER IF EXISTS broadcaster_before_write ON rows;
DROP TRIGGER IF EXISTS broadcaster_after_delete ON rows;
DROP TRIGGER IF EXISTS broadcaster_before_truncate ON rows;
DROP FUNCTION IF EXISTS broadcaster_before_write();
DROP FUNCTION IF EXISTS broadcaster_after_remove();
DROP FUNCTION IF EXISTS broadcaster_before_truncate();
ALTER TABLE rows DROP COLUMN IF EXISTS version, DROP COLUMN IF EXISTS changed_xid,
    DROP COLUMN IF EXISTS inserted_xid;
DROP TABLE IF EXISTS broadcaster_tombstones;
DROP SEQUENCE IF EXISTS broadcaster_version_seq;
ALTER TABLE broadcaster_state ADD COLUMN IF NOT EXISTS logged_since xid8 NOT NULL DEFAULT '1';
UPDATE broadcaster_state SET logged_since = pg_current_xact_id()
"""


# Whether rows still has what the stamps needed, or lacks its capture trigger.
# A database of the change log whose alembic_version was lost has both the log
# and the stamping objects: revisions 0001 to 0005 adopted it as theirs.
NEEDS_SWAP = """
SELECT EXISTS (
        SELECT FROM pg_attribute WHERE attrelid = 'rows'::regclass AND NOT attisdropped
        AND attname IN ('version', 'changed_xid', 'inserted_xid'))
    OR to_regclass('broadcaster_tombstones') IS NOT NULL
    OR to_regclass('broadcaster_version_seq') IS NOT NULL
    OR NOT EXISTS (
        SELECT FROM pg_trigger WHERE tgrelid = 'rows'::regclass AND tgname = 'broadcaster_capture')
"""


def upgrade() -> None:
    bind = op.get_bind()
    if bind.execute(sa.text("SELECT to_regclass('broadcaster_changes')")).scalar() is None:
        # One statement at a time: asyncpg prepares each, and refuses several at once.
        for statement in _statements(CREATE_LOG):
            op.execute(statement)
    if not bind.execute(sa.text(NEEDS_SWAP)).scalar():
        return
    _lock_for_the_swap()
    for statement in _statements(SWAP):
        op.execute(statement)
    # Kept where it exists: triggers.sql's own, which its comment names as installed.
    if bind.execute(sa.text("SELECT to_regprocedure('broadcaster_capture()')")).scalar() is None:
        op.execute(CAPTURE_FUNCTION)
    op.execute("DROP TRIGGER IF EXISTS broadcaster_capture ON rows")
    op.execute(CAPTURE_TRIGGER)


def _statements(script: str) -> list[str]:
    return [statement.strip() for statement in script.split(";\n") if statement.strip()]


def _lock_for_the_swap() -> None:
    """ACCESS EXCLUSIVE on what the swap alters, waiting at most LOCK_TIMEOUT at a time.

    A lock request that waits makes every later writer of ``rows`` queue behind
    it: a short timeout bounds that, and the request is retried until the
    writers' own transactions leave a gap. The tombstones and the state are
    locked in the same request: a server of the previous release prunes the
    tombstones in a transaction that holds no lock on ``rows``, and its reads
    lock the state and rows one after the other; waiting for either once
    ``rows`` is locked would queue every writer behind that wait.
    """
    bind = op.get_bind()
    tables = "rows, broadcaster_state"
    if bind.execute(sa.text("SELECT to_regclass('broadcaster_tombstones')")).scalar() is not None:
        tables += ", broadcaster_tombstones"
    for attempt in range(1, LOCK_ATTEMPTS + 1):
        savepoint = bind.begin_nested()
        try:
            bind.execute(sa.text(f"SET LOCAL lock_timeout = '{LOCK_TIMEOUT}'"))
            bind.execute(sa.text(f"LOCK TABLE {tables} IN ACCESS EXCLUSIVE MODE"))
        except DBAPIError as exc:
            savepoint.rollback()
            if "lock timeout" not in str(exc) or attempt == LOCK_ATTEMPTS:
                raise
            logger.info("%s busy; retrying the lock (attempt %d)", tables, attempt)
            time.sleep(0.1 * attempt)
        else:
            savepoint.commit()
            bind.execute(sa.text("SET LOCAL lock_timeout = 0"))
            return


def downgrade() -> None:
    raise NotImplementedError("broadcaster migrations are not reversible")
