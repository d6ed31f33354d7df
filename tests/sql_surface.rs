//! The SQL surface from a real client: errors carry SQLSTATEs and hints, watching survives a
//! restart and a dump/restore, and DROP EXTENSION leaves nothing behind.
mod common;
use common::{pg_run, Cluster};
use postgres::error::SqlState;

fn refused(db: &mut postgres::Client, sql: &str, state: SqlState, hint_mentions: &str) -> String {
    let err = db.batch_execute(sql).expect_err(sql);
    let e = err.as_db_error().unwrap_or_else(|| panic!("{sql}: {err}"));
    assert_eq!(e.code(), &state, "{sql}: {}", e.message());
    let hint = e.hint().unwrap_or_else(|| panic!("{sql}: no hint"));
    assert!(
        hint.contains(hint_mentions),
        "{sql}: hint {hint:?} should mention {hint_mentions:?}"
    );
    e.message().to_string()
}

#[test]
fn errors_carry_sqlstate_and_hint() {
    let cluster = Cluster::start("sql_errors", &[]);
    let mut db = cluster.client();
    db.batch_execute(
        "CREATE TABLE t (id int);
         CREATE VIEW v AS SELECT 1 AS x;
         CREATE MATERIALIZED VIEW mv AS SELECT 1 AS x;
         CREATE FOREIGN DATA WRAPPER dummy; CREATE SERVER s FOREIGN DATA WRAPPER dummy;
         CREATE FOREIGN TABLE ft (a int) SERVER s;
         CREATE ROLE stranger LOGIN; GRANT ALL ON t TO stranger;",
    )
    .unwrap();
    refused(
        &mut db,
        "SELECT realtime_watch('v')",
        SqlState::WRONG_OBJECT_TYPE,
        "ordinary and partitioned tables",
    );
    refused(
        &mut db,
        "SELECT realtime_watch('mv')",
        SqlState::WRONG_OBJECT_TYPE,
        "ordinary and partitioned tables",
    );
    refused(
        &mut db,
        "SELECT realtime_watch('ft')",
        SqlState::WRONG_OBJECT_TYPE,
        "ordinary and partitioned tables",
    );
    refused(
        &mut db,
        "SELECT realtime_watch('pg_class')",
        SqlState::INSUFFICIENT_PRIVILEGE,
        "user tables",
    );
    refused(
        &mut db,
        "CREATE TEMP TABLE tmp (id int); SELECT realtime_watch('tmp')",
        SqlState::FEATURE_NOT_SUPPORTED,
        "permanent",
    );
    refused(
        &mut db,
        "SELECT realtime_watch('t', ARRAY[]::text[])",
        SqlState::INVALID_PARAMETER_VALUE,
        "INSERT",
    );
    refused(
        &mut db,
        "SELECT realtime_watch('t', ARRAY['MERGE'])",
        SqlState::INVALID_PARAMETER_VALUE,
        "INSERT",
    );
    let err = db
        .batch_execute("SELECT realtime_watch('no_such_table')")
        .unwrap_err();
    assert_eq!(err.code(), Some(&SqlState::UNDEFINED_TABLE));
    let mut stranger = postgres::Client::connect(
        &format!("{} user=stranger", cluster.conninfo("postgres")),
        postgres::NoTls,
    )
    .unwrap();
    refused(
        &mut stranger,
        "SELECT realtime_watch('t')",
        SqlState::INSUFFICIENT_PRIVILEGE,
        "owner",
    );
    // Nothing was half-done by the refusals.
    let watched: i64 = db
        .query_one("SELECT count(*) FROM realtime_watched()", &[])
        .unwrap()
        .get(0);
    assert_eq!(watched, 0);

    // The worker serves one database; elsewhere realtime_watch() says which setting to change.
    db.batch_execute("CREATE DATABASE other").unwrap();
    let mut other = cluster.client_to("other");
    other
        .batch_execute("CREATE EXTENSION realtime_ext; CREATE TABLE t (id int)")
        .unwrap();
    let message = refused(
        &mut other,
        "SELECT realtime_watch('t')",
        SqlState::OBJECT_NOT_IN_PREREQUISITE_STATE,
        "realtime.database",
    );
    assert!(message.contains("\"postgres\""), "{message}");
}

#[test]
fn refuses_to_load_unless_preloaded() {
    let cluster = Cluster::start_plain("not_preloaded", &["shared_preload_libraries = ''"]);
    let mut db = cluster.client();
    refused(
        &mut db,
        "CREATE EXTENSION realtime_ext",
        SqlState::OBJECT_NOT_IN_PREREQUISITE_STATE,
        "shared_preload_libraries",
    );
}

/// The events table "kept" is watched for.
fn kept_events(db: &mut postgres::Client) -> Vec<String> {
    let sql = "SELECT events FROM realtime_watched() WHERE tbl = 'kept'::regclass";
    db.query_one(sql, &[]).unwrap().get(0)
}

