-- Triggers that turn every committed change of `rows` into a NOTIFY.
--
-- This file is the single definition of the payload the server decodes
-- (broadcaster/payloads.py); `broadcaster migrate` installs it and reinstalls it
-- whenever its text changes. Every statement is idempotent.
--
-- Payload on channel `broadcaster_changes`, format 1:
--
--     <header JSON>                      a reference: the row did not fit
--     <header JSON> LF <row JSON>        the row inline
--
-- header: {"op": "INSERT"|"UPDATE"|"DELETE", "table_id": T, "id": I, "version": V}
-- row:    broadcaster_row_json(row), the exact object clients receive.
--
-- NOTIFY payloads must be shorter than 8000 bytes. A writer's transaction never
-- fails because of us: a row that does not fit is sent as a reference and the
-- server fetches it; a DELETE that does not fit carries only its header.

-- One database-wide sequence: a row's version grows across every change,
-- including a DELETE and a later re-insert of the same id.
CREATE SEQUENCE IF NOT EXISTS broadcaster_version_seq;

-- The JSON shape of a row as clients see it. Timestamps are UTC ISO-8601 so
-- they do not depend on the writer's TimeZone setting. The server's fetch of a
-- referenced row uses this same function.
CREATE OR REPLACE FUNCTION broadcaster_row_json(r rows) RETURNS json
LANGUAGE sql STABLE AS $$
    SELECT json_build_object(
        'id', r.id,
        'table_id', r.table_id,
        'data', r.data,
        'enriching_columns', r.enriching_columns,
        'version', r.version,
        'created_at', to_char(r.created_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"'),
        'updated_at', to_char(r.updated_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"')
    )
$$;

CREATE OR REPLACE FUNCTION broadcaster_notify(op text, r rows) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    header text := json_build_object(
        'op', op, 'table_id', r.table_id, 'id', r.id, 'version', r.version
    )::text;
    body text := broadcaster_row_json(r)::text;
BEGIN
    IF octet_length(header) + 1 + octet_length(body) < 8000 THEN
        PERFORM pg_notify('broadcaster_changes', header || E'\n' || body);
    ELSIF octet_length(header) < 8000 THEN
        PERFORM pg_notify('broadcaster_changes', header);
    ELSE
        -- Only an id or table_id of several kilobytes gets here; failing the
        -- writer would be worse than not announcing the change.
        RAISE WARNING 'broadcaster: change of row % not announced: id and table_id exceed the NOTIFY limit',
            left(r.id, 64);
    END IF;
END
$$;

-- Maintains version, created_at and updated_at; leaves an UPDATE that changes
-- nothing a client can see untouched, so the AFTER trigger skips it.
CREATE OR REPLACE FUNCTION broadcaster_before_write() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'INSERT' THEN
        NEW.version := nextval('broadcaster_version_seq');
        NEW.created_at := now();
        NEW.updated_at := NEW.created_at;
        RETURN NEW;
    END IF;
    IF NEW.id IS NOT DISTINCT FROM OLD.id
       AND NEW.table_id IS NOT DISTINCT FROM OLD.table_id
       AND NEW.data IS NOT DISTINCT FROM OLD.data
       AND NEW.enriching_columns IS NOT DISTINCT FROM OLD.enriching_columns THEN
        NEW.version := OLD.version;
        NEW.created_at := OLD.created_at;
        NEW.updated_at := OLD.updated_at;
        RETURN NEW;
    END IF;
    NEW.version := nextval('broadcaster_version_seq');
    NEW.created_at := OLD.created_at;
    NEW.updated_at := now();
    RETURN NEW;
END
$$;

CREATE OR REPLACE FUNCTION broadcaster_after_write() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    gone rows;
BEGIN
    IF TG_OP = 'INSERT' THEN
        PERFORM broadcaster_notify('INSERT', NEW);
    ELSIF TG_OP = 'DELETE' THEN
        -- The DELETE carries a version of its own, newer than any state the
        -- clients hold, so they can order it against a later re-insert.
        gone := OLD;
        gone.version := nextval('broadcaster_version_seq');
        PERFORM broadcaster_notify('DELETE', gone);
    ELSIF NEW.id IS DISTINCT FROM OLD.id OR NEW.table_id IS DISTINCT FROM OLD.table_id THEN
        -- A row that changes its key or table leaves one place and arrives in
        -- another: subscribers of the old table see it go.
        gone := OLD;
        gone.version := NEW.version;
        PERFORM broadcaster_notify('DELETE', gone);
        PERFORM broadcaster_notify('INSERT', NEW);
    ELSE
        PERFORM broadcaster_notify('UPDATE', NEW);
    END IF;
    RETURN NULL;
END
$$;

DROP TRIGGER IF EXISTS broadcaster_before_write ON rows;
CREATE TRIGGER broadcaster_before_write
    BEFORE INSERT OR UPDATE ON rows
    FOR EACH ROW EXECUTE FUNCTION broadcaster_before_write();

DROP TRIGGER IF EXISTS broadcaster_after_write ON rows;
CREATE TRIGGER broadcaster_after_write
    AFTER INSERT OR DELETE ON rows
    FOR EACH ROW EXECUTE FUNCTION broadcaster_after_write();

DROP TRIGGER IF EXISTS broadcaster_after_update ON rows;
CREATE TRIGGER broadcaster_after_update
    AFTER UPDATE ON rows
    FOR EACH ROW
    WHEN (OLD.version IS DISTINCT FROM NEW.version
          OR OLD.id IS DISTINCT FROM NEW.id
          OR OLD.table_id IS DISTINCT FROM NEW.table_id)
    EXECUTE FUNCTION broadcaster_after_write();
