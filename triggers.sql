-- Triggers on `rows`: append every committed change to the change log, wake the servers.
--
-- `broadcaster migrate` installs this file and reinstalls it whenever its text
-- changes; every statement is idempotent. It needs the objects of the schema
-- migrations (broadcaster_changes, broadcaster_listeners). `broadcaster publish`
-- puts the same capture on any table: triggers of its own that call
-- broadcaster_capture() and broadcaster_capture_truncate() (docs/publishing.md).
-- So this file never drops those functions nor changes their signature: CREATE
-- OR REPLACE keeps the published tables' triggers, a DROP would take them along.
--
-- How changes reach clients: the server reads them. An AFTER trigger appends
-- each change of a row to broadcaster_changes, in the writer's transaction: its
-- xid, an order from one sequence, the row's table and key, the operation and
-- the row after and before the change, whole. A server's read asks for the
-- entries whose transaction is not visible in a snapshot (the cursor), in a
-- statement whose own snapshot becomes the next cursor. NOTIFY only wakes the
-- servers up, and is skipped while the servers have promised to read the table
-- anyway.
--
-- Payload on channel `broadcaster_changes` (decoded by broadcaster/core/wakeups.py):
-- the table_id whose rows changed, or the empty string for "any table" (a
-- TRUNCATE, or a table_id too long for NOTIFY's 8000 bytes). Postgres delivers
-- identical notifications of one transaction once, so a statement touching
-- 10,000 rows of one table sends one.

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
    -- Its changes are still logged; servers find them at their next read.
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

-- The capture trigger of any table (rows has its own, below). Arguments: where
-- the table_id comes from, then the primary key's columns. The first is '' for
-- the table itself, named schema.table; '=' followed by the table_id to log
-- (a partitioned table's triggers fire on each partition, under the
-- partition's name: `broadcaster publish` gives them the root's); otherwise
-- the column holding the logical table (`table_id` for rows), which cannot
-- be one whose name starts with '='. The key is logged as text: a single
-- column's value, or a JSON array of several.
--
-- AFTER, not BEFORE: `seq` must be drawn once the row is locked and, for an
-- INSERT, once the unique check has waited for a concurrent deletion of the
-- same key, so that each row's entries take their order as they commit
-- (docs/design/change-log.md). An UPDATE that changes nothing leaves no entry.
--
-- Every expression here is prepared afresh in each transaction, at a cost that
-- grows with the functions it calls: the common case takes the first branch
-- that applies and calls nothing it does not need.
CREATE OR REPLACE FUNCTION broadcaster_capture() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path FROM CURRENT AS $$
DECLARE
    new_image jsonb;
    old_image jsonb;
    new_table text;
    old_table text;
    new_key text;
    old_key text;
BEGIN
    IF TG_OP <> 'DELETE' THEN
        IF TG_OP = 'UPDATE' AND NEW IS NOT DISTINCT FROM OLD THEN
            RETURN NULL;
        END IF;
        new_image := to_jsonb(NEW);
        new_table := CASE WHEN TG_ARGV[0] = '' THEN TG_TABLE_SCHEMA || '.' || TG_TABLE_NAME
                          WHEN starts_with(TG_ARGV[0], '=') THEN substr(TG_ARGV[0], 2)
                          ELSE new_image ->> TG_ARGV[0] END;
        new_key := CASE WHEN TG_NARGS = 2 THEN new_image ->> TG_ARGV[1]
                        ELSE broadcaster_key(new_image, TG_ARGV) END;
    END IF;
    IF TG_OP <> 'INSERT' THEN
        old_image := to_jsonb(OLD);
        old_table := CASE WHEN TG_ARGV[0] = '' THEN TG_TABLE_SCHEMA || '.' || TG_TABLE_NAME
                          WHEN starts_with(TG_ARGV[0], '=') THEN substr(TG_ARGV[0], 2)
                          ELSE old_image ->> TG_ARGV[0] END;
        old_key := CASE WHEN TG_NARGS = 2 THEN old_image ->> TG_ARGV[1]
                        ELSE broadcaster_key(old_image, TG_ARGV) END;
    END IF;
    IF TG_OP = 'UPDATE' AND (new_table IS DISTINCT FROM old_table OR new_key IS DISTINCT FROM old_key) THEN
        -- A row that changes its key or table leaves where it was and arrives
        -- where it was not: subscribers of each see a DELETE and an INSERT.
        INSERT INTO broadcaster_changes (table_id, id, op, old) VALUES (old_table, old_key, 'DELETE', old_image);
        IF NOT broadcaster_promised(old_table) THEN
            PERFORM broadcaster_wake(old_table);
        END IF;
        INSERT INTO broadcaster_changes (table_id, id, op, new) VALUES (new_table, new_key, 'INSERT', new_image);
    ELSIF TG_OP = 'DELETE' THEN
        INSERT INTO broadcaster_changes (table_id, id, op, old) VALUES (old_table, old_key, 'DELETE', old_image);
        new_table := old_table;
    ELSE
        INSERT INTO broadcaster_changes (table_id, id, op, new, old)
        VALUES (new_table, new_key, TG_OP, new_image, old_image);
    END IF;
    IF NOT broadcaster_promised(new_table) THEN
        PERFORM broadcaster_wake(new_table);
    END IF;
    RETURN NULL;
END
$$;

-- rows' own capture: what broadcaster_capture('table_id', 'id') does, with the
-- columns named rather than looked up in the images. A function written for
-- its table costs a single-row UPDATE 58,800 instructions less than the
-- generic one (bench/trigger_cost.py: 357,728 against 416,507), for the same
-- entries; publishing other tables (issue 21) can write theirs the same way.
CREATE OR REPLACE FUNCTION broadcaster_capture_rows() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'UPDATE' THEN
        IF NEW.id = OLD.id AND NEW.table_id = OLD.table_id THEN
            -- Compared here, not in the trigger's WHEN clause: a WHEN on an
            -- AFTER UPDATE trigger cost 25,000 instructions more.
            IF NEW IS NOT DISTINCT FROM OLD THEN
                RETURN NULL;
            END IF;
            INSERT INTO broadcaster_changes (table_id, id, op, new, old)
            VALUES (NEW.table_id, NEW.id, 'UPDATE', to_jsonb(NEW), to_jsonb(OLD));
        ELSE
            INSERT INTO broadcaster_changes (table_id, id, op, old)
            VALUES (OLD.table_id, OLD.id, 'DELETE', to_jsonb(OLD));
            INSERT INTO broadcaster_changes (table_id, id, op, new)
            VALUES (NEW.table_id, NEW.id, 'INSERT', to_jsonb(NEW));
            IF NOT broadcaster_promised(OLD.table_id) THEN
                PERFORM broadcaster_wake(OLD.table_id);
            END IF;
        END IF;
        IF NOT broadcaster_promised(NEW.table_id) THEN
            PERFORM broadcaster_wake(NEW.table_id);
        END IF;
    ELSIF TG_OP = 'INSERT' THEN
        INSERT INTO broadcaster_changes (table_id, id, op, new)
        VALUES (NEW.table_id, NEW.id, 'INSERT', to_jsonb(NEW));
        IF NOT broadcaster_promised(NEW.table_id) THEN
            PERFORM broadcaster_wake(NEW.table_id);
        END IF;
    ELSE
        INSERT INTO broadcaster_changes (table_id, id, op, old)
        VALUES (OLD.table_id, OLD.id, 'DELETE', to_jsonb(OLD));
        IF NOT broadcaster_promised(OLD.table_id) THEN
            PERFORM broadcaster_wake(OLD.table_id);
        END IF;
    END IF;
    RETURN NULL;
END
$$;

-- A composite primary key as logged: the JSON array of its columns' values,
-- from the row's image and the capture trigger's arguments after the first
-- (TG_ARGV counts from 0, an array literal from 1: skip whichever comes first).
CREATE OR REPLACE FUNCTION broadcaster_key(image jsonb, args text[]) RETURNS text
LANGUAGE sql IMMUTABLE AS $$
    SELECT jsonb_agg(image -> args[i] ORDER BY i)::text
    FROM generate_subscripts(args, 1) AS i
    WHERE i > array_lower(args, 1)
$$;

-- The published tables (rows aside) and the table_id each is logged under:
-- the capture trigger's first argument, '' for the table's own schema.table
-- or '=' and the table_id. The argument is cut from the trigger's arguments
-- as bytes, up to the first NUL, and read as UTF-8.
CREATE OR REPLACE VIEW broadcaster_published AS
SELECT CASE WHEN a.first = '' THEN n.nspname || '.' || c.relname ELSE substr(a.first, 2) END
           AS table_id,
       c.oid AS relation
FROM pg_trigger AS t
JOIN pg_proc AS p ON p.oid = t.tgfoid
JOIN pg_class AS c ON c.oid = t.tgrelid
JOIN pg_namespace AS n ON n.oid = c.relnamespace
CROSS JOIN LATERAL (
    SELECT convert_from(substring(t.tgargs FROM 1 FOR position('\x00'::bytea IN t.tgargs) - 1),
                        'UTF8') AS first
) AS a
WHERE t.tgname = 'broadcaster_capture' AND t.tgparentid = 0 AND t.tgnargs > 1
  AND p.proname = 'broadcaster_capture'
  AND (a.first = '' OR starts_with(a.first, '='));

-- Every row of the published table logged under `table_id`, for a snapshot
-- load: its key as the capture trigger logs it, and its JSON. STABLE, so that
-- it reads in the snapshot of the statement calling it (the read, whose
-- snapshot becomes the cursor). Nothing for a table_id that is not a
-- published table's.
CREATE OR REPLACE FUNCTION broadcaster_rows_of(table_id text)
RETURNS TABLE (id text, image text)
LANGUAGE plpgsql STABLE AS $$
DECLARE
    found oid;
    keys text[];
BEGIN
    SELECT p.relation INTO found FROM broadcaster_published AS p
    WHERE p.table_id = broadcaster_rows_of.table_id;
    IF found IS NULL THEN
        RETURN;
    END IF;
    SELECT array_agg(a.attname::text ORDER BY k.position) INTO keys
    FROM pg_index AS x
    CROSS JOIN LATERAL unnest(x.indkey::int2[]) WITH ORDINALITY AS k(attnum, position)
    JOIN pg_attribute AS a ON a.attrelid = x.indrelid AND a.attnum = k.attnum
    WHERE x.indrelid = found AND x.indisprimary;
    RETURN QUERY EXECUTE format(
        'SELECT CASE WHEN cardinality($1) = 1 THEN s.image ->> $1[1]'
        '            ELSE broadcaster_key(s.image, array_prepend(%L, $1)) END,'
        '       s.image::text'
        ' FROM (SELECT to_jsonb(t) AS image FROM %s AS t) AS s',
        '', found::regclass)
    USING keys;
END
$$;

-- Row-level security, checked as a subscriber (broadcaster/postgres/visibility.py):
-- which of `keys` (a key column's value as text, or the JSON array of a
-- composite key's values, as logged) name a row of the table that
-- `viewer_role`, with `claims` in `request.jwt.claims`, may select now. Returns
-- their indices, from 0. SECURITY INVOKER: it can switch only to the roles the
-- caller's session may SET ROLE to. The role, the claims and row_security are
-- set for this call alone: put back before it returns, and undone with the
-- transaction when it fails, which ends with the statement in autocommit.
-- A key is cast to its column's type (`key_types`, format_type names), so
-- that the comparison is the column's own and its index serves it.
CREATE OR REPLACE FUNCTION broadcaster_visible(
    table_schema text, table_name text, key_columns text[], key_types text[],
    viewer_role text, claims text, keys text[]
) RETURNS int[]
LANGUAGE plpgsql SECURITY INVOKER AS $$
DECLARE
    previous_role text := current_setting('role');
    previous_claims text := coalesce(current_setting('request.jwt.claims', true), '');
    previous_row_security text := current_setting('row_security');
    key_text text;
    key_matches text;
    visible int[];
BEGIN
    -- Postgres reads the role "none" as the session's own: checked as it, a
    -- subscriber would see what the server's login sees.
    IF viewer_role = 'none' THEN
        RAISE EXCEPTION 'rows cannot be checked as role "none", which is the session''s own role'
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    -- Types resolved as the caller, before the switch. Each key column is
    -- compared with an array of the keys' values, cast once (an uncorrelated
    -- subquery): a comparison Postgres knows leaks nothing, so it finds the
    -- rows through the primary key before any policy runs, and the policy runs
    -- on those rows alone. Compared with each key's text cast in a join, it
    -- ran on every row of the table (a policy reading its claims from
    -- request.jwt.claims parses them once a row). The rows found give their
    -- keys back as the capture trigger logs them, from the key columns alone
    -- (a role may select no other).
    SELECT string_agg(format('t.%I = ANY (ARRAY(SELECT %s FROM unnest($1::text[]) AS x))',
                             c,
                             CASE WHEN cardinality(key_columns) = 1
                                  THEN format('x::%s', ty::regtype)
                                  ELSE format('(x::jsonb ->> %s)::%s', i - 1, ty::regtype) END),
                      ' AND ' ORDER BY i),
           CASE WHEN cardinality(key_columns) = 1
                THEN format('to_jsonb(t.%I) #>> ''{}''', key_columns[1])
                ELSE format('jsonb_build_array(%s)::text',
                            string_agg(format('t.%I', c), ', ' ORDER BY i)) END
    INTO key_matches, key_text
    FROM unnest(key_columns, key_types) WITH ORDINALITY AS u(c, ty, i);
    -- row_security off would make the SELECT fail rather than filter.
    PERFORM set_config('role', viewer_role, true),
            set_config('request.jwt.claims', claims, true),
            set_config('row_security', 'on', true);
    EXECUTE format(
        'SELECT array_agg(k.i - 1) FROM unnest($1::text[]) WITH ORDINALITY AS k(key, i)'
        ' WHERE k.key IN (SELECT %s FROM %I.%I AS t WHERE %s)',
        key_text, table_schema, table_name, key_matches)
    INTO visible USING keys;
    PERFORM set_config('role', previous_role, true),
            set_config('request.jwt.claims', previous_claims, true),
            set_config('row_security', previous_row_security, true);
    RETURN coalesce(visible, '{}');
END
$$;

-- A TRUNCATE deletes every row: each gets its DELETE, as if deleted one by one.
-- BEFORE, with the table already locked against every other writer. Same
-- arguments as broadcaster_capture(). A statement trigger of a partitioned
-- table fires for a TRUNCATE of the table (every partition's rows), not of
-- one partition alone. The row is t.*, never a bare t: that would be the
-- table's own column t, where it has one.
CREATE OR REPLACE FUNCTION broadcaster_capture_truncate() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path FROM CURRENT AS $$
DECLARE
    table_expression text := CASE WHEN TG_ARGV[0] = ''
        THEN quote_literal(TG_TABLE_SCHEMA || '.' || TG_TABLE_NAME)
        WHEN starts_with(TG_ARGV[0], '=') THEN quote_literal(substr(TG_ARGV[0], 2))
        ELSE format('to_jsonb(t.*) ->> %L', TG_ARGV[0]) END;
    key_expression text := CASE WHEN TG_NARGS = 2 THEN format('to_jsonb(t.*) ->> %L', TG_ARGV[1])
        ELSE format('broadcaster_key(to_jsonb(t.*), %L::text[])', TG_ARGV) END;
BEGIN
    EXECUTE format(
        'INSERT INTO broadcaster_changes (table_id, id, op, old) SELECT %s, %s, ''DELETE'', to_jsonb(t.*) FROM %s AS t',
        table_expression, key_expression, TG_RELID::regclass);
    PERFORM broadcaster_wake('');
    RETURN NULL;
END
$$;

-- A published table's writers are the app's roles (PostgREST's
-- `authenticated`, say): they must not need rights on the change log, nor
-- fail for lack of them. So the published tables' captures run as the role
-- that installed them (SECURITY DEFINER, with the search_path it installed
-- them with), and only that role, or one it grants EXECUTE to, may create a
-- trigger calling them: the log's entries cannot be forged through them.
REVOKE EXECUTE ON FUNCTION broadcaster_capture(), broadcaster_capture_truncate() FROM PUBLIC;

-- Until the change log, a trigger moved rows.updated_at; the log's entries say
-- when a change committed, and moving it cost every UPDATE 46,900
-- instructions (bench/trigger_cost.py). It is the writer's column now.
DROP TRIGGER IF EXISTS broadcaster_rows_touch ON rows;
DROP FUNCTION IF EXISTS broadcaster_rows_touch();

DROP TRIGGER IF EXISTS broadcaster_capture ON rows;
CREATE TRIGGER broadcaster_capture
    AFTER INSERT OR UPDATE OR DELETE ON rows
    FOR EACH ROW EXECUTE FUNCTION broadcaster_capture_rows();

DROP TRIGGER IF EXISTS broadcaster_capture_truncate ON rows;
CREATE TRIGGER broadcaster_capture_truncate
    BEFORE TRUNCATE ON rows
    FOR EACH STATEMENT EXECUTE FUNCTION broadcaster_capture_truncate('table_id', 'id');