#[test]
fn watching_survives_restart_and_dump_restore_and_drop_extension_cleans_up() {
    let cluster = Cluster::start("lifecycle_sql", &[]);
    let mut db = cluster.client();
    db.batch_execute(
        "CREATE TABLE kept (id int PRIMARY KEY, v text);
         SELECT realtime_watch('kept', ARRAY['INSERT', 'DELETE']);",
    )
    .unwrap();

    cluster.restart();
    let mut db = cluster.client();
    assert_eq!(kept_events(&mut db), ["INSERT", "DELETE"]);
    let mut ws = cluster.ws();
    ws.subscribe("k", "kept", None);
    db.batch_execute("INSERT INTO kept VALUES (1, 'after restart')")
        .unwrap();
    assert_eq!(ws.changes(1)[0]["new"]["v"], "after restart");

    // pg_dump / pg_restore into a fresh copy of the served database.
    let dump = cluster.dir.join("dump.pgc");
    let port = cluster.port.to_string();
    pg_run(
        "pg_dump",
        &[
            "-h",
            "127.0.0.1",
            "-p",
            &port,
            "-U",
            "postgres",
            "-Fc",
            "-f",
            dump.to_str().unwrap(),
            "postgres",
        ],
    );
    drop(ws);
    db.batch_execute("DROP TABLE kept; DROP EXTENSION realtime_ext")
        .unwrap();
    pg_run(
        "pg_restore",
        &[
            "-h",
            "127.0.0.1",
            "-p",
            &port,
            "-U",
            "postgres",
            "-d",
            "postgres",
            dump.to_str().unwrap(),
        ],
    );
    assert_eq!(kept_events(&mut db), ["INSERT", "DELETE"]);
    let mut ws = cluster.ws();
    ws.subscribe("k", "kept", None);
    db.batch_execute("INSERT INTO kept VALUES (2, 'after restore')")
        .unwrap();
    assert_eq!(ws.changes(1)[0]["new"]["v"], "after restore");

    // Restored triggers are adopted by the extension, so DROP EXTENSION needs no CASCADE and
    // leaves the tables alone.
    db.batch_execute("DROP EXTENSION realtime_ext").unwrap();
    let triggers: i64 = db
        .query_one(
            "SELECT count(*) FROM pg_trigger WHERE tgname LIKE 'realtime_ext_%'",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(triggers, 0);
    let schema: i64 = db
        .query_one(
            "SELECT count(*) FROM pg_namespace WHERE nspname = 'realtime'",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(schema, 0);
    let rows: i64 = db
        .query_one("SELECT count(*) FROM kept", &[])
        .unwrap()
        .get(0);
    assert_eq!(rows, 2);
    db.batch_execute("INSERT INTO kept VALUES (3, 'no extension')")
        .unwrap();
}

#[test]
fn tables_in_inheritance_trees_are_refused_before_and_after_watching() {
    let cluster = Cluster::start("sql_inheritance", &[]);
    let mut db = cluster.client();
    db.batch_execute(
        "CREATE TABLE par (id int, v text); CREATE TABLE kid (extra int) INHERITS (par);
         CREATE TABLE watched_one (id int); SELECT realtime_watch('watched_one');
         CREATE TABLE loner (id int);
         CREATE TABLE parts (id int) PARTITION BY RANGE (id);
         CREATE TABLE parts_1 PARTITION OF parts FOR VALUES FROM (0) TO (10);",
    )
    .unwrap();
    for sql in [
        "SELECT realtime_watch('kid')",
        "SELECT realtime_watch('par')",
    ] {
        let message = refused(
            &mut db,
            sql,
            SqlState::FEATURE_NOT_SUPPORTED,
            "declarative partitioning",
        );
        assert!(message.contains("inheritance"), "{message}");
    }
    // A watched table may not join a tree later, as a child or as a parent.
    for sql in [
        "CREATE TABLE child_of_watched () INHERITS (watched_one)",
        "ALTER TABLE watched_one INHERIT loner",
        "CREATE TABLE other (id int); ALTER TABLE other INHERIT watched_one",
    ] {
        refused(
            &mut db,
            sql,
            SqlState::FEATURE_NOT_SUPPORTED,
            "realtime_unwatch",
        );
    }
    // Partitions are not inheritance: still watched under the partitioned table.
    db.batch_execute(
        "SELECT realtime_watch('parts');
         CREATE TABLE parts_2 PARTITION OF parts FOR VALUES FROM (10) TO (20);",
    )
    .unwrap();
    // Unwatched, the table may join again.
    db.batch_execute(
        "SELECT realtime_unwatch('watched_one'); ALTER TABLE watched_one INHERIT loner",
    )
    .unwrap();
}
