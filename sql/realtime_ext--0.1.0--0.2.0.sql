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

-- Webhooks (as sql/webhooks.sql, after the two functions of src/webhooks.rs it calls).
CREATE FUNCTION realtime.webhook_position() RETURNS bigint
VOLATILE PARALLEL SAFE LANGUAGE c AS 'MODULE_PATHNAME', 'webhook_position_wrapper';

CREATE FUNCTION realtime.webhook_check_filter(filter text) RETURNS void
IMMUTABLE PARALLEL SAFE LANGUAGE c AS 'MODULE_PATHNAME', 'webhook_check_filter_wrapper';

-- Webhooks: HTTP receivers the worker POSTs committed changes and messages to, in commit
-- order, signed as Standard Webhooks, retried until acknowledged. Managed with
-- realtime_webhook_create() and its siblings; the worker reads this table about once a second
-- and keeps `position` (acknowledged up to) and the state columns.
--
-- Row-level security lets a role see and change only the webhooks it owns (secrets
-- included); superusers see all. A role may have webhooks once a superuser allows it:
--   GRANT USAGE ON SCHEMA realtime TO app;
--   GRANT SELECT, INSERT, UPDATE, DELETE ON realtime.webhooks TO app;
--   GRANT SELECT ON realtime.webhook_deliveries TO app;
CREATE TABLE realtime.webhooks (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    name text NOT NULL UNIQUE CHECK (name ~ '^[A-Za-z0-9_.-]{1,63}$'),
    owner regrole NOT NULL DEFAULT current_user::regrole,
    url text NOT NULL CHECK (url ~* '^https?://[^/?#[:space:]]+[^[:space:]]*$' AND length(url) <= 2048),
    tables text[] NOT NULL DEFAULT '{}',
    topics text[] NOT NULL DEFAULT '{}',
    events text[] CHECK (events <@ ARRAY['INSERT', 'UPDATE', 'DELETE', 'TRUNCATE']),
    filter text,
    acts_as regrole NOT NULL,
    claims jsonb CHECK (jsonb_typeof(claims) = 'object'),
    secret text NOT NULL CHECK (secret ~ '^whsec_[A-Za-z0-9+/]{32,88}={0,2}$'),
    headers jsonb NOT NULL DEFAULT '{}' CHECK (jsonb_typeof(headers) = 'object'),
    batch_size integer NOT NULL DEFAULT 1 CHECK (batch_size BETWEEN 1 AND 1000),
    timeout interval NOT NULL DEFAULT '10 seconds' CHECK (timeout > '0' AND timeout <= '5 minutes'),
    paused boolean NOT NULL DEFAULT false,
    -- Bumped by every change made through the functions: the worker restarts delivery.
    generation bigint NOT NULL DEFAULT 1,
    -- The generation the last replay made: acknowledgements of earlier ones no longer count.
    replayed_generation bigint NOT NULL DEFAULT 1,
    -- Acknowledged by the receiver (or skipped as a gap) up to here.
    position bigint NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    delivered_at timestamptz,
    failing_since timestamptz,
    last_error text,
    disabled_at timestamptz,
    disabled_reason text,
    CHECK (cardinality(tables) + cardinality(topics) BETWEEN 1 AND 100)
);
COMMENT ON TABLE realtime.webhooks IS 'HTTP receivers of changes and messages: where, what, as whom, and how far each has acknowledged';
ALTER TABLE realtime.webhooks ENABLE ROW LEVEL SECURITY;
-- Owners (and members of the owning role) only; a webhook reads as a role its owner could
-- SET ROLE to, so it learns nothing its owner could not select.
CREATE POLICY owner ON realtime.webhooks
    USING (pg_has_role(owner, 'MEMBER'))
    WITH CHECK (pg_has_role(owner, 'MEMBER') AND pg_has_role(acts_as, 'MEMBER'));
SELECT pg_catalog.pg_extension_config_dump('realtime.webhooks', '');

