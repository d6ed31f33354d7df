//! Every subscriber receives exactly what PostgreSQL's own SELECT, as its role and with its
//! claims, returns: an authorization matrix of principals × tables (no privilege, table
//! GRANT, column GRANT, row security of several shapes, FORCE, BYPASSRLS) × a sequence of
//! INSERTs, UPDATEs into and out of view, DELETEs and a TRUNCATE. The expected messages are
//! worked out from PostgreSQL's answers before and after each statement, not written by hand.

mod common;

use common::{token, Cluster, Ws};
use serde_json::{json, Map, Value};
use std::collections::BTreeMap;

const COLUMNS: [&str; 6] = ["id", "owner", "team", "secret", "public", "archived"];

const SETUP: &str = "
    CREATE ROLE app_user NOLOGIN;
    CREATE ROLE app_owner NOLOGIN;
    CREATE ROLE app_bypass NOLOGIN BYPASSRLS;
    GRANT app_user, app_owner, app_bypass TO realtime_authenticator;
    CREATE FUNCTION uid() RETURNS text LANGUAGE sql STABLE
        AS $$ SELECT current_setting('request.jwt.claims', true)::json->>'sub' $$;
    CREATE TABLE members (team int, member text);
    INSERT INTO members VALUES (1, 'alice'), (2, 'bob'), (2, 'alice');
    GRANT SELECT ON members TO app_user, app_owner, realtime_reader;
    CREATE TABLE sentinel (id int);
    GRANT SELECT ON sentinel TO app_user, app_owner, app_bypass;
    SELECT realtime_watch('sentinel');
";

/// Each table: its name and what is done to it after it is created like the others.
const TABLES: [(&str, &str); 9] = [
    ("t_nopriv", ""),
    ("t_table", "GRANT SELECT ON t_table TO app_user, app_owner, app_bypass;"),
    (
        "t_column",
        "GRANT SELECT (id, owner, team) ON t_column TO app_user, app_owner, app_bypass;",
    ),
    (
        "t_owner",
        "ALTER TABLE t_owner ENABLE ROW LEVEL SECURITY;
         CREATE POLICY mine ON t_owner USING (owner = current_setting('request.jwt.claims', true)::json->>'sub');
         GRANT SELECT ON t_owner TO app_user, app_owner, app_bypass;",
    ),
    (
        "t_teams",
        "ALTER TABLE t_teams ENABLE ROW LEVEL SECURITY;
         CREATE POLICY teams ON t_teams USING (team = ANY (string_to_array(current_setting('request.jwt.claims', true)::json->>'teams', ',')::int[]));
         GRANT SELECT ON t_teams TO app_user, app_owner, app_bypass;",
    ),
    (
        "t_subselect",
        "ALTER TABLE t_subselect ENABLE ROW LEVEL SECURITY;
         CREATE POLICY member ON t_subselect USING (EXISTS (SELECT 1 FROM members m WHERE m.team = t_subselect.team AND m.member = uid()));
         GRANT SELECT ON t_subselect TO app_user, app_owner, app_bypass;",
    ),
    // The same reading the claims directly: every user of a role is judged in one statement.
    (
        "t_direct",
        "ALTER TABLE t_direct ENABLE ROW LEVEL SECURITY;
         CREATE POLICY member ON t_direct USING (EXISTS (SELECT 1 FROM members m WHERE m.team = t_direct.team
             AND m.member = current_setting('request.jwt.claims', true)::json->>'sub'));
         GRANT SELECT ON t_direct TO app_user, app_owner, app_bypass;",
    ),
    (
        "t_mixed",
        "ALTER TABLE t_mixed ENABLE ROW LEVEL SECURITY;
         CREATE POLICY mine ON t_mixed USING (owner = uid());
         CREATE POLICY open ON t_mixed USING (public);
         CREATE POLICY live ON t_mixed AS RESTRICTIVE USING (NOT archived);
         GRANT SELECT ON t_mixed TO app_user, app_owner, app_bypass;",
    ),
    (
        "t_force",
        "ALTER TABLE t_force ENABLE ROW LEVEL SECURITY;
         ALTER TABLE t_force FORCE ROW LEVEL SECURITY;
         CREATE POLICY mine ON t_force USING (owner = uid());
         ALTER TABLE t_force OWNER TO app_owner;
         GRANT SELECT ON t_force TO app_user, app_bypass;",
    ),
];

