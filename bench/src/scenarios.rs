//! The measurements. Each returns one JSON object (printed, and written with --json).

use crate::client::{self, Ws};
use crate::Args;
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_tungstenite::tungstenite::Message;

/// How long fan-out waits for delivery after the writer stops.
const DRAIN_LIMIT: Duration = Duration::from_secs(30);

async fn database(args: &Args) -> tokio_postgres::Client {
    let conninfo = args.str(
        "pg",
        "host=127.0.0.1 port=54320 user=postgres dbname=postgres",
    );
    let (db, conn) = tokio_postgres::connect(&conninfo, tokio_postgres::NoTls)
        .await
        .expect("connect to PostgreSQL");
    tokio::spawn(conn);
    db
}

/// Which of the server's protocols the clients speak.
fn endpoint(args: &Args) -> &'static str {
    match client::is_supabase(&url(args)) {
        true => "supabase",
        false => "native",
    }
}

fn url(args: &Args) -> String {
    args.str("ws", "ws://127.0.0.1:8080/realtime")
}

/// Connect `n` subscribers, a few hundred at a time.
async fn subscribers(url: &str, n: usize, table: &str) -> Result<Vec<Ws>, String> {
    subscribers_to(url, n, table, false).await
}

/// `n` subscribers to `table`, or to the channel of that name; `url` may list several
/// servers, comma-separated (edge servers), which take the clients in turn.
async fn subscribers_to(
    url: &str,
    n: usize,
    table: &str,
    channel: bool,
) -> Result<Vec<Ws>, String> {
    let mut all = Vec::with_capacity(n);
    for start in (0..n).step_by(250) {
        let batch: Vec<_> = (start..(start + 250).min(n))
            .map(|i| {
                let urls: Vec<&str> = url.split(',').collect();
                let (url, table) = (urls[i % urls.len()].to_string(), table.to_string());
                tokio::spawn(async move {
                    match channel {
                        true => client::channel_subscriber(&url, i, &table).await,
                        false => client::subscriber(&url, i, &table).await,
                    }
                })
            })
            .collect();
        for b in batch {
            all.push(
                b.await
                    .unwrap()
                    .map_err(|e| format!("client {} could not subscribe: {e}", all.len()))?,
            );
        }
    }
    Ok(all)
}

/// Read `ws` until `done(messages stamped so far)` or it closes: each stamped message's
/// latency, in ms.
async fn read_stamped(
    mut ws: Ws,
    expected: usize,
    done: impl Fn(usize, Duration) -> bool,
) -> Vec<f64> {
    let mut latencies = Vec::with_capacity(expected);
    let mut last = Instant::now();
    while !done(latencies.len(), last.elapsed()) {
        match tokio::time::timeout(Duration::from_millis(200), ws.next()).await {
            Ok(Some(Ok(Message::Text(t)))) => {
                if let Some(sent) = client::sent_at_us(&t) {
                    latencies.push((client::now_us() - sent) as f64 / 1000.0);
                    last = Instant::now();
                }
            }
            Ok(Some(Ok(_))) | Err(_) => {}
            Ok(_) => break,
        }
    }
    latencies
}

/// The result row of a run whose clients could not connect.
fn failed(scenario: &str, args: &Args, error: String) -> Value {
    json!({"scenario": scenario, "target": format!("{:?}", args.target()), "error": error,
           "clients": args.num("clients", 0.0) as usize, "payload_bytes": args.num("payload", 16.0) as usize})
}

fn percentiles(mut v: Vec<f64>) -> Value {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let p = |q: f64| {
        if v.is_empty() {
            Value::Null
        } else {
            json!(v[((v.len() - 1) as f64 * q).round() as usize])
        }
    };
    json!({"p50": p(0.5), "p95": p(0.95), "p99": p(0.99), "max": v.last().copied()})
}

/// Counts writes that committed, so readers know when to stop.
#[derive(Default)]
struct Progress {
    committed: AtomicU64,
    done: AtomicBool,
}

impl Progress {
    /// Whether a reader that has `received` changes, the last `quiet` ago, is done: it has
    /// them all, or the writer has finished and nothing came for DRAIN_LIMIT (what is missing
    /// then shows as delivered below expected, rather than as a run that never ends).
    fn finished(&self, received: u64, quiet: Duration) -> bool {
        self.done.load(Relaxed) && (received >= self.committed.load(Relaxed) || quiet > DRAIN_LIMIT)
    }
}

