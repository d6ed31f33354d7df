-- Internal objects live in schema "realtime"; user-facing functions in the install schema.
CREATE SCHEMA IF NOT EXISTS realtime;
COMMENT ON SCHEMA realtime IS 'realtime_ext internals: trigger functions used by realtime_watch()';
