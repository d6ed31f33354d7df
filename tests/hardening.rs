//! What a hostile client can do with one connection is bounded: memory, worker time, list and
//! subscription counts, half-open sockets, and sockets that stop reading. Malformed frames and
//! requests get the answer the protocol specifies.
mod common;
use common::{Cluster, Ws};
use serde_json::json;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};
use tungstenite::Message;

/// The tests that push hundreds of megabytes through a worker run one at a time: on two cores,
/// two of them at once measure the machine, not the server.
static HEAVY: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn heavy() -> std::sync::MutexGuard<'static, ()> {
    HEAVY.lock().unwrap_or_else(|e| e.into_inner())
}

fn code_of(ws: &mut Ws, msg: serde_json::Value) -> String {
    ws.send(msg);
    let m = ws.recv();
    assert_eq!(m["type"], "error", "{m}");
    m["code"].as_str().unwrap().to_string()
}

#[test]
fn filter_values_and_lists_are_bounded() {
    let cluster = Cluster::start("bounds", &["realtime.max_subscriptions = 5"]);
    let mut db = cluster.client();
    db.batch_execute(
        "CREATE TABLE m (id int, n numeric, t text); SELECT realtime_watch('m');
         CREATE DOMAIN slow_int AS int CHECK (pg_sleep(10) IS NOT NULL);
         CREATE TABLE sleepy (id int, s slow_int); SELECT realtime_watch('sleepy');",
    )
    .unwrap();
    let rss_before = cluster.worker_rss_kib();
    let mut ws = cluster.ws();
    let sub = |filter: &str| json!({"type":"subscribe","id":"x","table":"m","filter":filter});
    // A number whose text would be 128 KiB once rendered.
    let huge = format!("n=in.({})", vec!["1e131071"; 100].join(","));
    assert_eq!(code_of(&mut ws, sub(&huge)), "invalid_filter_value");
    assert_eq!(code_of(&mut ws, sub("n=gt.1e1001")), "invalid_filter_value");
    assert_eq!(
        code_of(&mut ws, sub(&format!("n=eq.{}", "9".repeat(1001)))),
        "invalid_filter_value"
    );
    ws.subscribe("ok", "m", Some("n=gt.1e1000"));
    let long_list = format!("n=in.({})", vec!["1"; 101].join(","));
    assert_eq!(code_of(&mut ws, sub(&long_list)), "invalid_filter");
    // Twelve lists of the longest kind cost the worker little.
    for i in 0..12 {
        let list = format!(
            "t=in.({})",
            (0..100)
                .map(|j| format!("v{i}_{j}"))
                .collect::<Vec<_>>()
                .join(",")
        );
        let reply = ws.try_subscribe(&format!("l{i}"), "m", Some(&list));
        let expected = if i < 4 { "subscribed" } else { "error" };
        assert_eq!(reply["type"], expected, "{reply}");
    }
    assert_eq!(
        code_of(&mut ws, json!({"type":"subscribe","id":"more","table":"m"})),
        "too_many_subscriptions"
    );
    assert!(
        cluster.worker_rss_kib() < rss_before + 20 * 1024,
        "worker grew from {rss_before} KiB to {} KiB",
        cluster.worker_rss_kib()
    );
    // A domain CHECK that sleeps is cut off; meanwhile another client's changes flow.
    let mut other = cluster.ws();
    other.subscribe("m", "m", None);
    let mut slow = cluster.ws();
    slow.send(json!({"type":"subscribe","id":"s","table":"sleepy","filter":"s=eq.1"}));
    std::thread::sleep(Duration::from_millis(50));
    db.batch_execute("INSERT INTO m (id) VALUES (1)").unwrap();
    assert_eq!(other.change_ids(1), vec![1]);
    let reply = slow.recv();
    assert_eq!(reply["code"], "invalid_filter_value", "{reply}");
    assert!(
        reply["message"]
            .as_str()
            .unwrap()
            .contains("statement timeout"),
        "{reply}"
    );
    // A message past realtime.max_message_size closes with 1009 and a reason, not EOF.
    let mut big = cluster.ws();
    big.send(sub(&format!("n=in.({})", vec!["1"; 100_000].join(","))));
    let (code, reason) = big.close_frame();
    assert_eq!(code, 1009, "{reason}");
}

