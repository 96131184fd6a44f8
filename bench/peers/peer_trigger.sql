-- Installed once the peers' table is seeded (see peer.sql).
CREATE TRIGGER bench_notify_row
    BEFORE INSERT OR UPDATE ON rows
    FOR EACH ROW EXECUTE FUNCTION bench_notify_row();
