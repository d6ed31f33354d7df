//! Code a table owner wrote never runs with the worker's rights, and owners can watch their own
//! tables (and nothing else) without being superusers.
mod common;
use common::Cluster;

/// Mallory owns a table and the code its column types run; she is no superuser.
const MALLORY: &str = "
    CREATE ROLE mallory LOGIN;
    GRANT CREATE ON SCHEMA public TO mallory;
    SET ROLE mallory;
    CREATE FUNCTION escalate(i int) RETURNS bool LANGUAGE plpgsql AS $$
    BEGIN
        ALTER ROLE mallory SUPERUSER;
        RETURN true;
    END $$;
    CREATE DOMAIN trap AS int CHECK (escalate(VALUE));
    CREATE TYPE mood AS ENUM ('happy', 'sad');
    CREATE FUNCTION mood_json(m mood) RETURNS json LANGUAGE plpgsql AS $$
    BEGIN
        PERFORM escalate(1);
        RETURN to_json(m::text);
    END $$;
    CREATE CAST (mood AS json) WITH FUNCTION mood_json(mood);
    CREATE TYPE pair AS (a int, b int);
    CREATE DOMAIN trapped_pair AS pair CHECK (escalate((VALUE).a));
    CREATE TABLE bait (id int, v trap, m mood, p trapped_pair, ok int);
    RESET ROLE;
    SELECT realtime_watch('bait');
";

fn is_superuser(db: &mut postgres::Client, role: &str) -> bool {
    db.query_one("SELECT rolsuper FROM pg_roles WHERE rolname = $1", &[&role])
        .unwrap()
        .get(0)
}

#[test]
fn filter_values_never_run_user_code_as_the_worker() {
    let cluster = Cluster::start("security_escalation", &[]);
    let mut db = cluster.client();
    db.batch_execute(MALLORY).unwrap();
    let pid = cluster.worker_pid();
    let mut ws = cluster.ws();
    // A domain CHECK, a cast to json, and a domain over a composite: each either refused or
    // run as mallory, who may not make herself superuser.
    for (filter, code) in [
        ("v=eq.1", "invalid_filter_value"),
        ("m=eq.happy", "invalid_filter_value"),
        ("p=eq.(1,2)", "invalid_filter"),
    ] {
        let reply = ws.try_subscribe("x", "bait", Some(filter));
        assert_eq!(reply["type"], "error", "{filter}: {reply}");
        assert_eq!(reply["code"], code, "{filter}: {reply}");
        assert!(
            !is_superuser(&mut db, "mallory"),
            "{filter} made mallory superuser"
        );
    }
    // The refusal says why: the code ran as mallory and was denied.
    let reply = ws.try_subscribe("x", "bait", Some("v=eq.1"));
    assert!(
        reply["message"]
            .as_str()
            .unwrap()
            .contains("must be superuser to alter superuser roles"),
        "{reply}"
    );
    // The worker is unharmed and ordinary filters on the table still work.
    ws.subscribe("ok", "bait", Some("ok=eq.7"));
    db.batch_execute("INSERT INTO bait (id, ok) VALUES (1, 6), (2, 7)")
        .unwrap();
    assert_eq!(ws.changes(1)[0]["new"]["id"], 2);
    assert_eq!(cluster.worker_pid(), pid);
}

#[test]
fn user_schemas_cannot_capture_the_worker_s_function_calls() {
    let cluster = Cluster::start("security_search_path", &[]);
    let mut db = cluster.client();
    db.batch_execute(MALLORY).unwrap();
    // An overload in public that would be a better match than pg_catalog's if the worker
    // resolved names through public.
    db.batch_execute(
        "SET ROLE mallory;
         CREATE FUNCTION public.to_json(i int) RETURNS json LANGUAGE plpgsql AS $$
         BEGIN PERFORM escalate(1); RETURN '1'::json; END $$;
         CREATE FUNCTION public.parse_ident(t text) RETURNS text[] LANGUAGE plpgsql AS $$
         BEGIN PERFORM escalate(1); RETURN ARRAY['bait']; END $$;
         RESET ROLE;",
    )
    .unwrap();
    let mut ws = cluster.ws();
    ws.subscribe("ok", "bait", Some("ok=eq.7"));
    assert!(!is_superuser(&mut db, "mallory"));
}

#[test]
fn owners_watch_their_own_tables_and_nothing_else() {
    let cluster = Cluster::start("security_owners", &[]);
    let mut admin = cluster.client();
    admin
        .batch_execute(
            "CREATE ROLE alice LOGIN; CREATE ROLE bob LOGIN; CREATE ROLE team;
             GRANT team TO bob; GRANT CREATE ON SCHEMA public TO alice, team;
             CREATE TABLE admins_table (id int);",
        )
        .unwrap();
    let mut alice = cluster.client_as("alice");
    alice
        .batch_execute(
            "CREATE TABLE alices (id int);
             SELECT realtime_watch('alices');
             SELECT realtime_watch('alices', ARRAY['INSERT']);",
        )
        .unwrap();
    let mut ws = cluster.ws();
    ws.subscribe("a", "alices", None);
    alice
        .batch_execute("INSERT INTO alices VALUES (1)")
        .unwrap();
    assert_eq!(ws.changes(1)[0]["new"]["id"], 1);
    let listed: Vec<String> = alice
        .query("SELECT tbl::text FROM realtime_watched()", &[])
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(listed, vec!["alices"]);

    // Not her table: refused with insufficient_privilege, nothing created.
    for sql in [
        "SELECT realtime_watch('admins_table')",
        "SELECT realtime_unwatch('alices')",
    ] {
        let mut bob = cluster.client_as("bob");
        let err = bob.batch_execute(sql).unwrap_err();
        let db_err = err.as_db_error().expect("a database error");
        assert_eq!(db_err.code().code(), "42501", "{sql}: {db_err}");
        assert!(db_err.hint().is_some(), "{sql}: no hint");
    }
    // A member of the owning role may.
    let mut bob = cluster.client_as("bob");
    bob.batch_execute(
        "SET ROLE team; CREATE TABLE teams (id int); RESET ROLE;
         SELECT realtime_watch('teams'); SELECT realtime_unwatch('teams');",
    )
    .unwrap();
    // Internal entry points are not for them.
    let err = alice
        .batch_execute("SELECT realtime.table_dropped('alices'::regclass)")
        .unwrap_err();
    assert_eq!(err.as_db_error().unwrap().code().code(), "42501");
    alice
        .batch_execute("SELECT realtime_unwatch('alices')")
        .unwrap();
    ws.expect_ended("a", "table_unwatched");
}