-- Recent requests of each webhook, written by the worker: at most the last 100 per webhook.
CREATE TABLE realtime.webhook_deliveries (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    webhook bigint NOT NULL REFERENCES realtime.webhooks ON DELETE CASCADE,
    at timestamptz NOT NULL,
    first_position bigint NOT NULL,
    last_position bigint NOT NULL,
    attempt integer NOT NULL,
    outcome text NOT NULL CHECK (outcome IN ('delivered', 'failed', 'disabled', 'gap')),
    status integer,
    latency_ms double precision,
    error text,
    retry_at timestamptz
);
CREATE INDEX ON realtime.webhook_deliveries (webhook, id);
COMMENT ON TABLE realtime.webhook_deliveries IS 'The last requests of each webhook: outcome, HTTP status, latency, error';
ALTER TABLE realtime.webhook_deliveries ENABLE ROW LEVEL SECURITY;
CREATE POLICY owner ON realtime.webhook_deliveries
    USING (EXISTS (SELECT FROM realtime.webhooks w WHERE w.id = webhook));

CREATE VIEW realtime_webhooks WITH (security_invoker = true) AS
SELECT w.name,
       CASE WHEN w.disabled_at IS NOT NULL THEN 'disabled'
            WHEN w.paused THEN 'paused'
            WHEN w.failing_since IS NOT NULL THEN 'failing'
            ELSE 'active' END AS state,
       w.url, w.tables, w.topics, w.events, w.filter, w.acts_as, w.claims, w.secret, w.headers,
       w.batch_size, w.timeout, w.position, w.delivered_at, w.failing_since, w.last_error,
       w.disabled_at, w.disabled_reason, w.owner, w.created_at
  FROM realtime.webhooks w;
COMMENT ON VIEW realtime_webhooks IS 'Webhooks you own (all, for superusers): their settings, state and last error';

CREATE VIEW realtime_webhook_deliveries WITH (security_invoker = true) AS
SELECT w.name AS webhook, d.at, d.outcome, d.status, d.attempt, d.first_position,
       d.last_position, d.latency_ms, d.error, d.retry_at
  FROM realtime.webhook_deliveries d JOIN realtime.webhooks w ON w.id = d.webhook;
COMMENT ON VIEW realtime_webhook_deliveries IS 'Recent requests of the webhooks you own: outcome, HTTP status, latency, error';
-- The tables' privileges and row security decide what each role reads through them.
GRANT SELECT ON realtime_webhooks, realtime_webhook_deliveries TO PUBLIC;

-- Refuse, with a hint, a role a superuser has not allowed to have webhooks.
CREATE FUNCTION realtime.webhook_allowed() RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    IF NOT has_schema_privilege('realtime', 'USAGE') THEN
        RAISE EXCEPTION 'role "%" may not have webhooks', current_user
            USING ERRCODE = 'insufficient_privilege',
                  HINT = 'A superuser allows it: GRANT USAGE ON SCHEMA realtime TO ' || quote_ident(current_user::text)
                      || '; GRANT SELECT, INSERT, UPDATE, DELETE ON realtime.webhooks TO ' || quote_ident(current_user::text) || ';';
    END IF;
    IF NOT has_table_privilege('realtime.webhooks', 'INSERT, UPDATE, DELETE') THEN
        RAISE EXCEPTION 'role "%" may not have webhooks', current_user
            USING ERRCODE = 'insufficient_privilege',
                  HINT = 'A superuser allows it: GRANT SELECT, INSERT, UPDATE, DELETE ON realtime.webhooks TO ' || quote_ident(current_user::text) || ';';
    END IF;
END $$;

-- What a webhook reads, checked and written as it is stored: tables as schema-qualified names
-- of watched tables, events upper-cased; the role one the caller may act as.
CREATE FUNCTION realtime.webhook_checked(
    url text, INOUT tables text[], topics text[], INOUT events text[], filter text,
    acts_as regrole, headers jsonb, secret text)
LANGUAGE plpgsql AS $$
DECLARE
    t text;
    rel regclass;
    h text;
    checked text[] := '{}';
