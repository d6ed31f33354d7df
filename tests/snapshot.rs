//! Snapshot then stream: a subscriber gets the rows it may see as of one snapshot, then
//! exactly the changes that snapshot does not contain, decided by transaction visibility; SQL
//! readers get the same stitch through `realtime_snapshot_token()`.

mod common;

use common::{token, Cluster, Ws};
use serde_json::{json, Map, Value};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const SENTINEL: i64 = 1_000_000;

/// `items`: 20,000 rows, half alice's (row security), one column app_user may not read.
fn setup(cluster: &Cluster) {
    cluster
        .client()
        .batch_execute(
            "CREATE ROLE app_user NOLOGIN;
             GRANT app_user TO realtime_authenticator;
             CREATE TABLE items (id int PRIMARY KEY, owner text, kind text, score int, secret text);
             ALTER TABLE items ENABLE ROW LEVEL SECURITY;
             CREATE POLICY mine ON items USING (owner = current_setting('request.jwt.claims', true)::json->>'sub');
             GRANT SELECT (id, owner, kind, score) ON items TO app_user;
             INSERT INTO items
               SELECT g, CASE WHEN g % 2 = 0 THEN 'alice' ELSE 'bob' END,
                      CASE WHEN g % 3 = 0 THEN 'a' ELSE 'b' END, g % 100, 'hidden'
                 FROM generate_series(1, 20000) g;
             SELECT realtime_watch('items');",
        )
        .unwrap();
}

fn alice() -> String {
    token(json!({"role": "app_user", "sub": "alice"}))
}

/// Random single- and multi-statement transactions on `items` until `stop`, some rolled back.
fn writer(cluster: &Cluster, stop: Arc<AtomicBool>, seed: u64) -> std::thread::JoinHandle<u64> {
    let mut db = cluster.client();
    std::thread::spawn(move || {
        let mut rng = seed;
        let mut next = || {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            rng
        };
        let mut fresh = 100_000 + (seed % 100) as i32 * 10_000;
        let mut txns = 0;
        while !stop.load(Ordering::Relaxed) {
            let mut tx = db.transaction().unwrap();
            let mut ok = true;
            for _ in 0..1 + next() % 3 {
                let id = (1 + next() % 20_000) as i32;
                let done = match next() % 4 {
                    0 => {
                        fresh += 1;
                        let owner = if next() % 2 == 0 { "alice" } else { "bob" };
                        tx.execute(
                            "INSERT INTO items VALUES ($1, $2, 'a', 1, 'x')",
                            &[&fresh, &owner],
                        )
                    }
                    1 => tx.execute("UPDATE items SET score = score + 1 WHERE id = $1", &[&id]),
                    // Moves a row into or out of alice's view.
                    2 => tx.execute(
                        "UPDATE items SET owner = CASE owner WHEN 'alice' THEN 'bob' ELSE 'alice' END WHERE id = $1",
                        &[&id],
                    ),
                    _ => tx.execute("DELETE FROM items WHERE id = $1", &[&id]),
                };
                // Writers may deadlock on the same rows: that transaction rolls back.
                if done.is_err() {
                    ok = false;
                    break;
                }
            }
            if !ok || next() % 5 == 0 {
                tx.rollback().unwrap();
            } else {
                tx.commit().unwrap();
            }
            txns += 1;
        }
        txns
    })
}

/// A snapshot token's visibility rule, written independently of the server's.
struct Seen {
    xmin: u64,
    xmax: u64,
    xip: Vec<u64>,
}

impl Seen {
    fn parse(token: &str) -> Seen {
        let parts: Vec<&str> = token.split(':').collect();
        Seen {
            xmin: parts[0].parse().unwrap(),
            xmax: parts[1].parse().unwrap(),
            xip: parts[2]
                .split(',')
                .filter(|s| !s.is_empty())
                .map(|s| s.parse().unwrap())
                .collect(),
        }
    }
    fn contains(&self, xid: u64) -> bool {
        xid < self.xmin || (xid < self.xmax && !self.xip.contains(&xid))
    }
}

/// The rows a client holds, by id, built from snapshot rows and changes; panics on anything
/// that shows a change lost or sent twice.
#[derive(Default)]
struct State(BTreeMap<i64, Map<String, Value>>);

