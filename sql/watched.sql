-- What is watched is read straight from the triggers realtime_watch() creates.
-- tgtype bits: 4 INSERT, 8 DELETE, 16 UPDATE, 32 TRUNCATE.
CREATE VIEW realtime.watched AS
SELECT t.tgrelid::regclass AS tbl,
       bit_or(t.tgtype::int) AS tgtype,
       array_remove(ARRAY[
           CASE WHEN bit_or(t.tgtype::int) & 4  <> 0 THEN 'INSERT' END,
           CASE WHEN bit_or(t.tgtype::int) & 16 <> 0 THEN 'UPDATE' END,
           CASE WHEN bit_or(t.tgtype::int) & 8  <> 0 THEN 'DELETE' END,
           CASE WHEN bit_or(t.tgtype::int) & 32 <> 0 THEN 'TRUNCATE' END], NULL) AS events
  FROM pg_trigger t
 WHERE t.tgname IN ('realtime_ext_capture_row', 'realtime_ext_capture_insert',
                     'realtime_ext_capture_update', 'realtime_ext_capture_delete',
                     'realtime_ext_capture_truncate')
   AND t.tgparentid = 0
 GROUP BY t.tgrelid;

CREATE FUNCTION realtime_watched() RETURNS TABLE (tbl regclass, events text[])
LANGUAGE sql STABLE AS $$
    SELECT w.tbl, w.events FROM realtime.watched w ORDER BY w.tbl::text
$$;
COMMENT ON FUNCTION realtime_watched() IS 'Tables watched by realtime_watch() and their events';

-- pg_restore recreates watched tables' triggers with plain CREATE TRIGGER; adopt them so that
-- DROP EXTENSION can still remove them without CASCADE.
CREATE FUNCTION realtime.adopt_triggers() RETURNS event_trigger
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM realtime.depend_on_extension(t.tgrelid)
       FROM pg_trigger t
      WHERE t.tgname IN ('realtime_ext_capture_row', 'realtime_ext_capture_insert',
                     'realtime_ext_capture_update', 'realtime_ext_capture_delete',
                     'realtime_ext_capture_truncate')
        AND t.tgparentid = 0
        AND NOT EXISTS (SELECT FROM pg_depend d
                         WHERE d.classid = 'pg_trigger'::regclass AND d.objid = t.oid
                           AND d.refclassid = 'pg_extension'::regclass);
END
$$;
CREATE EVENT TRIGGER realtime_adopt_triggers ON ddl_command_end
    WHEN TAG IN ('CREATE TRIGGER') EXECUTE FUNCTION realtime.adopt_triggers();
