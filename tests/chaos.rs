//! Chaos: 8 writers run random transactions (commits, rollbacks, savepoints rolled back and
//! kept, two-phase commit and rollback, several tables, updates of a few hot rows) while 50
//! clients disconnect and come back at random moments: most resume from their last position,
//! some start over from a snapshot, one reads through SQL with `realtime_snapshot_token()`.
//! Meanwhile the worker is killed (kill -9) and the server restarted, fast and then
//! immediately: the change queue outlives all three, so no client is told of a loss by them.
//!
//! Each client checks every message against what it holds (a hot row's counter moves by
//! exactly one per update, nothing is inserted twice, nothing unknown is updated or deleted),
//! and starts over from a snapshot whenever it is told of a gap. At the end every client's
//! tables equal the database's, and every change it received belongs to a transaction that
//! committed (the audit: each transaction inserts an `events` row holding its id). `CHAOS_TXNS` sets the number of transactions (default 100,000).

mod common;

use common::{pg_command, Cluster};
use rand::{Rng, SeedableRng};
use serde_json::{json, Map, Value};
use std::collections::{BTreeMap, HashMap};
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tungstenite::stream::MaybeTlsStream;
use tungstenite::{Message, WebSocket};

const WRITERS: usize = 8;
const CLIENTS: usize = 50;
const HOT_ROWS: i32 = 20;
const CHURN_IDS: i32 = 200;
const TABLES: [&str; 3] = ["hot", "events", "churn"];
const SENTINEL_WRITER: i32 = -1;

type Rows = BTreeMap<i64, Map<String, Value>>;

fn setup(cluster: &Cluster) {
    cluster
        .client()
        .batch_execute(&format!(
            "CREATE TABLE hot (id int PRIMARY KEY, v bigint NOT NULL);
             INSERT INTO hot SELECT g, 0 FROM generate_series(1, {HOT_ROWS}) g;
             CREATE TABLE events (id bigserial PRIMARY KEY, xid bigint DEFAULT txid_current(), writer int);
             CREATE TABLE churn (id int PRIMARY KEY, v int);
             SELECT realtime_watch('hot'), realtime_watch('events'), realtime_watch('churn');"
        ))
        .unwrap();
}

/// What the database holds now, as the clients see it (row_to_json of each row).
fn database(cluster: &Cluster) -> HashMap<&'static str, Rows> {
    let mut db = cluster.client();
    TABLES
        .iter()
        .map(|table| {
            let rows = db
                .query(&format!("SELECT row_to_json(t)::text FROM {table} t"), &[])
                .unwrap()
                .iter()
                .map(|r| {
                    let row: Map<String, Value> = serde_json::from_str(r.get(0)).unwrap();
                    (row["id"].as_i64().unwrap(), row)
                })
                .collect();
            (*table, rows)
        })
        .collect()
}

/// A writer's connection, made again after the server restarts.
fn connect_retrying(cluster: &Cluster) -> postgres::Client {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        match postgres::Client::connect(&cluster.conninfo("postgres"), postgres::NoTls) {
            Ok(c) => return c,
            Err(_) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(100)),
            Err(e) => panic!("cannot reconnect: {e}"),
        }
    }
}