/// The statements run on every table, in order, each in its own transaction, and the id of
/// the one row each changes.
const STEPS: [(&str, i64); 12] = [
    (
        "INSERT INTO {t} VALUES (1, 'alice', 1, 's1', false, false)",
        1,
    ),
    (
        "INSERT INTO {t} VALUES (2, 'bob', 2, 's2', false, false)",
        2,
    ),
    (
        "INSERT INTO {t} VALUES (3, 'carol', 3, 's3', true, false)",
        3,
    ),
    (
        "INSERT INTO {t} VALUES (4, NULL, NULL, 's4', false, false)",
        4,
    ),
    (
        "INSERT INTO {t} VALUES (5, 'alice', 1, 's5', true, true)",
        5,
    ),
    // Out of alice's view, into bob's.
    ("UPDATE {t} SET owner = 'bob', team = 2 WHERE id = 1", 1),
    // Into alice's view.
    ("UPDATE {t} SET owner = 'alice', team = 1 WHERE id = 2", 2),
    ("UPDATE {t} SET secret = 's3b' WHERE id = 3", 3),
    ("UPDATE {t} SET archived = false WHERE id = 5", 5),
    ("DELETE FROM {t} WHERE id = 1", 1),
    ("DELETE FROM {t} WHERE id = 4", 4),
    ("TRUNCATE {t}", 0),
];

struct Principal {
    name: &'static str,
    role: &'static str,
    /// `None`: no token, the anonymous role.
    claims: Option<Value>,
}

fn principals() -> Vec<Principal> {
    let user = |name, role, sub: &str, teams: &str| Principal {
        name,
        role,
        claims: Some(json!({"role": role, "sub": sub, "teams": teams})),
    };
    vec![
        user("alice", "app_user", "alice", "1,2"),
        user("bob", "app_user", "bob", "2"),
        user("owner", "app_owner", "carol", "3"),
        user("bypass", "app_bypass", "dave", ""),
        Principal {
            name: "anonymous",
            role: common::READER,
            claims: None,
        },
    ]
}

impl Principal {
    fn claims_text(&self) -> String {
        match &self.claims {
            Some(c) => c.to_string(),
            None => json!({"role": self.role}).to_string(),
        }
    }
}

/// What PostgreSQL shows `p` of `table`: rows by id, with the columns it may read; `None` if
/// it may read no column at all.
fn select_as(
    db: &mut postgres::Client,
    p: &Principal,
    table: &str,
    columns: &[String],
) -> Option<BTreeMap<i64, Value>> {
    if columns.is_empty() {
        return None;
    }
    let mut tx = db.transaction().unwrap();
    tx.batch_execute(&format!("SET LOCAL ROLE {}", p.role))
        .unwrap();
    tx.execute(
        "SELECT set_config('request.jwt.claims', $1, true)",
        &[&p.claims_text()],
    )
    .unwrap();
    // Every table's readable columns include id.
    let object = columns
        .iter()
        .map(|c| format!("'{c}', {c}"))
        .collect::<Vec<_>>()
        .join(", ");
    let rows = tx
        .query(
            &format!("SELECT id, json_build_object({object})::text FROM {table}"),
            &[],
        )
        .unwrap();
    tx.commit().unwrap();
    Some(
        rows.iter()
            .map(|r| {
                (
                    r.get::<_, i32>(0) as i64,
                    serde_json::from_str(r.get::<_, &str>(1)).unwrap(),
                )
            })
            .collect(),
    )
}

/// The columns `p` may SELECT from `table`, as PostgreSQL answers for each.
fn readable(db: &mut postgres::Client, p: &Principal, table: &str) -> Vec<String> {
    COLUMNS
        .iter()
        .filter(|c| {
            let mut tx = db.transaction().unwrap();
            tx.batch_execute(&format!("SET LOCAL ROLE {}", p.role))
                .unwrap();
            let ok = tx
                .batch_execute(&format!("SELECT {c} FROM {table} LIMIT 0"))
                .is_ok();
            let _ = tx.rollback();
            ok
        })
        .map(|c| c.to_string())
        .collect()
}

/// One expected message: table, type and op, new, old.
type Expected = (String, String, Value, Value);

