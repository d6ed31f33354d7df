//! Commit-to-client latency: N WebSocket clients subscribe to a table; one writer commits
//! single-row transactions at a fixed rate; every client timestamps each change on receipt and
//! subtracts the change's `commit_time` (same machine, same clock).
//!
//! realtime_bench latency --pg "host=127.0.0.1 port=54320 user=postgres" --ws ws://127.0.0.1:8080/realtime \
//!     [--clients 10] [--events 1000] [--rate 500] [--json out.json]

use futures_util::{SinkExt, StreamExt};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};
use tokio::net::TcpSocket;
use tokio_tungstenite::tungstenite::Message;

struct Args {
    pg: String,
    ws: String,
    clients: usize,
    events: usize,
    rate: f64,
    json: Option<String>,
}

fn parse_args() -> Args {
    let mut a = Args {
        pg: "host=127.0.0.1 port=54320 user=postgres dbname=postgres".into(),
        ws: "ws://127.0.0.1:8080/realtime".into(),
        clients: 10,
        events: 1000,
        rate: 500.0,
        json: None,
    };
    let argv: Vec<String> = std::env::args().skip(1).collect();
    let mut i = usize::from(argv.first().map(String::as_str) == Some("latency"));
    while i < argv.len() {
        let v = argv.get(i + 1).cloned().unwrap_or_else(|| panic!("{} needs a value", argv[i]));
        match argv[i].as_str() {
            "--pg" => a.pg = v,
            "--ws" => a.ws = v,
            "--clients" => a.clients = v.parse().expect("--clients"),
            "--events" => a.events = v.parse().expect("--events"),
            "--rate" => a.rate = v.parse().expect("--rate"),
            "--json" => a.json = Some(v),
            other => panic!("unknown argument {other}"),
        }
        i += 2;
    }
    a
}

/// Connect from 127.0.0.{2..} in turn so that many clients do not exhaust one address's ports.
async fn connect(url: &str, n: usize) -> tokio_tungstenite::WebSocketStream<tokio::net::TcpStream> {
    let hostport = url.trim_start_matches("ws://").split('/').next().unwrap();
    let server: SocketAddr = tokio::net::lookup_host(hostport).await.unwrap().next().unwrap();
    let socket = TcpSocket::new_v4().unwrap();
    if server.ip().is_loopback() {
        let source = Ipv4Addr::new(127, 0, ((n / 250) % 250) as u8, (n % 250) as u8 + 2);
        socket.bind(SocketAddr::new(IpAddr::V4(source), 0)).unwrap();
    }
    let stream = socket.connect(server).await.expect("connect to realtime_ext");
    stream.set_nodelay(true).unwrap();
    let (ws, _) = tokio_tungstenite::client_async(url, stream).await.expect("websocket handshake");
    ws
}

fn cpu_seconds() -> f64 {
    let mut u: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut u) };
    let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    tv(u.ru_utime) + tv(u.ru_stime)
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

#[tokio::main(worker_threads = 2)]
async fn main() {
    let args = parse_args();
    let (db, conn) = tokio_postgres::connect(&args.pg, tokio_postgres::NoTls).await.expect("connect to PostgreSQL");
    tokio::spawn(conn);
    db.batch_execute(
        "DROP TABLE IF EXISTS bench_latency; CREATE TABLE bench_latency (id bigint PRIMARY KEY, payload text);
         SELECT realtime_watch('bench_latency');",
    )
    .await
    .unwrap();

    let (ready_tx, mut ready_rx) = tokio::sync::mpsc::channel::<()>(args.clients);
    let mut readers = Vec::new();
    for n in 0..args.clients {
        let (url, events, ready) = (args.ws.clone(), args.events, ready_tx.clone());
        readers.push(tokio::spawn(async move {
            let mut ws = connect(&url, n).await;
            ws.send(Message::text(r#"{"type":"subscribe","id":"b","table":"bench_latency"}"#)).await.unwrap();
            let _ack = ws.next().await.unwrap().unwrap();
            ready.send(()).await.unwrap();
            let mut latencies = Vec::with_capacity(events);
            while latencies.len() < events {
                match tokio::time::timeout(Duration::from_secs(30), ws.next()).await {
                    Ok(Some(Ok(Message::Text(t)))) => {
                        let received = chrono::Utc::now();
                        let v: serde_json::Value = serde_json::from_str(&t).unwrap();
                        if v["type"] != "change" {
                            continue;
                        }
                        let committed = chrono::DateTime::parse_from_rfc3339(v["commit_time"].as_str().unwrap()).unwrap();
                        latencies.push((received - committed.with_timezone(&chrono::Utc)).num_microseconds().unwrap() as f64 / 1000.0);
                    }
                    Ok(Some(Ok(_))) => {}
                    _ => break,
                }
            }
            latencies
        }));
    }
    for _ in 0..args.clients {
        ready_rx.recv().await.unwrap();
    }

    let cpu_before = cpu_seconds();
    let started = Instant::now();
    let insert = db.prepare("INSERT INTO bench_latency VALUES ($1, 'x')").await.unwrap();
    let interval = Duration::from_secs_f64(1.0 / args.rate);
    let mut next = tokio::time::Instant::now();
    for id in 0..args.events as i64 {
        tokio::time::sleep_until(next).await;
        next += interval;
        db.execute(&insert, &[&id]).await.unwrap();
    }
    let mut all = Vec::new();
    let mut complete = 0;
    for r in readers {
        let l = r.await.unwrap();
        complete += usize::from(l.len() == args.events);
        all.extend(l);
    }
    let wall = started.elapsed().as_secs_f64();
    let cpu_share = (cpu_seconds() - cpu_before) / wall / 2.0;
    all.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let result = serde_json::json!({
        "scenario": "latency",
        "clients": args.clients,
        "events": args.events,
        "rate_per_s": args.rate,
        "clients_complete": complete,
        "samples": all.len(),
        "latency_ms": {
            "p50": percentile(&all, 0.50), "p95": percentile(&all, 0.95),
            "p99": percentile(&all, 0.99), "max": all.last().copied().unwrap_or(f64::NAN),
        },
        "load_generator_cpu_share_of_machine": cpu_share,
    });
    println!(
        "clients={} events={} rate={}/s complete={}/{}  commit->client latency ms: p50={:.3} p95={:.3} p99={:.3} max={:.3}  (load generator used {:.0}% of the 2 cores)",
        args.clients, args.events, args.rate, complete, args.clients,
        percentile(&all, 0.5), percentile(&all, 0.95), percentile(&all, 0.99), all.last().copied().unwrap_or(f64::NAN), cpu_share * 100.0
    );
    if let Some(path) = args.json {
        std::fs::write(path, serde_json::to_string_pretty(&result).unwrap()).unwrap();
    }
    db.batch_execute("DROP TABLE bench_latency").await.unwrap();
}