/// One random transaction; `Err` when the connection or the transaction failed (deadlock,
/// restart), which leaves it rolled back, or prepared and unresolved.
fn transaction(
    db: &mut postgres::Client,
    rng: &mut impl Rng,
    writer: i32,
    gid: &str,
) -> Result<(), postgres::Error> {
    let mut sql = format!("BEGIN; INSERT INTO events (writer) VALUES ({writer});");
    // Hot rows in ascending order, so that writers queue instead of deadlocking.
    let mut hot: Vec<i32> = (0..rng.random_range(0..3))
        .map(|_| rng.random_range(1..=HOT_ROWS))
        .collect();
    hot.sort_unstable();
    for id in &hot {
        sql += &format!("UPDATE hot SET v = v + 1 WHERE id = {id};");
    }
    if rng.random_bool(0.3) {
        let id = rng.random_range(1..=CHURN_IDS);
        let end = if rng.random_bool(0.5) {
            "ROLLBACK TO s"
        } else {
            "RELEASE s"
        };
        sql += &format!(
            "SAVEPOINT s; INSERT INTO churn VALUES ({id}, 1) ON CONFLICT (id) DO UPDATE SET v = churn.v + 1; {end};"
        );
    }
    if rng.random_bool(0.3) {
        let id = rng.random_range(1..=CHURN_IDS);
        sql += &format!("DELETE FROM churn WHERE id = {id};");
    }
    let roll = rng.random_range(0..100);
    if roll < 10 {
        sql += "ROLLBACK;";
        db.batch_execute(&sql)
    } else if roll < 16 {
        sql += &format!("PREPARE TRANSACTION '{gid}';");
        db.batch_execute(&sql)?;
        let end = if roll < 15 { "COMMIT" } else { "ROLLBACK" };
        db.batch_execute(&format!("{end} PREPARED '{gid}'"))
    } else {
        sql += "COMMIT;";
        db.batch_execute(&sql)
    }
}

/// How a client comes back after a disconnect.
#[derive(Clone, Copy, PartialEq, Debug)]
enum Mode {
    /// From its last position (with its snapshot's token, if it started from one).
    Resume,
    /// From a new snapshot each time.
    Snapshot,
    /// Reading through SQL with realtime_snapshot_token(), then `after_snapshot`.
    Token,
}

#[derive(Default)]
struct Tally {
    connects: AtomicU64,
    resumed_complete: AtomicU64,
    resumed_partial: AtomicU64,
    snapshots: AtomicU64,
    token_reads: AtomicU64,
    changes: AtomicU64,
    gaps: Mutex<BTreeMap<String, u64>>,
}

struct Client {
    mode: Mode,
    rows: HashMap<String, Rows>,
    /// Per table: last position of its changes received, and the snapshot token its rows
    /// started from.
    last: HashMap<String, u64>,
    tokens: HashMap<String, String>,
    /// Its rows are current up to `last`: it may resume.
    synced: bool,
    /// The transaction of every change received, for the audit of what committed.
    xids: std::collections::HashSet<u64>,
}

type Socket = WebSocket<MaybeTlsStream<TcpStream>>;

/// How long a client waits for an answer before giving up on its connection.
const PATIENCE: Duration = Duration::from_secs(30);

/// The next message, or `None` if the connection ended or nothing came within `patience`
/// (heartbeat pings do not count). The socket's read timeout is short, so this is checked.
fn recv_within(ws: &mut Socket, patience: Duration) -> Option<Value> {
    let started = Instant::now();
    loop {
        match ws.read() {
            Ok(Message::Text(t)) => return Some(serde_json::from_str(&t).unwrap()),
            Ok(Message::Close(_)) => return None,
            Err(tungstenite::Error::Io(e))
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(_) => return None,
            Ok(_) => {}
        }
        if started.elapsed() > patience {
            return None;
        }
    }
}

fn recv(ws: &mut Socket) -> Option<Value> {
    recv_within(ws, PATIENCE)
}

fn send(ws: &mut Socket, v: Value) -> Option<()> {
    ws.send(Message::text(v.to_string())).ok()
}