#[test]
fn every_subscriber_receives_what_its_select_would_return() {
    let cluster = Cluster::start("authorization", &["realtime.allow_privileged_roles = on"]);
    let mut db = cluster.client();
    db.batch_execute(SETUP).unwrap();
    for (table, grants) in TABLES {
        db.batch_execute(&format!(
            "CREATE TABLE {table} (id int PRIMARY KEY, owner text, team int, secret text, public bool, archived bool);
             SELECT realtime_watch('{table}');
             {grants}"
        ))
        .unwrap();
    }
    let principals = principals();
    let mut clients: Vec<Ws> = principals
        .iter()
        .map(|p| match &p.claims {
            Some(c) => Ws::connect_as(cluster.ws_port, &token(c.clone())),
            None => Ws::connect(cluster.ws_port),
        })
        .collect();
    let mut columns: Vec<Vec<Vec<String>>> = Vec::new();
    for (p, ws) in principals.iter().zip(&mut clients) {
        let mut mine = Vec::new();
        for (table, _) in TABLES {
            let cols = readable(&mut db, p, table);
            let reply = ws.try_subscribe(table, table, None);
            if cols.is_empty() {
                assert_eq!(reply["type"], "error", "{} on {table}: {reply}", p.name);
                // Told what a missing table is told: the table's existence is not theirs to learn.
                assert_eq!(
                    reply["code"], "unknown_table",
                    "{} on {table}: {reply}",
                    p.name
                );
                let missing = ws.try_subscribe("missing", &format!("{table}_missing"), None);
                assert_eq!(
                    reply["message"].as_str().unwrap().replace(table, "T"),
                    missing["message"]
                        .as_str()
                        .unwrap()
                        .replace(&format!("{table}_missing"), "T"),
                    "{} on {table}",
                    p.name
                );
                assert_eq!(missing["code"], "unknown_table");
            } else {
                assert_eq!(
                    reply["type"], "subscribed",
                    "{} on {table}: {reply}",
                    p.name
                );
            }
            mine.push(cols);
        }
        ws.subscribe("sentinel", "sentinel", None);
        columns.push(mine);
    }

    let mut expected: Vec<Vec<Expected>> = vec![Vec::new(); principals.len()];
    let mut seen: Vec<Vec<Option<BTreeMap<i64, Value>>>> = principals
        .iter()
        .enumerate()
        .map(|(i, p)| {
            TABLES
                .iter()
                .enumerate()
                .map(|(t, (table, _))| select_as(&mut db, p, table, &columns[i][t]))
                .collect()
        })
        .collect();
    for (step, id) in STEPS {
        for (t, (table, _)) in TABLES.iter().enumerate() {
            db.batch_execute(&step.replace("{t}", table)).unwrap();
            for (i, p) in principals.iter().enumerate() {
                let after = select_as(&mut db, p, table, &columns[i][t]);
                let Some(before) = seen[i][t].take() else {
                    continue;
                };
                let after_rows = after.clone().unwrap();
                let row = |rows: &BTreeMap<i64, Value>| rows.get(&id).cloned();
                let op = step.split_whitespace().next().unwrap();
                let message = match (op, row(&before), row(&after_rows)) {
                    ("TRUNCATE", _, _) => Some(("TRUNCATE", Value::Null, Value::Null)),
                    ("INSERT", _, Some(new)) => Some(("INSERT", new, Value::Null)),
                    ("UPDATE", old, Some(new)) => Some(("UPDATE", new, old.unwrap_or(Value::Null))),
                    ("UPDATE", Some(old), None) => Some(("leave", Value::Null, old)),
                    ("DELETE", Some(old), None) => Some(("DELETE", Value::Null, old)),
                    _ => None,
                };
                if let Some((kind, new, old)) = message {
                    expected[i].push((table.to_string(), kind.to_string(), new, old));
                }
                seen[i][t] = after;
            }
        }
    }
    db.batch_execute("INSERT INTO sentinel VALUES (1)").unwrap();

    for (i, (p, ws)) in principals.iter().zip(&mut clients).enumerate() {
        let mut received = Vec::new();
        loop {
            let m = ws.recv();
            if m["table"] == "sentinel" {
                break;
            }
            let kind = if m["type"] == "leave" {
                "leave".to_string()
            } else {
                assert_eq!(m["type"], "change", "{}: {m}", p.name);
                m["op"].as_str().unwrap().to_string()
            };
            let field = |k: &str| m.get(k).cloned().unwrap_or(Value::Null);
            let new = if kind == "leave" {
                Value::Null
            } else {
                field("new")
            };
            received.push((
                m["table"].as_str().unwrap().to_string(),
                kind,
                new,
                field("old"),
            ));
        }
        let by_table = |list: &[Expected]| {
            let mut map: BTreeMap<String, Vec<Expected>> = BTreeMap::new();
            for e in list {
                map.entry(e.0.clone()).or_default().push(e.clone());
            }
            map
        };
        let (want, got) = (by_table(&expected[i]), by_table(&received));
        for (table, _) in TABLES {
            assert_eq!(
                got.get(table),
                want.get(table),
                "{} on {table}: received (left) differs from what SELECT shows (right)",
                p.name
            );
        }
        assert_eq!(received, expected[i], "{}: order", p.name);
    }
    // The matrix covered what it claims: rows left and entered views, and columns were cut.
    let all: Vec<&Expected> = expected.iter().flatten().collect();
    assert!(all.iter().any(|e| e.1 == "leave"));
    assert!(all.iter().any(|e| e.1 == "UPDATE" && e.3.is_null()));
    assert!(all.iter().any(|e| e.0 == "t_column"
        && e.2
            .as_object()
            .is_some_and(|o: &Map<String, Value>| o.len() == 3)));
}