impl State {
    fn load(&mut self, row: &Value) {
        let id = row["id"].as_i64().unwrap();
        assert!(
            self.0
                .insert(id, row.as_object().unwrap().clone())
                .is_none(),
            "row {id} twice"
        );
    }

    fn apply(&mut self, m: &Value) {
        let id = |row: &Value| row["id"].as_i64().unwrap();
        match (m["type"].as_str().unwrap(), m["op"].as_str().unwrap()) {
            ("change", "INSERT") => self.load(&m["new"]),
            ("change", "UPDATE") if m["old"].is_null() => self.load(&m["new"]),
            ("change", "UPDATE") => {
                let old = self
                    .0
                    .insert(id(&m["new"]), m["new"].as_object().unwrap().clone());
                assert!(old.is_some(), "update of a row never seen: {m}");
            }
            ("change", "DELETE") | ("leave", _) => {
                assert!(
                    self.0.remove(&id(&m["old"])).is_some(),
                    "delete or leave of a row never seen: {m}"
                );
            }
            other => panic!("unexpected {other:?}: {m}"),
        }
    }

    /// What SQL says alice sees now, in the columns she may read (the sentinel aside: it
    /// ends the stream and is not applied).
    fn assert_matches_sql(&self, cluster: &Cluster) {
        let rows = cluster
            .client()
            .query(
                "SELECT json_build_object('id', id, 'owner', owner, 'kind', kind, 'score', score)::text
                   FROM items WHERE owner = 'alice' AND id <> $1 ORDER BY id",
                &[&(SENTINEL as i32)],
            )
            .unwrap();
        let want: BTreeMap<i64, Map<String, Value>> = rows
            .iter()
            .map(|r| {
                let row: Map<String, Value> = serde_json::from_str(r.get::<_, &str>(0)).unwrap();
                (row["id"].as_i64().unwrap(), row)
            })
            .collect();
        let got: Vec<&i64> = self.0.keys().collect();
        let expected: Vec<&i64> = want.keys().collect();
        assert_eq!(got.len(), expected.len(), "row count");
        assert_eq!(got, expected, "row ids");
        assert_eq!(self.0, want, "row contents");
    }
}

/// Subscribe with a snapshot; the snapshot's rows and its `snapshot_end`.
fn snapshot(ws: &mut Ws, msg: Value) -> (Value, Vec<Value>, Value) {
    ws.send(msg);
    snapshot_reply(ws)
}

/// The reply to a subscribe with a snapshot: `subscribed`, the rows, `snapshot_end`.
fn snapshot_reply(ws: &mut Ws) -> (Value, Vec<Value>, Value) {
    let reply = ws.recv();
    assert_eq!(reply["type"], "subscribed", "{reply}");
    let mut rows = Vec::new();
    loop {
        let m = ws.recv();
        match m["type"].as_str() {
            Some("snapshot") => rows.extend(m["rows"].as_array().unwrap().iter().cloned()),
            Some("snapshot_end") => {
                assert_eq!(m["rows"].as_u64(), Some(rows.len() as u64), "{m}");
                return (reply, rows, m);
            }
            _ => panic!("before snapshot_end: {m}"),
        }
    }
}

/// Apply changes until the sentinel row's INSERT; checks none is in the snapshot `seen`.
fn follow_to_sentinel(ws: &mut Ws, state: &mut State, seen: &Seen) -> usize {
    let mut n = 0;
    loop {
        let m = ws.recv();
        assert_ne!(m["type"], "gap", "{m}");
        let xid = m["xid"].as_u64().unwrap();
        assert!(
            !seen.contains(xid),
            "a change the snapshot already holds: {m}"
        );
        if m["new"]["id"].as_i64() == Some(SENTINEL) {
            return n;
        }
        state.apply(&m);
        n += 1;
    }
}

fn insert_sentinel(cluster: &Cluster) {
    cluster
        .client()
        .execute(
            "INSERT INTO items VALUES ($1, 'alice', 'z', 0, 'x')",
            &[&(SENTINEL as i32)],
        )
        .unwrap();
}