impl Client {
    /// Apply a change or leave, checking it against what the client holds.
    fn apply(&mut self, m: &Value) {
        let table = m["table"].as_str().unwrap().to_string();
        let rows = self.rows.entry(table.clone()).or_default();
        let id = |row: &Value| row["id"].as_i64().unwrap();
        match (m["type"].as_str().unwrap(), m["op"].as_str().unwrap()) {
            ("change", "INSERT") => {
                let new = m["new"].as_object().unwrap().clone();
                assert!(
                    rows.insert(id(&m["new"]), new).is_none(),
                    "inserted twice: {m}"
                );
            }
            ("change", "UPDATE") => {
                let held = rows
                    .get(&id(&m["new"]))
                    .unwrap_or_else(|| panic!("update of a row never seen: {m}"));
                if table == "hot" {
                    // A lost update skips a value; one sent twice repeats one.
                    assert_eq!(
                        m["new"]["v"].as_i64(),
                        held["v"].as_i64().map(|v| v + 1),
                        "hot row counter did not move by one: {m}"
                    );
                }
                rows.insert(id(&m["new"]), m["new"].as_object().unwrap().clone());
            }
            ("change", "DELETE") => {
                assert!(
                    rows.remove(&id(&m["old"])).is_some(),
                    "delete of a row never seen: {m}"
                );
            }
            other => panic!("unexpected {other:?}: {m}"),
        }
        self.last.insert(table, m["position"].as_u64().unwrap());
        self.xids.insert(m["xid"].as_u64().unwrap());
    }

    /// Subscribe to every table as its mode says; `None` if the connection broke.
    fn subscribe_all(&mut self, ws: &mut Socket, cluster: &Cluster, tally: &Tally) -> Option<()> {
        if self.mode == Mode::Token {
            // Read the tables in one REPEATABLE READ transaction, as any SQL client would.
            let mut db =
                postgres::Client::connect(&cluster.conninfo("postgres"), postgres::NoTls).ok()?;
            let mut tx = db
                .build_transaction()
                .isolation_level(postgres::IsolationLevel::RepeatableRead)
                .start()
                .ok()?;
            let token: String = tx
                .query_one("SELECT realtime_snapshot_token()", &[])
                .ok()?
                .get(0);
            for table in TABLES {
                let rows = tx
                    .query(&format!("SELECT row_to_json(t)::text FROM {table} t"), &[])
                    .ok()?
                    .iter()
                    .map(|r| {
                        let row: Map<String, Value> = serde_json::from_str(r.get(0)).unwrap();
                        (row["id"].as_i64().unwrap(), row)
                    })
                    .collect();
                self.rows.insert(table.to_string(), rows);
            }
            tx.commit().ok()?;
            tally.token_reads.fetch_add(1, Relaxed);
            for table in TABLES {
                send(
                    ws,
                    json!({"type": "subscribe", "id": table, "table": table, "after_snapshot": token}),
                )?;
                self.until_subscribed(ws, tally)?;
                self.tokens.insert(table.to_string(), token.clone());
            }
            self.synced = true;
            return Some(());
        }
        let resume = self.synced && self.mode == Mode::Resume;
        for table in TABLES {
            let mut msg = json!({"type": "subscribe", "id": table, "table": table});
            if resume {
                msg["since"] = json!(self.last[table]);
                if let Some(token) = self.tokens.get(table) {
                    msg["after_snapshot"] = json!(token);
                }
            } else {
                msg["snapshot"] = json!(true);
            }
            send(ws, msg)?;
            let reply = self.until_subscribed(ws, tally)?;
            if resume {
                let counter = if reply["resume"] == "complete" {
                    &tally.resumed_complete
                } else {
                    &tally.resumed_partial
                };
                counter.fetch_add(1, Relaxed);
                continue;
            }
            // Changes of other tables may come first (their subscriptions are live).
            let mut rows = Rows::new();
            loop {
                let m = recv(ws)?;
                match m["type"].as_str().unwrap() {
                    "snapshot" => {
                        for row in m["rows"].as_array().unwrap() {
                            rows.insert(
                                row["id"].as_i64().unwrap(),
                                row.as_object().unwrap().clone(),
                            );
                        }
                    }
                    "snapshot_end" => {
                        self.last
                            .insert(table.to_string(), m["position"].as_u64().unwrap());
                        self.tokens
                            .insert(table.to_string(), m["token"].as_str().unwrap().to_string());
                        break;
                    }
                    _ => self.on_message(&m, tally)?,
                }
            }
            self.rows.insert(table.to_string(), rows);
            tally.snapshots.fetch_add(1, Relaxed);
        }
        self.synced = true;
        Some(())
    }

