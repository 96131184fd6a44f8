-- 2b. BRIN on xid. Postgres 15 has no BRIN operator class for xid8, so the xid is
-- stored as bigint from txid_current() (the same 64-bit, epoch-extended value).
-- Replaces today's triggers on `rows` (stamps, tombstones) with a change log.
DROP TRIGGER IF EXISTS broadcaster_before_write ON rows;
DROP TRIGGER IF EXISTS broadcaster_after_delete ON rows;
DROP TRIGGER IF EXISTS broadcaster_before_truncate ON rows;
CREATE SEQUENCE change_log_seq;
CREATE TABLE change_log (
    xid bigint NOT NULL,
    ord bigint NOT NULL,
    table_id text NOT NULL,
    id text NOT NULL,
    op "char" NOT NULL,
    new jsonb,
    old jsonb
);
CREATE INDEX change_log_xid ON change_log USING brin (xid);
CREATE FUNCTION change_log_row() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'INSERT' THEN
        INSERT INTO change_log (xid, ord, table_id, id, op, new, old)
        VALUES (txid_current(), nextval('change_log_seq'), NEW.table_id, NEW.id, 'I', to_jsonb(NEW), NULL);
    ELSIF TG_OP = 'UPDATE' THEN
        INSERT INTO change_log (xid, ord, table_id, id, op, new, old)
        VALUES (txid_current(), nextval('change_log_seq'), NEW.table_id, NEW.id, 'U', to_jsonb(NEW), to_jsonb(OLD));
    ELSE
        INSERT INTO change_log (xid, ord, table_id, id, op, new, old)
        VALUES (txid_current(), nextval('change_log_seq'), OLD.table_id, OLD.id, 'D', NULL, to_jsonb(OLD));
    END IF;
    RETURN NULL;
END
$$;
CREATE TRIGGER change_log_row AFTER INSERT OR UPDATE OR DELETE ON rows
    FOR EACH ROW EXECUTE FUNCTION change_log_row();
