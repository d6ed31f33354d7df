//! Code a table owner wrote never runs with the worker's rights, and owners can watch their own
//! tables (and nothing else) without being superusers.
mod common;
use common::{token, unix_now, Cluster, Ws, AUTHENTICATOR};
use serde_json::{json, Value};

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

/// A filter on each of `table`'s trapped columns (a domain CHECK, a cast to json, a domain
/// over a composite) is refused, and mallory is no superuser after any of them.
fn filters_on_the_traps_are_refused(ws: &mut Ws, db: &mut postgres::Client, table: &str) {
    for (filter, code) in [
        ("v=eq.1", "invalid_filter_value"),
        ("m=eq.happy", "invalid_filter_value"),
        ("p=eq.(1,2)", "invalid_filter"),
    ] {
        let reply = ws.try_subscribe("x", table, Some(filter));
        assert_eq!(
            (reply["type"].as_str(), reply["code"].as_str()),
            (Some("error"), Some(code)),
            "{table} {filter}: {reply}"
        );
        assert!(
            !is_superuser(db, "mallory"),
            "{table} {filter} made mallory superuser"
        );
    }
}

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
    // Each either refused or run as mallory, who may not make herself superuser.
    filters_on_the_traps_are_refused(&mut ws, &mut db, "bait");
    // The refusal says why: the code ran read-only, as the subscriber, and was denied.
    let reply = ws.try_subscribe("x", "bait", Some("v=eq.1"));
    assert!(
        reply["message"]
            .as_str()
            .unwrap()
            .contains("cannot execute ALTER ROLE in a read-only transaction"),
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

/// What `sql` returns in the session PostgREST would give `role` with `claims`: logged in as
/// the authenticator, `SET ROLE role`, the claims set. Each row's first column.
fn as_postgrest(db: &mut postgres::Client, role: &str, claims: &Value, sql: &str) -> Vec<i32> {
    let mut tx = db.transaction().unwrap();
    tx.batch_execute(&format!(
        "SET LOCAL SESSION AUTHORIZATION {AUTHENTICATOR}; SET LOCAL ROLE {role};
         SELECT set_config('request.jwt.claims', '{}', true);",
        claims.to_string().replace('\'', "''")
    ))
    .unwrap();
    let ids = tx
        .query(sql, &[])
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    tx.rollback().unwrap();
    ids
}

#[test]
fn code_a_filter_reaches_on_a_superuser_s_table_runs_as_the_subscriber() {
    let cluster = Cluster::start("security_superuser_table", &[]);
    let mut db = cluster.client();
    db.batch_execute(MALLORY).unwrap();
    // The table is the superuser's; only the column types are mallory's.
    db.batch_execute(
        "CREATE TABLE su_bait (id int, v trap, m mood, p trapped_pair, ok int);
         SELECT realtime_watch('su_bait');",
    )
    .unwrap();
    let pid = cluster.worker_pid();
    let mut ws = cluster.ws();
    filters_on_the_traps_are_refused(&mut ws, &mut db, "su_bait");
    // SQL typed by the same role runs the same CHECK as that role, and fails too.
    let err = db
        .batch_execute(&format!(
            "BEGIN; SET LOCAL ROLE {}; SELECT CAST('1' AS trap); COMMIT",
            common::READER
        ))
        .unwrap_err();
    // 15 says "must be superuser to alter superuser roles", 16 and later "permission denied
    // to alter role": the same refusal.
    let err = err.as_db_error().unwrap();
    assert_eq!(err.code().code(), "42501", "{err:?}");
    assert!(
        format!("{} {:?}", err.message(), err.detail()).contains("SUPERUSER")
            || err.message().contains("superuser"),
        "{err:?}"
    );
    db.batch_execute("ROLLBACK").unwrap();
    assert!(!is_superuser(&mut db, "mallory"));
    ws.subscribe("ok", "su_bait", Some("ok=eq.7"));
    db.batch_execute("INSERT INTO su_bait (id, ok) VALUES (1, 6), (2, 7)")
        .unwrap();
    assert_eq!(ws.changes(1)[0]["new"]["id"], 2);
    assert_eq!(cluster.worker_pid(), pid);
}

/// Tables whose policies admit everything to a superuser session: by `session_user`, by
/// `is_superuser`, and through a function that reads both. Rows 1 and 4 are anyone's.
const ADMIN_BYPASS: &str = "
    CREATE ROLE web_user NOLOGIN;
    GRANT web_user TO realtime_authenticator;
    CREATE FUNCTION is_admin() RETURNS bool LANGUAGE sql STABLE AS
      $$ SELECT session_user = 'postgres' OR current_setting('is_superuser')::bool $$;
    CREATE TABLE by_session (id int PRIMARY KEY);
    CREATE POLICY p ON by_session USING (id IN (1, 4) OR session_user = 'postgres');
    CREATE TABLE by_setting (id int PRIMARY KEY);
    CREATE POLICY p ON by_setting USING (id IN (1, 4) OR current_setting('is_superuser') = 'on');
    CREATE TABLE by_function (id int PRIMARY KEY);
    CREATE POLICY p ON by_function USING (id IN (1, 4) OR is_admin());
    CREATE TABLE audited (id int PRIMARY KEY);
    CREATE TABLE audit (at timestamptz DEFAULT now(), who text);
    GRANT INSERT ON audit TO web_user;
    CREATE FUNCTION audit_read(i int) RETURNS bool LANGUAGE plpgsql AS
      $$ BEGIN INSERT INTO audit (who) VALUES (current_user); RETURN i IN (1, 4); END $$;
    CREATE POLICY p ON audited USING (audit_read(id));
";

#[test]
fn policies_are_judged_in_the_session_postgrest_would_have() {
    let cluster = Cluster::start("security_postgrest_session", &[]);
    let mut db = cluster.client();
    db.batch_execute(ADMIN_BYPASS).unwrap();
    let tables = ["by_session", "by_setting", "by_function"];
    for t in tables.iter().chain(["audited"].iter()) {
        db.batch_execute(&format!(
            "ALTER TABLE {t} ENABLE ROW LEVEL SECURITY; GRANT SELECT ON {t} TO web_user;
             INSERT INTO {t} VALUES (1), (2), (3); SELECT realtime_watch('{t}');"
        ))
        .unwrap();
    }
    db.batch_execute("CREATE TABLE sentinel (id int); GRANT SELECT ON sentinel TO web_user; SELECT realtime_watch('sentinel')")
        .unwrap();
    let claims = json!({"role": "web_user", "sub": "u1", "exp": unix_now() + 600});
    let mut ws = Ws::connect_as(cluster.ws_port, &token(claims.clone()));
    ws.subscribe("sentinel", "sentinel", None);
    for t in tables {
        let sql = as_postgrest(
            &mut db,
            "web_user",
            &claims,
            &format!("SELECT id FROM {t} ORDER BY id"),
        );
        assert_eq!(sql, vec![1], "{t}: SQL's own answer");
        ws.send(json!({"type": "subscribe", "id": t, "table": t, "snapshot": true}));
        let reply = ws.recv();
        assert_eq!(reply["type"], "subscribed", "{reply}");
        let mut rows = Vec::new();
        loop {
            let m = ws.recv();
            match m["type"].as_str() {
                Some("snapshot") => rows.extend(
                    m["rows"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .map(|r| r["id"].as_i64().unwrap() as i32),
                ),
                Some("snapshot_end") => break,
                _ => panic!("{t}: before snapshot_end: {m}"),
            }
        }
        assert_eq!(rows, sql, "{t}: snapshot");
    }
    for t in tables {
        db.batch_execute(&format!("INSERT INTO {t} VALUES (4), (5)"))
            .unwrap();
        let sql = as_postgrest(
            &mut db,
            "web_user",
            &claims,
            &format!("SELECT id FROM {t} WHERE id > 3 ORDER BY id"),
        );
        assert_eq!(sql, vec![4], "{t}: SQL's own answer");
    }
    let live = until_sentinel(&mut db, &mut ws);
    for t in tables {
        let ids: Vec<i64> = live
            .iter()
            .filter(|m| m["table"] == t)
            .map(|m| m["new"]["id"].as_i64().unwrap())
            .collect();
        assert_eq!(ids, vec![4], "{t}: live changes");
    }

    // Judging is read-only, as PostgREST's reads are: a policy that writes an audit row
    // fails there (SQL says so too) and commits nothing, per change or per snapshot.
    let err = db
        .batch_execute(&format!(
            "BEGIN READ ONLY; SET LOCAL SESSION AUTHORIZATION {AUTHENTICATOR}; SET LOCAL ROLE web_user;
             SELECT * FROM audited; COMMIT"
        ))
        .unwrap_err();
    let err = err.as_db_error().unwrap().message().to_string();
    assert!(err.contains("read-only"), "{err}");
    db.batch_execute("ROLLBACK").unwrap();
    ws.subscribe("audited", "audited", None);
    db.batch_execute("INSERT INTO audited VALUES (4), (5)")
        .unwrap();
    let seen = until_sentinel(&mut db, &mut ws);
    assert!(
        seen.iter()
            .all(|m| m["type"] == "gap" && m["reason"] == "policy_failed")
            && !seen.is_empty(),
        "{seen:?}"
    );
    ws.send(json!({"type": "subscribe", "id": "audited-snapshot", "table": "audited", "snapshot": true}));
    assert_eq!(ws.recv()["type"], "subscribed");
    let m = ws.recv();
    assert_eq!(m["code"], "snapshot_failed", "{m}");
    let written: i64 = db
        .query_one("SELECT count(*) FROM audit", &[])
        .unwrap()
        .get(0);
    assert_eq!(written, 0, "judging committed audit rows");
}

/// Insert into `sentinel` (which `ws` is subscribed to) and return every message before its
/// change: what was committed before it.
fn until_sentinel(db: &mut postgres::Client, ws: &mut Ws) -> Vec<Value> {
    db.batch_execute("INSERT INTO sentinel VALUES (1)").unwrap();
    ws.until_change_of("sentinel")
}

#[test]
fn unrelated_catalog_changes_do_not_cast_filter_values_again() {
    let cluster = Cluster::start("security_cast_cache", &[]);
    let mut db = cluster.client();
    db.batch_execute(
        "CREATE ROLE watcher NOLOGIN; GRANT watcher TO realtime_authenticator;
         CREATE FUNCTION noisy(v int) RETURNS bool LANGUAGE plpgsql AS
           $$ BEGIN RAISE LOG 'noisy check ran for %', v; RETURN true; END $$;
         CREATE DOMAIN noisy_int AS int CHECK (noisy(VALUE));
         CREATE TABLE casted (id int, v noisy_int); CREATE TABLE canary (id int);
         GRANT SELECT ON casted, canary TO watcher;
         SELECT realtime_watch('casted'); SELECT realtime_watch('canary');",
    )
    .unwrap();
    let runs = |cluster: &Cluster| cluster.log().matches("noisy check ran for 424242").count();
    let mut ws = Ws::connect_as(
        cluster.ws_port,
        &token(json!({"role": "watcher", "exp": unix_now() + 600})),
    );
    ws.subscribe("casted", "casted", Some("v=eq.424242"));
    assert_eq!(runs(&cluster), 1, "the filter value was cast once");
    // Each round is a catalog change that has the session authorize both its subscriptions
    // again (casted first): the canary's end shows it happened.
    for round in 0..5 {
        db.batch_execute("REVOKE SELECT ON canary FROM watcher")
            .unwrap();
        if round > 0 {
            ws.expect_ended("canary", "forbidden");
        }
        db.batch_execute("GRANT SELECT ON canary TO watcher")
            .unwrap();
        let deadline = std::time::Instant::now() + common::PATIENCE;
        while ws.try_subscribe("canary", "canary", None)["type"] != "subscribed" {
            assert!(
                std::time::Instant::now() < deadline,
                "canary not readable again"
            );
        }
    }
    db.batch_execute("REVOKE SELECT ON canary FROM watcher")
        .unwrap();
    ws.expect_ended("canary", "forbidden");
    assert_eq!(
        runs(&cluster),
        1,
        "the cast ran again for unrelated catalog changes"
    );
    // A change to the type itself casts again: the new CHECK refuses the value.
    db.batch_execute("ALTER DOMAIN noisy_int ADD CONSTRAINT small CHECK (VALUE < 1000)")
        .unwrap();
    let reply = ws.try_subscribe("again", "casted", Some("v=eq.424242"));
    assert_eq!(reply["code"], "invalid_filter_value", "{reply}");
    assert_eq!(runs(&cluster), 2);
}
