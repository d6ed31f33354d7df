//! The background worker's life: visible, restartable, reloadable; and how it sheds load
//! (queue overflow, slow clients) without ever failing a writer.
mod common;
use common::Cluster;
use std::process::Command;
use std::time::{Duration, Instant};

fn signal(pid: i32, sig: &str) {
    assert!(Command::new("kill")
        .args([sig, &pid.to_string()])
        .status()
        .unwrap()
        .success());
}

#[test]
fn worker_is_visible_restarts_after_terminate_and_serves_reconnecting_clients() {
    let cluster = Cluster::start("restart", &[]);
    let mut db = cluster.client();
    let row = db
        .query_one("SELECT pid, application_name, backend_type FROM pg_stat_activity WHERE backend_type = 'realtime_ext'", &[])
        .unwrap();
    let (pid, app): (i32, String) = (row.get(0), row.get(1));
    assert_eq!(app, "realtime_ext worker");
    db.batch_execute("CREATE TABLE r (id int); SELECT realtime_watch('r')")
        .unwrap();
    let mut ws = cluster.ws();
    ws.subscribe("r", "r", None);
    db.batch_execute("INSERT INTO r VALUES (1)").unwrap();
    assert_eq!(ws.changes(1)[0]["new"]["id"], 1);

    let terminated: bool = db
        .query_one("SELECT pg_terminate_backend($1)", &[&pid])
        .unwrap()
        .get(0);
    assert!(terminated);
    // The old connection is closed; writers are not affected meanwhile.
    db.batch_execute("INSERT INTO r VALUES (2)").unwrap();
    let deadline = Instant::now() + Duration::from_secs(15);
    let new_pid = loop {
        assert!(
            Instant::now() < deadline,
            "worker did not come back; log:\n{}",
            cluster.log()
        );
        let found = db
            .query_opt(
                "SELECT pid FROM pg_stat_activity WHERE backend_type = 'realtime_ext'",
                &[],
            )
            .unwrap();
        match found.map(|r| r.get::<_, i32>(0)) {
            Some(p) if p != pid => break p,
            _ => std::thread::sleep(Duration::from_millis(100)),
        }
    };
    assert_ne!(new_pid, pid);
    cluster.wait_healthy();
    let mut ws = cluster.ws();
    ws.subscribe("r", "r", None);
    db.batch_execute("INSERT INTO r VALUES (3)").unwrap();
    let c = ws.changes(1);
    assert_eq!(c[0]["new"]["id"], 3);
    assert!(
        cluster.log().contains("realtime_ext: worker shutting down"),
        "clean shutdown on SIGTERM"
    );
}