    /// The `subscribed` reply, applying what comes before it (the previous subscription's
    /// replayed and live changes).
    fn until_subscribed(&mut self, ws: &mut Socket, tally: &Tally) -> Option<Value> {
        loop {
            let m = recv(ws)?;
            if m["type"] == "subscribed" {
                return Some(m);
            }
            self.on_message(&m, tally)?;
        }
    }

    /// A live or replayed message; `None` when it tells of a loss (the client starts over).
    fn on_message(&mut self, m: &Value, tally: &Tally) -> Option<()> {
        match m["type"].as_str().unwrap() {
            "change" => {
                tally.changes.fetch_add(1, Relaxed);
                self.apply(m);
                Some(())
            }
            "gap" => {
                let reason = m["reason"].as_str().unwrap().to_string();
                self.start_over(tally, reason)
            }
            "pong" => Some(()),
            // A snapshot cut short (its reader stopped with the server): start over.
            "error" if m["code"] == "snapshot_failed" => {
                self.start_over(tally, "snapshot_failed".into())
            }
            // The worker answers a subscription within its time limit (250 ms) or refuses it;
            // just after a crash, with cold caches and 50 clients coming back, a refusal is
            // what a real client sees: it tries again.
            "error"
                if m["code"] == "internal"
                    && m["message"]
                        .as_str()
                        .is_some_and(|t| t.contains("statement timeout")) =>
            {
                self.start_over(tally, "subscribe_timed_out".into())
            }
            _ => panic!("unexpected message: {m}"),
        }
    }

    /// Count a loss for `reason`; the client starts over (`None`).
    fn start_over(&mut self, tally: &Tally, reason: String) -> Option<()> {
        *tally.gaps.lock().unwrap().entry(reason).or_default() += 1;
        self.synced = false;
        self.tokens.clear();
        None
    }
}

/// One client's life: connect, subscribe, listen for a random while, drop, come back; until
/// `done`, then a last visit that reads up to the sentinel.
fn client(n: usize, cluster: Arc<Cluster>, done: Arc<AtomicBool>, tally: Arc<Tally>) -> Client {
    let mode = match n {
        0 => Mode::Token,
        n if n % 5 == 1 => Mode::Snapshot,
        _ => Mode::Resume,
    };
    let mut me = Client {
        mode,
        rows: HashMap::new(),
        last: HashMap::new(),
        tokens: HashMap::new(),
        synced: false,
        xids: Default::default(),
    };
    let mut rng = rand::rngs::StdRng::seed_from_u64(n as u64);
    let url = format!("ws://127.0.0.1:{}/realtime", cluster.ws_port);
    loop {
        let last_visit = done.load(Relaxed);
        let Ok((mut ws, _)) = tungstenite::connect(&url) else {
            std::thread::sleep(Duration::from_millis(200));
            continue;
        };
        tally.connects.fetch_add(1, Relaxed);
        if let MaybeTlsStream::Plain(s) = ws.get_ref() {
            s.set_read_timeout(Some(Duration::from_millis(200)))
                .unwrap();
        }
        if me.subscribe_all(&mut ws, &cluster, &tally).is_none() {
            continue;
        }
        if last_visit {
            // Every change committed before the sentinel comes before it; a pong then says
            // every replay is done.
            let mut sentinel = me.rows["events"]
                .values()
                .any(|row| row["writer"] == SENTINEL_WRITER);
            if sentinel {
                send(&mut ws, json!({"type": "ping"}));
            }
            let finished = loop {
                let Some(m) = recv(&mut ws) else { break false };
                if m["type"] == "pong" {
                    break true;
                }
                if me.on_message(&m, &tally).is_none() {
                    break false;
                }
                if !sentinel && m["table"] == "events" && m["new"]["writer"] == SENTINEL_WRITER {
                    sentinel = true;
                    send(&mut ws, json!({"type": "ping"}));
                }
            };
            if finished {
                return me;
            }
            continue;
        }
        let stay = Duration::from_millis(rng.random_range(100..2000));
        let started = Instant::now();
        while started.elapsed() < stay {
            let Some(m) = recv_within(&mut ws, stay.saturating_sub(started.elapsed())) else {
                break;
            };
            if me.on_message(&m, &tally).is_none() {
                break;
            }
        }
        drop(ws);
        std::thread::sleep(Duration::from_millis(rng.random_range(0..1000)));
    }
}