/// Commit->client latency: `clients` subscribers, one writer committing single-row
/// transactions at `rate` per second.
pub async fn latency(args: &Args) -> Value {
    let target = args.target();
    let clients = args.num("clients", 10.0) as usize;
    let events = args.num("events", 1000.0) as u64;
    let rate = args.num("rate", 1000.0);
    let payload = "x".repeat(args.num("payload", 16.0) as usize);
    let db = match target {
        client::Target::Floor => None,
        _ => Some(database(args).await),
    };
    if let Some(db) = &db {
        client::setup_table(db, target, "bench_latency").await;
    }
    let sockets = match target {
        client::Target::Relay => subscribers_to(&url(args), clients, "bench_relay", true).await,
        _ => subscribers(&url(args), clients, "bench_latency").await,
    };
    let sockets = match sockets {
        Ok(s) => s,
        Err(e) => return failed("latency", args, e),
    };

    let progress = Arc::new(Progress::default());
    let readers: Vec<_> = sockets
        .into_iter()
        .map(|ws| {
            let progress = progress.clone();
            tokio::spawn(read_stamped(ws, events as usize, move |n, quiet| {
                progress.finished(n as u64, quiet)
            }))
        })
        .collect();

    let cpu0 = client::cpu_seconds();
    let started = Instant::now();
    let mut failed = 0u64;
    let mut error = None;
    match &db {
        None => {
            // The floor server makes the events itself, stamped as it makes them.
            let mut control = floor_control(args, clients).await;
            let start = format!(r#"{{"type":"start","events":{events},"rate":{rate}}}"#);
            control
                .send(Message::text(start))
                .await
                .expect("start the floor server");
            tokio::time::sleep(Duration::from_secs_f64(events as f64 / rate)).await;
            progress.committed.store(events, Relaxed);
        }
        Some(_) => {
            // The writer is an application server of its own: on its own thread and
            // connection, so that its commits do not queue behind a thousand readers' tasks.
            let writer = Writer {
                args: args.clone(),
                target,
                clients,
                events,
                rate,
                payload: payload.clone(),
                progress: progress.clone(),
            };
            (failed, error) = std::thread::spawn(move || {
                tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("a runtime for the writer")
                    .block_on(writer.run())
            })
            .join()
            .expect("the writer");
        }
    }
    progress.done.store(true, Relaxed);
    // The writer waits for each commit, so a busy machine holds it below `rate`: say what it
    // reached, or a slow run would pass for one at the rate asked.
    let written_per_s = (events - failed) as f64 / started.elapsed().as_secs_f64();
    let mut all = Vec::new();
    for r in readers {
        all.extend(r.await.unwrap());
    }
    let wall = started.elapsed().as_secs_f64();
    let delivered = all.len();
    json!({
        "scenario": "latency", "target": format!("{target:?}"), "endpoint": endpoint(args), "clients": clients, "events": events,
        "rate_per_s": rate, "written_per_s": written_per_s, "payload_bytes": payload.len(), "failed_writes": failed, "write_error": error,
        "delivered": delivered, "expected": (events - failed) * clients as u64,
        "latency_ms": percentiles(all),
        "client_cpu_share": (client::cpu_seconds() - cpu0) / wall / 2.0,
    })
}

/// A connection to the floor server for telling it what to send, as client number `n`.
async fn floor_control(args: &Args, n: usize) -> Ws {
    client::connect(url(args).split(',').next().unwrap_or_default(), n)
        .await
        .expect("connect to the floor server")
}

/// Scenario L's writer: single-row transactions at `rate` a second.
struct Writer {
    args: Args,
    target: client::Target,
    clients: usize,
    events: u64,
    rate: f64,
    payload: String,
    progress: Arc<Progress>,
}

impl Writer {
    /// Writes failed, and the first error.
    async fn run(self) -> (u64, Option<String>) {
        let db = database(&self.args).await;
        // The committed floor's server hears of each row from the writer, after its commit.
        let mut told = match self.target {
            client::Target::CommittedFloor => {
                let (told, mut echoes) = floor_control(&self.args, self.clients).await.split();
                tokio::spawn(async move { while echoes.next().await.is_some() {} });
                Some(told)
            }
            _ => None,
        };
        let insert = db
            .prepare("INSERT INTO bench_latency VALUES ($1, $2, $3)")
            .await
            .unwrap();
        let (mut failed, mut error) = (0, None);
        let interval = Duration::from_secs_f64(1.0 / self.rate);
        let mut next = tokio::time::Instant::now();
        for id in 0..self.events as i64 {
            tokio::time::sleep_until(next).await;
            next += interval;
            let sent = client::now_us();
            match db.execute(&insert, &[&id, &sent, &self.payload]).await {
                Ok(_) => {
                    self.progress.committed.fetch_add(1, Relaxed);
                    if let Some(told) = &mut told {
                        let emit = format!(r#"{{"type":"emit","id":{id},"sent_at_us":{sent}}}"#);
                        told.send(Message::text(emit))
                            .await
                            .expect("tell the floor server");
                    }
                }
                Err(e) => {
                    failed += 1;
                    error.get_or_insert_with(|| {
                        e.as_db_error()
                            .map_or(e.to_string(), |d| d.message().to_string())
                    });
                }
            }
        }
        (failed, error)
    }
}

/// Fan-out: `clients` subscribers, the writer commits `batch` rows per transaction as fast as it
/// can for `seconds`; how many messages per second reach the clients.
pub async fn fanout(args: &Args) -> Value {
    let target = args.target();
    let clients = args.num("clients", 10_000.0) as usize;
    let seconds = args.num("seconds", 10.0);
    let batch = args.num("batch", 100.0) as i64;
    // Rows a second the writer holds to (0: as fast as it can), so that two targets can be
    // compared at the same load.
    let rate = args.num("rate", 0.0);
    let db = database(args).await;
    client::setup_table(&db, target, "bench_fanout").await;
    let sockets = match subscribers(&url(args), clients, "bench_fanout").await {
        Ok(s) => s,
        Err(e) => return failed("fanout", args, e),
    };
    let received = Arc::new(AtomicU64::new(0));
    let gaps = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let readers: Vec<_> = sockets
        .into_iter()
        .map(|mut ws| {
            let (received, gaps, stop) = (received.clone(), gaps.clone(), stop.clone());
            tokio::spawn(async move {
                while !stop.load(Relaxed) {
                    match tokio::time::timeout(Duration::from_millis(200), ws.next()).await {
                        Ok(Some(Ok(Message::Text(t)))) => {
                            if t.starts_with(r#"{"type":"gap""#) {
                                gaps.fetch_add(1, Relaxed);
                            } else {
                                received.fetch_add(1, Relaxed);
                            }
                        }
                        Ok(Some(Ok(_))) | Err(_) => {}
                        Ok(_) => break,
                    }
                }
            })
        })
        .collect();
    let cpu0 = client::cpu_seconds();
    let started = Instant::now();
    let mut rows = 0i64;
    let insert = db
        .prepare("INSERT INTO bench_fanout SELECT g, $3, 'fan-out' FROM generate_series($1::int8, $2::int8) g")
        .await
        .unwrap();
    while started.elapsed().as_secs_f64() < seconds {
        db.execute(&insert, &[&rows, &(rows + batch - 1), &client::now_us()])
            .await
            .unwrap();
        rows += batch;
        if rate > 0.0 {
            let due = started + Duration::from_secs_f64(rows as f64 / rate);
            tokio::time::sleep_until(due.into()).await;
        }
    }
    let write_secs = started.elapsed().as_secs_f64();
    // Let delivery finish: stop when everything arrived, nothing arrived for a second, or
    // DRAIN_LIMIT passed (a backlog still trickling out then counts as not delivered).
    let expected = rows as u64 * clients as u64;
    let mut last = received.load(Relaxed);
    let mut last_change = Instant::now();
    let drain_until = Instant::now() + DRAIN_LIMIT;
    while received.load(Relaxed) < expected
        && last_change.elapsed() < Duration::from_secs(1)
        && Instant::now() < drain_until
    {
        tokio::time::sleep(Duration::from_millis(50)).await;
        let now = received.load(Relaxed);
        if now != last {
            last = now;
            last_change = Instant::now();
        }
    }
    let delivery_secs = (last_change.min(Instant::now()) - started)
        .as_secs_f64()
        .max(write_secs);
    stop.store(true, Relaxed);
    for r in readers {
        let _ = r.await;
    }
    let total = received.load(Relaxed);
    json!({
        "scenario": "fanout", "target": format!("{target:?}"), "endpoint": endpoint(args), "tls": url(args).starts_with("wss://"),
        "clients": clients, "batch_rows": batch, "rate_rows_per_s": rate,
        "rows_committed": rows, "writer_rows_per_s": rows as f64 / write_secs,
        "expected_messages": expected, "delivered_messages": total, "gap_messages": gaps.load(Relaxed),
        "delivered_per_s": total as f64 / delivery_secs,
        "client_cpu_share": (client::cpu_seconds() - cpu0) / started.elapsed().as_secs_f64() / 2.0,
    })
}

/// Hold `clients` idle subscribed connections; the worker's memory per connection, and how long
/// a new subscription takes to be acknowledged meanwhile.
pub async fn idle(args: &Args) -> Value {
    let clients = args.num("clients", 50_000.0) as usize;
    let db = database(args).await;
    db.batch_execute(
        "DROP TABLE IF EXISTS bench_idle; CREATE TABLE bench_idle (id bigint); SELECT realtime_watch('bench_idle')",
    )
    .await
    .unwrap();
    let pid: i32 = db
        .query_one(
            "SELECT pid FROM pg_stat_activity WHERE backend_type = 'realtime_ext'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    let pid = pid as u32;
    // Warm up the worker's allocator with one client so that the delta is per connection.
    let warm = subscribers(&url(args), 1, "bench_idle")
        .await
        .expect("first client");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (rss0, _) = client::memory_kib(pid);
    let started = Instant::now();
    let held = match subscribers(&url(args), clients, "bench_idle").await {
        Ok(s) => s,
        Err(e) => return failed("idle", args, e),
    };
    let connect_secs = started.elapsed().as_secs_f64();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (rss1, _) = client::memory_kib(pid);
    let mut subscribe_ms = Vec::new();
    for i in 0..20 {
        let t = Instant::now();
        let ws = client::subscriber(&url(args), clients + 10 + i, "bench_idle")
            .await
            .expect("subscribe while loaded");
        subscribe_ms.push(t.elapsed().as_secs_f64() * 1000.0);
        drop(ws);
    }
    // --hold S: keep them connected S seconds longer, for a measurement from outside.
    tokio::time::sleep(Duration::from_secs_f64(args.num("hold", 0.0))).await;
    drop((warm, held));
    json!({
        "scenario": "idle", "clients": clients, "fd_limit": client::fd_limit(), "connect_seconds": connect_secs,
        "worker_rss_kib_before": rss0, "worker_rss_kib_after": rss1,
        "worker_kib_per_connection": (rss1 as f64 - rss0 as f64) / clients as f64,
        "new_subscribe_ms": percentiles(subscribe_ms),
    })
}

/// One subscriber to --table that counts changes until --events arrived (or 60 s of silence).
pub async fn count(args: &Args) -> Value {
    let table = args.str("table", "bench_bulk");
    let events = args.num("events", 1_000_000.0) as u64;
    // Stop after this long without a change (pings do not count).
    let idle = Duration::from_secs_f64(args.num("idle", 60.0));
    let mut ws = client::subscriber(&url(args), 0, &table)
        .await
        .expect("subscribe");
    println!("subscribed");
    let mut got = 0u64;
    let mut gaps = 0u64;
    let mut first: Option<Instant> = None;
    let mut last = Instant::now();
    while got < events && last.elapsed() < idle {
        match tokio::time::timeout(Duration::from_secs(1), ws.next()).await {
            Ok(Some(Ok(Message::Text(t)))) => {
                first.get_or_insert_with(Instant::now);
                last = Instant::now();
                if t.starts_with(r#"{"type":"gap""#) {
                    gaps += 1;
                } else {
                    got += 1;
                }
            }
            Ok(Some(Ok(_))) | Err(_) => {}
            Ok(_) => break,
        }
    }
    json!({
        "scenario": "count", "table": table, "expected": events, "delivered": got, "gap_messages": gaps,
        "receive_seconds": first.map(|f| f.elapsed().as_secs_f64()),
    })
}

/// The WebSocket URL with a token for `bench_user` as user `sub`, signed with `secret`.
fn url_as(args: &Args, secret: &str, sub: &str) -> String {
    let claims = json!({"role": "bench_user", "sub": sub});
    let token = jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
    )
    .unwrap();
    let url = url(args);
    // The Supabase endpoint takes the token as its `apikey`, beside `vsn`.
    let (separator, name) = match (url.contains('?'), client::is_supabase(&url)) {
        (true, true) => ('&', "apikey"),
        (true, false) => ('&', "token"),
        (false, true) => ('?', "apikey"),
        (false, false) => ('?', "token"),
    };
    format!("{url}{separator}{name}={token}")
}

/// CPU seconds (user + system) process `pid` has used, from /proc.
fn process_cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the parenthesised command name; utime and stime are the 14th and 15th.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    (ticks(11) + ticks(12)) / hz
}

/// Row-level security at scale: `clients` connections, each a distinct user `u<i>`, and one
/// writer committing `rate` single-row transactions per second, row `k` owned by `u<k % clients>`,
/// so that each change is for exactly one client.
pub async fn rls(args: &Args) -> Value {
    let clients = args.num("clients", 1000.0) as usize;
    let events = args.num("events", 10_000.0) as i64;
    let rate = args.num("rate", 1000.0);
    let mode = args.str("mode", "policy");
    let secret = args.str("secret", "");
    let worker = args.num("worker-pid", 0.0) as u32;
    let db = database(args).await;
    let policy = match mode.as_str() {
        "policy" | "perquery" => {
            "CREATE POLICY mine ON bench_rls USING (owner = current_setting('request.jwt.claims', true)::json->>'sub')"
        }
        "subselect" => {
            "CREATE POLICY member ON bench_rls USING (EXISTS (SELECT FROM bench_members m
               WHERE m.owner = bench_rls.owner AND m.member = current_setting('request.jwt.claims', true)::json->>'sub'))"
        }
        // Judged by the worker for each user apart (a function of the claims); the users
        // `slow` and `failing`, when `--troubled 1` connects them, make it sleep 2 s or raise.
        "gated" => {
            "CREATE FUNCTION bench_gate() RETURNS bool LANGUAGE plpgsql STABLE AS $$
             BEGIN
                 IF current_setting('request.jwt.claims', true)::json->>'sub' = 'slow' THEN
                     PERFORM pg_sleep(2);
                 END IF;
                 IF current_setting('request.jwt.claims', true)::json->>'sub' = 'failing' THEN
                     RAISE EXCEPTION 'bench: this policy fails';
                 END IF;
                 RETURN true;
             END $$;
             CREATE POLICY mine ON bench_rls USING (bench_gate()
                 AND owner = current_setting('request.jwt.claims', true)::json->>'sub')"
        }
        "filter" => "SELECT",
        other => panic!("unknown --mode {other}"),
    };
    let troubled = args.num("troubled", 0.0) > 0.0;
    let rls = if mode == "filter" {
        "DISABLE"
    } else {
        "ENABLE"
    };
    db.batch_execute(&format!(
        "DROP TABLE IF EXISTS bench_rls, bench_members;
         DROP FUNCTION IF EXISTS bench_gate();
         CREATE TABLE bench_rls (id bigint PRIMARY KEY, owner text, sent_at_us bigint, payload text);
         CREATE TABLE bench_members (owner text, member text);
         INSERT INTO bench_members SELECT 'u' || g, 'u' || g FROM generate_series(0, {clients} - 1) g;
         CREATE INDEX ON bench_members (owner, member);
         ALTER TABLE bench_rls {rls} ROW LEVEL SECURITY;
         {policy};
         GRANT SELECT ON bench_rls, bench_members TO bench_user;
         SELECT realtime_watch('bench_rls');"
    ))
    .await
    .unwrap();
    let cpu_worker0 = process_cpu_seconds(worker);
    let checker = if mode == "perquery" {
        Some(per_query_checker(args, clients).await)
    } else {
        None
    };
    let mut sockets = Vec::new();
    if checker.is_none() {
        for i in 0..clients {
            let user = format!("u{i}");
            let (url, filter) = if mode == "filter" {
                (url(args), Some(format!("owner=eq.{user}")))
            } else {
                (url_as(args, &secret, &user), None)
            };
            match client::subscribe_with(&url, i, "bench_rls", filter.as_deref()).await {
                Ok(ws) => sockets.push(ws),
                Err(e) => return failed("rls", args, format!("client {i}: {e}")),
            }
        }
    }
    // Users whose policies misbehave, read but not measured.
    for (k, user) in ["slow", "failing"].iter().enumerate().filter(|_| troubled) {
        let url = url_as(args, &secret, user);
        match client::subscribe_with(&url, clients + k, "bench_rls", None).await {
            Ok(mut ws) => drop(tokio::spawn(async move {
                while let Some(Ok(_)) = ws.next().await {}
            })),
            Err(e) => return failed("rls", args, format!("{user}: {e}")),
        }
    }
    let progress = Arc::new(Progress::default());
    let wrong = Arc::new(AtomicU64::new(0));
    let gaps = Arc::new(std::sync::Mutex::new(std::collections::BTreeMap::<
        String,
        u64,
    >::new()));
    let per_client = |i: usize| (events as usize + clients - 1 - i) / clients;
    let readers: Vec<_> = sockets
        .into_iter()
        .enumerate()
        .map(|(i, mut ws)| {
            let (progress, wrong, gaps) = (progress.clone(), wrong.clone(), gaps.clone());
            let mine = format!(r#""owner":"u{i}""#);
            let expected = per_client(i) as u64;
            tokio::spawn(async move {
                let mut latencies = Vec::new();
                let mut last_at = Instant::now();
                while !(progress.done.load(Relaxed) && latencies.len() as u64 >= expected) {
                    match tokio::time::timeout(Duration::from_millis(500), ws.next()).await {
                        Ok(Some(Ok(Message::Text(t)))) => {
                            if t.starts_with(r#"{"type":"gap""#) {
                                let reason = serde_json::from_str::<Value>(&t)
                                    .ok()
                                    .and_then(|m| m["reason"].as_str().map(String::from))
                                    .unwrap_or_default();
                                *gaps.lock().unwrap().entry(reason).or_default() += 1;
                            } else if !t.contains(&mine) {
                                wrong.fetch_add(1, Relaxed);
                            } else if let Some(sent) = client::sent_at_us(&t) {
                                latencies.push((client::now_us() - sent) as f64 / 1000.0);
                                last_at = Instant::now();
                            }
                        }
                        Ok(Some(Ok(_))) => {}
                        // Behind the writer: wait for the rest while it keeps coming.
                        Err(_)
                            if progress.done.load(Relaxed) && last_at.elapsed() > RLS_SILENCE =>
                        {
                            break
                        }
                        Err(_) => {}
                        Ok(_) => break,
                    }
                }
                (latencies, last_at)
            })
        })
        .collect();
    let insert = db
        .prepare("INSERT INTO bench_rls VALUES ($1, $2, $3, 'rls')")
        .await
        .unwrap();
    let started = Instant::now();
    let cpu_worker1 = process_cpu_seconds(worker);
    let interval = Duration::from_secs_f64(1.0 / rate);
    let mut next = tokio::time::Instant::now();
    for id in 0..events {
        tokio::time::sleep_until(next).await;
        next += interval;
        let owner = format!("u{}", id as usize % clients);
        db.execute(&insert, &[&id, &owner, &client::now_us()])
            .await
            .unwrap();
        if let Some(check) = &checker {
            check.send(id).await.unwrap();
        }
    }
    progress.done.store(true, Relaxed);
    let mut all = Vec::new();
    let mut short = 0usize;
    let mut last = started;
    for (i, r) in readers.into_iter().enumerate() {
        let (got, last_at) = r.await.unwrap();
        short += per_client(i).saturating_sub(got.len());
        all.extend(got);
        last = last.max(last_at);
    }
    let delivery_secs = (last - started).as_secs_f64();
    let checked = match checker {
        Some(check) => {
            drop(check);
            Some(per_query_finish().await)
        }
        None => None,
    };
    let wall = started.elapsed().as_secs_f64();
    let worker_cpu = process_cpu_seconds(worker) - cpu_worker1;
    json!({
        "scenario": "rls", "endpoint": endpoint(args), "mode": mode, "clients": clients, "events": events, "rate_per_s": rate,
        "delivered": all.len(), "missing": short, "wrong_rows": wrong.load(Relaxed),
        "gaps": *gaps.lock().unwrap(),
        "delivered_per_s": all.len() as f64 / delivery_secs,
        "latency_ms": percentiles(all), "seconds": wall,
        "worker_cpu_share": worker_cpu / wall, "worker_cpu_seconds_subscribing": cpu_worker1 - cpu_worker0,
        "per_query": checked,
    })
}