#[test]
fn a_snapshot_then_the_stream_hold_every_row_exactly_once_while_writers_run() {
    let cluster = Cluster::start("snapshot_exact", &[]);
    setup(&cluster);
    let stop = Arc::new(AtomicBool::new(false));
    let writers: Vec<_> = (1..=3)
        .map(|seed| writer(&cluster, stop.clone(), seed))
        .collect();
    std::thread::sleep(Duration::from_millis(300));

    let mut ws = Ws::connect_as(cluster.ws_port, &alice());
    let (reply, rows, end) = snapshot(
        &mut ws,
        json!({"type": "subscribe", "id": "s", "table": "items", "snapshot": true}),
    );
    assert_eq!(end["position"], reply["position"], "{end}");
    // Row security and column privileges apply to the snapshot as to changes.
    assert!(rows.len() > 9_000, "{} rows", rows.len());
    for row in &rows {
        assert_eq!(row["owner"], "alice", "{row}");
        assert!(row.get("secret").is_none(), "{row}");
    }
    let mut state = State::default();
    rows.iter().for_each(|r| state.load(r));
    std::thread::sleep(Duration::from_millis(500));
    stop.store(true, Ordering::Relaxed);
    let txns: u64 = writers.into_iter().map(|w| w.join().unwrap()).sum();
    insert_sentinel(&cluster);
    let seen = Seen::parse(end["token"].as_str().unwrap());
    let changes = follow_to_sentinel(&mut ws, &mut state, &seen);
    assert!(
        changes > 0,
        "no change after the snapshot ({txns} transactions)"
    );
    state.assert_matches_sql(&cluster);
}

#[test]
fn a_sql_reader_stitches_with_its_snapshot_token() {
    let cluster = Cluster::start("snapshot_token", &[]);
    setup(&cluster);
    let mut db = cluster.client();
    // In one statement, the token names the statement's snapshot.
    let same: bool = db
        .query_one(
            "SELECT realtime_snapshot_token() = pg_current_snapshot()::text",
            &[],
        )
        .unwrap()
        .get(0);
    assert!(same);

    let stop = Arc::new(AtomicBool::new(false));
    let writers: Vec<_> = (1..=2)
        .map(|seed| writer(&cluster, stop.clone(), seed))
        .collect();
    std::thread::sleep(Duration::from_millis(300));
    // Read as PostgREST or any driver would, in a REPEATABLE READ transaction.
    let mut tx = db
        .build_transaction()
        .isolation_level(postgres::IsolationLevel::RepeatableRead)
        .start()
        .unwrap();
    let snapshot_token: String = tx
        .query_one("SELECT realtime_snapshot_token()", &[])
        .unwrap()
        .get(0);
    let mut state = State::default();
    for r in tx
        .query(
            "SELECT json_build_object('id', id, 'owner', owner, 'kind', kind, 'score', score)::text
               FROM items WHERE owner = 'alice'",
            &[],
        )
        .unwrap()
    {
        state.load(&serde_json::from_str(r.get::<_, &str>(0)).unwrap());
    }
    tx.commit().unwrap();
    // Changes keep committing between the read and the subscription.
    std::thread::sleep(Duration::from_millis(700));

    let mut ws = Ws::connect_as(cluster.ws_port, &alice());
    ws.send(
        json!({"type": "subscribe", "id": "s", "table": "items", "after_snapshot": snapshot_token}),
    );
    let reply = ws.recv();
    assert_eq!(
        (reply["type"].as_str(), reply["resume"].as_str()),
        (Some("subscribed"), Some("complete")),
        "{reply}"
    );
    std::thread::sleep(Duration::from_millis(300));
    stop.store(true, Ordering::Relaxed);
    for w in writers {
        w.join().unwrap();
    }
    insert_sentinel(&cluster);
    let changes = follow_to_sentinel(&mut ws, &mut state, &Seen::parse(&snapshot_token));
    assert!(changes > 0);
    state.assert_matches_sql(&cluster);
}

