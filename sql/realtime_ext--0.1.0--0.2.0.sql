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