#[test]
fn a_failing_policy_costs_its_audience_a_gap_and_nobody_else_anything() {
    let cluster = Cluster::start("authorization_failing", &[]);
    let mut db = cluster.client();
    db.batch_execute(
        "CREATE ROLE app_user NOLOGIN;
         GRANT app_user TO realtime_authenticator;
         CREATE TABLE fragile (id int, owner text);
         ALTER TABLE fragile ENABLE ROW LEVEL SECURITY;
         -- A sub-select, so the worker judges it; it divides by zero on owner 'boom'.
         CREATE POLICY p ON fragile USING ((SELECT 1 / CASE WHEN fragile.owner = 'boom' THEN 0 ELSE 1 END) = 1);
         GRANT SELECT ON fragile TO app_user;
         CREATE TABLE calm (id int);
         GRANT SELECT ON calm TO app_user;
         SELECT realtime_watch('fragile'), realtime_watch('calm');",
    )
    .unwrap();
    let mut judged = Ws::connect_as(cluster.ws_port, &token(json!({"role": "app_user"})));
    judged.subscribe("f", "fragile", None);
    let mut other = Ws::connect(cluster.ws_port);
    other.subscribe("c", "calm", None);
    for (id, owner) in [(1, "ok"), (2, "boom"), (3, "ok")] {
        db.execute("INSERT INTO fragile VALUES ($1, $2)", &[&id, &owner])
            .unwrap();
        db.execute("INSERT INTO calm VALUES ($1)", &[&id]).unwrap();
        // Separate batches: a failing statement fails its whole batch for its audience.
        std::thread::sleep(std::time::Duration::from_millis(300));
    }
    assert_eq!(judged.change_ids(1), vec![1]);
    let gap = judged.recv();
    assert_eq!(
        (gap["type"].as_str(), gap["reason"].as_str()),
        (Some("gap"), Some("policy_failed")),
        "{gap}"
    );
    assert_eq!(gap["from_position"], gap["to_position"]);
    assert_eq!(judged.change_ids(1), vec![3]);
    assert_eq!(other.change_ids(3), vec![1, 2, 3]);
    assert!(
        cluster
            .log()
            .contains("row security policies of public.fragile for role \"app_user\" failed"),
        "{}",
        cluster.log()
    );
}