#[test]
fn filters_order_and_limit_shape_the_snapshot_and_readers_queue_for_a_slot() {
    let cluster = Cluster::start("snapshot_shape", &["realtime.max_snapshot_workers = 1"]);
    setup(&cluster);
    let sql_ids = |sql: &str| -> Vec<i64> {
        cluster
            .client()
            .query(sql, &[])
            .unwrap()
            .iter()
            .map(|r| r.get::<_, i32>(0) as i64)
            .collect()
    };
    let ids =
        |rows: &[Value]| -> Vec<i64> { rows.iter().map(|r| r["id"].as_i64().unwrap()).collect() };

    // Two snapshots at once with one reader allowed: whichever comes second waits its turn.
    // (`a` is read first: its reader may hold the slot until `a` takes its rows.)
    let mut a = Ws::connect_as(cluster.ws_port, &alice());
    let mut b = Ws::connect_as(cluster.ws_port, &alice());
    a.send(json!({"type": "subscribe", "id": 1, "table": "items", "snapshot": true}));
    b.send(
        json!({"type": "subscribe", "id": 2, "table": "items", "snapshot": true,
                  "filter": "kind=eq.a", "order": "score.desc,id", "limit": 7}),
    );
    let (_, all, _) = snapshot_reply(&mut a);
    assert_eq!(all.len(), 10_000);
    let (_, rows, _) = snapshot_reply(&mut b);
    assert_eq!(
        ids(&rows),
        sql_ids("SELECT id FROM items WHERE owner = 'alice' AND kind = 'a' ORDER BY score DESC, id LIMIT 7")
    );

    let (_, rows, _) = snapshot(
        &mut b,
        json!({"type": "subscribe", "id": 3, "table": "items", "snapshot": true, "order": "id.desc", "limit": 3}),
    );
    assert_eq!(ids(&rows), [20_000, 19_998, 19_996]);
    // Then live changes, filtered as usual.
    cluster
        .client()
        .execute(
            "INSERT INTO items VALUES (30001, 'alice', 'a', 5, 'x')",
            &[],
        )
        .unwrap();
    // One message per change on a connection, whichever of its subscriptions want it.
    let m = b.recv();
    assert_eq!(
        (m["op"].as_str(), m["new"]["id"].as_i64()),
        (Some("INSERT"), Some(30001)),
        "{m}"
    );
    b.nothing_more();
}

#[test]
fn bad_snapshot_requests_are_refused_and_change_nothing_else() {
    let cluster = Cluster::start("snapshot_bad", &[]);
    setup(&cluster);
    let mut ws = Ws::connect_as(cluster.ws_port, &alice());
    let refused = |ws: &mut Ws, msg: Value, code: &str| {
        ws.send(msg);
        let m = ws.recv();
        assert_eq!(
            (m["type"].as_str(), m["code"].as_str()),
            (Some("error"), Some(code)),
            "{m}"
        );
        m
    };
    for msg in [
        json!({"type": "subscribe", "id": 1, "table": "items", "after_snapshot": "not a token"}),
        json!({"type": "subscribe", "id": 1, "table": "items", "after_snapshot": "9:5:"}),
        json!({"type": "subscribe", "id": 1, "table": "items", "snapshot": true, "since": 3}),
        json!({"type": "subscribe", "id": 1, "table": "items", "limit": 3}),
        json!({"type": "subscribe", "id": 1, "table": "items", "snapshot": true, "order": "id.sideways"}),
    ] {
        refused(&mut ws, msg, "invalid_snapshot");
    }
    // Ordering by a column alice may not read fails the read as SQL would.
    ws.send(json!({"type": "subscribe", "id": 1, "table": "items", "snapshot": true, "order": "secret"}));
    assert_eq!(ws.recv()["type"], "subscribed");
    let m = ws.recv();
    assert_eq!(
        (m["code"].as_str(), m["id"].as_i64()),
        (Some("snapshot_failed"), Some(1)),
        "{m}"
    );
    assert!(m["message"].as_str().unwrap().contains("secret"), "{m}");
    // The subscription is gone; the connection, the worker and other snapshots carry on.
    refused(
        &mut ws,
        json!({"type": "unsubscribe", "id": 1}),
        "unknown_subscription",
    );
    let (_, rows, _) = snapshot(
        &mut ws,
        json!({"type": "subscribe", "id": 2, "table": "items", "snapshot": true, "limit": 1}),
    );
    assert_eq!(rows.len(), 1);
    assert!(cluster.health().is_some());
}