const PER_QUERY_LIMIT: Duration = Duration::from_secs(30);
/// How long R's clients wait for more once the writer is done and nothing arrived.
const RLS_SILENCE: Duration = Duration::from_secs(5);
/// How long D's resumed clients wait for more once the writer is done and nothing arrived
/// (they stop at once when they have every row): reading back from the history under load can
/// pause for seconds without anything being lost.
const RESUME_SILENCE: Duration = Duration::from_secs(60);

static PER_QUERY: std::sync::Mutex<Option<tokio::task::JoinHandle<Value>>> =
    std::sync::Mutex::new(None);

/// Supabase's method, for comparison: for every change, one query per subscriber, as that
/// subscriber (role and claims), asking whether it may see the row. Runs on its own
/// connection, as fast as it can behind the writer; reports how many changes it judged per
/// second and how long each took.
async fn per_query_checker(args: &Args, clients: usize) -> tokio::sync::mpsc::Sender<i64> {
    let db = database(args).await;
    db.batch_execute(
        "CREATE OR REPLACE FUNCTION bench_visible_to(row_id bigint, subscribers int) RETURNS int
         LANGUAGE plpgsql AS $$
         DECLARE n int := 0; ok bool;
         BEGIN
           FOR i IN 0 .. subscribers - 1 LOOP
             PERFORM set_config('role', 'bench_user', true);
             PERFORM set_config('request.jwt.claims', json_build_object('sub', 'u' || i)::text, true);
             SELECT true INTO ok FROM bench_rls WHERE id = row_id;
             PERFORM set_config('role', 'none', true);
             IF ok THEN n := n + 1; END IF;
           END LOOP;
           RETURN n;
         END $$;",
    )
    .await
    .unwrap();
    let (tx, mut rx) = tokio::sync::mpsc::channel::<i64>(1_000_000);
    let task = tokio::spawn(async move {
        let check = db.prepare("SELECT bench_visible_to($1, $2)").await.unwrap();
        let mut per_change_ms = Vec::new();
        let started = Instant::now();
        let mut wrong = 0u64;
        // It falls far behind the writer: judge for at most PER_QUERY_LIMIT, then report.
        while let Some(id) = rx.recv().await {
            if started.elapsed() > PER_QUERY_LIMIT {
                break;
            }
            let t = Instant::now();
            // One statement: its set_config(..., true) calls end with it.
            let n: i32 = db
                .query_one(&check, &[&id, &(clients as i32)])
                .await
                .map(|r| r.get(0))
                .unwrap_or(-1);
            if n != 1 {
                wrong += 1;
            }
            per_change_ms.push(t.elapsed().as_secs_f64() * 1000.0);
        }
        let judged = per_change_ms.len();
        json!({"changes_judged": judged, "wrong_answers": wrong,
               "changes_per_s": judged as f64 / started.elapsed().as_secs_f64(),
               "ms_per_change": percentiles(per_change_ms)})
    });
    *PER_QUERY.lock().unwrap() = Some(task);
    tx
}

