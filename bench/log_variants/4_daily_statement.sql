-- 4. As 2c, by statement-level AFTER triggers with transition tables: one INSERT per statement.
-- An UPDATE pairs old and new rows by primary key (an UPDATE of the key itself would need
-- another pairing: a DELETE and an INSERT entry).
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
    at timestamptz NOT NULL DEFAULT now()
) PARTITION BY RANGE (at);
-- Partition bounds are evaluated once, when created.
CREATE TABLE change_log_p0 PARTITION OF change_log
    FOR VALUES FROM (date_trunc('day', now()) - interval '1 day') TO (date_trunc('day', now()));
CREATE TABLE change_log_p1 PARTITION OF change_log
    FOR VALUES FROM (date_trunc('day', now())) TO (date_trunc('day', now()) + interval '1 day');
CREATE TABLE change_log_p2 PARTITION OF change_log
    FOR VALUES FROM (date_trunc('day', now()) + interval '1 day') TO (date_trunc('day', now()) + interval '2 days');
CREATE FUNCTION change_log_inserted() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO change_log (xid, ord, table_id, id, op, new, old)
    SELECT pg_current_xact_id(), nextval('change_log_seq'), n.table_id, n.id, 'I', to_jsonb(n), NULL
    FROM new_rows AS n;
    RETURN NULL;
END
$$;
CREATE FUNCTION change_log_updated() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO change_log (xid, ord, table_id, id, op, new, old)
    SELECT pg_current_xact_id(), nextval('change_log_seq'), n.table_id, n.id, 'U', to_jsonb(n), to_jsonb(o)
    FROM new_rows AS n JOIN old_rows AS o ON o.id = n.id;
    RETURN NULL;
END
$$;
CREATE FUNCTION change_log_deleted() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO change_log (xid, ord, table_id, id, op, new, old)
    SELECT pg_current_xact_id(), nextval('change_log_seq'), o.table_id, o.id, 'D', NULL, to_jsonb(o)
    FROM old_rows AS o;
    RETURN NULL;
END
$$;
CREATE TRIGGER change_log_inserted AFTER INSERT ON rows REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION change_log_inserted();
CREATE TRIGGER change_log_updated AFTER UPDATE ON rows REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION change_log_updated();
CREATE TRIGGER change_log_deleted AFTER DELETE ON rows REFERENCING OLD TABLE AS old_rows
    FOR EACH STATEMENT EXECUTE FUNCTION change_log_deleted();