#[test]
fn reload_applies_new_settings() {
    let cluster = Cluster::start("reload", &[]);
    let mut db = cluster.client();
    let pid = cluster.worker_pid();
    let _a = cluster.ws();
    db.execute("ALTER SYSTEM SET realtime.max_connections = 1", &[])
        .unwrap();
    db.execute("SELECT pg_reload_conf()", &[]).unwrap();
    let url = format!("ws://127.0.0.1:{}/realtime", cluster.ws_port);
    let refused = || matches!(tungstenite::connect(&url), Err(tungstenite::Error::Http(r)) if r.status() == 503);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        assert!(
            Instant::now() < deadline,
            "max_connections was not reloaded"
        );
        if refused() {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    db.execute("ALTER SYSTEM RESET realtime.max_connections", &[])
        .unwrap();
    db.execute("SELECT pg_reload_conf()", &[]).unwrap();
    std::thread::sleep(Duration::from_millis(500));
    assert!(!refused());
    assert_eq!(
        cluster.worker_pid(),
        pid,
        "a reload does not restart the worker"
    );
}

#[test]
fn queue_overflow_becomes_a_gap_and_writers_never_fail() {
    let cluster = Cluster::start("overflow", &["realtime.queue_size = 1MB"]);
    let mut db = cluster.client();
    db.batch_execute("CREATE TABLE o (id int, pad text); SELECT realtime_watch('o')")
        .unwrap();
    let mut ws = cluster.ws();
    ws.subscribe("o", "o", None);
    let pid = cluster.worker_pid();
    // Freeze the worker; every transaction must still commit.
    signal(pid, "-STOP");
    const TXNS: i64 = 3000;
    for i in 1..=TXNS {
        db.execute(
            "INSERT INTO o VALUES ($1, repeat('x', 1000))",
            &[&(i as i32)],
        )
        .unwrap();
    }
    signal(pid, "-CONT");
    db.execute(
        "INSERT INTO o VALUES ($1, 'after')",
        &[&((TXNS + 1) as i32)],
    )
    .unwrap();
    let mut delivered = Vec::new();
    let mut lost = 0;
    loop {
        let m = ws.recv();
        match m["type"].as_str().unwrap() {
            "change" => {
                let id = m["new"]["id"].as_i64().unwrap();
                delivered.push(id);
                if id == TXNS + 1 {
                    break;
                }
            }
            "gap" => {
                assert_eq!(m["reason"], "queue_overflow");
                lost +=
                    m["to_position"].as_i64().unwrap() - m["from_position"].as_i64().unwrap() + 1;
            }
            other => panic!("unexpected {other}: {m}"),
        }
    }
    assert!(lost > 0, "a 1 MB queue cannot hold 3 MB of changes");
    assert_eq!(
        delivered.len() as i64 + lost,
        TXNS + 1,
        "every transaction is delivered or counted in a gap"
    );
    assert!(
        delivered.windows(2).all(|w| w[0] < w[1]),
        "still in commit order"
    );
    let health = cluster.health().unwrap();
    assert!(health["queue"]["lost_transactions"].as_i64().unwrap() > 0);
    let rows: i64 = db.query_one("SELECT count(*) FROM o", &[]).unwrap().get(0);
    assert_eq!(rows, TXNS + 1);
}

#[test]
fn a_slow_client_gets_a_gap_and_nobody_else_notices() {
    let cluster = Cluster::start("slow", &["realtime.client_backlog = 16"]);
    let mut db = cluster.client();
    db.batch_execute("CREATE TABLE s (id int, pad text); SELECT realtime_watch('s')")
        .unwrap();
    let mut slow = cluster.ws();
    slow.subscribe("s", "s", None);
    let mut fast = cluster.ws();
    fast.subscribe("s", "s", None);
    const ROWS: usize = 300;
    // The fast client reads each change before the next is written, so it never falls behind
    // however busy the machine is; the slow one reads nothing until the end.
    for i in 0..ROWS as i32 {
        db.execute("INSERT INTO s VALUES ($1, repeat('y', 200000))", &[&i])
            .unwrap();
        let change = &fast.changes(1)[0];
        assert_eq!(
            change["new"]["id"], i,
            "the fast client receives every change"
        );
    }
    // Now the slow client reads: it was told what it missed.
    let mut changes = 0;
    let mut gap = None;
    while changes + gap.map_or(0, |(a, b): (u64, u64)| (b - a + 1) as usize) < ROWS {
        let m = slow.recv();
        match m["type"].as_str().unwrap() {
            "change" => changes += 1,
            "gap" => {
                assert_eq!(m["reason"], "slow_client");
                let (a, b) = (
                    m["from_position"].as_u64().unwrap(),
                    m["to_position"].as_u64().unwrap(),
                );
                gap = Some(gap.map_or((a, b), |(x, y): (u64, u64)| (x.min(a), y.max(b))));
            }
            other => panic!("unexpected {other}"),
        }
    }
    assert!(
        gap.is_some(),
        "a client {ROWS} large rows behind with a backlog of 16 batches is sent a gap"
    );
}

/// With nobody subscribed, commits do not wake the worker (it drains on a timer); the first
/// subscription turns wake-ups back on, and starts after everything committed before it.
#[test]
fn a_subscription_starts_after_changes_committed_while_nobody_listened() {
    let cluster = Cluster::start("unsubscribed", &[]);
    let subscriptions = || {
        cluster.health().expect("health")["subscriptions"]
            .as_u64()
            .unwrap()
    };
    // A subscription being authorized again (after a catalog change) is briefly counted twice,
    // so counts are awaited, not sampled.
    let settle_to = |n: u64| {
        let deadline = Instant::now() + Duration::from_secs(5);
        while subscriptions() != n {
            assert!(
                Instant::now() < deadline,
                "subscriptions did not settle to {n}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    };
    let mut db = cluster.client();
    db.batch_execute("CREATE TABLE quiet (id int); SELECT realtime_watch('quiet')")
        .unwrap();
    assert_eq!(subscriptions(), 0);

    // A failed subscribe is not counted.
    let mut ws = cluster.ws();
    ws.send(serde_json::json!({"type": "subscribe", "id": "x", "table": "no_such_table"}));
    assert_eq!(ws.recv()["type"], "error");
    assert_eq!(subscriptions(), 0);

    for i in 0..20 {
        // Committed while nobody listens, then a subscription made at once: not delivered.
        db.batch_execute(&format!("INSERT INTO quiet VALUES ({})", -i - 1))
            .unwrap();
        let mut ws = cluster.ws();
        ws.subscribe("q", "quiet", None);
        settle_to(1);
        db.batch_execute(&format!("INSERT INTO quiet VALUES ({i})"))
            .unwrap();
        let first = ws.changes(1).remove(0);
        assert_eq!(
            first["new"]["id"], i,
            "round {i}: the change before the subscription leaked: {first}"
        );
        let rest = ws.drain();
        assert!(
            rest.is_empty(),
            "round {i}: more than the one change: {first} then {rest:?}"
        );
        if i % 2 == 0 {
            ws.send(serde_json::json!({"type": "unsubscribe", "id": "q"}));
            let reply = ws.recv();
            assert_eq!(reply["type"], "unsubscribed", "round {i}: {reply}");
            assert_eq!(subscriptions(), 0);
        } else {
            drop(ws);
            settle_to(0);
        }
    }
}