async fn per_query_finish() -> Value {
    let task = PER_QUERY.lock().unwrap().take();
    match task {
        Some(t) => t.await.unwrap(),
        None => Value::Null,
    }
}

/// When a resumed client is counted as caught up: it has every row committed before it came
/// back.
struct Dropper {
    /// Rows received (by id), before and after the drop.
    seen: Vec<u8>,
    /// How many ids were received at least once.
    distinct: usize,
    last_position: u64,
}

impl Dropper {
    /// Count a message: the row's id if it was one it had not seen.
    fn take(&mut self, text: &str) -> Option<Option<usize>> {
        let (Some(position), Some(id)) = (
            client::number_after::<u64>(text, "\"position\":"),
            client::number_after::<usize>(text, "\"new\":{\"id\":"),
        ) else {
            return None;
        };
        self.last_position = position;
        let n = self.seen.get_mut(id)?;
        *n = n.saturating_add(1);
        self.distinct += (*n == 1) as usize;
        Some((*n == 1).then_some(id))
    }
}

/// Resume after a disconnect: `clients` subscribers drop for `away` seconds while one writer
/// commits `rate` rows per second, then subscribe again with `since` (and again from a
/// `slow_client` gap's `resume_from`); `steady` subscribers stay connected throughout. Reports how long each resumed client took to have every row committed
/// before it came back, rows lost or received twice, and the steady clients' latency during
/// the catch-up against before it.
/// Steady clients: each collects (receipt time since `start` in s, latency in ms) of every row
/// until `done` and then half a second of silence.
fn steady_latencies(
    steadies: Vec<Ws>,
    start: Instant,
    done: &Arc<AtomicBool>,
) -> Vec<tokio::task::JoinHandle<Vec<(f64, f64)>>> {
    steadies
        .into_iter()
        .map(|mut ws| {
            let done = done.clone();
            tokio::spawn(async move {
                let mut samples = Vec::new();
                loop {
                    match tokio::time::timeout(Duration::from_millis(500), ws.next()).await {
                        Ok(Some(Ok(Message::Text(t)))) => {
                            if let Some(sent) = client::sent_at_us(&t) {
                                let ms = (client::now_us() - sent) as f64 / 1000.0;
                                samples.push((start.elapsed().as_secs_f64(), ms));
                            }
                        }
                        Ok(Some(Ok(_))) => {}
                        Err(_) if done.load(Relaxed) => break,
                        Err(_) => {}
                        Ok(_) => break,
                    }
                }
                samples
            })
        })
        .collect()
}

