//! Hostile and broken input gets a clear error and changes nothing else: the worker stays up,
//! and a well-behaved client subscribed throughout misses nothing.
mod common;
use common::{Cluster, Ws};
use serde_json::json;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};
use tungstenite::Message;

fn error_of(ws: &mut Ws, msg: &str) -> serde_json::Value {
    ws.send_text(msg);
    let m = ws.recv();
    assert_eq!(m["type"], "error", "{msg} -> {m}");
    assert!(m["message"].as_str().is_some_and(|s| !s.is_empty()));
    m
}

fn raw(cluster: &Cluster, bytes: &[u8]) -> String {
    let mut s = TcpStream::connect(("127.0.0.1", cluster.ws_port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let _ = s.write_all(bytes); // the server may answer and close before reading it all
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    out
}

fn sub(table: &str, filter: &str) -> String {
    json!({"type":"subscribe","id":"x","table":table,"filter":filter}).to_string()
}

/// Messages a client may send that are refused, each with the error code it gets.
const REFUSED: &[(&str, &str, &str)] = &[
    ("malformed JSON", "{not json", "invalid_json"),
    ("not an object", "[1,2]", "invalid_message"),
    ("no type", r#"{"id":1}"#, "invalid_message"),
    ("unknown type", r#"{"type":"launch"}"#, "unknown_type"),
    (
        "subscribe without an id",
        r#"{"type":"subscribe","table":"defects"}"#,
        "invalid_message",
    ),
    (
        "an id that is an object",
        r#"{"type":"subscribe","id":{},"table":"defects"}"#,
        "invalid_message",
    ),
    (
        "an id past 2^53",
        r#"{"type":"subscribe","id":9007199254740993,"table":"defects"}"#,
        "invalid_message",
    ),
    (
        "an unknown field",
        r#"{"type":"subscribe","id":1,"table":"defects","tabel":"x"}"#,
        "invalid_message",
    ),
    (
        "NUL in a name",
        r#"{"type":"subscribe","id":1,"table":"defects\u0000x"}"#,
        "invalid_message",
    ),
    (
        "unknown table",
        r#"{"type":"subscribe","id":"x","table":"nope","filter":"id=eq.1"}"#,
        "unknown_table",
    ),
    (
        "too many name parts",
        r#"{"type":"subscribe","id":"x","table":"a.b.c.d"}"#,
        "unknown_table",
    ),
    (
        "table not watched",
        r#"{"type":"subscribe","id":"x","table":"unwatched"}"#,
        "table_not_watched",
    ),
    (
        "unknown column",
        r#"{"type":"subscribe","id":"x","table":"defects","filter":"nocol=eq.1"}"#,
        "unknown_column",
    ),
    (
        "unknown operator",
        r#"{"type":"subscribe","id":"x","table":"defects","filter":"id=like.1"}"#,
        "invalid_filter",
    ),
    (
        "filter without operator",
        r#"{"type":"subscribe","id":"x","table":"defects","filter":"id"}"#,
        "invalid_filter",
    ),
    (
        "value of the wrong type",
        r#"{"type":"subscribe","id":"x","table":"defects","filter":"id=eq.seven"}"#,
        "invalid_filter_value",
    ),
    (
        "ordering booleans",
        r#"{"type":"subscribe","id":"x","table":"defects","filter":"ok=lt.true"}"#,
        "invalid_filter",
    ),
    (
        "event not watched",
        r#"{"type":"subscribe","id":"e","table":"deletes_only","events":["INSERT"]}"#,
        "invalid_events",
    ),
    (
        "unknown event",
        r#"{"type":"subscribe","id":"e","table":"defects","events":["UPSERT"]}"#,
        "invalid_events",
    ),
    (
        "no events",
        r#"{"type":"subscribe","id":"e","table":"defects","events":[]}"#,
        "invalid_events",
    ),
    (
        "limit without snapshot",
        r#"{"type":"subscribe","id":"l","table":"defects","limit":5}"#,
        "invalid_snapshot",
    ),
    (
        "snapshot with since",
        r#"{"type":"subscribe","id":"l","table":"defects","snapshot":true,"since":1}"#,
        "invalid_snapshot",
    ),
    (
        "unknown order column",
        r#"{"type":"subscribe","id":"l","table":"defects","snapshot":true,"order":"id.sideways"}"#,
        "invalid_snapshot",
    ),
    (
        "a malformed snapshot token",
        r#"{"type":"subscribe","id":"l","table":"defects","after_snapshot":"x"}"#,
        "invalid_snapshot",
    ),
    (
        "unsubscribe unknown",
        r#"{"type":"unsubscribe","id":"never"}"#,
        "unknown_subscription",
    ),
    (
        "a bad token",
        r#"{"type":"auth","token":"not.a.jwt"}"#,
        "unauthorized",
    ),
];

#[test]
fn bad_input_is_refused_and_nothing_else_changes() {
    let cluster = Cluster::start(
        "bad_input",
        &[
            "realtime.max_message_size = 2048",
            "realtime.handshake_timeout = 500",
            "realtime.max_connections = 20",
        ],
    );
    let mut db = cluster.client();
    db.batch_execute(
        "CREATE TABLE witness (id int); SELECT realtime_watch('witness');
         CREATE TABLE defects (id int, kind text, ok bool); SELECT realtime_watch('defects');
         CREATE TABLE deletes_only (id int); SELECT realtime_watch('deletes_only', ARRAY['DELETE']);
         CREATE TABLE unwatched (id int);",
    )
    .unwrap();
    let pid = cluster.worker_pid();
    let mut witness = cluster.ws();
    witness.subscribe("w", "witness", None);
    let mut written = 0;
    let mut write = |db: &mut postgres::Client| {
        written += 1;
        db.execute("INSERT INTO witness VALUES ($1)", &[&written])
            .unwrap();
    };

    // Protocol errors keep the connection open and usable: every case is sent on one
    // connection, and every case that does not get its code is reported.
    let mut ws = cluster.ws();
    let mut failures = Vec::new();
    for (case, message, code) in REFUSED {
        ws.send_text(message);
        let m = ws.recv();
        let described = m["message"].as_str().is_some_and(|s| !s.is_empty());
        if m["type"] != "error" || m["code"] != *code || !described {
            failures.push(format!("{case}: {message} -> {m} (expected {code})"));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    let not_watched = error_of(&mut ws, &sub("unwatched", "id=eq.1"));
    assert!(
        not_watched["message"]
            .as_str()
            .unwrap()
            .contains("realtime_watch"),
        "the hint names the fix: {not_watched}"
    );
    ws.socket.send(Message::binary(vec![1, 2, 3])).unwrap();
    assert_eq!(ws.recv()["code"], "binary_not_supported");
    ws.subscribe("ok", "defects", Some("kind=eq.scratch"));
    assert_eq!(
        error_of(
            &mut ws,
            &json!({"type":"subscribe","id":"ok","table":"defects"}).to_string()
        )["code"],
        "duplicate_subscription"
    );
    write(&mut db);
    db.batch_execute("INSERT INTO defects VALUES (1, 'dent', true), (2, 'scratch', false)")
        .unwrap();
    let c = ws.changes(1);
    assert_eq!(
        c[0]["new"]["id"], 2,
        "the surviving subscription still works and filters"
    );
    ws.send(json!({"type":"unsubscribe","id":"ok"}));
    assert_eq!(ws.recv()["type"], "unsubscribed");
    db.batch_execute("INSERT INTO defects VALUES (3, 'scratch', true)")
        .unwrap();
    assert!(
        ws.recv_within(Duration::from_millis(300)).is_none(),
        "no events after unsubscribe"
    );
    ws.send(json!({"type":"ping","ref":7}));
    let pong = ws.recv();
    assert_eq!(
        (pong["type"].as_str(), pong["ref"].as_i64()),
        (Some("pong"), Some(7))
    );
    assert!(pong["position"].as_u64().unwrap() > 0);

    // An oversized message closes that connection with 1009 and a reason.
    let mut big = cluster.ws();
    big.send_text(&"x".repeat(4096));
    let closed = loop {
        match big.socket.read() {
            Ok(Message::Close(Some(frame))) => break frame,
            Ok(_) => continue,
            Err(e) => panic!("expected a close frame, got {e}"),
        }
    };
    assert_eq!(u16::from(closed.code), 1009);
    assert!(closed.reason.contains("max_message_size"));
    assert_eq!(
        cluster.stat("disconnects_total{reason=\"protocol_violation\"}"),
        1
    );
    // A socket that ends without the closing handshake (a tab closed, a network gone) is the
    // client's doing, not a violation.
    let gone = || cluster.stat("disconnects_total{reason=\"client\"}");
    let before = gone();
    drop(cluster.ws());
    common::wait_until("the dropped socket to be counted", common::PATIENCE, || {
        gone() > before
    });
    assert_eq!(
        cluster.stat("disconnects_total{reason=\"protocol_violation\"}"),
        1
    );
    write(&mut db);

    // HTTP that is not a WebSocket handshake.
    let (status, body) = cluster.http_get("/realtime");
    assert_eq!(status, 426);
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&body).unwrap()["error"],
        "upgrade_required"
    );
    assert_eq!(cluster.http_get("/nowhere").0, 404);
    let (status, body) = cluster.http_get("/health");
    assert_eq!(status, 200);
    let health: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(health["status"], "ok");
    assert!(raw(
        &cluster,
        b"POST /realtime HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n"
    )
    .starts_with("HTTP/1.1 405"));
    // Supabase's REST broadcast: a body of a known, bounded length, sent in time, as JSON.
    let post = |headers: &str, body: &str| {
        let request =
            format!("POST /realtime/v1/api/broadcast HTTP/1.1\r\nHost: x\r\n{headers}\r\n{body}");
        raw(&cluster, request.as_bytes())
    };
    assert!(post("", "{}").starts_with("HTTP/1.1 411"));
    let huge = format!("Content-Length: {}\r\n", 100 * 1024 * 1024);
    assert!(post(&huge, "").starts_with("HTTP/1.1 413"));
    let binary = "Content-Length: 2\r\nContent-Type: application/octet-stream\r\n";
    assert!(post(binary, "{}").starts_with("HTTP/1.1 415"));
    assert!(post("Content-Length: 9\r\n", "not json!").starts_with("HTTP/1.1 400"));
    let started = Instant::now();
    assert!(post("Content-Length: 50\r\n", "{").starts_with("HTTP/1.1 408"));
    assert!(started.elapsed() < Duration::from_secs(4));
    // The Supabase endpoint knows two serializers.
    let (status, body) = cluster.http_get_with(
        "/realtime/v1/websocket?vsn=9.9.9",
        "Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n",
    );
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("unsupported vsn"));
    assert!(raw(
        &cluster,
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03garbage\r\n\r\n"
    )
    .starts_with("HTTP/1.1 400"));
    assert!(raw(&cluster, &[b'A'; 20_000]).starts_with("HTTP/1.1 431"));
    let wrong_version = raw(
        &cluster,
        b"GET /realtime HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 8\r\n\r\n",
    );
    assert!(
        wrong_version.starts_with("HTTP/1.1 426")
            && wrong_version.contains("Sec-WebSocket-Version: 13")
    );
    write(&mut db);

    // A client that connects and never finishes its request is dropped after the timeout.
    let started = Instant::now();
    let reply = raw(&cluster, b"GET /realtime HTTP/1.1\r\nHost: x\r\n");
    assert!(reply.starts_with("HTTP/1.1 408"), "{reply}");
    assert!(started.elapsed() < Duration::from_secs(4));

    // Sockets that never finish their request do not count against realtime.max_connections.
    let silent: Vec<TcpStream> = (0..25)
        .map(|_| TcpStream::connect(("127.0.0.1", cluster.ws_port)).unwrap())
        .collect();
    std::thread::sleep(Duration::from_millis(100));
    // WebSocket clients beyond realtime.max_connections get 503; the rest keep working.
    let open = cluster.health().unwrap()["connections"].as_u64().unwrap() as usize;
    let held: Vec<Ws> = (open..20).map(|_| cluster.ws()).collect();
    match tungstenite::connect(format!("ws://127.0.0.1:{}/realtime", cluster.ws_port)) {
        Err(tungstenite::Error::Http(response)) => assert_eq!(response.status(), 503),
        other => panic!(
            "expected 503 beyond max_connections, got {:?}",
            other.map(|_| ())
        ),
    }
    drop(held);
    drop(silent);
    common::wait_until("the held connections to close", common::PATIENCE, || {
        cluster.health().unwrap()["connections"].as_u64() == Some(open as u64)
    });
    write(&mut db);

    // The witness saw every event, and the worker never restarted.
    let got = witness.change_ids(written as usize);
    assert_eq!(got, (1..=written as i64).collect::<Vec<_>>());
    assert_eq!(cluster.worker_pid(), pid);
    assert!(cluster.health().is_some());
    assert_eq!(
        db.query_one("SELECT count(*) FROM witness", &[])
            .unwrap()
            .get::<_, i64>(0),
        written as i64
    );
}

#[test]
fn heartbeats_are_sent() {
    let cluster = Cluster::start("heartbeat", &["realtime.heartbeat_interval = 1"]);
    let mut ws = cluster.ws();
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        assert!(Instant::now() < deadline, "no WebSocket ping within 5 s");
        if let Ok(Message::Ping(_)) = ws.socket.read() {
            break;
        }
    }
}
