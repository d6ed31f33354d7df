-- What is watched is read straight from the triggers realtime_watch() creates: every trigger
-- that calls one of schema realtime's trigger functions (not partitions' clones of them).
CREATE VIEW realtime.capture_triggers AS
SELECT t.oid, t.tgrelid, t.tgname, t.tgtype
  FROM pg_trigger t
  JOIN pg_proc p ON p.oid = t.tgfoid
 WHERE p.pronamespace = 'realtime'::regnamespace
   AND p.prorettype = 'trigger'::regtype
   AND t.tgparentid = 0;

-- tgtype bits (PostgreSQL's pg_trigger.h): 4 INSERT, 8 DELETE, 16 UPDATE, 32 TRUNCATE.
CREATE VIEW realtime.watched AS
SELECT t.tgrelid::regclass AS tbl,
       bit_or(t.tgtype::int) AS tgtype,
       array_remove(ARRAY[
           CASE WHEN bit_or(t.tgtype::int) & 4  <> 0 THEN 'INSERT' END,
           CASE WHEN bit_or(t.tgtype::int) & 16 <> 0 THEN 'UPDATE' END,
           CASE WHEN bit_or(t.tgtype::int) & 8  <> 0 THEN 'DELETE' END,
           CASE WHEN bit_or(t.tgtype::int) & 32 <> 0 THEN 'TRUNCATE' END], NULL) AS events
  FROM realtime.capture_triggers t
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
       FROM realtime.capture_triggers t
      WHERE NOT EXISTS (SELECT FROM pg_depend d
                         WHERE d.classid = 'pg_trigger'::regclass AND d.objid = t.oid
                           AND d.refclassid = 'pg_extension'::regclass);
END
$$;
CREATE EVENT TRIGGER realtime_adopt_triggers ON ddl_command_end
    WHEN TAG IN ('CREATE TRIGGER') EXECUTE FUNCTION realtime.adopt_triggers();

-- Table owners call realtime_watch(); the triggers it creates call realtime.capture_*().
GRANT USAGE ON SCHEMA realtime TO PUBLIC;
GRANT SELECT ON realtime.capture_triggers, realtime.watched TO PUBLIC;
-- Internal entry points: only the event triggers below (security definer) call them.
REVOKE ALL ON FUNCTION realtime.depend_on_extension(regclass) FROM PUBLIC;
REVOKE ALL ON FUNCTION realtime.table_dropped(oid) FROM PUBLIC;
ALTER FUNCTION realtime.adopt_triggers() SECURITY DEFINER SET search_path = pg_catalog;

-- Subscriptions to a dropped table end (with reason table_dropped) once the DROP commits.
CREATE FUNCTION realtime.on_sql_drop() RETURNS event_trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog AS $$
BEGIN
    PERFORM realtime.table_dropped(o.objid)
       FROM pg_event_trigger_dropped_objects() o
      WHERE o.object_type = 'table' AND o.classid = 'pg_class'::regclass;
END
$$;
CREATE EVENT TRIGGER realtime_table_dropped ON sql_drop
    EXECUTE FUNCTION realtime.on_sql_drop();

-- A watched table may not join an inheritance tree: rows changed through a parent would be
-- reported under the parent's name, and direct changes to a child not at all.
CREATE FUNCTION realtime.refuse_inheritance() RETURNS event_trigger
LANGUAGE plpgsql SET search_path = pg_catalog AS $$
DECLARE
    watched regclass;
BEGIN
    SELECT w.tbl INTO watched
      FROM pg_event_trigger_ddl_commands() cmd
      JOIN pg_inherits i ON i.inhrelid = cmd.objid
      JOIN pg_class child ON child.oid = i.inhrelid AND NOT child.relispartition
      JOIN realtime.watched w ON w.tbl IN (i.inhrelid, i.inhparent)
     WHERE cmd.classid = 'pg_class'::regclass
     LIMIT 1;
    IF watched IS NOT NULL THEN
        RAISE EXCEPTION 'table "%" is watched by realtime_ext and cannot be part of an inheritance tree', watched
              USING ERRCODE = 'feature_not_supported',
                    HINT = 'Run SELECT realtime_unwatch(''' || watched::text || ''') first, or use declarative partitioning.';
    END IF;
END
$$;
CREATE EVENT TRIGGER realtime_refuse_inheritance ON ddl_command_end
    WHEN TAG IN ('CREATE TABLE', 'ALTER TABLE')
    EXECUTE FUNCTION realtime.refuse_inheritance();