pub async fn resume(args: &Args) -> Value {
    let clients = args.num("clients", 1000.0) as usize;
    let steady = args.num("steady", 100.0) as usize;
    let rate = args.num("rate", 1000.0);
    let (before, away, after) = (
        args.num("before", 5.0),
        args.num("away", 10.0),
        args.num("after", 15.0),
    );
    let events = ((before + away + after) * rate) as usize;
    let db = database(args).await;
    client::setup_table(&db, client::Target::Realtime, "bench_resume").await;
    let url = url(args);
    let droppers = match subscribers(&url, clients, "bench_resume").await {
        Ok(s) => s,
        Err(e) => return failed("resume", args, e),
    };
    let steadies = match subscribers(&url, steady, "bench_resume").await {
        Ok(s) => s,
        Err(e) => return failed("resume", args, e),
    };
    let committed = Arc::new(AtomicU64::new(0));
    let done = Arc::new(AtomicBool::new(false));
    let start = Instant::now();
    let drop_at = start + Duration::from_secs_f64(before);
    let back_at = drop_at + Duration::from_secs_f64(away);

    let steady_tasks = steady_latencies(steadies, start, &done);

    let dropper_tasks: Vec<_> = droppers
        .into_iter()
        .enumerate()
        .map(|(n, mut ws)| {
            let (done, committed, url) = (done.clone(), committed.clone(), url.clone());
            tokio::spawn(async move {
                let mut me = Dropper {
                    seen: vec![0; events],
                    distinct: 0,
                    last_position: 0,
                };
                while Instant::now() < drop_at {
                    let until = tokio::time::Instant::from_std(drop_at);
                    match tokio::time::timeout_at(until, ws.next()).await {
                        Ok(Some(Ok(Message::Text(t)))) => {
                            me.take(&t);
                        }
                        Ok(Some(Ok(_))) | Err(_) => {}
                        Ok(_) => return Err(format!("client {n} closed before the drop")),
                    }
                }
                let _ = ws.close(None).await;
                drop(ws);
                tokio::time::sleep_until(tokio::time::Instant::from_std(back_at)).await;
                let back = Instant::now();
                let wanted = committed.load(Relaxed) as usize;
                // As a client would: resume with `since`, and again from any gap's
                // `resume_from` (on a new connection, leaving the old one unread).
                let resubscribe = |since: u64| {
                    let url = url.clone();
                    async move {
                        let mut ws = client::connect(&url, n).await.map_err(|e| e.to_string())?;
                        let msg = format!(
                            r#"{{"type":"subscribe","id":"b","table":"bench_resume","since":{since}}}"#
                        );
                        ws.send(Message::text(msg))
                            .await
                            .map_err(|e| e.to_string())?;
                        Ok::<_, String>(ws)
                    }
                };
                let mut ws = resubscribe(me.last_position).await?;
                let mut caught_up = None;
                let mut gaps = 0;
                let mut reconnects = 0;
                let mut complete = None;
                let mut missing = me.seen[..wanted].iter().filter(|n| **n == 0).count();
                let mut last_at = Instant::now();
                loop {
                    if caught_up.is_none() && missing == 0 {
                        caught_up = Some(back.elapsed().as_secs_f64());
                    }
                    if done.load(Relaxed) && me.distinct == committed.load(Relaxed) as usize {
                        break;
                    }
                    let next = tokio::time::timeout(Duration::from_millis(1000), ws.next()).await;
                    if matches!(next, Ok(Some(Ok(Message::Text(_))))) {
                        last_at = Instant::now();
                    }
                    match next {
                        Ok(Some(Ok(Message::Text(t)))) => match me.take(&t) {
                            Some(Some(id)) if id < wanted => missing -= 1,
                            Some(_) => {}
                            None if t.contains(r#""type":"gap""#) => {
                                gaps += 1;
                                if let Some(from) = client::number_after(&t, "\"resume_from\":") {
                                    ws = resubscribe(from).await?;
                                }
                            }
                            None => {
                                complete.get_or_insert(t.contains(r#""resume":"complete""#));
                            }
                        },
                        Ok(Some(Ok(_))) => {}
                        // Still catching up after the writer stopped: a row is counted lost
                        // only once the stream has said nothing for a long while.
                        Err(_) if done.load(Relaxed) && last_at.elapsed() > RESUME_SILENCE => {
                            break
                        }
                        Err(_) => {}
                        // Closed by the server (a slow client, a write that timed out): as a
                        // client would, it comes back from the last position it has.
                        Ok(_) => {
                            reconnects += 1;
                            ws = resubscribe(me.last_position).await?;
                        }
                    }
                }
                // `None`: it never got a reply (it is counted as not caught up).
                let complete = complete.unwrap_or(true);
                let total = committed.load(Relaxed) as usize;
                let lost = me.seen[..total].iter().filter(|n| **n == 0).count();
                let twice = me.seen.iter().filter(|n| **n > 1).count();
                Ok((caught_up, lost, twice, gaps, reconnects, complete))
            })
        })
        .collect();

    let insert = db
        .prepare("INSERT INTO bench_resume VALUES ($1, $2, 'resume')")
        .await
        .unwrap();
    let interval = Duration::from_secs_f64(1.0 / rate);
    let mut next = tokio::time::Instant::now();
    for id in 0..events as i64 {
        tokio::time::sleep_until(next).await;
        next += interval;
        db.execute(&insert, &[&id, &client::now_us()])
            .await
            .unwrap();
        committed.fetch_add(1, Relaxed);
    }
    let writer_done = start.elapsed().as_secs_f64();
    done.store(true, Relaxed);

    let (mut catch_up, mut lost, mut twice, mut gaps, mut reconnects, mut incomplete, mut errors) =
        (Vec::new(), 0, 0, 0, 0, 0, Vec::new());
    for t in dropper_tasks {
        match t.await.unwrap() {
            Ok((c, l, d, g, r, complete)) => {
                catch_up.extend(c);
                lost += l;
                twice += d;
                gaps += g;
                reconnects += r;
                incomplete += !complete as usize;
            }
            Err(e) => errors.push(e),
        }
    }
    let caught_all = catch_up.iter().cloned().fold(0.0, f64::max);
    let window = (back_at - start).as_secs_f64();
    let mut during = Vec::new();
    let mut outside = Vec::new();
    for t in steady_tasks {
        for (at, ms) in t.await.unwrap() {
            if at >= window && at <= window + caught_all {
                during.push(ms);
            } else if at < (drop_at - start).as_secs_f64() {
                outside.push(ms);
            }
        }
    }
    json!({
        "scenario": "resume", "clients": clients, "steady": steady, "rate_per_s": rate,
        "away_s": away, "events": events, "writer_seconds": writer_done,
        "resumed": catch_up.len(), "not_caught_up": clients - catch_up.len() - errors.len(),
        "errors": errors.len(), "first_error": errors.first(),
        "catch_up_s": percentiles(catch_up), "rows_lost": lost, "rows_twice": twice, "gaps": gaps,
        "closed_by_server": reconnects,
        "partial_resumes": incomplete,
        "steady_latency_ms_during_catch_up": percentiles(during),
        "steady_latency_ms_before_drop": percentiles(outside),
    })
}

/// N: one client reads a `--rows` table with `snapshot: true` while `--steady` clients receive
/// `--rate` changes/s of another table: rows/s delivered, and the steady clients' latency during
/// the snapshot against the same load just before it.
pub async fn snapshot(args: &Args) -> Value {
    let rows = args.num("rows", 1_000_000.0) as i64;
    let steady = args.num("steady", 100.0) as usize;
    let rate = args.num("rate", 1000.0);
    let baseline = args.num("baseline", 10.0);
    let db = database(args).await;
    db.batch_execute(&format!(
        "DROP TABLE IF EXISTS bench_snapshot;
         CREATE TABLE bench_snapshot (id bigint PRIMARY KEY, kind text, score int, note text);
         INSERT INTO bench_snapshot
           SELECT g, 'kind' || g % 7, g % 1000, repeat('x', 40) FROM generate_series(1, {rows}) g;
         SELECT realtime_watch('bench_snapshot');"
    ))
    .await
    .unwrap();
    // Not in the batch above: VACUUM cannot run inside its implicit transaction.
    db.batch_execute("VACUUM ANALYZE bench_snapshot")
        .await
        .unwrap();
    client::setup_table(&db, client::Target::Realtime, "bench_live").await;
    let url = url(args);
    let steadies = match subscribers(&url, steady, "bench_live").await {
        Ok(s) => s,
        Err(e) => return failed("snapshot", args, e),
    };
    let done = Arc::new(AtomicBool::new(false));
    let start = Instant::now();
    let steady_tasks = steady_latencies(steadies, start, &done);
    let writer = {
        let done = done.clone();
        let db = database(args).await;
        tokio::spawn(async move {
            let insert = db
                .prepare("INSERT INTO bench_live VALUES ($1, $2, 'live')")
                .await
                .unwrap();
            let interval = Duration::from_secs_f64(1.0 / rate);
            let mut next = tokio::time::Instant::now();
            let mut id = 0i64;
            while !done.load(Relaxed) {
                tokio::time::sleep_until(next).await;
                next += interval;
                db.execute(&insert, &[&id, &client::now_us()])
                    .await
                    .unwrap();
                id += 1;
            }
        })
    };
    tokio::time::sleep(Duration::from_secs_f64(baseline)).await;

    let snapshot_started = start.elapsed().as_secs_f64();
    let read = async {
        let mut ws = client::connect(&url, steady + 1)
            .await
            .map_err(|e| e.to_string())?;
        ws.send(Message::text(
            r#"{"type":"subscribe","id":"s","table":"bench_snapshot","snapshot":true}"#,
        ))
        .await
        .map_err(|e| e.to_string())?;
        let mut received = 0u64;
        let mut bytes = 0u64;
        loop {
            match ws.next().await {
                Some(Ok(Message::Text(t))) if t.starts_with(r#"{"type":"snapshot","#) => {
                    bytes += t.len() as u64;
                    // Rows are objects in the page's array: count their opening braces.
                    received += t.matches("{\"id\":").count() as u64;
                }
                Some(Ok(Message::Text(t))) if t.contains(r#""type":"snapshot_end""#) => {
                    let told = client::number_after::<u64>(&t, "\"rows\":").unwrap_or(0);
                    return Ok::<_, String>((received, told, bytes));
                }
                Some(Ok(Message::Text(t))) if t.contains(r#""type":"error""#) => {
                    return Err(t.to_string())
                }
                Some(Ok(_)) => {}
                other => return Err(format!("snapshot connection ended: {other:?}")),
            }
        }
    };
    let result = read.await;
    let snapshot_ended = start.elapsed().as_secs_f64();
    tokio::time::sleep(Duration::from_secs(2)).await;
    done.store(true, Relaxed);
    writer.await.unwrap();
    let (received, told, bytes) = match result {
        Ok(r) => r,
        Err(e) => return failed("snapshot", args, e),
    };
    let (mut before, mut during) = (Vec::new(), Vec::new());
    for t in steady_tasks {
        for (at, ms) in t.await.unwrap() {
            if at >= 1.0 && at < snapshot_started {
                before.push(ms);
            } else if at >= snapshot_started && at <= snapshot_ended {
                during.push(ms);
            }
        }
    }
    let seconds = snapshot_ended - snapshot_started;
    json!({
        "scenario": "snapshot", "rows": rows, "steady": steady, "rate_per_s": rate,
        "rows_received": received, "rows_reported": told, "snapshot_seconds": seconds,
        "rows_per_s": received as f64 / seconds, "mib_per_s": bytes as f64 / seconds / 1048576.0,
        "steady_latency_ms_before": percentiles(before),
        "steady_latency_ms_during": percentiles(during),
    })
}

/// Client broadcast: `clients` subscribers of one channel (realtime.public_topics on), one
/// sender broadcasting `rate` a second for `seconds` (realtime.broadcast_rate must allow it),
/// each payload its send time: delivered messages/s and send->receive latency.
pub async fn shout(args: &Args) -> Value {
    let clients = args.num("clients", 10_000.0) as usize;
    let seconds = args.num("seconds", 10.0);
    let rate = args.num("rate", 100.0);
    let url = url(args);
    let sockets = match subscribers_to(&url, clients, "bench_room", true).await {
        Ok(s) => s,
        Err(e) => return failed("shout", args, e),
    };
    let mut sender = match client::channel_subscriber(&url, clients, "bench_room").await {
        Ok(s) => s,
        Err(e) => return failed("shout", args, e.to_string()),
    };
    let stop = Arc::new(AtomicBool::new(false));
    let readers: Vec<_> = sockets
        .into_iter()
        .map(|ws| {
            let stop = stop.clone();
            tokio::spawn(read_stamped(ws, 0, move |_, _| stop.load(Relaxed)))
        })
        .collect();
    let cpu0 = client::cpu_seconds();
    let started = Instant::now();
    let mut sent = 0u64;
    let mut refused = 0u64;
    let every = Duration::from_secs_f64(1.0 / rate);
    while started.elapsed().as_secs_f64() < seconds {
        let text = format!(
            r#"{{"type":"broadcast","channel":"bench_room","event":"b","payload":{{"sent_at_us":{}}}}}"#,
            client::now_us()
        );
        if sender.send(Message::text(text)).await.is_err() {
            break;
        }
        sent += 1;
        // Refusals (rate_limited) come back to the sender; count them without waiting.
        while let Ok(Some(Ok(Message::Text(t)))) =
            tokio::time::timeout(Duration::ZERO, sender.next()).await
        {
            refused += u64::from(t.contains(r#""type":"error""#));
        }
        tokio::time::sleep_until((started + every * sent as u32).into()).await;
    }
    let write_secs = started.elapsed().as_secs_f64();
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop.store(true, Relaxed);
    let mut all = Vec::new();
    for r in readers {
        all.extend(r.await.unwrap_or_default());
    }
    let delivered = all.len() as u64;
    json!({
        "scenario": "shout", "clients": clients, "rate": rate, "broadcasts_sent": sent - refused,
        "refused": refused, "expected_messages": (sent - refused) * clients as u64,
        "delivered_messages": delivered, "delivered_per_s": delivered as f64 / write_secs,
        "latency_ms": percentiles(all),
        "client_cpu_share": (client::cpu_seconds() - cpu0) / started.elapsed().as_secs_f64() / 2.0,
    })
}

/// The members a presence frame names; their states are skipped unparsed.
#[derive(serde::Deserialize)]
struct PresenceFrame<'a> {
    #[serde(borrow, default)]
    state: HashMap<&'a str, serde::de::IgnoredAny>,
    #[serde(borrow, default)]
    joins: HashMap<&'a str, serde::de::IgnoredAny>,
    #[serde(borrow, default)]
    leaves: HashMap<&'a str, serde::de::IgnoredAny>,
}

/// Y: `clients` connections subscribe to one channel's presence; once all are subscribed each
/// tracks itself. How long until each knows that all are present. Every member learns of every
/// other, so the bytes grow with the square of the room: the client parses only the keys, and
/// reports its own CPU share so that a client-bound run shows as one.
pub async fn presence(args: &Args) -> Value {
    let clients = args.num("clients", 10_000.0) as usize;
    let limit = Duration::from_secs_f64(args.num("seconds", 120.0));
    let url = url(args);
    let mut sockets = Vec::with_capacity(clients);
    for start in (0..clients).step_by(250) {
        let batch: Vec<_> = (start..(start + 250).min(clients))
            .map(|i| {
                let url = url.clone();
                tokio::spawn(
                    async move { client::presence_subscriber(&url, i, "bench_lobby").await },
                )
            })
            .collect();
        for b in batch {
            match b.await.unwrap() {
                Ok(ws) => sockets.push(ws),
                Err(e) => return failed("presence", args, e.to_string()),
            }
        }
    }
    let cpu0 = client::cpu_seconds();
    let started = Instant::now();
    // Each reader hands its socket back with its result: a member that closed on finishing
    // would be a leave for everyone still counting.
    let readers: Vec<_> = sockets
        .into_iter()
        .enumerate()
        .map(|(i, mut ws)| {
            tokio::spawn(async move {
                let track =
                    format!(r#"{{"type":"track","channel":"bench_lobby","state":{{"n":{i}}}}}"#);
                let mut present = 0usize;
                let mut bytes = 0u64;
                if ws.send(Message::text(track)).await.is_err() {
                    return (None, ws);
                }
                while let Some(remaining) = limit.checked_sub(started.elapsed()) {
                    let t = match tokio::time::timeout(remaining, ws.next()).await {
                        Ok(Some(Ok(Message::Text(t)))) => t,
                        Ok(Some(Ok(_))) => continue,
                        _ => break,
                    };
                    bytes += t.len() as u64;
                    let Ok(f) = serde_json::from_str::<PresenceFrame>(&t) else {
                        continue;
                    };
                    // A key among both joins and leaves changed state: not a new member.
                    let changed = f.joins.keys().filter(|k| f.leaves.contains_key(*k)).count();
                    present += f.state.len() + f.joins.len() - changed;
                    present = present.saturating_sub(f.leaves.len() - changed);
                    if present >= clients {
                        return (Some((started.elapsed().as_secs_f64() * 1000.0, bytes)), ws);
                    }
                }
                (None, ws)
            })
        })
        .collect();
    let mut times = Vec::new();
    let mut bytes = 0u64;
    let mut open = Vec::with_capacity(clients);
    for r in readers {
        let (result, ws) = r.await.unwrap();
        if let Some((ms, b)) = result {
            times.push(ms);
            bytes += b;
        }
        open.push(ws);
    }
    let secs = started.elapsed().as_secs_f64();
    json!({
        "scenario": "presence", "clients": clients, "complete": times.len(),
        "full_state_ms": percentiles(times), "bytes_received": bytes,
        "client_cpu_share": (client::cpu_seconds() - cpu0) / secs / 2.0,
    })
}