BEGIN
    IF url IS NULL OR url !~* '^https?://[^/?#[:space:]]+[^[:space:]]*$' OR length(url) > 2048 THEN
        RAISE EXCEPTION 'webhook URL "%" is not an http or https URL', url
            USING ERRCODE = 'invalid_parameter_value', HINT = 'For example https://example.com/hooks/defects (at most 2048 characters).';
    END IF;
    FOREACH t IN ARRAY coalesce(tables, '{}') LOOP
        rel := to_regclass(t);
        IF rel IS NULL THEN
            RAISE EXCEPTION 'table "%" does not exist', t
                USING ERRCODE = 'undefined_table', HINT = 'Name a table as SQL would, schema-qualified if it is not in the search path.';
        END IF;
        -- realtime.capture_triggers, spelled out: its owner alone may read the view.
        IF NOT EXISTS (SELECT FROM pg_trigger tg JOIN pg_proc p ON p.oid = tg.tgfoid
                        WHERE tg.tgrelid = rel AND tg.tgparentid = 0
                          AND p.pronamespace = 'realtime'::regnamespace
                          AND p.prorettype = 'trigger'::regtype) THEN
            RAISE EXCEPTION 'table "%" is not watched', t
                USING ERRCODE = 'object_not_in_prerequisite_state', HINT = format('Run SELECT realtime_watch(%L) first.', rel::text);
        END IF;
        checked := checked || (SELECT format('%I.%I', n.nspname, c.relname)
                                 FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
                                WHERE c.oid = rel);
    END LOOP;
    tables := checked;
    IF EXISTS (SELECT FROM unnest(coalesce(topics, '{}')) u WHERE u IS NULL OR u = '' OR octet_length(u) > 255) THEN
        RAISE EXCEPTION 'a topic is empty or longer than 255 bytes'
            USING ERRCODE = 'invalid_parameter_value', HINT = 'Name the topics realtime_send() sends to.';
    END IF;
    IF cardinality(tables) + cardinality(coalesce(topics, '{}')) = 0 THEN
        RAISE EXCEPTION 'a webhook needs a table or a topic'
            USING ERRCODE = 'invalid_parameter_value', HINT = 'Pass tables => ''{defects}'' or topics => ''{alerts}''.';
    END IF;
    events := (SELECT array_agg(DISTINCT upper(trim(e)) ORDER BY upper(trim(e))) FROM unnest(events) e);
    IF NOT events <@ ARRAY['INSERT', 'UPDATE', 'DELETE', 'TRUNCATE'] THEN
        RAISE EXCEPTION 'events must be among insert, update, delete and truncate, not %', events
            USING ERRCODE = 'invalid_parameter_value', HINT = 'Leave events out for every event the tables are watched for.';
    END IF;
    PERFORM realtime.webhook_check_filter(filter);
    IF NOT pg_has_role(acts_as, 'MEMBER') THEN
        RAISE EXCEPTION 'a webhook of role "%" may not read as role "%"', current_user, acts_as
            USING ERRCODE = 'insufficient_privilege', HINT = 'A webhook reads as its owner or a role its owner is a member of.';
    END IF;
    IF EXISTS (SELECT FROM pg_roles r WHERE r.oid = acts_as AND (r.rolsuper OR r.rolbypassrls)) THEN
        RAISE EXCEPTION 'a webhook may not read as role "%": it is a superuser or bypasses row-level security', acts_as
            USING ERRCODE = 'insufficient_privilege', HINT = 'Name a role whose reads row-level security and column privileges govern.';
    END IF;
    IF jsonb_typeof(headers) IS DISTINCT FROM 'object' THEN
        RAISE EXCEPTION 'headers must be a JSON object of names and text values'
            USING ERRCODE = 'invalid_parameter_value', HINT = 'For example ''{"authorization": "Bearer ..."}''.';
    END IF;
    IF (SELECT count(*) FROM jsonb_object_keys(headers)) > 32 THEN
        RAISE EXCEPTION 'a webhook sends at most 32 headers of its own'
            USING ERRCODE = 'invalid_parameter_value', HINT = 'Every request carries them all; keep what the receiver needs.';
    END IF;
    FOR h IN SELECT k FROM jsonb_each(headers) AS e(k, v) LOOP
        IF h !~ '^[A-Za-z0-9!#$%&''*+.^_`|~-]{1,64}$' OR jsonb_typeof(headers -> h) <> 'string'
           OR (headers ->> h) ~ '[\r\n\x00]' OR octet_length(headers ->> h) > 4096 THEN
            RAISE EXCEPTION 'header "%" is not a header name with a text value', h
                USING ERRCODE = 'invalid_parameter_value', HINT = 'Header values are strings on one line, at most 4096 bytes.';
        END IF;
        IF lower(h) ~ '^(webhook-.*|content-type|content-length|host|transfer-encoding|connection)$' THEN
            RAISE EXCEPTION 'header "%" is set by the worker', h
                USING ERRCODE = 'invalid_parameter_value', HINT = 'The webhook-* headers carry the signature; the rest follow from the request.';
        END IF;
    END LOOP;
    IF secret IS NOT NULL AND (secret !~ '^whsec_[A-Za-z0-9+/]{32,88}={0,2}$'
        OR length(decode(substr(secret, 7), 'base64')) NOT BETWEEN 24 AND 64) THEN
        RAISE EXCEPTION 'the secret is not a Standard Webhooks secret'
            USING ERRCODE = 'invalid_parameter_value', HINT = 'Give whsec_ and 24 to 64 bytes in base64, or leave it out for a new random one.';
    END IF;