#[test]
fn protocol_edges_get_the_specified_answers() {
    let cluster = Cluster::start("protocol_edges", &[]);
    let mut db = cluster.client();
    db.batch_execute("CREATE TABLE pulse (id int); SELECT realtime_watch('pulse')")
        .unwrap();
    let mut ws = cluster.ws();
    // NUL would cut the name at "pulse" in PostgreSQL.
    assert_eq!(
        code_of(
            &mut ws,
            json!({"type":"subscribe","id":"n","table":"pulse\u{0}"})
        ),
        "invalid_message"
    );
    // System catalogs look like missing tables, not like unwatched ones.
    for t in [
        "pg_authid",
        "pg_catalog.pg_class",
        "information_schema.tables",
    ] {
        assert_eq!(
            code_of(&mut ws, json!({"type":"subscribe","id":"c","table":t})),
            "unknown_table",
            "{t}"
        );
    }
    // Numeric ids compare by value.
    ws.send_text(r#"{"type":"subscribe","id":1,"table":"pulse"}"#);
    assert_eq!(ws.recv()["type"], "subscribed");
    assert_eq!(
        code_of(
            &mut ws,
            serde_json::from_str(r#"{"type":"subscribe","id":1.0,"table":"pulse"}"#).unwrap()
        ),
        "duplicate_subscription"
    );
    ws.send_text(r#"{"type":"unsubscribe","id":1e0}"#);
    assert_eq!(ws.recv()["type"], "unsubscribed");
    // SQL names: quoted, schema-qualified, case-folded.
    db.batch_execute(
        r#"CREATE SCHEMA "My Schema"; CREATE TABLE "My Schema"."Défauts ""x""" (id int);
           SELECT realtime_watch('"My Schema"."Défauts ""x"""');
           CREATE TABLE "CamelCase" (id int); SELECT realtime_watch('"CamelCase"');"#,
    )
    .unwrap();
    let ack = ws.subscribe("q", r#""My Schema"."Défauts ""x""""#, None);
    assert_eq!(
        (ack["schema"].as_str(), ack["table"].as_str()),
        (Some("My Schema"), Some("Défauts \"x\""))
    );
    ws.subscribe("c", r#""CamelCase""#, None);
    assert_eq!(
        code_of(
            &mut ws,
            json!({"type":"subscribe","id":"f","table":"CamelCase"})
        ),
        "unknown_table"
    );

    // A text frame that is not UTF-8 closes with 1007.
    let mut s = TcpStream::connect(("127.0.0.1", cluster.ws_port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(b"GET /realtime HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n").unwrap();
    let mut head = [0u8; 1024];
    let n = s.read(&mut head).unwrap();
    assert!(head[..n].starts_with(b"HTTP/1.1 101"));
    // FIN + text, masked, 2 bytes: 0xff 0xfe (mask of zeros).
    s.write_all(&[0x81, 0x82, 0, 0, 0, 0, 0xff, 0xfe]).unwrap();
    let mut frame = [0u8; 64];
    let n = s.read(&mut frame).unwrap();
    assert_eq!(frame[0], 0x88, "a close frame: {:?}", &frame[..n]);
    assert_eq!(u16::from_be_bytes([frame[2], frame[3]]), 1007);
}

#[test]
fn http_edges_get_the_specified_answers() {
    let cluster = Cluster::start("http_edges", &[]);
    let line = format!("GET /{} HTTP/1.1\r\n\r\n", "a".repeat(1 << 20));
    assert!(cluster.raw(line.as_bytes()).starts_with("HTTP/1.1 431"));
    let mut many = String::from("GET /health HTTP/1.1\r\n");
    for i in 0..65 {
        many.push_str(&format!("X-H{i}: v\r\n"));
    }
    many.push_str("\r\n");
    assert!(cluster.raw(many.as_bytes()).starts_with("HTTP/1.1 431"));
    let head = cluster.raw(b"HEAD /health HTTP/1.1\r\nHost: x\r\n\r\n");
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(head.ends_with("\r\n\r\n"), "HEAD has no body: {head}");
    for key in [
        "short",
        "dGhlIHNhbXBsZSBub25jZQ=",
        "dGhlIHNhbXBsZSBub25jZR==",
    ] {
        let reply = cluster.raw(format!("GET /realtime HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n").as_bytes(),
        );
        assert!(reply.starts_with("HTTP/1.1 400"), "{key}: {reply}");
    }
}

/// A TCP connection to the server from `source`, with a receive buffer of `recv_buffer`.
fn tcp_from(source: &str, port: u16, recv_buffer: Option<usize>) -> TcpStream {
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    if let Some(size) = recv_buffer {
        socket.set_recv_buffer_size(size).unwrap();
    }
    let addr = |a: String| socket2::SockAddr::from(a.parse::<SocketAddr>().unwrap());
    socket.bind(&addr(format!("{source}:0"))).unwrap();
    socket.connect(&addr(format!("127.0.0.1:{port}"))).unwrap();
    socket.into()
}

/// A WebSocket connection from a chosen loopback source address.
fn ws_from(source: &str, port: u16) -> Result<Ws, String> {
    ws_with(source, port, None)
}

/// The same with a receive buffer of `recv_buffer`.
fn ws_with(source: &str, port: u16, recv_buffer: Option<usize>) -> Result<Ws, String> {
    let stream = tcp_from(source, port, recv_buffer);
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    match tungstenite::client(format!("ws://127.0.0.1:{port}/realtime"), stream) {
        Ok((socket, _)) => Ok(Ws::over(tungstenite::WebSocket::from_raw_socket(
            tungstenite::stream::MaybeTlsStream::Plain(socket.into_inner()),
            tungstenite::protocol::Role::Client,
            None,
        ))),
        Err(e) => Err(e.to_string()),
    }
}

#[test]
fn silent_sockets_from_one_address_do_not_lock_out_others() {
    let cluster = Cluster::start(
        "handshake_flood",
        &[
            "realtime.max_connections = 50",
            "realtime.max_handshakes = 100",
        ],
    );
    let mut db = cluster.client();
    db.batch_execute("CREATE TABLE f (id int); SELECT realtime_watch('f')")
        .unwrap();
    // Three times more silent sockets than may wait: the oldest are dropped to make room.
    let silent = cluster.silent_sockets(300);
    let mut closed = 0;
    common::wait_until("silent sockets to be dropped", common::PATIENCE, || {
        closed = common::closed_by_server(&silent);
        closed >= 200
    });
    assert_eq!(closed, 200, "the 200 oldest silent sockets were dropped");
    // Another address is served, and so is a new client from the flooding one.
    let mut other = ws_from("127.0.0.2", cluster.ws_port).expect("a client from another address");
    other.subscribe("f", "f", None);
    let mut same = cluster.ws();
    same.subscribe("f", "f", None);
    db.batch_execute("INSERT INTO f VALUES (1)").unwrap();
    assert_eq!(other.change_ids(1), vec![1]);
    assert_eq!(same.change_ids(1), vec![1]);
    // Silent sockets never counted as connections.
    assert_eq!(cluster.health().unwrap()["connections"], 2);
    drop(silent);
}

#[test]
fn one_address_cannot_take_every_anonymous_connection() {
    let cluster = Cluster::start(
        "anonymous_per_address",
        &[
            "realtime.max_connections_per_role = 5",
            "realtime.max_anonymous_per_address = 3",
        ],
    );
    let mut first: Vec<Ws> = (0..3)
        .map(|_| ws_from("127.0.0.1", cluster.ws_port).expect("within the address's bound"))
        .collect();
    let refused = ws_from("127.0.0.1", cluster.ws_port)
        .err()
        .expect("a fourth is refused");
    assert!(refused.contains("429"), "{refused}");
    // Another address still gets in, up to the role's own bound.
    let second: Vec<Ws> = (0..2)
        .map(|_| ws_from("127.0.0.2", cluster.ws_port).expect("another address"))
        .collect();
    let refused = ws_from("127.0.0.3", cluster.ws_port)
        .err()
        .expect("the role is full");
    assert!(refused.contains("429"), "{refused}");
    // A connection with a token is not anonymous, whatever its address.
    let mut db = cluster.client();
    db.batch_execute("CREATE ROLE alice NOLOGIN; GRANT alice TO realtime_authenticator")
        .unwrap();
    let token = common::token(json!({"role": "alice", "exp": common::unix_now() + 600}));
    let stream = tcp_from("127.0.0.1", cluster.ws_port, None);
    tungstenite::client(
        format!("ws://127.0.0.1:{}/realtime?token={token}", cluster.ws_port),
        stream,
    )
    .expect("a signed-in client from the full address");
    // A place given back is free again.
    first.pop();
    let deadline = Instant::now() + common::PATIENCE;
    while ws_from("127.0.0.1", cluster.ws_port).is_err() {
        assert!(
            Instant::now() < deadline,
            "the closed connection's place was not given back"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    drop(second);
}

/// Subscribe `id` to `big` with a snapshot and read it to its end: how many rows.
fn whole_snapshot(ws: &mut Ws, id: &str) -> usize {
    ws.send(json!({"type": "subscribe", "id": id, "table": "big", "snapshot": true}));
    let mut rows = 0;
    loop {
        let m = ws.recv();
        match m["type"].as_str() {
            Some("subscribed") => {}
            Some("snapshot") => rows += m["rows"].as_array().unwrap().len(),
            Some("snapshot_end") => return rows,
            _ => panic!("{id}: {m}"),
        }
    }
}

#[test]
fn clients_that_stop_reading_snapshots_cannot_hold_every_reader() {
    let _heavy = heavy();
    let cluster = Cluster::start("snapshot_hostage", &["realtime.max_snapshot_workers = 2"]);
    let mut db = cluster.client();
    db.batch_execute(
        "CREATE TABLE big (id int PRIMARY KEY, pad text);
         INSERT INTO big SELECT i, repeat('x', 200) FROM generate_series(1, 200000) i;
         SELECT realtime_watch('big');
         CREATE ROLE other NOLOGIN; GRANT other TO realtime_authenticator; GRANT SELECT ON big TO other;",
    )
    .unwrap();
    // Four anonymous clients with tiny receive buffers start snapshots and never read.
    let mut hostile: Vec<Ws> = (0..4)
        .map(|i| {
            let mut ws = ws_with("127.0.0.1", cluster.ws_port, Some(4096)).unwrap();
            ws.send(json!({"type": "subscribe", "id": format!("h{i}"), "table": "big", "snapshot": true}));
            ws
        })
        .collect();
    // The anonymous role holds at most one of the two readers: another role's snapshot runs.
    let started = Instant::now();
    let token = common::token(json!({"role": "other", "exp": common::unix_now() + 600}));
    let mut other = Ws::connect_as(cluster.ws_port, &token);
    assert_eq!(whole_snapshot(&mut other, "other"), 200_000);
    eprintln!("another role's snapshot took {:?}", started.elapsed());
    // An anonymous one waits for the readers of those that stopped reading to be stopped.
    let started = Instant::now();
    let mut anonymous = cluster.ws();
    anonymous.set_timeout(Duration::from_secs(90));
    assert_eq!(whole_snapshot(&mut anonymous, "anonymous"), 200_000);
    eprintln!(
        "an anonymous snapshot behind four stalled ones took {:?}",
        started.elapsed()
    );
    // Each stalled client is told why once it reads again (one that got its reader only
    // after the others were stopped may instead be reading it now, to its end).
    let mut stopped = 0;
    for (i, ws) in hostile.iter_mut().enumerate() {
        // Waiting readers are not served in order: this one may wait for each of the others
        // to be stopped (5 s each) before its own read starts.
        ws.set_timeout(Duration::from_secs(60));
        let end = loop {
            let m = ws.recv();
            if m["type"] == "error" || m["type"] == "snapshot_end" {
                break m;
            }
        };
        if end["type"] == "error" {
            assert_eq!(
                (end["code"].as_str(), end["id"].as_str()),
                (Some("snapshot_failed"), Some(format!("h{i}").as_str())),
                "{end}"
            );
            assert!(
                end["message"]
                    .as_str()
                    .unwrap()
                    .contains("did not read the snapshot"),
                "{end}"
            );
            stopped += 1;
        }
    }
    assert!(stopped >= 1, "no stalled reader was stopped");
}

#[test]
fn a_client_that_stops_reading_is_closed_after_the_heartbeat_timeout() {
    let _heavy = heavy();
    let cluster = Cluster::start("stuck_reader", &["realtime.heartbeat_interval = 1"]);
    let stuck = cluster.watched("flood", "(id int, pad text)");
    let mut db = cluster.client();
    let mut healthy = cluster.ws();
    healthy.subscribe("f", "flood", None);
    assert_eq!(cluster.health().unwrap()["connections"], 2);
    // Far more than the socket buffers hold; `stuck` never reads again.
    for batch in 0..20 {
        db.batch_execute(&format!(
            "INSERT INTO flood SELECT g, repeat('x', 10000) FROM generate_series({}, {}) g",
            batch * 100,
            batch * 100 + 99
        ))
        .unwrap();
        let got = healthy.changes(100);
        assert_eq!(got.len(), 100);
    }
    // The healthy client keeps reading (which answers the server's pings), or it too would be
    // closed for silence and the count would pass 1 on its way to 0.
    let deadline = Instant::now() + Duration::from_secs(15);
    while cluster.health().unwrap()["connections"] != 1 {
        assert!(
            Instant::now() < deadline,
            "the stuck client was never closed"
        );
        assert_eq!(healthy.recv_within(Duration::from_millis(200)), None);
    }
    healthy.send(json!({"type": "ping", "ref": 1}));
    assert_eq!(
        healthy.recv()["type"],
        "pong",
        "the healthy client is still served"
    );
    // Counted as the server's doing, whichever limit it reached first.
    let closed = |why: &str| cluster.stat(&format!("disconnects_total{{reason=\"{why}\"}}"));
    assert_eq!(
        closed("write_timeout") + closed("heartbeat_timeout"),
        1,
        "{}",
        cluster.disconnects()
    );
    drop(stuck);
}

/// A client that never reads (its socket buffers small, so it stalls soon).
fn non_reader(cluster: &Cluster, table: &str) -> TcpStream {
    let stream = tcp_from("127.0.0.1", cluster.ws_port, Some(4096));
    let (mut ws, _) = tungstenite::client(
        format!("ws://127.0.0.1:{}/realtime", cluster.ws_port),
        stream,
    )
    .unwrap();
    ws.send(Message::text(
        json!({"type":"subscribe","id":"s","table":table}).to_string(),
    ))
    .unwrap();
    loop {
        if let Message::Text(t) = ws.read().unwrap() {
            assert!(t.contains("subscribed"), "{t}");
            break;
        }
    }
    ws.into_inner()
}

#[test]
fn memory_held_for_slow_clients_is_bounded_and_returned() {
    let _heavy = heavy();
    let cluster = Cluster::start("slow_memory", &["realtime.client_memory = 32MB"]);
    let mut db = cluster.client();
    db.batch_execute("CREATE TABLE heavy (id int, pad text); SELECT realtime_watch('heavy')")
        .unwrap();
    let before = cluster.worker_rss_kib();
    let stuck = non_reader(&cluster, "heavy");
    let mut peak = before;
    // 300 rows of 1 MB, one per transaction: 300 MB through a worker allowed 32 MB for laggards.
    for i in 0..300 {
        db.execute("INSERT INTO heavy VALUES ($1, repeat('x', 1000000))", &[&i])
            .unwrap();
        if i % 20 == 0 {
            peak = peak.max(cluster.worker_rss_kib());
        }
    }
    std::thread::sleep(Duration::from_millis(500));
    peak = peak.max(cluster.worker_rss_kib());
    assert!(
        peak < before + 128 * 1024,
        "worker grew from {before} KiB to {peak} KiB with one slow client"
    );
    let backlog = |c: &Cluster| c.health().unwrap()["backlog_bytes"].as_u64().unwrap();
    assert!(backlog(&cluster) > 0, "the slow client's backlog is kept");
    // Once it goes, so does what was kept for it.
    drop(stuck);
    let deadline = Instant::now() + common::PATIENCE;
    while backlog(&cluster) > 0 {
        assert!(
            Instant::now() < deadline,
            "{} bytes still kept",
            backlog(&cluster)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn memory_returns_once_the_clients_that_needed_it_are_gone() {
    let _heavy = heavy();
    let cluster = Cluster::start("memory_return", &["realtime.max_anonymous_per_address = 0"]);
    let mut db = cluster.client();
    db.batch_execute("CREATE TABLE burst (id int, pad text); SELECT realtime_watch('burst')")
        .unwrap();
    let baseline = cluster.worker_rss_kib();
    // 2,000 subscribers that never read, and a burst of 20,000 rows of 1 kB.
    let idle: Vec<TcpStream> = (0..2000).map(|_| non_reader(&cluster, "burst")).collect();
    for chunk in 0..20i32 {
        db.execute(
            "INSERT INTO burst SELECT i, repeat('x', 1000) FROM generate_series($1 * 1000, $1 * 1000 + 999) i",
            &[&chunk],
        )
        .unwrap();
    }
    let mut peak = cluster.worker_rss_kib();
    let settled = Instant::now() + Duration::from_secs(5);
    while Instant::now() < settled {
        peak = peak.max(cluster.worker_rss_kib());
        std::thread::sleep(Duration::from_millis(200));
    }
    drop(idle);
    // Back near where it started once they are gone.
    let deadline = Instant::now() + Duration::from_secs(30);
    let bound = baseline + 64 * 1024;
    let mut now = cluster.worker_rss_kib();
    while now > bound {
        assert!(
            Instant::now() < deadline,
            "worker RSS {now} KiB, {baseline} KiB before the clients came, {peak} KiB at their peak"
        );
        std::thread::sleep(Duration::from_millis(200));
        now = cluster.worker_rss_kib();
    }
    eprintln!("worker RSS: {baseline} KiB before, {peak} KiB at the peak, {now} KiB after");
}

#[test]
fn a_client_that_keeps_up_never_pays_for_those_that_do_not() {
    let _heavy = heavy();
    // Default settings, as a deployment would have them.
    let cluster = Cluster::start("healthy_among_stuck", &[]);
    let mut db = cluster.client();
    db.batch_execute(
        "CREATE TABLE burst (id int, pad text); SELECT realtime_watch('burst');
         CREATE TABLE pulse (id int); SELECT realtime_watch('pulse');",
    )
    .unwrap();
    let stuck: Vec<TcpStream> = (0..300).map(|_| non_reader(&cluster, "burst")).collect();
    let mut healthy = cluster.ws();
    healthy.subscribe("p", "pulse", None);
    let pulses = 30;
    let burst = {
        let conninfo = cluster.conninfo("postgres");
        std::thread::spawn(move || {
            let mut db = postgres::Client::connect(&conninfo, postgres::NoTls).unwrap();
            for t in 0..60 {
                db.execute(
                    "INSERT INTO burst SELECT g, repeat('y', 500) FROM generate_series($1::int, $1::int + 1999) g",
                    &[&(t * 2000)],
                )
                .unwrap();
            }
        })
    };
    for i in 0..pulses {
        db.execute("INSERT INTO pulse VALUES ($1)", &[&i]).unwrap();
        std::thread::sleep(Duration::from_millis(100));
    }
    burst.join().unwrap();
    let got: Vec<serde_json::Value> = (0..pulses).map(|_| healthy.recv()).collect();
    for (i, m) in got.iter().enumerate() {
        assert_eq!(m["type"], "change", "the healthy client got {m}");
        assert_eq!(m["new"]["id"], i as i64);
    }
    drop(stuck);
}
