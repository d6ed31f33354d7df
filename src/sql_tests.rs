//! In-process tests of the SQL surface (`cargo pgrx test`). Error SQLSTATEs and hints are
//! checked from a real client in tests/sql_surface.rs.

#[pgrx::pg_schema]
mod tests {
    use pgrx::prelude::*;

    fn events_of(table: &str) -> Option<Vec<String>> {
        Spi::get_one::<Vec<String>>(&format!(
            "SELECT (SELECT events FROM realtime_watched() WHERE tbl = '{table}'::regclass)"
        ))
        .unwrap()
    }

    fn trigger_count(table: &str) -> i64 {
        Spi::get_one::<i64>(&format!(
            "SELECT count(*) FROM pg_trigger WHERE tgrelid = '{table}'::regclass AND tgname LIKE 'realtime_ext_%'"
        ))
        .unwrap()
        .unwrap()
    }

    #[pg_test]
    fn watch_is_idempotent_and_updates_events() {
        Spi::run("CREATE TABLE t_watch (id int primary key, v text)").unwrap();
        Spi::run("SELECT realtime_watch('t_watch')").unwrap();
        Spi::run("SELECT realtime_watch('t_watch')").unwrap();
        assert_eq!(
            events_of("t_watch"),
            Some(vec![
                "INSERT".into(),
                "UPDATE".into(),
                "DELETE".into(),
                "TRUNCATE".into()
            ])
        );
        // An ordinary table: a statement trigger with transition tables per row operation.
        assert_eq!(trigger_count("t_watch"), 4);
        let transition_tables = Spi::get_one::<String>(
            "SELECT string_agg(tgname || ':' || coalesce(tgoldtable, '-') || ':' || coalesce(tgnewtable, '-'), ' ' ORDER BY tgname)
               FROM pg_trigger WHERE tgrelid = 't_watch'::regclass AND tgtype & 1 = 0 AND tgtype & 32 = 0",
        )
        .unwrap();
        assert_eq!(
            transition_tables.as_deref(),
            Some(
                "realtime_ext_capture_delete:realtime_old:- \
                 realtime_ext_capture_insert:-:realtime_new \
                 realtime_ext_capture_update:realtime_old:realtime_new"
            )
        );
        Spi::run("SELECT realtime_watch('t_watch', ARRAY['update', 'DELETE'])").unwrap();
        assert_eq!(
            events_of("t_watch"),
            Some(vec!["UPDATE".into(), "DELETE".into()])
        );
        assert_eq!(trigger_count("t_watch"), 2);
        Spi::run("SELECT realtime_watch('t_watch', ARRAY['TRUNCATE'])").unwrap();
        assert_eq!(events_of("t_watch"), Some(vec!["TRUNCATE".into()]));
    }

    #[pg_test]
    fn unwatch_is_idempotent() {
        Spi::run("CREATE TABLE t_unwatch (id int); SELECT realtime_watch('t_unwatch')").unwrap();
        Spi::run("SELECT realtime_unwatch('t_unwatch')").unwrap();
        Spi::run("SELECT realtime_unwatch('t_unwatch')").unwrap();
        assert_eq!(events_of("t_unwatch"), None);
        assert_eq!(trigger_count("t_unwatch"), 0);
    }

    #[pg_test]
    fn partitioned_tables_are_watched_once() {
        Spi::run(
            "CREATE TABLE t_parts (id int, r text) PARTITION BY LIST (r);
             CREATE TABLE t_parts_a PARTITION OF t_parts FOR VALUES IN ('a');
             SELECT realtime_watch('t_parts')",
        )
        .unwrap();
        let watched = Spi::get_one::<i64>(
            "SELECT count(*) FROM realtime_watched() WHERE tbl::text LIKE 't_parts%'",
        )
        .unwrap();
        assert_eq!(
            watched,
            Some(1),
            "partitions inherit the trigger but are not listed separately"
        );
        assert_eq!(
            trigger_count("t_parts_a"),
            1,
            "row trigger cloned onto the partition"
        );
    }

    #[pg_test]
    fn dropping_a_watched_table_leaves_nothing() {
        Spi::run("CREATE TABLE t_dropped (id int); SELECT realtime_watch('t_dropped'); DROP TABLE t_dropped").unwrap();
        let stale = Spi::get_one::<i64>(
            "SELECT count(*) FROM pg_depend d WHERE d.classid = 'pg_trigger'::regclass
               AND NOT EXISTS (SELECT FROM pg_trigger t WHERE t.oid = d.objid)",
        )
        .unwrap();
        assert_eq!(stale, Some(0));
        assert_eq!(
            Spi::get_one::<i64>(
                "SELECT count(*) FROM realtime_watched() WHERE tbl::text = 't_dropped'"
            )
            .unwrap(),
            Some(0)
        );
    }

    #[pg_test]
    fn triggers_depend_on_the_extension() {
        Spi::run("CREATE TABLE t_dep (id int); SELECT realtime_watch('t_dep')").unwrap();
        let deps = Spi::get_one::<i64>(
            "SELECT count(*) FROM pg_depend d JOIN pg_trigger t ON t.oid = d.objid
              WHERE t.tgrelid = 't_dep'::regclass AND d.refclassid = 'pg_extension'::regclass AND d.deptype = 'a'",
        )
        .unwrap();
        assert_eq!(deps, Some(4));
    }

    #[pg_test(error = "\"t_view\" is a view")]
    fn views_are_refused() {
        Spi::run("CREATE VIEW t_view AS SELECT 1 AS x").unwrap();
        Spi::run("SELECT realtime_watch('t_view')").unwrap();
    }

    #[pg_test(error = "unknown event \"UPSERT\"")]
    fn unknown_events_are_refused() {
        Spi::run("CREATE TABLE t_ev (id int)").unwrap();
        Spi::run("SELECT realtime_watch('t_ev', ARRAY['INSERT', 'UPSERT'])").unwrap();
    }
}
