-- 2f. As 2d (ring), the bucket from date_part (float8) instead of extract (numeric since Postgres 14).
-- Replaces today's triggers on `rows` (stamps, tombstones) with a change log.
DROP TRIGGER IF EXISTS broadcaster_before_write ON rows;
DROP TRIGGER IF EXISTS broadcaster_after_delete ON rows;
DROP TRIGGER IF EXISTS broadcaster_before_truncate ON rows;
CREATE SEQUENCE change_log_seq;
CREATE TABLE change_log (
    xid xid8 NOT NULL,
    ord bigint NOT NULL,
    table_id text NOT NULL,
    id text NOT NULL,
    op "char" NOT NULL,
    new jsonb,
    old jsonb,
    bucket smallint NOT NULL DEFAULT (date_part('epoch', now())::bigint / 3600 % 8)
) PARTITION BY LIST (bucket);
CREATE TABLE change_log_b0 PARTITION OF change_log FOR VALUES IN (0);
CREATE TABLE change_log_b1 PARTITION OF change_log FOR VALUES IN (1);
CREATE TABLE change_log_b2 PARTITION OF change_log FOR VALUES IN (2);
CREATE TABLE change_log_b3 PARTITION OF change_log FOR VALUES IN (3);
CREATE TABLE change_log_b4 PARTITION OF change_log FOR VALUES IN (4);
CREATE TABLE change_log_b5 PARTITION OF change_log FOR VALUES IN (5);
CREATE TABLE change_log_b6 PARTITION OF change_log FOR VALUES IN (6);
CREATE TABLE change_log_b7 PARTITION OF change_log FOR VALUES IN (7);
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
