//! Random subscribe traffic (tables, filters, values, lists, ids, events, garbage) for a bounded
//! time: every message gets a defined answer, the worker's memory stays bounded, and a client
//! streaming another table meanwhile receives every change. How long replies and the other
//! client's changes took is printed, not asserted: timing goals are measured by the benchmarks.
mod common;
use common::Cluster;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const RUN_FOR: Duration = Duration::from_secs(15);
const MAX_RSS_GROWTH_KIB: u64 = 64 * 1024;

const CODES: &[&str] = &[
    "invalid_json",
    "invalid_message",
    "unknown_type",
    "unknown_table",
    "table_not_watched",
    "unknown_column",
    "invalid_filter",
    "invalid_filter_value",
    "invalid_events",
    "duplicate_subscription",
    "too_many_subscriptions",
];

fn pick<'a>(rng: &mut StdRng, items: &[&'a str]) -> &'a str {
    items[rng.random_range(0..items.len())]
}

fn value(rng: &mut StdRng) -> String {
    match rng.random_range(0..12) {
        0 => format!("{}", rng.random::<i64>()),
        1 => format!(
            "{}e{}",
            rng.random_range(1..10),
            rng.random_range(-200_000..200_000)
        ),
        2 => "9".repeat(rng.random_range(1..3000)),
        3 => pick(
            rng,
            &["NaN", "Infinity", "-infinity", "infinity", "null", "true"],
        )
        .into(),
        4 => pick(
            rng,
            &[
                "2026-01-01T00:00:00+00:19:32",
                "0044-03-15 BC",
                "10000-01-01",
                "24:00",
            ],
        )
        .into(),
        5 => pick(
            rng,
            &[
                "{\"a\":1.0}",
                "[1,2]",
                "\\x00",
                "'; DROP TABLE t; --",
                "\"q\"",
            ],
        )
        .into(),
        6 => (0..rng.random_range(0..40))
            .map(|_| rng.random_range(' '..'\u{2FF}'))
            .collect(),
        7 => format!("{:08x}-0000-0000-0000-000000000000", rng.random::<u32>()),
        _ => format!(
            "{}.{}",
            rng.random_range(-1000..1000),
            rng.random_range(0..1000)
        ),
    }
}

fn filter(rng: &mut StdRng) -> String {
    let column = pick(
        rng,
        &["id", "n", "t", "ts", "d", "j", "b", "missing", "", "\"id\""],
    );
    let op = pick(
        rng,
        &["eq", "neq", "lt", "lte", "gt", "gte", "in", "like", ""],
    );
    if op == "in" {
        let n = rng.random_range(0..130);
        let values: Vec<String> = (0..n).map(|_| value(rng)).collect();
        format!("{column}=in.({})", values.join(","))
    } else {
        format!("{column}={op}.{}", value(rng))
    }
}

fn message(rng: &mut StdRng) -> String {
    if rng.random_range(0..10) == 0 {
        return pick(
            rng,
            &[
                "{",
                "[]",
                "{\"type\":7}",
                "{\"type\":\"subscribe\"}",
                "null",
            ],
        )
        .into();
    }
    let id = match rng.random_range(0..4) {
        0 => json!(rng.random_range(0..20)),
        1 => json!(format!("s{}", rng.random_range(0..20))),
        2 => json!(rng.random_range(0..20) as f64),
        _ => json!({"nested": 1}),
    };
    let table = pick(
        rng,
        &[
            "fz",
            "public.fz",
            "\"fz\"",
            "FZ",
            "nope",
            "pg_authid",
            "a.b.c",
            "fz\u{0}",
            "unwatched",
        ],
    );
    let mut m = json!({"type": "subscribe", "id": id, "table": table});
    if rng.random_bool(0.8) {
        m["filter"] = json!(filter(rng));
    }
    if rng.random_bool(0.2) {
        m["events"] = json!([pick(
            rng,
            &["INSERT", "UPDATE", "upsert", "DELETE", "truncate"]
        )]);
    }
    m.to_string()
}