/// Users whose policies are slow or fail are judged apart: six ordinary users of the same
/// table receive exactly what SQL shows them, with no gap, while one user's policy sleeps and
/// another's raises. The slow user still gets its rows; the failing one, gaps (SQL fails too).
#[test]
fn a_slow_or_failing_policy_costs_other_users_nothing() {
    let cluster = Cluster::start("policy_isolation", &[]);
    let mut db = cluster.client();
    db.batch_execute(
        "CREATE ROLE web_user NOLOGIN;
         GRANT web_user TO realtime_authenticator;
         CREATE FUNCTION uid() RETURNS text LANGUAGE sql STABLE
             AS $$ SELECT current_setting('request.jwt.claims', true)::json->>'sub' $$;
         -- A function of the row, so the worker judges it.
         CREATE FUNCTION visible_to(owner text) RETURNS bool LANGUAGE plpgsql STABLE
         SET search_path = public AS $$
         BEGIN
             IF uid() = 'slow' THEN PERFORM pg_sleep(0.2); END IF;
             IF uid() = 'failing' THEN RAISE EXCEPTION 'this policy fails'; END IF;
             RETURN owner = uid() OR owner = 'everyone';
         END $$;
         CREATE TABLE feed (id int PRIMARY KEY, owner text);
         ALTER TABLE feed ENABLE ROW LEVEL SECURITY;
         CREATE POLICY p ON feed USING (visible_to(owner));
         CREATE TABLE sentinel (id int);
         GRANT SELECT ON feed, sentinel TO web_user;
         SELECT realtime_watch('feed'), realtime_watch('sentinel');",
    )
    .unwrap();
    let users = ["u1", "u2", "u3", "u4", "u5", "u6", "slow", "failing"];
    let mut clients: Vec<Ws> = users
        .iter()
        .map(|sub| {
            let mut ws = Ws::connect_as(
                cluster.ws_port,
                &token(json!({"role": "web_user", "sub": sub})),
            );
            ws.subscribe("feed", "feed", None);
            ws.subscribe("sentinel", "sentinel", None);
            ws
        })
        .collect();
    let owners = [
        "u1", "u2", "u3", "u4", "u5", "u6", "everyone", "slow", "failing",
    ];
    for id in 1..=12 {
        let owner = owners[id as usize % owners.len()];
        db.execute("INSERT INTO feed VALUES ($1, $2)", &[&id, &owner])
            .unwrap();
    }
    db.batch_execute("INSERT INTO sentinel VALUES (1)").unwrap();
    let sql = |db: &mut postgres::Client, sub: &str| -> Result<Vec<i64>, postgres::Error> {
        let mut tx = db.transaction()?;
        tx.batch_execute("SET LOCAL ROLE web_user")?;
        tx.execute(
            "SELECT set_config('request.jwt.claims', $1, true)",
            &[&json!({"role": "web_user", "sub": sub}).to_string()],
        )?;
        let ids = tx.query("SELECT id FROM feed ORDER BY id", &[])?;
        Ok(ids.iter().map(|r| r.get::<_, i32>(0) as i64).collect())
    };
    for (sub, ws) in users.iter().zip(&mut clients) {
        if *sub == "slow" {
            // Judged apart: a fifth of a second per row.
            ws.set_timeout(std::time::Duration::from_secs(60));
        }
        let seen = ws.until_change_of("sentinel");
        let ids: Vec<i64> = seen
            .iter()
            .filter(|m| m["type"] == "change")
            .map(|m| m["new"]["id"].as_i64().unwrap())
            .collect();
        let gaps = seen.iter().filter(|m| m["type"] == "gap").count();
        match *sub {
            "failing" => {
                assert!(sql(&mut db, sub).is_err(), "SQL fails for {sub} too");
                assert!(ids.is_empty() && gaps > 0, "{sub}: {seen:?}");
                assert!(seen
                    .iter()
                    .filter(|m| m["type"] == "gap")
                    .all(|g| g["reason"] == "policy_failed"));
            }
            _ => {
                assert_eq!(
                    ids,
                    sql(&mut db, sub).unwrap(),
                    "{sub} receives what SQL shows"
                );
                assert_eq!(gaps, 0, "{sub}: {seen:?}");
            }
        }
    }
    assert!(cluster.log().contains("judged apart from now on"));
}