END $$;

CREATE FUNCTION realtime_webhook_create(
    name text, url text, tables text[] DEFAULT '{}', topics text[] DEFAULT '{}',
    events text[] DEFAULT NULL, filter text DEFAULT NULL, acts_as regrole DEFAULT current_user::regrole,
    claims jsonb DEFAULT NULL, secret text DEFAULT NULL, headers jsonb DEFAULT '{}',
    batch_size integer DEFAULT 1, timeout interval DEFAULT '10 seconds')
RETURNS text LANGUAGE plpgsql AS $$
DECLARE
    checked record;
    key text := coalesce(secret, 'whsec_' || encode(uuid_send(gen_random_uuid()) || uuid_send(gen_random_uuid()), 'base64'));
BEGIN
    PERFORM realtime.webhook_allowed();
    IF name IS NULL OR name !~ '^[A-Za-z0-9_.-]{1,63}$' THEN
        RAISE EXCEPTION 'webhook name "%" is not 1 to 63 letters, digits, dots, dashes or underscores', name
            USING ERRCODE = 'invalid_parameter_value', HINT = 'For example defects-to-fn.';
    END IF;
    IF EXISTS (SELECT FROM realtime.webhooks w WHERE w.name = realtime_webhook_create.name) THEN
        RAISE EXCEPTION 'webhook "%" already exists', name
            USING ERRCODE = 'duplicate_object', HINT = 'realtime_webhook_alter() changes it; realtime_webhook_drop() removes it.';
    END IF;
    checked := realtime.webhook_checked(url, tables, topics, events, filter, acts_as, headers, secret);
    INSERT INTO realtime.webhooks AS w (name, url, tables, topics, events, filter, acts_as, claims,
                                        secret, headers, batch_size, timeout, position)
    VALUES (name, url, checked.tables, coalesce(topics, '{}'), checked.events, nullif(filter, ''),
            acts_as, claims, key, coalesce(headers, '{}'), batch_size, timeout,
            realtime.webhook_position());
    RETURN key;
END $$;
COMMENT ON FUNCTION realtime_webhook_create(text, text, text[], text[], text[], text, regrole, jsonb, text, jsonb, integer, interval)
    IS 'POST every change of the tables (and message of the topics) committed from now on to url, as acts_as with claims would see it; returns the signing secret';

CREATE FUNCTION realtime_webhook_alter(
    name text, url text DEFAULT NULL, tables text[] DEFAULT NULL, topics text[] DEFAULT NULL,
    events text[] DEFAULT NULL, filter text DEFAULT NULL, acts_as regrole DEFAULT NULL,
    claims jsonb DEFAULT NULL, secret text DEFAULT NULL, headers jsonb DEFAULT NULL,
    batch_size integer DEFAULT NULL, timeout interval DEFAULT NULL)
RETURNS void LANGUAGE plpgsql AS $$
DECLARE
    w realtime.webhooks;
    checked record;
