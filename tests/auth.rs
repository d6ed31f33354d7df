//! Authentication: tokens in the upgrade request and in `auth` messages, what is refused and
//! how, refresh, expiry, and rights that change while a client is connected.

mod common;

use common::{token, token_with, unix_now, Cluster, Ws, AUTHENTICATOR};
use jsonwebtoken::Algorithm;
use serde_json::{json, Value};
use std::sync::Once;
use std::time::{Duration, Instant};

fn cluster() -> &'static Cluster {
    static SETUP: Once = Once::new();
    let cluster = common::shared("auth");
    SETUP.call_once(|| {
        cluster
            .client()
            .batch_execute(&format!(
                "CREATE ROLE web_user NOLOGIN;
                 CREATE ROLE stranger NOLOGIN;
                 CREATE ROLE bypasser NOLOGIN BYPASSRLS;
                 GRANT web_user, bypasser TO {AUTHENTICATOR};
                 CREATE FUNCTION uid() RETURNS text LANGUAGE sql STABLE
                     AS $$ SELECT current_setting('request.jwt.claims', true)::json->>'sub' $$;
                 CREATE TABLE notes (id int, owner text);
                 ALTER TABLE notes ENABLE ROW LEVEL SECURITY;
                 CREATE POLICY mine ON notes USING (owner = uid());
                 GRANT SELECT ON notes TO web_user;
                 SELECT realtime_watch('notes');"
            ))
            .unwrap();
    });
    cluster
}

fn user(sub: &str, exp: i64) -> String {
    token(json!({"role": "web_user", "sub": sub, "exp": exp}))
}

/// The status and JSON body of a WebSocket upgrade presenting `token`.
fn upgrade_with(cluster: &Cluster, token: &str) -> (u16, Value) {
    let out = cluster.raw(
        format!(
            "GET /realtime?token={token} HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n\
             Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
             Sec-WebSocket-Version: 13\r\n\r\n"
        )
        .as_bytes(),
    );
    let status = out
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = out.split("\r\n\r\n").nth(1).unwrap_or("null");
    (status, serde_json::from_str(body).unwrap_or(Value::Null))
}