/// A change wakes the sessions whose claims its row values name, and nobody else: the fan-out
/// looks them up (`/health` counts each batch handed to a session).
#[test]
fn a_change_reaches_its_receivers_by_lookup_not_by_asking_everyone() {
    let cluster = Cluster::start("routing", &[]);
    let mut db = cluster.client();
    db.batch_execute(
        "CREATE ROLE app_user NOLOGIN;
         GRANT app_user TO realtime_authenticator;
         CREATE FUNCTION uid() RETURNS text LANGUAGE sql STABLE
             AS $$ SELECT current_setting('request.jwt.claims', true)::json->>'sub' $$;
         CREATE TABLE notes (id int, owner text);
         ALTER TABLE notes ENABLE ROW LEVEL SECURITY;
         CREATE POLICY mine ON notes USING (owner = uid() OR owner = 'everyone');
         CREATE TABLE open_notes (id int);
         GRANT SELECT ON notes, open_notes TO app_user;
         SELECT realtime_watch('notes'), realtime_watch('open_notes');",
    )
    .unwrap();
    const USERS: usize = 40;
    let mut users: Vec<Ws> = (0..USERS)
        .map(|i| {
            let claims = json!({"role": "app_user", "sub": format!("u{i}")});
            let mut ws = Ws::connect_as(cluster.ws_port, &token(claims));
            ws.subscribe("notes", "notes", None);
            ws.subscribe("open", "open_notes", None);
            ws
        })
        .collect();
    let handed = || {
        let (_, body) = cluster.http_get("/health");
        let health: Value = serde_json::from_str(&body).unwrap();
        health["batches_handed"].as_u64().unwrap()
    };
    let mut step = |sql: &str, receivers: &[usize], expected: u64| {
        let before = handed();
        db.batch_execute(sql).unwrap();
        for &i in receivers {
            let message = users[i].recv();
            assert!(message["position"].is_u64(), "{sql}: u{i} got {message}");
        }
        assert_eq!(handed() - before, expected, "{sql}");
    };
    step("INSERT INTO notes VALUES (1, 'u7')", &[7], 1);
    // Moving a row from one owner to another concerns both: u7 sees it leave.
    step("UPDATE notes SET owner = 'u9' WHERE id = 1", &[7, 9], 2);
    let all: Vec<usize> = (0..USERS).collect();
    step(
        "INSERT INTO notes VALUES (2, 'everyone')",
        &all,
        USERS as u64,
    );
    step("INSERT INTO open_notes VALUES (1)", &all, USERS as u64);
    // Nobody received more than that: each user's next message is the marker below.
    db.batch_execute("INSERT INTO open_notes VALUES (2)")
        .unwrap();
    for ws in &mut users {
        assert_eq!(ws.changes(1)[0]["new"]["id"], 2);
    }
}

/// Users judged together in one statement: when the statement fails for one user's claims,
/// each is judged alone, and only that user misses the change.
#[test]
fn one_user_s_failing_claims_cost_the_users_judged_with_it_nothing() {
    // DEBUG1 says when a statement judging users together failed.
    let cluster = Cluster::start("authorization_together", &["log_min_messages = debug1"]);
    let mut db = cluster.client();
    db.batch_execute(
        "CREATE ROLE app_user NOLOGIN;
         GRANT app_user TO realtime_authenticator;
         CREATE TABLE touchy (id int);
         ALTER TABLE touchy ENABLE ROW LEVEL SECURITY;
         -- A sub-select, so the worker judges it; it divides by zero for user 'boom'.
         CREATE POLICY p ON touchy USING ((SELECT 1 / CASE WHEN
             current_setting('request.jwt.claims', true)::json->>'sub' = 'boom' THEN 0 ELSE 1 END) = 1);
         GRANT SELECT ON touchy TO app_user;
         SELECT realtime_watch('touchy');",
    )
    .unwrap();
    let user = |sub: &str| {
        let claims = json!({"role": "app_user", "sub": sub});
        let mut ws = Ws::connect_as(cluster.ws_port, &token(claims));
        ws.subscribe("t", "touchy", None);
        ws
    };
    let (mut fine, mut boom, mut also_fine) = (user("fine"), user("boom"), user("also fine"));
    db.batch_execute("INSERT INTO touchy VALUES (1)").unwrap();
    assert_eq!(fine.change_ids(1), vec![1]);
    assert_eq!(also_fine.change_ids(1), vec![1]);
    let gap = boom.recv();
    assert_eq!(gap["reason"], "policy_failed", "{gap}");
    let log = cluster.log();
    assert!(
        log.contains("failed for 3 audiences of role \"app_user\" judged together"),
        "the three were judged in one statement first"
    );
    assert_eq!(
        log.matches("WARNING:  realtime_ext: row security").count(),
        1
    );
}