/// Subscribe to `events` and leave: the position to resume after.
fn away_client(cluster: &Cluster) -> u64 {
    let mut ws = common::Ws::connect(cluster.ws_port);
    ws.subscribe("e", "events", None)["position"]
        .as_u64()
        .unwrap()
}

#[test]
fn clients_that_come_and_go_through_crashes_end_with_exactly_the_database_s_rows() {
    let total: u64 = std::env::var("CHAOS_TXNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100_000);
    let cluster = Arc::new(Cluster::start(
        "chaos",
        &["max_connections = 120", "realtime.max_connections = 200"],
    ));
    setup(&cluster);
    let started = Instant::now();
    let tally = Arc::new(Tally::default());
    let done = Arc::new(AtomicBool::new(false));
    let clients: Vec<_> = (0..CLIENTS)
        .map(|n| {
            let (cluster, done, tally) = (cluster.clone(), done.clone(), tally.clone());
            std::thread::spawn(move || client(n, cluster, done, tally))
        })
        .collect();

    let issued = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let writers: Vec<_> = (0..WRITERS)
        .map(|w| {
            let (cluster, issued, failed) = (cluster.clone(), issued.clone(), failed.clone());
            std::thread::spawn(move || {
                let mut rng = rand::rngs::StdRng::seed_from_u64(1000 + w as u64);
                let mut db = connect_retrying(&cluster);
                loop {
                    let n = issued.fetch_add(1, Relaxed);
                    if n >= total {
                        break;
                    }
                    if transaction(&mut db, &mut rng, w as i32, &format!("chaos_{w}_{n}")).is_err()
                    {
                        failed.fetch_add(1, Relaxed);
                        if db.is_closed() {
                            db = connect_retrying(&cluster);
                            // A restart between PREPARE and COMMIT PREPARED leaves one
                            // holding its row locks: finish it.
                            let gids = db
                                .query(
                                    "SELECT gid FROM pg_prepared_xacts WHERE gid LIKE $1",
                                    &[&format!("chaos\\_{w}\\_%")],
                                )
                                .unwrap();
                            for row in gids {
                                let _ = db.batch_execute(&format!(
                                    "COMMIT PREPARED '{}'",
                                    row.get::<_, String>(0)
                                ));
                            }
                        } else {
                            let _ = db.batch_execute("ROLLBACK");
                        }
                    }
                }
            })
        })
        .collect();

    // The worker killed at a quarter, the server restarted fast at half, immediately at
    // three quarters.
    let data = cluster.data();
    let log = data.parent().unwrap().join("server.log");
    let mut crashes = Vec::new();
    for (mark, what) in [
        (total / 4, "kill worker"),
        (total / 2, "fast restart"),
        (total * 3 / 4, "immediate restart"),
    ] {
        while issued.load(Relaxed) < mark {
            std::thread::sleep(Duration::from_millis(50));
        }
        // One client away across the immediate restart, for certain.
        let away = (what == "immediate restart").then(|| away_client(&cluster));
        match what {
            "kill worker" => {
                // kill -9: the server restarts every process with new shared memory.
                cluster.kill_worker();
            }
            mode => {
                let mode = if mode.starts_with("fast") {
                    "fast"
                } else {
                    "immediate"
                };
                let status = pg_command("pg_ctl")
                    .args([
                        "-D",
                        data.to_str().unwrap(),
                        "restart",
                        "-w",
                        "-m",
                        mode,
                        "-l",
                        log.to_str().unwrap(),
                    ])
                    .status()
                    .unwrap();
                assert!(status.success(), "pg_ctl restart -m {mode}");
            }
        }
        crashes.push(format!("{what} at {:.1}s", started.elapsed().as_secs_f64()));
        cluster.wait_healthy();
        if let Some(since) = away {
            // The queue outlived the crash: the resume is complete.
            let mut ws = common::Ws::connect(cluster.ws_port);
            ws.send(json!({"type": "subscribe", "id": "e", "table": "events", "since": since}));
            let reply = ws.recv();
            assert_eq!(reply["resume"], "complete", "{reply}");
        }
    }
    for w in writers {
        w.join().unwrap();
    }
    // Prepared transactions whose COMMIT PREPARED a restart cut off.
    let mut db = cluster.client();
    for row in db.query("SELECT gid FROM pg_prepared_xacts", &[]).unwrap() {
        let gid: String = row.get(0);
        db.batch_execute(&format!("COMMIT PREPARED '{gid}'"))
            .unwrap();
    }
    db.execute(
        "INSERT INTO events (writer) VALUES ($1)",
        &[&SENTINEL_WRITER],
    )
    .unwrap();
    let writing = started.elapsed();
    done.store(true, Relaxed);

    let want = database(&cluster);
    // The audit: every committed transaction inserted one `events` row with its id.
    let audit: std::collections::HashSet<u64> = db
        .query("SELECT xid FROM events", &[])
        .unwrap()
        .iter()
        .map(|r| r.get::<_, i64>(0) as u64)
        .collect();
    let committed = audit.len();
    for (n, c) in clients.into_iter().enumerate() {
        let got = c.join().unwrap();
        for table in TABLES {
            let rows = got.rows.get(table).cloned().unwrap_or_default();
            assert_eq!(
                rows.len(),
                want[table].len(),
                "client {n} ({:?}), {table}: row count",
                got.mode
            );
            assert!(
                rows == want[table],
                "client {n} ({:?}), {table}: rows differ from the database",
                got.mode
            );
        }
        let phantoms: Vec<_> = got.xids.difference(&audit).collect();
        assert!(
            phantoms.is_empty(),
            "client {n} received changes of transactions that did not commit: {phantoms:?}"
        );
    }
    let gaps = tally.gaps.lock().unwrap().clone();
    println!(
        "chaos: {total} transactions ({} failed or cut off by restarts; {committed} committed) in {:.1}s; {}; \
         {CLIENTS} clients: {} connections, {} resumes complete, {} partial, {} snapshots, {} token reads, \
         {} changes applied, gaps {gaps:?}; every client's tables equal the database's",
        failed.load(Relaxed),
        writing.as_secs_f64(),
        crashes.join(", "),
        tally.connects.load(Relaxed),
        tally.resumed_complete.load(Relaxed),
        tally.resumed_partial.load(Relaxed),
        tally.snapshots.load(Relaxed),
        tally.token_reads.load(Relaxed),
        tally.changes.load(Relaxed),
    );
    assert!(
        tally.changes.load(Relaxed) > total,
        "clients saw too little of the stream"
    );
    assert!(
        !gaps.contains_key("server_restart"),
        "a crash lost changes: {gaps:?}"
    );
    assert!(tally.resumed_complete.load(Relaxed) > 0 && tally.snapshots.load(Relaxed) > 0);
    assert!(tally.token_reads.load(Relaxed) > 1);
}
