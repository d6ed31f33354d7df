-- realtime_ext 0.1.0 -> 0.2.0. Install the 0.2.0 library and restart the server first (it is
-- preloaded: the running server keeps the old one until then), then
--   ALTER EXTENSION realtime_ext UPDATE;
-- Watched tables, their triggers, the history and connected clients carry on.

-- realtime_stats() named as /metrics names them, the label apart: for postgres_exporter's
-- custom queries (docs/postgres_exporter.yaml), which take labels from columns.
CREATE VIEW realtime_metrics AS
SELECT 'realtime_' || split_part(name, '{', 1) AS metric,
       coalesce(substring(name FROM '\{(.*)\}'), '') AS labels,
       value, kind, description
  FROM realtime_stats();
COMMENT ON VIEW realtime_metrics IS 'realtime_stats() named as /metrics names them: metric, its labels, value';
REVOKE ALL ON realtime_metrics FROM PUBLIC;
GRANT SELECT ON realtime_metrics TO pg_monitor;

-- Channels: relayed NOTIFY channels and realtime_send().
CREATE TABLE realtime.relays (
    channel text PRIMARY KEY,
    as_json boolean NOT NULL DEFAULT false,
    readers regrole[] NOT NULL DEFAULT '{}'
);
COMMENT ON TABLE realtime.relays IS 'NOTIFY channels relayed by realtime_relay(): payloads as JSON or text, and the roles that may receive them';
SELECT pg_catalog.pg_extension_config_dump('realtime.relays', '');

CREATE FUNCTION realtime_relayed() RETURNS TABLE (channel text, as_json boolean, readers regrole[])
LANGUAGE sql STABLE AS $$
    SELECT r.channel, r.as_json, r.readers FROM realtime.relays r ORDER BY r.channel
$$;
COMMENT ON FUNCTION realtime_relayed() IS 'NOTIFY channels relayed to realtime clients, and who may receive them';

CREATE FUNCTION realtime_relay(channel text, as_json boolean DEFAULT false, readers regrole[] DEFAULT '{}')
RETURNS void VOLATILE PARALLEL UNSAFE LANGUAGE c AS 'MODULE_PATHNAME', 'realtime_relay_wrapper';
COMMENT ON FUNCTION realtime_relay(text, boolean, regrole[]) IS 'Relay a NOTIFY channel to realtime clients: payloads as JSON (as_json) or text, to members of readers';

CREATE FUNCTION realtime_unrelay(channel text)
RETURNS boolean STRICT VOLATILE PARALLEL UNSAFE LANGUAGE c AS 'MODULE_PATHNAME', 'realtime_unrelay_wrapper';
COMMENT ON FUNCTION realtime_unrelay(text) IS 'Stop relaying a NOTIFY channel to realtime clients';

CREATE FUNCTION realtime_send(topic text, event text, payload jsonb)
RETURNS void VOLATILE PARALLEL UNSAFE LANGUAGE c AS 'MODULE_PATHNAME', 'realtime_send_wrapper';
COMMENT ON FUNCTION realtime_send(text, text, jsonb) IS 'Send a message to the realtime subscribers of a topic when this transaction commits';
REVOKE ALL ON FUNCTION realtime_send(text, text, jsonb) FROM PUBLIC;

-- Who may receive, send on and track presence in a topic that is not a relayed channel:
-- row-level security policies on this table, written as for Supabase Realtime (SELECT: may
-- receive; INSERT: may send; `extension` says 'broadcast' or 'presence'; realtime.topic()
-- is the topic being authorized). realtime_ext keeps no messages here: the worker inserts a
-- probe row, asks the policies as the principal, and rolls back. Grant SELECT and INSERT to
-- the roles that may use topics, USAGE on schema realtime, and write the policies.
CREATE TABLE realtime.messages (
    topic text NOT NULL,
    extension text NOT NULL,
    event text,
    payload jsonb,
    private boolean DEFAULT true,
    inserted_at timestamp NOT NULL DEFAULT now(),
    id uuid NOT NULL DEFAULT gen_random_uuid()
);
ALTER TABLE realtime.messages ENABLE ROW LEVEL SECURITY;
COMMENT ON TABLE realtime.messages IS 'Row-level security policies here decide who may receive (SELECT) and send (INSERT) on realtime topics; rows are never kept';

CREATE FUNCTION realtime.topic() RETURNS text
LANGUAGE sql STABLE PARALLEL SAFE AS $$ SELECT nullif(current_setting('realtime.topic', true), '') $$;
COMMENT ON FUNCTION realtime.topic() IS 'The topic being authorized, for policies on realtime.messages';

-- Supabase Realtime's names for sending from SQL, over realtime_send(): the same signatures,
-- so triggers written for Supabase work unchanged. `private` is accepted and has no effect:
-- who receives a topic is decided per topic (docs/channels.md), not per message.
CREATE FUNCTION realtime.send(payload jsonb, event text, topic text, private boolean DEFAULT true)
RETURNS void LANGUAGE sql VOLATILE AS $$ SELECT @extschema@.realtime_send(topic, event, payload) $$;
COMMENT ON FUNCTION realtime.send(jsonb, text, text, boolean) IS 'Supabase''s realtime.send: realtime_send(topic, event, payload)';
REVOKE ALL ON FUNCTION realtime.send(jsonb, text, text, boolean) FROM PUBLIC;

-- As Supabase's: a row trigger's change as {old_record, record, operation, table, schema}.
CREATE FUNCTION realtime.broadcast_changes(topic_name text, event_name text, operation text,
                                           table_name text, table_schema text, new record,
                                           old record, level text DEFAULT 'ROW')
RETURNS void LANGUAGE plpgsql VOLATILE AS $$
BEGIN
    IF level = 'STATEMENT' THEN
        RAISE EXCEPTION 'realtime.broadcast_changes can only be called for each row, not for each statement'
            USING ERRCODE = '0A000', HINT = 'Call it from a FOR EACH ROW trigger.';
    END IF;
    IF operation NOT IN ('INSERT', 'UPDATE', 'DELETE') THEN
        RAISE EXCEPTION 'unexpected operation %', operation
            USING ERRCODE = '22023', HINT = 'Pass TG_OP from an INSERT, UPDATE or DELETE trigger.';
    END IF;
    PERFORM @extschema@.realtime_send(topic_name, event_name,
        jsonb_build_object('old_record', old, 'record', new, 'operation', operation,
                           'table', table_name, 'schema', table_schema));
END
$$;
COMMENT ON FUNCTION realtime.broadcast_changes(text, text, text, text, text, record, record, text) IS 'Supabase''s realtime.broadcast_changes: a row change sent with realtime_send';
REVOKE ALL ON FUNCTION realtime.broadcast_changes(text, text, text, text, text, record, record, text) FROM PUBLIC;

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
