//! Many clients and many writers at once: everyone sees the same, complete, ordered stream.
mod common;
use common::{Cluster, Ws};
use serde_json::Value;
use std::collections::HashMap;
use std::sync::{Arc, Barrier};

#[test]
fn two_hundred_clients_receive_identical_sequences() {
    let cluster = Cluster::start("fanout", &[]);
    let mut db = cluster.client();
    db.batch_execute("CREATE TABLE f (id int PRIMARY KEY, v int); SELECT realtime_watch('f')")
        .unwrap();
    const CLIENTS: usize = 200;
    const EVENTS: usize = 1500;
    let ready = Arc::new(Barrier::new(CLIENTS + 1));
    let port = cluster.ws_port;
    let readers: Vec<_> = (0..CLIENTS)
        .map(|_| {
            let ready = ready.clone();
            std::thread::spawn(move || {
                let mut ws = Ws::connect(port);
                ws.subscribe("f", "f", None);
                ready.wait();
                ws.changes(EVENTS)
                    .into_iter()
                    .map(|m| m.to_string())
                    .collect::<Vec<String>>()
            })
        })
        .collect();
    ready.wait();
    // 500 inserts in 50 transactions, then 500 single-row updates, then a 500-row delete.
    for t in 0..50 {
        let values: Vec<String> = (0..10).map(|i| format!("({}, 0)", t * 10 + i)).collect();
        db.batch_execute(&format!("INSERT INTO f VALUES {}", values.join(",")))
            .unwrap();
    }
    for id in 0..500 {
        db.execute("UPDATE f SET v = v + 1 WHERE id = $1", &[&id])
            .unwrap();
    }
    db.batch_execute("DELETE FROM f").unwrap();
    let sequences: Vec<Vec<String>> = readers.into_iter().map(|r| r.join().unwrap()).collect();
    let first = &sequences[0];
    assert_eq!(first.len(), EVENTS);
    for (i, s) in sequences.iter().enumerate() {
        assert!(s == first, "client {i} saw a different sequence");
    }
    let ops: Vec<String> = first
        .iter()
        .map(|m| {
            serde_json::from_str::<Value>(m).unwrap()["op"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    assert_eq!(ops.iter().filter(|o| *o == "INSERT").count(), 500);
    assert_eq!(ops.iter().filter(|o| *o == "UPDATE").count(), 500);
    assert_eq!(ops.iter().filter(|o| *o == "DELETE").count(), 500);
}

#[test]
fn concurrent_writers_every_event_exactly_once_in_commit_order() {
    // This test is about order and exactly-once delivery, not slow clients (tests/worker.rs
    // covers those): a backlog deep enough that a test reader on a busy machine is not cut off.
    let cluster = Cluster::start(
        "writers",
        &[
            "synchronous_commit = off",
            "realtime.client_backlog = 65536",
        ],
    );
    let mut db = cluster.client();
    const ROWS: i32 = 20;
    const WRITERS: usize = 8;
    const TXNS: usize = 5000;
    db.batch_execute(&format!(
        "CREATE TABLE counters (id int PRIMARY KEY, n int NOT NULL);
         INSERT INTO counters SELECT g, 0 FROM generate_series(1, {ROWS}) g;
         SELECT realtime_watch('counters', ARRAY['UPDATE']);"
    ))
    .unwrap();
    let mut ws = cluster.ws();
    ws.subscribe("c", "counters", None);
    let conninfo = cluster.conninfo("postgres");
    let writers: Vec<_> = (0..WRITERS)
        .map(|w| {
            let conninfo = conninfo.clone();
            std::thread::spawn(move || {
                let mut db = postgres::Client::connect(&conninfo, postgres::NoTls).unwrap();
                let update = db
                    .prepare("UPDATE counters SET n = n + 1 WHERE id = $1")
                    .unwrap();
                for t in 0..TXNS {
                    // Spread over few rows so that writers contend for the same rows.
                    let id = ((w * 7919 + t * 104729) % ROWS as usize) as i32 + 1;
                    db.execute(&update, &[&id]).unwrap();
                }
            })
        })
        .collect();
    let reader = std::thread::spawn(move || ws.changes(WRITERS * TXNS));
    for w in writers {
        w.join().unwrap();
    }
    let changes = reader.join().unwrap();
    // Per row, n must go 1, 2, 3, ... with no repeat and no hole: exactly once, commit order.
    let mut last: HashMap<i64, i64> = HashMap::new();
    let mut position = 0;
    for m in &changes {
        let p = m["position"].as_u64().unwrap();
        assert!(p > position, "positions strictly increase");
        position = p;
        let id = m["new"]["id"].as_i64().unwrap();
        let n = m["new"]["n"].as_i64().unwrap();
        assert_eq!(m["old"]["n"].as_i64().unwrap(), n - 1);
        let prev = last.insert(id, n).unwrap_or(0);
        assert_eq!(n, prev + 1, "row {id}: after n={prev} came n={n}");
    }
    let total: i64 = db
        .query_one("SELECT sum(n)::int8 FROM counters", &[])
        .unwrap()
        .get(0);
    assert_eq!(total, (WRITERS * TXNS) as i64);
    assert_eq!(last.values().sum::<i64>(), total);
}
