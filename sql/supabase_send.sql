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