#[test]
fn bad_tokens_are_refused_at_the_upgrade() {
    let c = cluster();
    let later = unix_now() + 600;
    let b64 = |s: &str| {
        use base64::Engine;
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s)
    };
    let cases = [
        (
            "expired",
            user("alice", unix_now() - 60),
            "token_expired",
            "expired",
        ),
        (
            "not yet valid",
            token(json!({"role": "web_user", "nbf": unix_now() + 60})),
            "unauthorized",
            "not valid yet",
        ),
        (
            "wrongly signed",
            token_with(
                Algorithm::HS256,
                b"some-other-secret-that-is-long-enough",
                json!({"role": "web_user"}),
            ),
            "unauthorized",
            "signature",
        ),
        (
            "alg none",
            format!(
                "{}.{}.",
                b64(r#"{"alg":"none"}"#),
                b64(r#"{"role":"postgres"}"#)
            ),
            "unauthorized",
            "alg \"none\" is refused",
        ),
        (
            "garbage",
            "not.a.jwt".into(),
            "unauthorized",
            "invalid token",
        ),
        (
            "unknown role",
            token(json!({"role": "no_such_role", "exp": later})),
            "unauthorized",
            "does not exist",
        ),
        (
            "role not granted to the authenticator",
            token(json!({"role": "stranger", "exp": later})),
            "unauthorized",
            "not granted",
        ),
        (
            "superuser",
            token(json!({"role": "postgres", "exp": later})),
            "unauthorized",
            "superuser",
        ),
        (
            "BYPASSRLS role",
            token(json!({"role": "bypasser", "exp": later})),
            "unauthorized",
            "BYPASSRLS",
        ),
    ];
    for (what, token, code, text) in cases {
        let (status, body) = upgrade_with(c, &token);
        assert_eq!(status, 401, "{what}: {body}");
        assert_eq!(body["error"], code, "{what}: {body}");
        let message = body["message"].as_str().unwrap_or("");
        assert!(message.contains(text), "{what}: {message}");
    }
    // And a good one is let in, as its role.
    let mut ws = Ws::connect_as(c.ws_port, &user("alice", later));
    ws.subscribe("n", "notes", None);
}

#[test]
fn auth_messages_sign_in_and_refresh() {
    let c = cluster();
    let mut db = c.client();
    let later = unix_now() + 600;
    // Without a token the connection is the anonymous role: it has no sub, so the policy
    // shows it nothing.
    let mut ws = Ws::connect(c.ws_port);
    ws.subscribe("n", "notes", None);
    db.batch_execute("INSERT INTO notes VALUES (1, 'alice')")
        .unwrap();
    ws.nothing_more();

    ws.send(json!({"type": "auth", "token": user("alice", later)}));
    let m = ws.recv();
    assert_eq!(
        (m["type"].as_str(), m["role"].as_str()),
        (Some("authenticated"), Some("web_user")),
        "{m}"
    );
    assert_eq!(m["expires_at"], later);
    db.batch_execute("INSERT INTO notes VALUES (2, 'bob'), (3, 'alice')")
        .unwrap();
    assert_eq!(ws.change_ids(1), vec![3]);

    // A refresh as someone else: the same subscription now follows bob's rows.
    ws.send(json!({"type": "auth", "token": user("bob", later)}));
    assert_eq!(ws.recv()["type"], "authenticated");
    db.batch_execute("INSERT INTO notes VALUES (4, 'alice'), (5, 'bob')")
        .unwrap();
    assert_eq!(ws.change_ids(1), vec![5]);

    // A refused refresh changes nothing.
    ws.send(json!({"type": "auth", "token": "nonsense"}));
    let m = ws.recv();
    assert_eq!(m["code"], "unauthorized", "{m}");
    db.batch_execute("INSERT INTO notes VALUES (6, 'bob')")
        .unwrap();
    assert_eq!(ws.change_ids(1), vec![6]);
    ws.nothing_more();
}

#[test]
fn an_expired_token_ends_its_subscriptions() {
    let c = cluster();
    let mut ws = Ws::connect_as(c.ws_port, &user("carol", unix_now() + 1));
    ws.subscribe("n", "notes", None);
    // exp plus the 5 s leeway.
    ws.set_timeout(Duration::from_secs(15));
    ws.expect_ended("n", "token_expired");
    let m = ws.try_subscribe("again", "notes", None);
    assert_eq!(m["code"], "token_expired", "{m}");
    ws.send(json!({"type": "auth", "token": user("carol", unix_now() + 600)}));
    assert_eq!(ws.recv()["type"], "authenticated");
    ws.subscribe("again", "notes", None);
    c.client()
        .batch_execute("INSERT INTO notes VALUES (7, 'carol')")
        .unwrap();
    assert_eq!(ws.change_ids(1), vec![7]);
}

#[test]
fn policy_changes_and_revoke_apply_while_connected() {
    let c = cluster();
    let mut db = c.client();
    db.batch_execute(
        "CREATE TABLE board (id int, owner text);
         GRANT SELECT ON board TO web_user;
         SELECT realtime_watch('board');",
    )
    .unwrap();
    let mut ws = Ws::connect_as(c.ws_port, &user("alice", unix_now() + 600));
    ws.subscribe("b", "board", None);
    db.batch_execute("INSERT INTO board VALUES (1, 'bob')")
        .unwrap();
    assert_eq!(ws.change_ids(1), vec![1]);

    db.batch_execute(
        "ALTER TABLE board ENABLE ROW LEVEL SECURITY;
         CREATE POLICY mine ON board USING (owner = uid());",
    )
    .unwrap();
    db.batch_execute("INSERT INTO board VALUES (2, 'bob'), (3, 'alice')")
        .unwrap();
    assert_eq!(ws.change_ids(1), vec![3]);

    db.batch_execute("ALTER TABLE board DISABLE ROW LEVEL SECURITY")
        .unwrap();
    db.batch_execute("INSERT INTO board VALUES (5, 'bob')")
        .unwrap();
    assert_eq!(ws.change_ids(1), vec![5]);

    // The REVOKE ends the subscription as it commits: the next change is not sent.
    db.batch_execute("REVOKE SELECT ON board FROM web_user")
        .unwrap();
    ws.expect_ended("b", "forbidden");
    db.batch_execute("INSERT INTO board VALUES (4, 'alice')")
        .unwrap();
    ws.nothing_more();
    // Subscribing again, it is told what a missing table is told.
    let m = ws.try_subscribe("b", "board", None);
    assert_eq!(m["code"], "unknown_table", "{m}");
}

/// A watched table's own maintenance (VACUUM, ANALYZE, a new index, CLUSTER) invalidates it
/// in every backend's caches without changing anyone's rights: subscribers are not made to
/// authorize again (with thousands of them, a pass holds their changes back for seconds),
/// while a change of rights right after it still takes effect.
#[test]
fn table_maintenance_does_not_make_subscribers_authorize_again() {
    let c = Cluster::start("maintenance", &[]);
    let mut db = c.client();
    db.batch_execute(&format!(
        "CREATE ROLE member NOLOGIN; GRANT member TO {AUTHENTICATOR};
         CREATE TABLE kept (id int PRIMARY KEY, note text); CREATE TABLE canary (id int);
         INSERT INTO kept SELECT g, 'n' FROM generate_series(1, 1000) g;
         GRANT SELECT ON kept, canary TO member;
         SELECT realtime_watch('kept'); SELECT realtime_watch('canary');"
    ))
    .unwrap();
    let mut ws = Ws::connect_as(
        c.ws_port,
        &token(json!({"role": "member", "exp": unix_now() + 600})),
    );
    ws.subscribe("kept", "kept", None);
    ws.subscribe("canary", "canary", None);
    let passes = || c.stat("reauthorizations_total");
    let before = passes();
    for maintenance in [
        "VACUUM kept",
        "ANALYZE kept",
        "VACUUM FULL kept",
        "CREATE INDEX kept_note ON kept (note)",
        "REINDEX TABLE kept",
        "CLUSTER kept USING kept_pkey",
    ] {
        db.batch_execute(maintenance).unwrap();
    }
    // The worker takes invalidations in every 250 ms while anyone is subscribed: four of
    // those intervals without a pass show they were taken in and found to change nothing.
    assert!(
        !common::poll(Duration::from_secs(1), || passes() != before),
        "maintenance made every subscriber authorize again"
    );
    db.batch_execute("DELETE FROM kept WHERE id = 1").unwrap();
    assert_eq!(ws.recv()["type"], "change");

    db.batch_execute("REVOKE SELECT ON canary FROM member")
        .unwrap();
    ws.expect_ended("canary", "forbidden");
    assert!(passes() > before);
    db.batch_execute("INSERT INTO canary VALUES (1); DELETE FROM kept WHERE id = 2")
        .unwrap();
    let m = ws.recv();
    assert_eq!(
        (m["type"].as_str(), m["table"].as_str()),
        (Some("change"), Some("kept")),
        "{m}"
    );
    ws.nothing_more();
}

#[test]
fn catalog_changes_take_effect_at_their_place_in_commit_order() {
    let c = Cluster::start("catalog_order", &[]);
    let mut db = c.client();
    db.batch_execute(&format!(
        "CREATE ROLE member NOLOGIN; GRANT member TO {AUTHENTICATOR};
         CREATE FUNCTION uid() RETURNS text LANGUAGE sql STABLE
             AS $$ SELECT current_setting('request.jwt.claims', true)::json->>'sub' $$;
         CREATE TABLE managers (owner text, manager text);
         INSERT INTO managers VALUES ('alice', 'alice');
         CREATE TABLE sentinel (id int);
         CREATE TABLE plain (id int);
         -- Compiled: judged by value in the network threads.
         CREATE TABLE ruled (id int, owner text);
         ALTER TABLE ruled ENABLE ROW LEVEL SECURITY;
         CREATE POLICY p ON ruled USING (owner = uid());
         -- Judged by the worker in batches.
         CREATE TABLE judged (id int, owner text);
         ALTER TABLE judged ENABLE ROW LEVEL SECURITY;
         CREATE POLICY p ON judged USING (owner IN (SELECT m.owner FROM managers m WHERE m.manager = uid()));
         -- A policy that admits nothing, with row security off.
         CREATE TABLE opened (id int, owner text);
         CREATE POLICY p ON opened USING (false);
         -- A policy the worker judges, with row security off.
         CREATE TABLE gated (id int, owner text);
         CREATE POLICY p ON gated USING (owner IN (SELECT m.owner FROM managers m WHERE m.manager = uid()));
         GRANT SELECT ON managers, sentinel, plain, ruled, judged, opened, gated TO member;
         SELECT realtime_watch(t)
           FROM unnest(ARRAY['sentinel', 'plain', 'ruled', 'judged', 'opened', 'gated']) t;"
    ))
    .unwrap();
    let mut ws = Ws::connect_as(
        c.ws_port,
        &token(json!({"role": "member", "sub": "alice", "exp": unix_now() + 600})),
    );
    let tables = ["plain", "ruled", "judged", "opened", "gated"];
    for t in ["sentinel"].iter().chain(&tables) {
        ws.subscribe(t, t, None);
    }
    for t in tables {
        let row = if t == "plain" { "(1)" } else { "(1, 'alice')" };
        db.batch_execute(&format!("INSERT INTO {t} VALUES {row}"))
            .unwrap();
    }
    db.batch_execute("INSERT INTO sentinel VALUES (1)").unwrap();
    let before: Vec<String> = ws
        .until_change_of("sentinel")
        .iter()
        .map(|m| m["table"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(
        before, tables,
        "every table delivers alice's row before the changes"
    );

    // Each catalog change is followed at once, in the next transaction, by a row that it
    // hides: none of those rows may arrive.
    for (change, hidden) in [
        ("ALTER POLICY p ON ruled USING (owner = 'nobody')", "INSERT INTO ruled VALUES (2, 'alice')"),
        (
            "ALTER POLICY p ON judged USING (owner IN (SELECT m.owner FROM managers m WHERE m.manager = 'nobody'))",
            "INSERT INTO judged VALUES (2, 'alice')",
        ),
        ("ALTER TABLE opened ENABLE ROW LEVEL SECURITY", "INSERT INTO opened VALUES (2, 'alice')"),
        ("REVOKE SELECT ON plain FROM member", "INSERT INTO plain VALUES (2)"),
    ] {
        db.batch_execute(change).unwrap();
        db.batch_execute(hidden).unwrap();
    }
    // Row security turned on with a policy the worker judges: the rows right after it are
    // judged by it, the row it admits delivered, the other not.
    db.batch_execute("ALTER TABLE gated ENABLE ROW LEVEL SECURITY")
        .unwrap();
    db.batch_execute("INSERT INTO gated VALUES (2, 'alice'), (3, 'bob')")
        .unwrap();
    db.batch_execute("INSERT INTO sentinel VALUES (2)").unwrap();
    let seen = ws.until_change_of("sentinel");
    assert_eq!(
        seen.len(),
        2,
        "the REVOKE's end and gated's row 2 only: {seen:?}"
    );
    assert_eq!(
        (seen[1]["table"].as_str(), seen[1]["new"]["id"].as_i64()),
        (Some("gated"), Some(2)),
        "{seen:?}"
    );
    assert_eq!(
        (
            seen[0]["type"].as_str(),
            seen[0]["id"].as_str(),
            seen[0]["reason"].as_str()
        ),
        (Some("unsubscribed"), Some("plain"), Some("forbidden")),
        "{seen:?}"
    );

    // The role itself may no longer be used: every subscription ends before the next row.
    db.batch_execute(&format!("REVOKE member FROM {AUTHENTICATOR}"))
        .unwrap();
    db.batch_execute("INSERT INTO sentinel VALUES (3)").unwrap();
    let mut ended: Vec<String> = (0..5)
        .map(|_| {
            let m = ws.recv();
            assert_eq!(
                (m["type"].as_str(), m["reason"].as_str()),
                (Some("unsubscribed"), Some("forbidden")),
                "{m}"
            );
            m["id"].as_str().unwrap().to_string()
        })
        .collect();
    ended.sort();
    assert_eq!(ended, ["gated", "judged", "opened", "ruled", "sentinel"]);
    ws.nothing_more();
    // Nor can a new connection sign in as it (the role was accepted before, not since).
    let (status, body) = upgrade_with(
        &c,
        &token(json!({"role": "member", "sub": "alice", "exp": unix_now() + 600})),
    );
    assert_eq!(
        (status, body["error"].as_str()),
        (401, Some("unauthorized")),
        "{body}"
    );
}

#[test]
fn without_an_anonymous_role_tokens_are_required_and_checked_for_audience_and_limits() {
    let c = Cluster::start(
        "auth_strict",
        &[
            "realtime.anon_role = ''",
            "realtime.jwt_audience = 'dashboard'",
            "realtime.max_connections_per_role = 2",
        ],
    );
    c.client()
        .batch_execute(&format!(
            "CREATE ROLE web_user NOLOGIN; GRANT web_user TO {AUTHENTICATOR};
             CREATE TABLE t (id int); GRANT SELECT ON t TO web_user; SELECT realtime_watch('t');"
        ))
        .unwrap();
    let later = unix_now() + 600;
    let good = token(json!({"role": "web_user", "aud": "dashboard", "exp": later}));

    let mut anonymous = Ws::connect(c.ws_port);
    let m = anonymous.try_subscribe("t", "t", None);
    assert_eq!(m["code"], "unauthorized", "{m}");
    assert!(m["message"].as_str().unwrap().contains("anon_role"), "{m}");

    for (aud, what) in [
        (json!("elsewhere"), "wrong audience"),
        (Value::Null, "no audience"),
    ] {
        let t = token(json!({"role": "web_user", "aud": aud, "exp": later}));
        let (status, body) = upgrade_with(&c, &t);
        assert_eq!(
            (status, body["error"].as_str()),
            (401, Some("unauthorized")),
            "{what}: {body}"
        );
    }

    // The anonymous connection signs in: one of web_user's two connections.
    anonymous.send(json!({"type": "auth", "token": good}));
    assert_eq!(anonymous.recv()["type"], "authenticated");
    anonymous.subscribe("t", "t", None);
    let _second = Ws::connect_as(c.ws_port, &good);
    let (status, body) = upgrade_with(&c, &good);
    assert_eq!(
        (status, body["error"].as_str()),
        (429, Some("too_many_connections")),
        "{body}"
    );
    drop(_second);
    // A closed connection gives its place back.
    let deadline = Instant::now() + common::PATIENCE;
    while upgrade_with(&c, &good).0 == 429 {
        assert!(
            Instant::now() < deadline,
            "the closed connection's place was not freed"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn a_dropped_role_ends_its_subscriptions() {
    let c = cluster();
    let mut db = c.client();
    db.batch_execute(&format!(
        "CREATE ROLE passing NOLOGIN; GRANT web_user TO passing; GRANT passing TO {AUTHENTICATOR};"
    ))
    .unwrap();
    let t = token(json!({"role": "passing", "sub": "dora", "exp": unix_now() + 600}));
    let mut ws = Ws::connect_as(c.ws_port, &t);
    ws.subscribe("n", "notes", None);
    db.batch_execute("INSERT INTO notes VALUES (8, 'dora')")
        .unwrap();
    assert_eq!(ws.change_ids(1), vec![8]);
    db.batch_execute("DROP ROLE passing").unwrap();
    ws.expect_ended("n", "forbidden");
    let m = ws.try_subscribe("n", "notes", None);
    assert_eq!(m["code"], "unauthorized", "{m}");
}