#[test]
fn random_subscribes_get_defined_answers_within_bounds() {
    let cluster = Cluster::start("subscribe_fuzz", &["realtime.max_message_size = 64kB"]);
    let mut db = cluster.client();
    db.batch_execute(
        "CREATE TABLE fz (id int, n numeric, t text, ts timestamptz, d date, j jsonb, b bool);
         SELECT realtime_watch('fz');
         CREATE TABLE unwatched (id int);
         CREATE TABLE steady (id int); SELECT realtime_watch('steady');",
    )
    .unwrap();
    let pid = cluster.worker_pid();
    let rss_before = cluster.worker_rss_kib();
    let seed = std::env::var("FUZZ_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random::<u64>);
    println!("FUZZ_SEED={seed}");

    // Another client streams `steady` meanwhile; its commit-to-receipt time is recorded.
    let stop = Arc::new(AtomicBool::new(false));
    let written = Arc::new(AtomicI64::new(-1));
    let sent: Arc<Mutex<HashMap<i64, Instant>>> = Arc::default();
    let mut watcher = cluster.ws();
    watcher.subscribe("s", "steady", None);
    let writer = {
        let (stop, sent, conninfo) = (stop.clone(), sent.clone(), cluster.conninfo("postgres"));
        std::thread::spawn(move || {
            let mut db = postgres::Client::connect(&conninfo, postgres::NoTls).unwrap();
            let mut id = 0i64;
            while !stop.load(Ordering::Relaxed) {
                id += 1;
                db.execute("INSERT INTO steady VALUES ($1)", &[&(id as i32)])
                    .unwrap();
                sent.lock().unwrap().insert(id, Instant::now());
                std::thread::sleep(Duration::from_millis(20));
            }
            id
        })
    };
    let reader = {
        let (sent, written) = (sent.clone(), written.clone());
        std::thread::spawn(move || {
            let mut worst = Duration::ZERO;
            let got = watcher.change_ids_until(&written, |id| {
                if let Some(at) = sent.lock().unwrap().get(&id) {
                    worst = worst.max(at.elapsed());
                }
            });
            (worst, got)
        })
    };

    let mut rng = StdRng::seed_from_u64(seed);
    let mut sockets: Vec<common::Ws> = (0..4).map(|_| cluster.ws()).collect();
    let started = Instant::now();
    let (mut sent_count, mut slowest) = (0, Duration::ZERO);
    while started.elapsed() < RUN_FOR {
        let i = rng.random_range(0..sockets.len());
        let text = message(&mut rng);
        if text.len() > 60_000 {
            continue; // closes the connection with 1009: tests/hardening.rs covers it
        }
        let asked = Instant::now();
        sockets[i].send_text(&text);
        let reply = sockets[i].recv();
        slowest = slowest.max(asked.elapsed());
        sent_count += 1;
        match reply["type"].as_str() {
            Some("subscribed") => {}
            Some("error") => assert!(
                CODES.contains(&reply["code"].as_str().unwrap_or("")),
                "seed {seed}: {text:.200} -> {reply}"
            ),
            _ => panic!("seed {seed}: {text:.200} -> {reply}"),
        }
        // Now and then start over, so that subscriptions do not pile up to the limit.
        if rng.random_range(0..50) == 0 {
            sockets[i] = cluster.ws();
        }
    }
    stop.store(true, Ordering::Relaxed);
    let total = writer.join().unwrap();
    written.store(total, Ordering::Release);
    let (worst, got) = reader.join().unwrap();
    assert_eq!(
        got,
        (1..=total).collect::<Vec<_>>(),
        "the watcher missed changes"
    );
    let rss_after = cluster.worker_rss_kib();
    println!(
        "{sent_count} messages, slowest reply {slowest:?}, watcher worst latency {worst:?}, \
         worker RSS {rss_before} -> {rss_after} KiB"
    );
    assert!(
        rss_after < rss_before + MAX_RSS_GROWTH_KIB,
        "seed {seed}: worker RSS {rss_before} -> {rss_after} KiB"
    );
    assert_eq!(
        cluster.worker_pid(),
        pid,
        "seed {seed}: the worker restarted"
    );
    let _: Value = cluster.health().expect("health answers");
}
