//! Channels: NOTIFY channels relayed as PostgreSQL delivers them to a LISTENing session,
//! `realtime_send()` as part of the sending transaction, who may receive each, and resuming a
//! channel from the history.
mod common;
use common::{token, Cluster, Ws, AUTHENTICATOR, READER};
use serde_json::{json, Value};

/// Subscribe `ws` to channel `channel` as subscription `id`; the reply.
fn subscribe_channel(ws: &mut Ws, id: &str, channel: &str) -> Value {
    ws.send(json!({"type": "subscribe", "id": id, "channel": channel}));
    ws.recv()
}

/// The next `n` messages, each a `message`.
fn messages(ws: &mut Ws, n: usize) -> Vec<Value> {
    (0..n)
        .map(|_| {
            let m = ws.recv();
            assert_eq!(m["type"], "message", "expected a message, got {m}");
            m
        })
        .collect()
}

fn payloads(messages: &[Value]) -> Vec<Value> {
    messages.iter().map(|m| m["payload"].clone()).collect()
}

#[test]
fn committed_notifications_arrive_once_in_commit_order_as_postgres_delivers_them() {
    let cluster = Cluster::start("relay_semantics", &[]);
    let mut db = cluster.client();
    db.batch_execute(&format!(
        "SELECT realtime_relay('orders', readers => '{{{READER}}}')"
    ))
    .unwrap();
    let mut ws = cluster.ws();
    let ack = subscribe_channel(&mut ws, "o", "orders");
    assert_eq!(
        (ack["type"].as_str(), ack["channel"].as_str()),
        (Some("subscribed"), Some("orders")),
        "{ack}"
    );
    let pid: i32 = db.query_one("SELECT pg_backend_pid()", &[]).unwrap().get(0);
    let big = "x".repeat(7999);
    // Each a transaction of its own (one simple query would be one transaction).
    for transaction in [
        "SELECT pg_notify('orders', 'one')",
        "BEGIN; SELECT pg_notify('orders', 'rolled back'); ROLLBACK",
        "BEGIN; SELECT pg_notify('orders', 'kept'); SAVEPOINT s;
         SELECT pg_notify('orders', 'savepoint rolled back'); ROLLBACK TO s; COMMIT",
        "BEGIN; SELECT pg_notify('orders', 'twice'); SELECT pg_notify('orders', 'twice');
         SELECT pg_notify('orders', 'then'); SELECT pg_notify('not_relayed', 'x'); COMMIT",
        "NOTIFY orders, 'by the statement'",
        &format!("SELECT pg_notify('orders', '{big}')"),
    ] {
        db.batch_execute(transaction).unwrap();
    }
    // PostgreSQL refuses what it cannot deliver: a payload of 8000 bytes, NOTIFY in a
    // prepared transaction. Nothing of either arrives.
    let too_long = db.batch_execute(&format!(
        "SELECT pg_notify('orders', '{}')",
        "x".repeat(8000)
    ));
    assert!(too_long.is_err());
    let prepared =
        db.batch_execute("BEGIN; SELECT pg_notify('orders', 'prepared'); PREPARE TRANSACTION 'n'");
    assert!(
        prepared.is_err_and(|e| e
            .as_db_error()
            .is_some_and(|e| e.message().starts_with("cannot PREPARE"))),
        "PostgreSQL refuses NOTIFY in a prepared transaction"
    );
    db.batch_execute("ROLLBACK").unwrap();
    db.batch_execute("SELECT pg_notify('orders', 'last')")
        .unwrap();
    let got = messages(&mut ws, 7);
    assert_eq!(
        payloads(&got),
        [
            json!("one"),
            json!("kept"),
            json!("twice"),
            json!("then"),
            json!("by the statement"),
            json!(big),
            json!("last")
        ]
    );
    for m in &got {
        assert_eq!(
            (
                m["channel"].as_str(),
                m["event"].as_str(),
                m["pid"].as_i64()
            ),
            (Some("orders"), Some("notify"), Some(pid as i64)),
            "{m}"
        );
    }
    let positions: Vec<u64> = got
        .iter()
        .map(|m| m["position"].as_u64().unwrap())
        .collect();
    assert!(positions.windows(2).all(|w| w[0] < w[1]), "{positions:?}");
    ws.nothing_more();
}

