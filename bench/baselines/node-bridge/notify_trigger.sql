-- The seed architecture's trigger: every row change becomes a NOTIFY (8000-byte payload cap,
-- one cluster-wide lock from pre-commit until the commit record is flushed).
CREATE OR REPLACE FUNCTION bench_notify() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify(TG_ARGV[0], row_to_json(NEW)::text);
    RETURN NULL;
END
$$;
