//! Resuming from a position: what a client missed while away comes back from the history,
//! authorized and filtered as live changes are, then the live stream, with nothing lost or
//! twice; what cannot come back is a `gap` first, never silence.

mod common;

use common::{token, Cluster, Ws};
use serde_json::{json, Value};
use std::time::Duration;

/// Subscribe `id` to `table` resuming after `since`; the `subscribed` reply.
fn resume(ws: &mut Ws, id: &str, table: &str, filter: Option<&str>, since: u64) -> Value {
    let mut msg = json!({"type": "subscribe", "id": id, "table": table, "since": since});
    if let Some(f) = filter {
        msg["filter"] = json!(f);
    }
    ws.send(msg);
    let reply = ws.recv();
    assert_eq!(reply["type"], "subscribed", "{reply}");
    reply
}

fn position(m: &Value) -> u64 {
    m["position"].as_u64().expect("a position")
}

/// Inserts `ids` into `table` (columns id, owner), one transaction each.
fn insert(db: &mut postgres::Client, table: &str, ids: &[(i32, &str)]) {
    for (id, owner) in ids {
        db.execute(
            &format!("INSERT INTO {table} (id, owner) VALUES ($1, $2)"),
            &[id, owner],
        )
        .unwrap();
    }
}

#[test]
fn a_client_that_comes_back_gets_what_it_missed_then_the_live_stream() {
    let cluster = Cluster::start("resume_back", &[]);
    let mut db = cluster.client();
    db.batch_execute(
        "CREATE ROLE app_user NOLOGIN;
         GRANT app_user TO realtime_authenticator;
         CREATE TABLE notes (id int, owner text, body text);
         ALTER TABLE notes ENABLE ROW LEVEL SECURITY;
         CREATE POLICY mine ON notes USING (owner = current_setting('request.jwt.claims', true)::json->>'sub');
         GRANT SELECT ON notes TO app_user;
         SELECT realtime_watch('notes');",
    )
    .unwrap();
    let alice = token(json!({"role": "app_user", "sub": "alice"}));
    let mut ws = Ws::connect_as(cluster.ws_port, &alice);
    ws.subscribe("n", "notes", None);
    insert(&mut db, "notes", &[(1, "alice")]);
    let last_seen = position(&ws.changes(1)[0]);
    drop(ws);

    // While away: alice's rows, bob's rows, and an update that moves one of hers to bob.
    insert(&mut db, "notes", &[(2, "alice"), (3, "bob"), (4, "alice")]);
    db.execute("UPDATE notes SET owner = 'bob' WHERE id = 2", &[])
        .unwrap();
    db.execute("UPDATE notes SET body = 'x' WHERE id = 4", &[])
        .unwrap();

    let mut ws = Ws::connect_as(cluster.ws_port, &alice);
    let reply = resume(&mut ws, "n", "notes", None, last_seen);
    assert_eq!(reply["resume"], "complete", "{reply}");
    let live_after = position(&reply);
    let missed = ws.drain();
    let summary: Vec<(String, i64)> = missed
        .iter()
        .map(|m| {
            let row = if m["type"] == "leave" {
                &m["old"]
            } else {
                &m["new"]
            };
            (
                m["type"].as_str().unwrap().to_string(),
                row["id"].as_i64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        summary,
        [
            ("change".to_string(), 2),
            ("change".to_string(), 4),
            ("leave".to_string(), 2),
            ("change".to_string(), 4)
        ],
        "only alice's rows, in order: {missed:?}"
    );
    let positions: Vec<u64> = missed.iter().map(position).collect();
    assert!(positions.windows(2).all(|w| w[0] < w[1]) && positions[0] > last_seen);
    assert!(*positions.last().unwrap() <= live_after);

    // Then live, with nothing twice.
    insert(&mut db, "notes", &[(5, "alice")]);
    let live = ws.changes(1);
    assert_eq!(live[0]["new"]["id"], 5);
    assert!(position(&live[0]) > live_after);
    ws.nothing_more();

    // A filter applies to what comes back as to live changes.
    let mut filtered = Ws::connect_as(cluster.ws_port, &alice);
    let reply = resume(&mut filtered, "f", "notes", Some("id=eq.4"), last_seen);
    assert_eq!(reply["resume"], "complete");
    assert_eq!(filtered.change_ids(2), vec![4, 4]);
    filtered.nothing_more();
}

#[test]
fn older_than_the_history_is_a_gap_then_everything_it_keeps() {
    // 1 MB of history: segments of 1 MB, the oldest dropped past it.
    let cluster = Cluster::start("resume_expired", &["realtime.history_size = 1"]);
    let mut db = cluster.client();
    db.batch_execute(
        "CREATE TABLE big (id int, owner text, payload text);
         SELECT realtime_watch('big');",
    )
    .unwrap();
    let mut ws = cluster.ws();
    ws.subscribe("b", "big", None);
    db.execute("INSERT INTO big (id) VALUES (0)", &[]).unwrap();
    let first = position(&ws.changes(1)[0]);
    drop(ws);
    for id in 1..=30 {
        db.execute(
            "INSERT INTO big (id, payload) VALUES ($1, repeat('x', 100000))",
            &[&id],
        )
        .unwrap();
    }
    let mut ws = cluster.ws();
    ws.set_timeout(Duration::from_secs(20));
    let reply = resume(&mut ws, "b", "big", None, first);
    assert_eq!(reply["resume"], "partial", "{reply}");
    let gap = ws.recv();
    assert_eq!(
        (gap["type"].as_str(), gap["reason"].as_str()),
        (Some("gap"), Some("history_expired")),
        "{gap}"
    );
    assert_eq!(gap["from_position"].as_u64(), Some(first + 1));
    let kept = ws.drain();
    let ids: Vec<i64> = kept
        .iter()
        .map(|m| m["new"]["id"].as_i64().unwrap())
        .collect();
    assert!(
        !ids.is_empty() && ids.len() < 30,
        "some, not all, are kept: {ids:?}"
    );
    // What is kept is the newest, in order, and starts right after the gap.
    let expected: Vec<i64> = (31 - ids.len() as i64..=30).collect();
    assert_eq!(ids, expected);
    assert_eq!(position(&kept[0]), gap["to_position"].as_u64().unwrap() + 1);
}

#[test]
fn worker_restarts_server_restarts_and_crashes_lose_nothing() {
    let cluster = Cluster::start("resume_restart", &[]);
    let mut db = cluster.client();
    db.batch_execute(
        "CREATE TABLE events (id int, owner text);
         SELECT realtime_watch('events');",
    )
    .unwrap();
    let mut ws = cluster.ws();
    ws.subscribe("e", "events", None);
    insert(&mut db, "events", &[(1, "")]);
    let seen = position(&ws.changes(1)[0]);
    drop(ws);

    // The worker stops and comes back; changes committed meanwhile wait in the queue.
    insert(&mut db, "events", &[(2, "")]);
    let pid = cluster.worker_pid();
    db.execute("SELECT pg_terminate_backend($1)", &[&pid])
        .unwrap();
    insert(&mut db, "events", &[(3, "")]);
    cluster.wait_for_new_worker(pid);
    insert(&mut db, "events", &[(4, "")]);
    let seen = resumed(&cluster, seen, &[2, 3, 4]);

    // A server restart: the queue outlives it.
    drop(db);
    cluster.restart();
    let mut db = cluster.client();
    insert(&mut db, "events", &[(5, "")]);
    let seen = resumed(&cluster, seen, &[5]);

    // Changes committed while the worker cannot read them (it is stopped), then the worker
    // killed: every process restarts with new shared memory, and they are still published.
    let pid = cluster.worker_pid();
    signal(pid, "STOP");
    insert(&mut db, "events", &[(6, ""), (7, "")]);
    signal(pid, "KILL");
    drop(db);
    let db = reconnect(&cluster);
    cluster.wait_for_new_worker(pid);
    drop(db);
    let seen = resumed(&cluster, seen, &[6, 7]);

    // So are those an immediate shutdown cuts off.
    let mut db = cluster.client();
    signal(cluster.worker_pid(), "STOP");
    insert(&mut db, "events", &[(8, "")]);
    drop(db);
    cluster.pg_ctl(&["stop", "-m", "immediate"]);
    start(&cluster);
    let seen = resumed(&cluster, seen, &[8]);

    // A queue file the server cannot trust (as after the machine restarted) is not read: what
    // it held is a server_restart gap for clients that resume across it.
    let mut db = cluster.client();
    signal(cluster.worker_pid(), "STOP");
    insert(&mut db, "events", &[(9, "")]);
    drop(db);
    cluster.pg_ctl(&["stop", "-m", "immediate"]);
    let queue = cluster.data().join("pg_realtime/queue");
    let mut bytes = std::fs::read(&queue).unwrap();
    bytes[8..44].copy_from_slice(&[b'0'; 36]);
    std::fs::write(&queue, bytes).unwrap();
    start(&cluster);
    let mut db = cluster.client();
    insert(&mut db, "events", &[(10, "")]);
    let seen = resumed_after_gap(&cluster, seen, 10);

    // Nor is a copy of one (a base backup, a cloned data directory).
    drop(db);
    cluster.pg_ctl(&["stop", "-m", "fast"]);
    let copy = queue.with_extension("copy");
    // -p: as root, the copy stays the server's.
    let copied = std::process::Command::new("cp")
        .args(["-p", queue.to_str().unwrap(), copy.to_str().unwrap()])
        .status()
        .unwrap();
    assert!(copied.success());
    std::fs::rename(&copy, &queue).unwrap();
    start(&cluster);
    let mut db = cluster.client();
    insert(&mut db, "events", &[(11, "")]);
    resumed_after_gap(&cluster, seen, 11);
    let log = cluster.log();
    assert!(log.contains("server_restart gap"));
    assert!(
        !log.contains("could not map"),
        "the file was mapped each time"
    );
}

/// Resume after `seen`: a `server_restart` gap, then the change of `id`; its position.
fn resumed_after_gap(cluster: &Cluster, seen: u64, id: i64) -> u64 {
    let mut ws = cluster.ws();
    let reply = resume(&mut ws, "e", "events", None, seen);
    assert_eq!(reply["resume"], "partial", "{reply}");
    let gap = ws.recv();
    assert_eq!(gap["reason"], "server_restart", "{gap}");
    assert!(gap["from_position"].as_u64().unwrap() > seen);
    let change = ws.changes(1).remove(0);
    assert_eq!(change["new"]["id"], id);
    ws.nothing_more();
    position(&change)
}

/// Resume after `seen`: complete, exactly `ids`, nothing more; the position to resume after.
fn resumed(cluster: &Cluster, seen: u64, ids: &[i64]) -> u64 {
    let mut ws = cluster.ws();
    let reply = resume(&mut ws, "e", "events", None, seen);
    assert_eq!(reply["resume"], "complete", "{reply}");
    let changes = ws.changes(ids.len());
    let got: Vec<i64> = changes
        .iter()
        .map(|c| c["new"]["id"].as_i64().unwrap())
        .collect();
    assert_eq!(got, ids);
    ws.nothing_more();
    position(changes.last().unwrap())
}

fn signal(pid: i32, name: &str) {
    let status = std::process::Command::new("kill")
        .args([&format!("-{name}"), &pid.to_string()])
        .status()
        .unwrap();
    assert!(status.success(), "kill -{name} {pid}");
}

/// A connection once the server accepts them again (after a crash restarts it).
fn reconnect(cluster: &Cluster) -> postgres::Client {
    let mut client = None;
    common::wait_until("the server back", Duration::from_secs(60), || {
        client = postgres::Client::connect(&cluster.conninfo("postgres"), postgres::NoTls).ok();
        client.is_some()
    });
    client.expect("connected")
}

fn start(cluster: &Cluster) {
    cluster.pg_ctl(&[
        "start",
        "-w",
        "-l",
        cluster.dir.join("server.log").to_str().unwrap(),
    ]);
    cluster.wait_healthy();
}

#[test]
fn rows_the_worker_judges_are_judged_again_when_they_come_back() {
    let cluster = Cluster::start("resume_judged", &[]);
    let mut db = cluster.client();
    db.batch_execute(
        "CREATE ROLE app_user NOLOGIN;
         GRANT app_user TO realtime_authenticator;
         CREATE TABLE members (team int, member text);
         INSERT INTO members VALUES (1, 'alice'), (2, 'bob');
         GRANT SELECT ON members TO app_user;
         CREATE TABLE tasks (id int, owner text, team int);
         ALTER TABLE tasks ENABLE ROW LEVEL SECURITY;
         CREATE POLICY team ON tasks USING (team IN (SELECT m.team FROM members m
             WHERE m.member = current_setting('request.jwt.claims', true)::json->>'sub'));
         GRANT SELECT ON tasks TO app_user;
         SELECT realtime_watch('tasks');",
    )
    .unwrap();
    let alice = token(json!({"role": "app_user", "sub": "alice"}));
    let mut ws = Ws::connect_as(cluster.ws_port, &alice);
    let reply = ws.subscribe("t", "tasks", None);
    let since = position(&reply);
    drop(ws);
    for (id, team) in [(1, 1), (2, 2), (3, 1)] {
        db.execute(
            "INSERT INTO tasks (id, team) VALUES ($1, $2)",
            &[&id, &team],
        )
        .unwrap();
    }
    let mut ws = Ws::connect_as(cluster.ws_port, &alice);
    let reply = resume(&mut ws, "t", "tasks", None, since);
    assert_eq!(reply["resume"], "complete");
    assert_eq!(ws.change_ids(2), vec![1, 3]);
    ws.nothing_more();
}

/// Without a history, what falls out of the in-memory fan-out is lost: the slow client is told
/// exactly which positions, and gets everything after them.
#[test]
fn without_a_history_a_slow_client_is_told_what_it_missed() {
    let cluster = Cluster::start(
        "slow_no_history",
        &["realtime.client_backlog = 16", "realtime.history_size = 0"],
    );
    let mut db = cluster.client();
    db.batch_execute("CREATE TABLE s (id int, pad text); SELECT realtime_watch('s')")
        .unwrap();
    let mut slow = cluster.ws();
    slow.subscribe("s", "s", None);
    let mut fast = cluster.ws();
    fast.subscribe("s", "s", None);
    const ROWS: i64 = 150;
    for i in 0..ROWS as i32 {
        db.execute("INSERT INTO s VALUES ($1, repeat('y', 200000))", &[&i])
            .unwrap();
        assert_eq!(fast.changes(1)[0]["new"]["id"], i);
    }
    let (mut received, mut missed) = (0, 0);
    while received + missed < ROWS as u64 {
        let m = slow.recv();
        match m["type"].as_str().unwrap() {
            "change" => received += 1,
            "gap" => {
                assert_eq!(m["reason"], "slow_client");
                assert!(
                    m.get("resume_from").is_none(),
                    "nothing to resume from: {m}"
                );
                let (a, b) = (m["from_position"].as_u64(), m["to_position"].as_u64());
                missed += b.unwrap() - a.unwrap() + 1;
            }
            other => panic!("unexpected {other}"),
        }
    }
    assert!(
        missed > 0,
        "a client {ROWS} large rows behind is sent a gap"
    );
    assert_eq!(received + missed, ROWS as u64);
}

#[test]
fn without_a_history_a_resume_is_a_gap_at_once() {
    let cluster = Cluster::start("resume_none", &["realtime.history_size = 0"]);
    let mut db = cluster.client();
    db.batch_execute("CREATE TABLE n (id int, owner text); SELECT realtime_watch('n')")
        .unwrap();
    let mut ws = cluster.ws();
    ws.subscribe("n", "n", None);
    insert(&mut db, "n", &[(1, "")]);
    let seen = position(&ws.changes(1)[0]);
    drop(ws);
    insert(&mut db, "n", &[(2, "")]);
    let mut ws = cluster.ws();
    let reply = resume(&mut ws, "n", "n", None, seen);
    assert_eq!(reply["resume"], "partial", "{reply}");
    let gap = ws
        .recv_within(Duration::from_secs(2))
        .expect("the gap comes at once");
    assert_eq!(gap["reason"], "history_expired", "{gap}");
    assert_eq!(gap["from_position"].as_u64(), Some(seen + 1));
    assert!(!cluster.data().join("pg_realtime/history").exists());
}
