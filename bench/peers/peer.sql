-- The peers' database: a plain `rows` table and the trigger each peer's docs
-- show for Postgres LISTEN/NOTIFY: one NOTIFY per changed row, on a channel
-- named after the row's table_id, carrying the row as JSON. Installed by
-- bench/run.py after the table is seeded.

CREATE TABLE rows (
    id text PRIMARY KEY,
    table_id text NOT NULL,
    data jsonb NOT NULL DEFAULT '{}',
    updated_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX rows_table_id ON rows (table_id);

CREATE FUNCTION bench_notify_row() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    NEW.updated_at := now();
    PERFORM pg_notify(
        NEW.table_id,
        json_build_object(
            'id', NEW.id, 'table_id', NEW.table_id, 'data', NEW.data,
            'updated_at', NEW.updated_at
        )::text
    );
    RETURN NEW;
END
$$;
