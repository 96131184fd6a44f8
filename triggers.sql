-- Triggers on `rows`: stamp every visible change, record deletions, wake the servers.
--
-- `broadcaster migrate` installs this file and reinstalls it whenever its text
-- changes; every statement is idempotent. It needs the objects of the schema
-- migrations (rows.changed_xid, rows.inserted_xid, broadcaster_tombstones,
-- broadcaster_listeners).
--
-- How changes reach clients: the server reads them. A BEFORE trigger stamps each
-- changed row with its transaction id (changed_xid) and a fresh version; a
-- deletion leaves a tombstone. A server's read asks for rows and tombstones whose
-- transaction is not visible in a snapshot (the cursor), in a statement whose own
-- snapshot becomes the next cursor. NOTIFY only wakes the servers up, and is
-- skipped while the servers have promised to read the table anyway.
--
-- Payload on channel `broadcaster_changes` (decoded by broadcaster/core/wakeups.py):
-- the table_id whose rows changed, or the empty string for "any table" (a
-- TRUNCATE, or a table_id too long for NOTIFY's 8000 bytes). Postgres delivers
-- identical notifications of one transaction once, so a statement touching
-- 10,000 rows of one table sends one.

CREATE SEQUENCE IF NOT EXISTS broadcaster_version_seq;
-- Versions step by 2, so that no change is ever given v + 1: that is the version
-- a read gives a re-insert that raced a deletion (broadcaster/postgres/queries.py).
ALTER SEQUENCE broadcaster_version_seq INCREMENT BY 2;

-- A writer's session remembers, for at most 100 ms, that a table's servers had
-- promised to read it (or that none served it), so that its next writes of the
-- table skip the lookup and its call (30 us). A server reads a table it starts
-- serving once more after that long (REMEMBERED_FOR in broadcaster/core/promises.py),
-- for the writers that acted on a memory older than its registration.
--
-- The memory is two session settings: `broadcaster.promised`, the tables
-- remembered, each between two U+001F separators, and
-- `broadcaster.promised_until`, when the earliest of their memories ends (epoch
-- seconds). One memory for a set of tables rather than one per table, because
-- every write checks it in an expression that Postgres prepares afresh in each
-- transaction, at a cost that grows with every function it calls: this one
-- costs a single-row UPDATE about 10% of its instructions, the 64 per-table
-- slots it replaced 19% (docs/performance.md).

-- Is the table in `list`, table_ids each between two separators (the memory
-- here, `broadcaster.notified` in broadcaster_wake)? A table_id holding a
-- separator is never listed: it could match the run of two others. A plain
-- SQL expression, which the caller inlines.
CREATE OR REPLACE FUNCTION broadcaster_listed(list text, table_id text) RETURNS boolean
LANGUAGE sql AS $$
    SELECT strpos(table_id, E'\x1f') = 0
       AND strpos(list, E'\x1f' || table_id || E'\x1f') > 0
$$;

-- Until when this session may skip the table's wake-up; NULL: it does not know
-- (not remembered, or the settings were reset). Inlined by the caller.
CREATE OR REPLACE FUNCTION broadcaster_remembered(table_id text) RETURNS timestamptz
LANGUAGE sql AS $$
    SELECT CASE
        WHEN broadcaster_listed(current_setting('broadcaster.promised', true), table_id)
        THEN to_timestamp(current_setting('broadcaster.promised_until', true)::float8)
    END
$$;

-- In any isolation level: the memory comes from a lookup in READ COMMITTED
-- (broadcaster_wake), and acting on it within its time relies only on the
-- writer's xid being taken before the check (broadcaster/core/promises.py).
CREATE OR REPLACE FUNCTION broadcaster_promised(table_id text) RETURNS boolean
LANGUAGE sql AS $$
    SELECT coalesce(broadcaster_remembered(table_id) > clock_timestamp(), false)
$$;

-- PL/pgSQL, which plans once per session: a SQL function that is not inlined
-- is planned at every call (70 us). Adds the table to the memory, which then
-- ends at the earlier of the two ends; starts the memory afresh when it has
-- ended, or when it would pass 4000 bytes.
CREATE OR REPLACE FUNCTION broadcaster_remember(table_id text, until timestamptz) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    known text := current_setting('broadcaster.promised', true);
    known_until float8 := nullif(current_setting('broadcaster.promised_until', true), '')::float8;
    ignored text;
BEGIN
    IF strpos(table_id, E'\x1f') > 0 OR octet_length(table_id) > 1000 THEN
        RETURN;
    END IF;
    IF coalesce(known, '') = '' OR known_until IS NULL
       OR known_until <= date_part('epoch', clock_timestamp())
       OR octet_length(known) + octet_length(table_id) > 4000 THEN
        known := E'\x1f';
        known_until := 'infinity';
    END IF;
    ignored := set_config('broadcaster.promised', known || table_id || E'\x1f', false);
    ignored := set_config('broadcaster.promised_until',
        least(known_until, date_part('epoch', until))::text, false);
END
$$;

CREATE OR REPLACE FUNCTION broadcaster_wake(table_id text) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    checked_at timestamptz;
    until timestamptz;
    -- The tables this transaction has notified, between separators as in
    -- `broadcaster.promised`; the empty table_id is every table.
    notified text := coalesce(nullif(current_setting('broadcaster.notified', true), ''), E'\x1f');
    payload text;
BEGIN
    -- `SET broadcaster.wake = 'off'` lets a writer skip the wake-up: Postgres
    -- refuses to PREPARE (two-phase commit) a transaction that sent a NOTIFY.
    -- Its rows are still stamped; servers find them at their next read.
    IF current_setting('broadcaster.wake', true) = 'off' THEN
        RETURN;
    END IF;
    -- The NOTIFY this transaction sent for the table, or for every table, is
    -- delivered at its commit and covers this write too: a statement writing
    -- many rows of a table that is served but not promised looks up once.
    IF strpos(notified, E'\x1f\x1f') > 0 OR broadcaster_listed(notified, table_id) THEN
        RETURN;
    END IF;
    -- A NOTIFY makes the commit take a cluster-wide lock through its WAL flush,
    -- so it is skipped while every server process serving this table has
    -- promised to read it unasked (broadcaster/core/promises.py), or none serves it.
    -- Only in READ COMMITTED, where this statement sees the latest promises;
    -- the caller has taken its xid already, which the promise relies on.
    IF table_id <> '' AND current_setting('transaction_isolation') = 'read committed' THEN
        checked_at := clock_timestamp();
        SELECT coalesce(min(l.polling_until), 'infinity') INTO until
        FROM broadcaster_listeners AS l
        WHERE l.table_id IN (broadcaster_wake.table_id, '');
        IF until > clock_timestamp() THEN
            -- Counted from before the lookup took its snapshot: a registration
            -- it did not see committed later.
            PERFORM broadcaster_remember(table_id, least(until, checked_at + interval '100 ms'));
            RETURN;
        END IF;
    END IF;
    -- A writer's transaction must never fail because of us: a table_id too long
    -- for a payload wakes every table instead.
    payload := CASE WHEN octet_length(table_id) < 7900 THEN table_id ELSE '' END;
    PERFORM pg_notify('broadcaster_changes', payload);
    -- Kept to the end of the transaction; a subtransaction that rolls back
    -- takes its NOTIFY and this with it.
    IF strpos(payload, E'\x1f') = 0 AND octet_length(notified) < 4000 THEN
        PERFORM set_config('broadcaster.notified', notified || payload || E'\x1f', true);
    END IF;
END
$$;

-- Stamps version, timestamps and transaction ids; leaves an UPDATE that changes
-- nothing a client can see untouched, so no reader picks it up.
--
-- Every expression here is prepared afresh in each transaction, at a cost that
-- grows with the functions it calls, and only when it is first reached: so the
-- common UPDATE (its data changed) compares one column before it stamps.
CREATE OR REPLACE FUNCTION broadcaster_before_write() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'INSERT' THEN
        NEW.version := nextval('broadcaster_version_seq');
        NEW.changed_xid := pg_current_xact_id();
        NEW.inserted_xid := NEW.changed_xid;
        NEW.updated_at := now();
        NEW.created_at := NEW.updated_at;
        IF NOT broadcaster_promised(NEW.table_id) THEN
            PERFORM broadcaster_wake(NEW.table_id);
        END IF;
        RETURN NEW;
    END IF;
    IF NEW.data IS NOT DISTINCT FROM OLD.data THEN
        IF NEW.enriching_columns IS NOT DISTINCT FROM OLD.enriching_columns
           AND NEW.id IS NOT DISTINCT FROM OLD.id
           AND NEW.table_id IS NOT DISTINCT FROM OLD.table_id THEN
            NEW.version := OLD.version;
            NEW.created_at := OLD.created_at;
            NEW.updated_at := OLD.updated_at;
            NEW.changed_xid := OLD.changed_xid;
            NEW.inserted_xid := OLD.inserted_xid;
            RETURN NEW;
        END IF;
    END IF;
    NEW.version := nextval('broadcaster_version_seq');
    NEW.changed_xid := pg_current_xact_id();
    NEW.updated_at := now();
    NEW.created_at := OLD.created_at;
    IF NEW.id IS DISTINCT FROM OLD.id OR NEW.table_id IS DISTINCT FROM OLD.table_id THEN
        -- A row that changes its key or table arrives where it was not
        -- before, and leaves a tombstone where it was. Written here, not by
        -- an AFTER UPDATE trigger, whose WHEN clause alone cost every UPDATE
        -- 13 us (it fetches the old row again); if the update does not
        -- happen after all (a later trigger skips it), reads ignore a
        -- tombstone whose row is there.
        NEW.inserted_xid := NEW.changed_xid;
        INSERT INTO broadcaster_tombstones (table_id, id, version, xid)
        VALUES (OLD.table_id, OLD.id, NEW.version, NEW.changed_xid);
        IF NEW.table_id IS DISTINCT FROM OLD.table_id THEN
            PERFORM broadcaster_wake(OLD.table_id);
        END IF;
    ELSE
        NEW.inserted_xid := OLD.inserted_xid;
    END IF;
    -- Waking here rather than AFTER saves a trigger call per row; if the write
    -- does not happen after all, the wake-up finds nothing new, which is harmless.
    -- The remembered promise is checked here, where it costs no call.
    IF NOT broadcaster_promised(NEW.table_id) THEN
        PERFORM broadcaster_wake(NEW.table_id);
    END IF;
    RETURN NEW;
END
$$;

-- Leaves a tombstone where a deleted row was.
CREATE OR REPLACE FUNCTION broadcaster_after_remove() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO broadcaster_tombstones (table_id, id, version, xid)
    VALUES (
        OLD.table_id,
        OLD.id,
        -- A deletion gets a version of its own, newer than any state of the row
        -- a client holds and older than a later re-insert of the same id.
        nextval('broadcaster_version_seq'),
        pg_current_xact_id()
    );
    IF NOT broadcaster_promised(OLD.table_id) THEN
        PERFORM broadcaster_wake(OLD.table_id);
    END IF;
    RETURN NULL;
END
$$;

CREATE OR REPLACE FUNCTION broadcaster_before_truncate() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO broadcaster_tombstones (table_id, id, version, xid)
    SELECT table_id, id, nextval('broadcaster_version_seq'), pg_current_xact_id() FROM rows;
    PERFORM broadcaster_wake('');
    RETURN NULL;
END
$$;

DROP TRIGGER IF EXISTS broadcaster_after_write ON rows;
DROP TRIGGER IF EXISTS broadcaster_after_update ON rows;

DROP TRIGGER IF EXISTS broadcaster_before_write ON rows;
CREATE TRIGGER broadcaster_before_write
    BEFORE INSERT OR UPDATE ON rows
    FOR EACH ROW EXECUTE FUNCTION broadcaster_before_write();

DROP TRIGGER IF EXISTS broadcaster_after_delete ON rows;
CREATE TRIGGER broadcaster_after_delete
    AFTER DELETE ON rows
    FOR EACH ROW EXECUTE FUNCTION broadcaster_after_remove();

-- Moves leave their tombstone from the BEFORE trigger since 0.2.
DROP TRIGGER IF EXISTS broadcaster_after_move ON rows;

DROP TRIGGER IF EXISTS broadcaster_before_truncate ON rows;
CREATE TRIGGER broadcaster_before_truncate
    BEFORE TRUNCATE ON rows
    FOR EACH STATEMENT EXECUTE FUNCTION broadcaster_before_truncate();

DROP FUNCTION IF EXISTS broadcaster_after_write();
DROP FUNCTION IF EXISTS broadcaster_notify(text, rows);
-- The JSON shape of a row is the read's own (broadcaster/postgres/queries.py) since 0.2.
DROP FUNCTION IF EXISTS broadcaster_row_json(rows);
