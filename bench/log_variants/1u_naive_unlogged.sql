-- 1u. The naive log, UNLOGGED (the issue's reference; not a candidate: no crash safety, no standbys).
-- Replaces today's triggers on `rows` (stamps, tombstones) with a change log.
DROP TRIGGER IF EXISTS broadcaster_before_write ON rows;
DROP TRIGGER IF EXISTS broadcaster_after_delete ON rows;
DROP TRIGGER IF EXISTS broadcaster_before_truncate ON rows;
CREATE SEQUENCE change_log_seq;
CREATE UNLOGGED TABLE change_log (
    xid xid8 NOT NULL,
    ord bigint NOT NULL,
    table_id text NOT NULL,
    id text NOT NULL,
    op "char" NOT NULL,
    new jsonb,
    old jsonb
);
CREATE INDEX change_log_table_xid ON change_log (table_id, xid);
CREATE FUNCTION change_log_row() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'INSERT' THEN
        INSERT INTO change_log (xid, ord, table_id, id, op, new, old)
        VALUES (pg_current_xact_id(), nextval('change_log_seq'), NEW.table_id, NEW.id, 'I', to_jsonb(NEW), NULL);
    ELSIF TG_OP = 'UPDATE' THEN
        INSERT INTO change_log (xid, ord, table_id, id, op, new, old)
        VALUES (pg_current_xact_id(), nextval('change_log_seq'), NEW.table_id, NEW.id, 'U', to_jsonb(NEW), to_jsonb(OLD));
    ELSE
        INSERT INTO change_log (xid, ord, table_id, id, op, new, old)
        VALUES (pg_current_xact_id(), nextval('change_log_seq'), OLD.table_id, OLD.id, 'D', NULL, to_jsonb(OLD));
    END IF;
    RETURN NULL;
END
$$;
CREATE TRIGGER change_log_row AFTER INSERT OR UPDATE OR DELETE ON rows
    FOR EACH ROW EXECUTE FUNCTION change_log_row();
