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
    cluster.wait_for_new_worker(pid);
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
    common::wait_until("max_connections to be reloaded", common::PATIENCE, refused);
    db.execute("ALTER SYSTEM RESET realtime.max_connections", &[])
        .unwrap();
    db.execute("SELECT pg_reload_conf()", &[]).unwrap();
    common::wait_until("max_connections to be reset", common::PATIENCE, || {
        !refused()
    });
    assert_eq!(
        cluster.worker_pid(),
        pid,
        "a reload does not restart the worker"
    );
}

/// Four writers insert `per_writer` rows each, one transaction per row (ids `w * 1_000_000 +
/// i`), while the worker is stopped; each writer's commit times, in microseconds, sorted.
fn write_while_stopped(cluster: &Cluster, per_writer: i32) -> Vec<u128> {
    let pid = cluster.worker_pid();
    signal(pid, "-STOP");
    let writers: Vec<_> = (0..4)
        .map(|w| {
            let mut db = cluster.client();
            std::thread::spawn(move || {
                (1..=per_writer)
                    .map(|i| {
                        let started = Instant::now();
                        db.execute(
                            "INSERT INTO o VALUES ($1, repeat('x', 1000))",
                            &[&(w * 1_000_000 + i)],
                        )
                        .expect("a writer never fails");
                        started.elapsed().as_micros()
                    })
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    let mut micros: Vec<u128> = writers
        .into_iter()
        .flat_map(|w| w.join().unwrap())
        .collect();
    signal(pid, "-CONT");
    micros.sort_unstable();
    micros
}

/// Messages until the change inserting `id`.
fn until_row(ws: &mut common::Ws, id: i64) -> Vec<serde_json::Value> {
    let mut seen = Vec::new();
    loop {
        let m = ws.recv();
        let last = m["type"] == "change" && m["new"]["id"] == id;
        seen.push(m);
        if last {
            return seen;
        }
    }
}

/// Each writer's rows arrive in its own order, with nothing missing.
fn assert_every_row(changes: &[serde_json::Value], per_writer: i64) {
    let mut next = [1i64; 4];
    for m in changes {
        let id = m["new"]["id"].as_i64().unwrap();
        let w = (id / 1_000_000) as usize;
        assert_eq!(
            id % 1_000_000,
            next[w],
            "writer {w}'s rows out of order or missing"
        );
        next[w] += 1;
    }
    assert_eq!(
        next,
        [per_writer + 1; 4],
        "every committed row was delivered"
    );
}

#[test]
fn a_full_queue_spills_to_disk_and_no_committed_change_is_lost() {
    let cluster = Cluster::start("overflow", &["realtime.queue_size = 1MB"]);
    let mut db = cluster.client();
    db.batch_execute("CREATE TABLE o (id int PRIMARY KEY, pad text); SELECT realtime_watch('o')")
        .unwrap();
    let mut ws = cluster.ws();
    let start = ws.subscribe("o", "o", None)["position"].as_u64().unwrap();
    // 6 MB of changes for a 1 MB queue, while the worker is frozen.
    const PER_WRITER: i32 = 1500;
    let micros = write_while_stopped(&cluster, PER_WRITER);
    eprintln!(
        "commit latency with the worker stopped: p50 {} us, p99 {} us",
        micros[micros.len() / 2],
        micros[micros.len() * 99 / 100]
    );
    db.execute("INSERT INTO o VALUES (-1, 'after')", &[])
        .unwrap();
    let live = until_row(&mut ws, -1);
    assert!(
        live.iter().all(|m| m["type"] == "change"),
        "a gap: {:?}",
        live.iter().find(|m| m["type"] != "change")
    );
    assert_every_row(&live[..live.len() - 1], PER_WRITER as i64);
    // The history holds them all too: a client resuming from before the burst gets each once.
    let mut late = cluster.ws();
    late.send(serde_json::json!({"type": "subscribe", "id": "o", "table": "o", "since": start}));
    let reply = late.recv();
    assert_eq!(reply["resume"], "complete", "{reply}");
    let replayed = until_row(&mut late, -1);
    assert!(replayed.iter().all(|m| m["type"] == "change"));
    assert_every_row(&replayed[..replayed.len() - 1], PER_WRITER as i64);
    let health = cluster.health().unwrap();
    assert_eq!(health["queue"]["lost_transactions"], 0, "{health}");
    // The overflow file was used, then read and emptied (the gauge follows at the worker's
    // next pass).
    let overflow = cluster.data().join("pg_realtime/queue.overflow");
    common::wait_until("the overflow emptied", Duration::from_secs(10), || {
        cluster.health().unwrap()["queue"]["overflow_bytes"] == 0
    });
    assert_eq!(
        std::fs::metadata(&overflow)
            .expect("the queue overflowed to disk")
            .len(),
        0
    );
}

#[test]
fn when_not_even_the_disk_can_take_them_a_full_queue_is_a_gap_and_writers_never_fail() {
    let cluster = Cluster::start("overflow_no_disk", &["realtime.queue_size = 1MB"]);
    let mut db = cluster.client();
    db.batch_execute("CREATE TABLE o (id int PRIMARY KEY, pad text); SELECT realtime_watch('o')")
        .unwrap();
    let mut ws = cluster.ws();
    ws.subscribe("o", "o", None);
    // No spill file can be created.
    let dir = cluster.data().join("pg_realtime");
    let chmod = |mode: &str| {
        assert!(Command::new("chmod")
            .args([mode, dir.to_str().unwrap()])
            .status()
            .unwrap()
            .success())
    };
    chmod("u-w");
    const PER_WRITER: i32 = 750;
    write_while_stopped(&cluster, PER_WRITER);
    chmod("u+w");
    db.execute("INSERT INTO o VALUES (-1, 'after')", &[])
        .unwrap();
    let seen = until_row(&mut ws, -1);
    let mut delivered = 0;
    let mut lost = 0;
    for m in &seen[..seen.len() - 1] {
        match m["type"].as_str().unwrap() {
            "change" => delivered += 1,
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
        delivered + lost,
        4 * PER_WRITER as i64,
        "every transaction is delivered or counted in a gap"
    );
    let health = cluster.health().unwrap();
    assert!(health["queue"]["lost_transactions"].as_i64().unwrap() > 0);
    assert!(
        cluster
            .log()
            .contains("committed changes could not be kept"),
        "the loss is logged"
    );
    let rows: i64 = db.query_one("SELECT count(*) FROM o", &[]).unwrap().get(0);
    assert_eq!(rows, 4 * PER_WRITER as i64 + 1);
}

/// A client that falls out of the in-memory fan-out goes on from the history where it left
/// off: every change, once, in order, and no gap; the client that keeps up never waits.
#[test]
fn a_slow_client_catches_up_from_the_history_and_nobody_else_notices() {
    let cluster = Cluster::start("slow", &["realtime.client_backlog = 16"]);
    let mut db = cluster.client();
    db.batch_execute("CREATE TABLE s (id int, pad text); SELECT realtime_watch('s')")
        .unwrap();
    let mut slow = cluster.ws();
    slow.subscribe("s", "s", None);
    let mut fast = cluster.ws();
    fast.subscribe("s", "s", None);
    const ROWS: i64 = 300;
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
    // Far more than the fan-out keeps (16 batches) went by; the slow client gets them all.
    let ids: Vec<i64> = (0..ROWS)
        .map(|_| {
            let m = slow.recv();
            assert_eq!(m["type"], "change", "{m}");
            m["new"]["id"].as_i64().unwrap()
        })
        .collect();
    assert_eq!(ids, (0..ROWS).collect::<Vec<_>>());
    slow.nothing_more();
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
        let deadline = Instant::now() + common::PATIENCE;
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