BEGIN
    PERFORM realtime.webhook_allowed();
    SELECT * INTO w FROM realtime.webhooks x WHERE x.name = realtime_webhook_alter.name FOR UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'webhook "%" does not exist', realtime_webhook_alter.name
            USING ERRCODE = 'undefined_object', HINT = 'realtime_webhooks lists the webhooks you own.';
    END IF;
    checked := realtime.webhook_checked(coalesce(url, w.url), coalesce(tables, w.tables), coalesce(topics, w.topics),
        coalesce(events, w.events), coalesce(filter, w.filter), coalesce(acts_as, w.acts_as),
        coalesce(headers, w.headers), secret);
    UPDATE realtime.webhooks x SET
        url = coalesce(realtime_webhook_alter.url, x.url),
        tables = checked.tables,
        topics = coalesce(realtime_webhook_alter.topics, x.topics),
        events = CASE WHEN realtime_webhook_alter.events = '{}' THEN NULL ELSE checked.events END,
        filter = nullif(coalesce(realtime_webhook_alter.filter, x.filter), ''),
        acts_as = coalesce(realtime_webhook_alter.acts_as, x.acts_as),
        claims = CASE WHEN realtime_webhook_alter.claims = 'null' THEN NULL
                      ELSE coalesce(realtime_webhook_alter.claims, x.claims) END,
        secret = coalesce(realtime_webhook_alter.secret, x.secret),
        headers = coalesce(realtime_webhook_alter.headers, x.headers),
        batch_size = coalesce(realtime_webhook_alter.batch_size, x.batch_size),
        timeout = coalesce(realtime_webhook_alter.timeout, x.timeout),
        generation = x.generation + 1
    WHERE x.id = w.id;
END $$;
COMMENT ON FUNCTION realtime_webhook_alter(text, text, text[], text[], text[], text, regrole, jsonb, text, jsonb, integer, interval)
    IS 'Change what a webhook sends and how; arguments left out stay (events => ''{}'' for every event, filter => '''' for none, claims => ''null'' for none)';

-- Pause, resume, or replay after `since`, the caller's webhook `name`; delivery starts again.
CREATE FUNCTION realtime.webhook_update(name text, paused boolean, since bigint) RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM realtime.webhook_allowed();
    UPDATE realtime.webhooks w SET
        paused = webhook_update.paused,
        position = coalesce(webhook_update.since, w.position),
        generation = w.generation + 1,
        replayed_generation = CASE WHEN webhook_update.since IS NULL THEN w.replayed_generation
                                   ELSE w.generation + 1 END,
        disabled_at = CASE WHEN webhook_update.paused THEN w.disabled_at END,
        disabled_reason = CASE WHEN webhook_update.paused THEN w.disabled_reason END,
        failing_since = CASE WHEN webhook_update.paused THEN w.failing_since END
    WHERE w.name = webhook_update.name;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'webhook "%" does not exist', webhook_update.name
            USING ERRCODE = 'undefined_object', HINT = 'realtime_webhooks lists the webhooks you own.';
    END IF;
END $$;

CREATE FUNCTION realtime_webhook_pause(name text) RETURNS void LANGUAGE sql
BEGIN ATOMIC SELECT realtime.webhook_update(name, true, NULL); END;
COMMENT ON FUNCTION realtime_webhook_pause(text) IS 'Stop sending; realtime_webhook_resume() goes on from where it stopped';

CREATE FUNCTION realtime_webhook_resume(name text) RETURNS void LANGUAGE sql
BEGIN ATOMIC SELECT realtime.webhook_update(name, false, NULL); END;
COMMENT ON FUNCTION realtime_webhook_resume(text) IS 'Send again, a paused or disabled webhook included, from the last acknowledged position';

CREATE FUNCTION realtime_webhook_replay(name text, since_position bigint) RETURNS void LANGUAGE sql
BEGIN ATOMIC SELECT realtime.webhook_update(name, false, since_position); END;
COMMENT ON FUNCTION realtime_webhook_replay(text, bigint) IS 'Send again everything after since_position that the history still holds (and resume)';

CREATE FUNCTION realtime_webhook_drop(name text) RETURNS boolean LANGUAGE plpgsql AS $$
BEGIN
    PERFORM realtime.webhook_allowed();
    DELETE FROM realtime.webhooks w WHERE w.name = realtime_webhook_drop.name;
    RETURN FOUND;
END $$;
COMMENT ON FUNCTION realtime_webhook_drop(text) IS 'Remove a webhook and its deliveries; whether it existed';
