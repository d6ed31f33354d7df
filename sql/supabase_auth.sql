-- Supabase's auth.uid(), auth.role() and auth.jwt(), for policies written for Supabase: made
-- only when asked for, and never over a schema auth that exists (a Supabase database has its
-- own). The same definitions as Supabase's, over the claims realtime_ext sets for each
-- subscriber (request.jwt.claims).
CREATE FUNCTION realtime_auth_helpers() RETURNS void LANGUAGE plpgsql VOLATILE AS $$
BEGIN
    IF EXISTS (SELECT FROM pg_catalog.pg_namespace WHERE nspname = 'auth') THEN
        RAISE EXCEPTION 'schema "auth" already exists'
            USING ERRCODE = '42P06',
                  HINT = 'realtime_auth_helpers() makes auth.uid(), auth.role() and auth.jwt() only where there is no schema auth; use the functions the existing one has.';
    END IF;
    CREATE SCHEMA auth;
    GRANT USAGE ON SCHEMA auth TO PUBLIC;
    CREATE FUNCTION auth.uid() RETURNS uuid LANGUAGE sql STABLE AS $f$
        SELECT coalesce(nullif(current_setting('request.jwt.claim.sub', true), ''),
                        (nullif(current_setting('request.jwt.claims', true), '')::jsonb ->> 'sub'))::uuid
    $f$;
    CREATE FUNCTION auth.role() RETURNS text LANGUAGE sql STABLE AS $f$
        SELECT coalesce(nullif(current_setting('request.jwt.claim.role', true), ''),
                        (nullif(current_setting('request.jwt.claims', true), '')::jsonb ->> 'role'))::text
    $f$;
    CREATE FUNCTION auth.jwt() RETURNS jsonb LANGUAGE sql STABLE AS $f$
        SELECT coalesce(nullif(current_setting('request.jwt.claim', true), ''),
                        nullif(current_setting('request.jwt.claims', true), ''))::jsonb
    $f$;
END
$$;
COMMENT ON FUNCTION realtime_auth_helpers() IS 'Make Supabase''s auth.uid(), auth.role() and auth.jwt() for policies written for Supabase (refused where a schema auth exists)';
REVOKE ALL ON FUNCTION realtime_auth_helpers() FROM PUBLIC;