#[test]
fn a_million_row_snapshot_streams_while_a_hundred_clients_keep_receiving_changes() {
    let cluster = Cluster::start("snapshot_million", &[]);
    cluster
        .client()
        .batch_execute(
            "CREATE TABLE big (id int PRIMARY KEY, note text);
             INSERT INTO big SELECT g, 'row ' || g FROM generate_series(1, 1000000) g;
             CREATE TABLE live (id int PRIMARY KEY);
             SELECT realtime_watch('big'), realtime_watch('live');",
        )
        .unwrap();
    // Ids committed to `live` so far, and the number of them once the writer has stopped.
    let committed = Arc::new(AtomicI64::new(0));
    let written = Arc::new(AtomicI64::new(-1));
    // 100 clients of `live`, each reading on its own thread until it holds every id written,
    // and telling the last id it received as it goes. Only silence past common::PATIENCE is a
    // failure: a bound for a machine much slower than this one, not a latency goal.
    let readers: Vec<_> = (0..100)
        .map(|_| {
            let mut ws = cluster.ws();
            ws.subscribe("l", "live", None);
            let last = Arc::new(AtomicI64::new(-1));
            let told = last.clone();
            let written = written.clone();
            let reader = std::thread::spawn(move || {
                ws.change_ids_until(&written, |id| told.store(id, Ordering::Release))
            });
            (reader, last)
        })
        .collect();
    // 200 commits a second to `live` until told to stop: live traffic throughout, light
    // enough for a slow machine to deliver to every client while it parses the snapshot.
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let mut db = cluster.client();
        let (stop, committed) = (stop.clone(), committed.clone());
        std::thread::spawn(move || {
            let started = Instant::now();
            let mut n = 0i32;
            while !stop.load(Ordering::Relaxed) {
                db.execute("INSERT INTO live VALUES ($1)", &[&n]).unwrap();
                n += 1;
                committed.store(n as i64, Ordering::Release);
                let due = started + Duration::from_millis(5 * n as u64);
                std::thread::sleep(due.saturating_duration_since(Instant::now()));
            }
            n as i64
        })
    };

    // Every change committed from here on comes after the snapshot began.
    let began = committed.load(Ordering::Acquire);
    let mut ws = cluster.ws();
    ws.send(json!({"type": "subscribe", "id": "b", "table": "big", "snapshot": true}));
    assert_eq!(ws.recv()["type"], "subscribed");
    let mut seen = vec![false; 1_000_001];
    let mut rows = 0;
    let end = loop {
        let m = ws.recv();
        match m["type"].as_str() {
            Some("snapshot") => {
                for row in m["rows"].as_array().unwrap() {
                    let id = row["id"].as_u64().unwrap() as usize;
                    assert!(!seen[id], "row {id} twice");
                    seen[id] = true;
                    rows += 1;
                }
            }
            Some("snapshot_end") => break m,
            _ => panic!("before snapshot_end: {m}"),
        }
    };
    assert_eq!((rows, end["rows"].as_u64()), (1_000_000, Some(1_000_000)));
    // While those million rows streamed, every live client went on receiving: each has
    // received a change committed after the snapshot began, before the snapshot ended.
    let behind: Vec<i64> = readers
        .iter()
        .map(|(_, last)| last.load(Ordering::Acquire))
        .filter(|&last| last < began)
        .collect();
    assert!(
        behind.is_empty(),
        "{} live clients received nothing committed after the snapshot began (id {began}) \
         before it ended: last ids {behind:?}",
        behind.len()
    );
    stop.store(true, Ordering::Relaxed);
    let total = writer.join().unwrap();
    written.store(total, Ordering::Release);
    // Every id, in order, no gap.
    for (reader, _) in readers {
        let ids = reader.join().unwrap_or_else(|_| {
            panic!(
                "a live client failed (above); connections ended: {}",
                cluster.disconnects()
            )
        });
        assert_eq!(ids, (0..total).collect::<Vec<_>>());
    }
    // The snapshot's own live stream goes on.
    cluster
        .client()
        .execute("UPDATE big SET note = 'changed' WHERE id = 7", &[])
        .unwrap();
    let m = ws.recv();
    assert_eq!(
        (m["op"].as_str(), m["new"]["note"].as_str()),
        (Some("UPDATE"), Some("changed")),
        "{m}"
    );
}