#[test]
fn a_json_relay_parses_payloads_that_are_json_and_keeps_the_rest_as_text() {
    let cluster = Cluster::start("relay_json", &[]);
    let mut db = cluster.client();
    db.batch_execute(&format!(
        "SELECT realtime_relay('sensor_updates', as_json => true, readers => '{{{READER}}}')"
    ))
    .unwrap();
    let mut ws = cluster.ws();
    assert_eq!(
        subscribe_channel(&mut ws, "s", "sensor_updates")["type"],
        "subscribed"
    );
    db.batch_execute(
        r#"SELECT pg_notify('sensor_updates', '{"sensor": 7, "t": 21.5}');
           SELECT pg_notify('sensor_updates', 'not json {');
           SELECT pg_notify('sensor_updates', '');
           SELECT pg_notify('sensor_updates', row_to_json(r)::text)
             FROM (SELECT 1 AS id, 'défaut' AS name, NULL::int AS none) r"#,
    )
    .unwrap();
    let got = messages(&mut ws, 4);
    assert_eq!(
        payloads(&got),
        [
            json!({"sensor": 7, "t": 21.5}),
            json!("not json {"),
            json!(""),
            json!({"id": 1, "name": "défaut", "none": null})
        ]
    );
    // Numbers keep their digits: the payload is passed through, not re-encoded.
    db.batch_execute(r#"SELECT pg_notify('sensor_updates', '{"t":21.50}')"#)
        .unwrap();
    let raw = ws.socket.read().unwrap().into_text().unwrap();
    assert!(raw.ends_with(r#""payload":{"t":21.50}}"#), "{raw}");
}

#[test]
fn only_readers_receive_a_relayed_channel_and_unrelaying_ends_its_subscriptions() {
    let cluster = Cluster::start("relay_readers", &[]);
    let mut db = cluster.client();
    db.batch_execute(&format!(
        "CREATE ROLE outsider NOLOGIN; GRANT outsider TO {AUTHENTICATOR};
         CREATE ROLE staff NOLOGIN; CREATE ROLE clerk NOLOGIN IN ROLE staff;
         GRANT clerk TO {AUTHENTICATOR};
         SELECT realtime_relay('orders', readers => '{{staff}}');
         SELECT realtime_relay('nobody');"
    ))
    .unwrap();
    let as_role = |role: &str| Ws::connect_as(cluster.ws_port, &token(json!({"role": role})));
    // A member of a reader role receives it; others are told the same as for a channel
    // that is not relayed at all.
    let mut clerk = as_role("clerk");
    assert_eq!(
        subscribe_channel(&mut clerk, "o", "orders")["type"],
        "subscribed"
    );
    let mut outsider = as_role("outsider");
    let mut anonymous = cluster.ws();
    for (outside, channel) in [
        (true, "orders"),
        (false, "orders"),
        (false, "nobody"),
        (false, "never_relayed"),
    ] {
        let ws = if outside {
            &mut outsider
        } else {
            &mut anonymous
        };
        let refused = subscribe_channel(ws, "x", channel);
        assert_eq!(
            (refused["type"].as_str(), refused["code"].as_str()),
            (Some("error"), Some("unknown_channel")),
            "{channel}: {refused}"
        );
    }
    db.batch_execute("SELECT pg_notify('orders', 'for staff')")
        .unwrap();
    assert_eq!(payloads(&messages(&mut clerk, 1)), [json!("for staff")]);
    // Taking the reader away, or the relay, ends the subscription in its place.
    db.batch_execute("SELECT realtime_relay('orders', readers => '{outsider}')")
        .unwrap();
    clerk.expect_ended("o", "forbidden");
    assert_eq!(
        subscribe_channel(&mut outsider, "o", "orders")["type"],
        "subscribed"
    );
    let removed: bool = db
        .query_one("SELECT realtime_unrelay('orders')", &[])
        .unwrap()
        .get(0);
    assert!(removed);
    outsider.expect_ended("o", "forbidden");
    let relayed: Vec<String> = db
        .query("SELECT channel FROM realtime_relayed()", &[])
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(relayed, ["nobody"]);
    // Bad names are refused with a reason, and change nothing.
    for bad in ["''", "NULL", &format!("'{}'", "c".repeat(64))] {
        let e = db
            .batch_execute(&format!("SELECT realtime_relay({bad})"))
            .unwrap_err();
        assert_eq!(
            e.code(),
            Some(&postgres::error::SqlState::INVALID_PARAMETER_VALUE),
            "{bad}: {e}"
        );
    }
}

#[test]
fn realtime_send_is_delivered_with_its_transaction_s_changes_in_order() {
    let cluster = Cluster::start("send", &["realtime.public_topics = on"]);
    let mut db = cluster.client();
    let mut ws = cluster.watched("jobs", "(id int PRIMARY KEY, state text)");
    assert_eq!(
        subscribe_channel(&mut ws, "c", "job_events")["type"],
        "subscribed"
    );
    db.batch_execute(
        r#"BEGIN;
           INSERT INTO jobs VALUES (42, 'running');
           SELECT realtime_send('job_events', 'started', '{"job": 42}');
           UPDATE jobs SET state = 'done' WHERE id = 42;
           SELECT realtime_send('job_events', 'finished', '{"job": 42, "ok": true}');
           COMMIT;
           BEGIN; SELECT realtime_send('job_events', 'rolled back', '{}'); ROLLBACK;
           BEGIN; SAVEPOINT s; SELECT realtime_send('job_events', 'savepoint', '{}');
                  ROLLBACK TO s; SELECT realtime_send('job_events', 'kept', 'null'); COMMIT;
           SELECT realtime_send('job_events', 'null payload', NULL);"#,
    )
    .unwrap();
    let got: Vec<Value> = (0..6).map(|_| ws.recv()).collect();
    let kinds: Vec<String> = got
        .iter()
        .map(|m| match m["type"].as_str() {
            Some("change") => format!("{} {}", m["op"].as_str().unwrap(), m["new"]["state"]),
            Some("message") => format!("{} {}", m["event"].as_str().unwrap(), m["payload"]),
            _ => panic!("{m}"),
        })
        .collect();
    assert_eq!(
        kinds,
        [
            r#"INSERT "running""#,
            r#"started {"job":42}"#,
            r#"UPDATE "done""#,
            r#"finished {"job":42,"ok":true}"#,
            "kept null",
            "null payload null"
        ]
    );
    // One transaction: consecutive positions, one transaction id.
    let first: Vec<&Value> = got[..4].iter().collect();
    assert!(first
        .windows(2)
        .all(|w| w[0]["position"].as_u64().unwrap() + 1 == w[1]["position"].as_u64().unwrap()));
    assert!(first.iter().all(|m| m["xid"] == first[0]["xid"]));
    ws.nothing_more();
}

#[test]
fn realtime_send_carries_a_megabyte_joins_prepared_transactions_and_refuses_bad_calls() {
    let cluster = Cluster::start("send_limits", &["realtime.public_topics = on"]);
    let mut db = cluster.client();
    let mut ws = cluster.ws();
    assert_eq!(
        subscribe_channel(&mut ws, "c", "bulk")["type"],
        "subscribed"
    );
    db.batch_execute(
        "SELECT realtime_send('bulk', 'big', jsonb_build_object('blob', repeat('y', 1048576)))",
    )
    .unwrap();
    let big = messages(&mut ws, 1);
    assert_eq!(
        big[0]["payload"]["blob"].as_str().map(str::len),
        Some(1 << 20)
    );
    // Delivered at COMMIT PREPARED, not at PREPARE.
    db.batch_execute(
        "BEGIN; SELECT realtime_send('bulk', 'prepared', '1'); PREPARE TRANSACTION 'p'",
    )
    .unwrap();
    ws.nothing_more();
    db.batch_execute("COMMIT PREPARED 'p'").unwrap();
    assert_eq!(messages(&mut ws, 1)[0]["event"], "prepared");
    db.batch_execute(
        "BEGIN; SELECT realtime_send('bulk', 'rolled back', '1'); PREPARE TRANSACTION 'r'",
    )
    .unwrap();
    db.batch_execute("ROLLBACK PREPARED 'r'").unwrap();
    for (call, code) in [
        ("realtime_send('', 'e', '1')", "22023"),
        ("realtime_send(NULL, 'e', '1')", "22023"),
        (
            &format!("realtime_send('{}', 'e', '1')", "t".repeat(256)),
            "22023",
        ),
        ("realtime_send('bulk', '', '1')", "22023"),
    ] {
        let e = db.batch_execute(&format!("SELECT {call}")).unwrap_err();
        assert_eq!(e.code().map(|c| c.code()), Some(code), "{call}: {e}");
    }
    // Only roles granted EXECUTE may send.
    db.batch_execute("CREATE ROLE app LOGIN").unwrap();
    let mut app = cluster.client_as("app");
    let e = app
        .batch_execute("SELECT realtime_send('bulk', 'e', '1')")
        .unwrap_err();
    assert_eq!(
        e.code(),
        Some(&postgres::error::SqlState::INSUFFICIENT_PRIVILEGE)
    );
    db.batch_execute("GRANT EXECUTE ON FUNCTION realtime_send(text, text, jsonb) TO app")
        .unwrap();
    app.batch_execute("SELECT realtime_send('bulk', 'granted', '1')")
        .unwrap();
    assert_eq!(messages(&mut ws, 1)[0]["event"], "granted");
    ws.nothing_more();
}

#[test]
fn a_channel_resumes_from_the_history_across_a_worker_restart() {
    let cluster = Cluster::start("channel_resume", &["realtime.public_topics = on"]);
    let mut db = cluster.client();
    db.batch_execute(&format!(
        "SELECT realtime_relay('orders', readers => '{{{READER}}}')"
    ))
    .unwrap();
    let mut ws = cluster.ws();
    assert_eq!(
        subscribe_channel(&mut ws, "o", "orders")["type"],
        "subscribed"
    );
    db.batch_execute("SELECT pg_notify('orders', 'before')")
        .unwrap();
    let since = messages(&mut ws, 1)[0]["position"].as_u64().unwrap();
    db.batch_execute("SELECT pg_notify('orders', 'missed 1')")
        .unwrap();
    db.batch_execute("SELECT realtime_send('orders', 'sent', '2')")
        .unwrap();
    cluster.restart_worker();
    // The new worker listens again before it answers anyone.
    let mut again = cluster.ws();
    again.send(json!({"type": "subscribe", "id": "o", "channel": "orders", "since": since}));
    let ack = again.recv();
    assert_eq!(
        (ack["type"].as_str(), ack["resume"].as_str()),
        (Some("subscribed"), Some("complete")),
        "{ack}"
    );
    db.batch_execute("SELECT pg_notify('orders', 'after')")
        .unwrap();
    let got = messages(&mut again, 3);
    assert_eq!(
        payloads(&got),
        [json!("missed 1"), json!(2), json!("after")]
    );
    assert_eq!(got[1]["event"], "sent");
    again.nothing_more();
}

/// What SQL says `role`, with `claims`, may do with realtime.messages for `topic` and
/// `extension`, asked as the worker asks it: `read` back a probe row, or insert one, under
/// row-level security; rolled back.
fn sql_allows(
    db: &mut postgres::Client,
    role: &str,
    claims: &Value,
    topic: &str,
    extension: &str,
    read: bool,
) -> bool {
    let probe = "INSERT INTO realtime.messages (topic, extension) VALUES ($1, $2)";
    let mut txn = db.transaction().unwrap();
    if read {
        txn.execute(probe, &[&topic, &extension]).unwrap();
    }
    txn.batch_execute(&format!("SET LOCAL ROLE {role}"))
        .unwrap();
    txn.execute(
        "SELECT set_config('request.jwt.claims', $1, true), set_config('realtime.topic', $2, true)",
        &[&claims.to_string(), &topic],
    )
    .unwrap();
    let allowed = if read {
        txn.query_one(
            "SELECT EXISTS (SELECT FROM realtime.messages WHERE topic = $1 AND extension = $2)",
            &[&topic, &extension],
        )
        .is_ok_and(|r| r.get::<_, bool>(0))
    } else {
        txn.execute(probe, &[&topic, &extension]).is_ok()
    };
    let _ = txn.rollback();
    allowed
}

#[test]
fn topics_are_received_as_row_level_security_on_realtime_messages_says() {
    let cluster = Cluster::start("topic_policies", &[]);
    let mut db = cluster.client();
    db.batch_execute(&format!(
        "CREATE ROLE chatter NOLOGIN; CREATE ROLE bomber NOLOGIN; CREATE ROLE stranger NOLOGIN;
         GRANT chatter, bomber, stranger TO {AUTHENTICATOR};
         GRANT USAGE ON SCHEMA realtime TO chatter, bomber, stranger;
         GRANT SELECT, INSERT ON realtime.messages TO chatter, bomber;
         -- A member reads the rooms its token names.
         CREATE POLICY rooms ON realtime.messages FOR SELECT TO chatter
             USING (extension = 'broadcast' AND realtime.topic() =
                    'room:' || (current_setting('request.jwt.claims', true)::jsonb ->> 'room'));
         CREATE POLICY boom ON realtime.messages FOR SELECT TO bomber USING (1 / 0 = 1);
         -- ... and may send only in room 1, and be present only in room 2.
         CREATE POLICY speak ON realtime.messages FOR INSERT TO chatter
             WITH CHECK (extension = 'broadcast' AND realtime.topic() = 'room:1');
         CREATE POLICY see_who ON realtime.messages FOR SELECT TO chatter
             USING (extension = 'presence');
         CREATE POLICY be_seen ON realtime.messages FOR INSERT TO chatter
             WITH CHECK (extension = 'presence' AND realtime.topic() = 'room:2');"
    ))
    .unwrap();
    let cases = [
        ("chatter", json!({"role": "chatter", "room": "1"}), "room:1"),
        ("chatter", json!({"role": "chatter", "room": "1"}), "room:2"),
        ("chatter", json!({"role": "chatter", "room": "2"}), "room:2"),
        ("chatter", json!({"role": "chatter"}), "room:1"),
        ("bomber", json!({"role": "bomber"}), "room:1"),
        (
            "stranger",
            json!({"role": "stranger", "room": "1"}),
            "room:1",
        ),
    ];
    let mut members = Vec::new();
    for (role, claims, topic) in &cases {
        let expected = sql_allows(&mut db, role, claims, topic, "broadcast", true);
        let mut ws = Ws::connect_as(cluster.ws_port, &token(claims.clone()));
        ws.send(json!({"type": "subscribe", "id": "t", "channel": topic, "presence": true}));
        let reply = ws.recv();
        let subscribed = reply["type"] == "subscribed";
        assert_eq!(subscribed, expected, "{role} {claims} {topic}: {reply}");
        if !subscribed {
            assert_eq!(reply["code"], "unknown_channel", "{reply}");
        } else {
            let may_send = sql_allows(&mut db, role, claims, topic, "broadcast", false);
            let may_track = sql_allows(&mut db, role, claims, topic, "presence", true)
                && sql_allows(&mut db, role, claims, topic, "presence", false);
            // Told who is present first, when it may be.
            let state = ws.recv();
            assert_eq!(state["type"], "presence_state", "{state}");
            ws.send(json!({"type": "track", "channel": topic, "state": {"me": role}, "ref": 2}));
            let reply = ws.recv();
            let tracked = reply["type"] == "tracked";
            assert_eq!(tracked, may_track, "{role} {claims} {topic}: {reply}");
            if tracked {
                assert_eq!(ws.recv()["type"], "presence_diff");
            }
            members.push((topic.to_string(), may_send, ws));
        }
    }
    assert_eq!(members.len(), 2, "the two rooms their tokens name");
    // Sending is the INSERT policy's to decide, as SQL says.
    assert_eq!(
        members.iter().map(|m| m.1).collect::<Vec<_>>(),
        [true, false]
    );
    for (topic, may_send, ws) in &mut members {
        ws.send(json!({"type": "broadcast", "channel": topic, "event": "e", "ref": 1}));
        let reply = ws.recv();
        let expected = if *may_send { "broadcast_sent" } else { "error" };
        assert_eq!(reply["type"], expected, "{topic}: {reply}");
    }
    // The policy that raises for bomber refused bomber only: the others receive.
    db.batch_execute(
        "SELECT realtime_send('room:1', 'said', '\"hi 1\"'); SELECT realtime_send('room:2', 'said', '\"hi 2\"')",
    )
    .unwrap();
    for (topic, _, ws) in &mut members {
        let m = messages(ws, 1);
        assert_eq!(
            m[0]["payload"],
            json!(format!("hi {}", &topic[5..])),
            "{topic}: {m:?}"
        );
    }
    // Dropping the policy takes the rooms away, in commit order.
    db.batch_execute("DROP POLICY rooms ON realtime.messages")
        .unwrap();
    for (_, _, ws) in &mut members {
        ws.expect_ended("t", "forbidden");
    }
}

#[test]
fn a_client_broadcast_reaches_the_channel_s_other_subscribers_and_is_bounded() {
    let cluster = Cluster::start(
        "broadcast",
        &[
            "realtime.public_topics = on",
            "realtime.broadcast_rate = 20",
            "realtime.max_broadcast_size = 1kB",
        ],
    );
    let mut db = cluster.client();
    db.batch_execute(&format!(
        "SELECT realtime_relay('orders', readers => '{{{READER}}}')"
    ))
    .unwrap();
    let [mut a, mut b, mut c, mut elsewhere] = [(); 4].map(|_| cluster.ws());
    for ws in [&mut a, &mut b, &mut c] {
        assert_eq!(subscribe_channel(ws, "l", "lobby")["type"], "subscribed");
    }
    assert_eq!(
        subscribe_channel(&mut elsewhere, "o", "other")["type"],
        "subscribed"
    );
    a.send(
        json!({"type": "broadcast", "channel": "lobby", "event": "cursor",
                  "payload": {"x": 1.50, "y": [2]}, "ref": 7}),
    );
    let sent = a.recv();
    assert_eq!(
        (
            sent["type"].as_str(),
            sent["ref"].as_i64(),
            sent["receivers"].as_i64()
        ),
        (Some("broadcast_sent"), Some(7), Some(2)),
        "{sent}"
    );
    for ws in [&mut b, &mut c] {
        let m = ws.recv();
        assert_eq!(
            m,
            json!({"type": "broadcast", "channel": "lobby", "event": "cursor", "payload": {"x": 1.50, "y": [2]}})
        );
    }
    // With self, the sender gets it too; without a ref, no receipt.
    b.send(json!({"type": "broadcast", "channel": "lobby", "event": "hello", "self": true}));
    for ws in [&mut a, &mut b, &mut c] {
        let m = ws.recv();
        assert_eq!(
            (m["event"].as_str(), &m["payload"]),
            (Some("hello"), &Value::Null),
            "{m}"
        );
    }
    // Refusals, each with its code, and nothing sent.
    let refused = |ws: &mut Ws, message: Value| {
        ws.send(message);
        ws.recv()["code"].as_str().unwrap_or("").to_string()
    };
    let big = "z".repeat(2000);
    assert_eq!(
        refused(
            &mut a,
            json!({"type": "broadcast", "channel": "nowhere", "event": "e"})
        ),
        "not_subscribed"
    );
    assert_eq!(
        subscribe_channel(&mut a, "o", "orders")["type"],
        "subscribed"
    );
    assert_eq!(
        refused(
            &mut a,
            json!({"type": "broadcast", "channel": "orders", "event": "e"})
        ),
        "forbidden"
    );
    assert_eq!(
        refused(
            &mut a,
            json!({"type": "broadcast", "channel": "lobby", "event": "e", "payload": big})
        ),
        "payload_too_large"
    );
    assert_eq!(
        refused(
            &mut a,
            json!({"type": "broadcast", "channel": "lobby", "event": ""})
        ),
        "invalid_message"
    );
    // A flood: a second's worth passes, the rest is refused; the others are not disturbed.
    let mut admitted = 0;
    let mut limited = 0;
    for i in 0..200 {
        a.send(json!({"type": "broadcast", "channel": "lobby", "event": "flood", "payload": i, "ref": i}));
    }
    for _ in 0..200 {
        match a.recv()["type"].as_str() {
            Some("broadcast_sent") => admitted += 1,
            Some("error") => limited += 1,
            other => panic!("{other:?}"),
        }
    }
    // About a second's worth (20) passes, and whatever accrues while the flood is read.
    assert!((1..=40).contains(&admitted), "{admitted} admitted");
    assert_eq!(admitted + limited, 200);
    let got = (0..admitted)
        .map(|_| b.recv())
        .filter(|m| m["event"] == "flood")
        .count();
    assert_eq!(got, admitted);
    db.batch_execute("SELECT realtime_send('other', 'still', '1')")
        .unwrap();
    assert_eq!(messages(&mut elsewhere, 1)[0]["event"], "still");
    elsewhere.nothing_more();
    c.drain();
}

/// Subscribe `ws` to `channel` with presence; the presence state it is told first.
fn join_present(ws: &mut Ws, channel: &str) -> Value {
    ws.send(json!({"type": "subscribe", "id": "p", "channel": channel, "presence": true}));
    assert_eq!(ws.recv()["type"], "subscribed");
    let state = ws.recv();
    assert_eq!(state["type"], "presence_state", "{state}");
    state["state"].clone()
}

/// Track `ws` on `channel` with `state`; its presence key.
fn track(ws: &mut Ws, channel: &str, state: Value) -> String {
    ws.send(json!({"type": "track", "channel": channel, "state": state, "ref": "t"}));
    let reply = ws.recv();
    assert_eq!(reply["type"], "tracked", "{reply}");
    reply["key"].as_str().unwrap().to_string()
}

/// The next presence_diff: (joins, leaves).
fn diff(ws: &mut Ws) -> (Value, Value) {
    let m = ws.recv();
    assert_eq!(m["type"], "presence_diff", "{m}");
    (m["joins"].clone(), m["leaves"].clone())
}

#[test]
fn presence_is_told_in_full_on_joining_then_as_joins_and_leaves() {
    let cluster = Cluster::start(
        "presence",
        &[
            "realtime.public_topics = on",
            "realtime.max_presence_per_channel = 3",
            "realtime.max_broadcast_size = 1kB",
        ],
    );
    let mut a = cluster.ws();
    let mut b = cluster.ws();
    assert_eq!(join_present(&mut a, "room"), json!({}));
    let key_a = track(&mut a, "room", json!({"name": "ada"}));
    assert_eq!(diff(&mut a), (json!({&key_a: {"name": "ada"}}), json!({})));
    // A late joiner is told everyone at once, then the changes.
    assert_eq!(
        join_present(&mut b, "room"),
        json!({&key_a: {"name": "ada"}})
    );
    let key_b = track(&mut b, "room", json!({"name": "bob"}));
    for ws in [&mut a, &mut b] {
        assert_eq!(diff(ws), (json!({&key_b: {"name": "bob"}}), json!({})));
    }
    // A new state replaces the old: the old one leaves, the new one joins.
    track(&mut a, "room", json!({"name": "ada", "typing": true}));
    for ws in [&mut a, &mut b] {
        assert_eq!(
            diff(ws),
            (
                json!({&key_a: {"name": "ada", "typing": true}}),
                json!({&key_a: {"name": "ada"}})
            )
        );
    }
    // Untrack is a leave; so is a disconnect.
    a.send(json!({"type": "untrack", "channel": "room"}));
    for ws in [&mut a, &mut b] {
        assert_eq!(diff(ws).1, json!({&key_a: {"name": "ada", "typing": true}}));
    }
    let mut c = cluster.ws();
    join_present(&mut c, "room");
    drop(b);
    assert_eq!(diff(&mut c), (json!({}), json!({&key_b: {"name": "bob"}})));
    // A subscriber that did not ask for presence is told nothing of it.
    let mut quiet = cluster.ws();
    assert_eq!(
        subscribe_channel(&mut quiet, "q", "room")["type"],
        "subscribed"
    );
    track(&mut quiet, "room", json!(1));
    assert_eq!(diff(&mut c).0.as_object().map(|o| o.len()), Some(1));
    quiet.nothing_more();
    // Bounds: the state's size, and members per channel (3 here: quiet, then two more).
    c.send(json!({"type": "track", "channel": "room", "state": "x".repeat(2000), "ref": 1}));
    assert_eq!(c.recv()["code"], "payload_too_large");
    c.send(json!({"type": "track", "channel": "nowhere", "state": 1, "ref": 1}));
    assert_eq!(c.recv()["code"], "not_subscribed");
    track(&mut c, "room", json!(2));
    let mut d = cluster.ws();
    join_present(&mut d, "room");
    track(&mut d, "room", json!(3));
    let mut e = cluster.ws();
    join_present(&mut e, "room");
    e.send(json!({"type": "track", "channel": "room", "state": 4, "ref": 1}));
    assert_eq!(e.recv()["code"], "presence_full");
    // A worker restart closes every connection: everyone has left.
    let before = cluster.worker_pid();
    cluster.restart_worker();
    assert_ne!(cluster.worker_pid(), before);
    let mut after = cluster.ws();
    assert_eq!(join_present(&mut after, "room"), json!({}));
}

#[test]
fn an_expired_token_is_a_leave() {
    let cluster = Cluster::start("presence_expiry", &["realtime.public_topics = on"]);
    let mut db = cluster.client();
    db.batch_execute(&format!(
        "CREATE ROLE visitor NOLOGIN; GRANT visitor TO {AUTHENTICATOR}"
    ))
    .unwrap();
    let expires = common::unix_now() + 3;
    let mut short = Ws::connect_as(
        cluster.ws_port,
        &token(json!({"role": "visitor", "exp": expires})),
    );
    let mut watcher = cluster.ws();
    join_present(&mut watcher, "room");
    join_present(&mut short, "room");
    let key = track(&mut short, "room", json!("here"));
    for ws in [&mut watcher, &mut short] {
        assert_eq!(diff(ws).0, json!({&key: "here"}));
    }
    // No fresh token arrives: the subscription ends, and with it the presence.
    short.expect_ended("p", "token_expired");
    assert_eq!(diff(&mut watcher).1, json!({&key: "here"}));
}

#[test]
fn supabase_s_realtime_send_and_broadcast_changes_work_unchanged() {
    let cluster = Cluster::start("supabase_send", &["realtime.public_topics = on"]);
    let mut db = cluster.client();
    // A trigger as Supabase's documentation writes it.
    db.batch_execute(
        "CREATE TABLE rooms_messages (id int PRIMARY KEY, room int, body text);
         CREATE FUNCTION room_messages_changed() RETURNS trigger LANGUAGE plpgsql AS $$
         BEGIN
             PERFORM realtime.broadcast_changes('room:' || coalesce(NEW.room, OLD.room)::text,
                 TG_OP, TG_OP, TG_TABLE_NAME, TG_TABLE_SCHEMA, NEW, OLD);
             RETURN NULL;
         END $$;
         CREATE TRIGGER changed AFTER INSERT OR UPDATE OR DELETE ON rooms_messages
             FOR EACH ROW EXECUTE FUNCTION room_messages_changed();",
    )
    .unwrap();
    let mut ws = cluster.ws();
    assert_eq!(
        subscribe_channel(&mut ws, "r", "room:1")["type"],
        "subscribed"
    );
    db.batch_execute(
        "INSERT INTO rooms_messages VALUES (1, 1, 'hi');
         UPDATE rooms_messages SET body = 'hello' WHERE id = 1;
         DELETE FROM rooms_messages WHERE id = 1;
         SELECT realtime.send('{\"typing\": true}', 'typing', 'room:1');
         SELECT realtime.send('{}', 'public', 'room:1', false);",
    )
    .unwrap();
    let got = messages(&mut ws, 5);
    let record = |m: &Value| (m["event"].clone(), m["payload"].clone());
    assert_eq!(
        record(&got[0]),
        (
            json!("INSERT"),
            json!({"old_record": null, "record": {"id": 1, "room": 1, "body": "hi"},
                   "operation": "INSERT", "table": "rooms_messages", "schema": "public"})
        )
    );
    assert_eq!(got[1]["payload"]["old_record"]["body"], "hi");
    assert_eq!(got[1]["payload"]["record"]["body"], "hello");
    assert_eq!(got[2]["payload"]["record"], Value::Null);
    assert_eq!(record(&got[3]), (json!("typing"), json!({"typing": true})));
    assert_eq!(got[4]["event"], "public");
    // As Supabase's, a statement trigger is refused, with a reason.
    let e = db
        .batch_execute(
            "SELECT realtime.broadcast_changes('t', 'e', 'INSERT', 'x', 'public', NULL::record, NULL::record, 'STATEMENT')",
        )
        .unwrap_err();
    assert_eq!(e.code().map(|c| c.code()), Some("0A000"), "{e}");
    ws.nothing_more();
}
