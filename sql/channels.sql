-- NOTIFY channels the worker relays to subscribers of the channel of the same name, and who
-- may receive them. Written by realtime_relay() and realtime_unrelay(); dumped with the
-- database, so relays survive pg_dump/pg_restore as well as restarts.
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
