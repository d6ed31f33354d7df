//! Edge servers (`realtime-edge`) fed through a real nats-server: one PostgreSQL, one
//! nats-server and two edges on loopback. Clients of an edge receive exactly what clients of
//! the database host receive (the authorization matrix and filters, compared message for
//! message), catalog changes reach them as they reach the host's, and a client whose edge dies
//! resumes on the other with nothing lost or twice.

mod common;
#[path = "common/nats_server.rs"]
mod nats_server;

use common::{token, wait_until, Cluster, Ws, JWT_SECRET, PATIENCE, READER};
use serde_json::{json, Value};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// A `realtime-edge` process serving on a port of its own.
struct Edge {
    port: u16,
    dir: PathBuf,
    child: Option<Child>,
}

/// The binary, built with realtime-core (`cargo build -p realtime-core`; ./test.sh does).
fn binary() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target"));
    let binary = target.join("debug/realtime-edge");
    assert!(
        binary.exists(),
        "{} is missing: cargo build -p realtime-core --bin realtime-edge",
        binary.display()
    );
    binary
}

impl Edge {
    fn start(name: &str, nats: &nats_server::Server) -> Edge {
        Edge::start_with(name, nats, &[])
    }

    /// Started with these settings besides the test's own (`REALTIME_EDGE_` names).
    fn start_with(name: &str, nats: &nats_server::Server, settings: &[(&str, &str)]) -> Edge {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let dir = std::env::temp_dir().join(format!("realtime_edge_{name}_{}", std::process::id()));
        let child = Command::new(binary())
            .env("REALTIME_EDGE_NATS_URL", nats.url())
            .env("REALTIME_EDGE_LISTEN_ADDRESSES", "127.0.0.1")
            .env("REALTIME_EDGE_PORT", port.to_string())
            .env("REALTIME_EDGE_DIR", &dir)
            .env("REALTIME_EDGE_JWT_SECRET", JWT_SECRET)
            .env("REALTIME_EDGE_ANON_ROLE", READER)
            .envs(settings.iter().copied())
            .stdout(Stdio::null())
            .stderr(
                std::fs::File::create(
                    std::env::temp_dir()
                        .join(format!("realtime_edge_{name}_{}.log", std::process::id())),
                )
                .unwrap(),
            )
            .spawn()
            .unwrap();
        let edge = Edge {
            port,
            dir,
            child: Some(child),
        };
        wait_until("the edge to be ready", PATIENCE, || {
            edge.health().is_some_and(|h| h["status"] == "ok")
        });
        edge
    }

    fn get(&self, path: &str) -> Option<String> {
        let mut s = TcpStream::connect(("127.0.0.1", self.port)).ok()?;
        s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
        write!(s, "GET {path} HTTP/1.1\r\nHost: localhost\r\n\r\n").ok()?;
        let mut out = String::new();
        s.read_to_string(&mut out).ok()?;
        Some(out)
    }

    fn health(&self) -> Option<Value> {
        serde_json::from_str(self.get("/health")?.split("\r\n\r\n").nth(1)?).ok()
    }

    fn ws(&self, token: Option<&str>) -> Ws {
        match token {
            Some(t) => Ws::connect_as(self.port, t),
            None => Ws::connect(self.port),
        }
    }

    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().unwrap();
            child.wait().unwrap();
        }
    }
}

impl Drop for Edge {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// One PostgreSQL publishing to one nats-server, and two edges following it.
fn setup(name: &str) -> (nats_server::Server, Cluster, Edge, Edge) {
    let nats = nats_server::Server::start(name, "");
    let url = format!("realtime.nats_url = '{}'", nats.url());
    let cluster = Cluster::start(name, &[&url]);
    wait_until("publishing to NATS", PATIENCE, || {
        cluster.stat("nats_connected") == 1
    });
    let a = Edge::start(&format!("{name}_a"), &nats);
    let b = Edge::start(&format!("{name}_b"), &nats);
    (nats, cluster, a, b)
}

const SCHEMA: &str = "
    CREATE ROLE app_user NOLOGIN;
    CREATE ROLE app_member NOLOGIN;
    CREATE ROLE app_clerk NOLOGIN;
    GRANT app_user, app_member, app_clerk TO realtime_authenticator;
    CREATE TABLE members (line text, sub text);
    INSERT INTO members VALUES ('A', 'bob');
    CREATE TABLE defects (id bigserial PRIMARY KEY, line text, owner text, note text);
    ALTER TABLE defects REPLICA IDENTITY FULL;
    ALTER TABLE defects ENABLE ROW LEVEL SECURITY;
    GRANT SELECT ON defects, members TO app_user, app_member;
    GRANT SELECT (id, line, owner) ON defects TO app_clerk;
    CREATE POLICY everything ON defects TO realtime_reader, app_clerk USING (true);
    CREATE POLICY mine ON defects TO app_user
        USING (owner = current_setting('request.jwt.claims', true)::json->>'sub');
    CREATE POLICY member ON defects TO app_member
        USING (EXISTS (SELECT 1 FROM members m WHERE m.line = defects.line
                       AND m.sub = current_setting('request.jwt.claims', true)::json->>'sub'));
    CREATE TABLE done (id int PRIMARY KEY);
    GRANT SELECT ON done TO app_user, app_member, app_clerk;
    SELECT realtime_watch('defects');
    SELECT realtime_watch('done');
";

/// Who subscribes, and to what: every kind of row security and a filter.
fn principals() -> Vec<(&'static str, Option<String>, Option<&'static str>)> {
    vec![
        ("anonymous", None, None),
        ("anonymous, line A", None, Some("line=eq.A")),
        (
            "alice (a compiled rule)",
            Some(token(json!({"role": "app_user", "sub": "alice"}))),
            None,
        ),
        (
            "bob (judged by the worker)",
            Some(token(json!({"role": "app_member", "sub": "bob"}))),
            None,
        ),
        (
            "clerk (some columns)",
            Some(token(json!({"role": "app_clerk"}))),
            None,
        ),
    ]
}

fn subscribed(mut ws: Ws, filter: Option<&str>) -> Ws {
    ws.subscribe("d", "defects", filter);
    ws.subscribe("x", "done", None);
    ws
}

/// Every message up to the change of `done` with id `marker` (which is left out).
fn until_done(ws: &mut Ws, marker: i64) -> Vec<Value> {
    let mut before = Vec::new();
    loop {
        let m = ws.recv();
        if m["type"] == "change" && m["table"] == "done" {
            if m["new"]["id"] == marker {
                return before;
            }
            continue;
        }
        before.push(m);
    }
}

fn write_mix(db: &mut postgres::Client, round: i32) {
    db.batch_execute(&format!(
        "INSERT INTO defects (line, owner, note)
           SELECT (ARRAY['A','B'])[1 + g % 2], (ARRAY['alice','bob','carol'])[1 + g % 3], 'n' || g
           FROM generate_series(1, 30) g;
         UPDATE defects SET line = 'B' WHERE id % 7 = {r} AND line = 'A';
         UPDATE defects SET owner = 'alice', note = note || '+' WHERE id % 5 = {r};
         DELETE FROM defects WHERE id % 11 = {r};
         INSERT INTO done VALUES ({round});",
        r = round % 5
    ))
    .unwrap();
}

#[test]
fn edge_clients_receive_exactly_what_the_database_host_s_clients_receive() {
    let (_nats, cluster, a, b) = setup("edge_same");
    cluster.client().batch_execute(SCHEMA).unwrap();
    let mut clients: Vec<(String, Ws)> = Vec::new();
    for (who, token, filter) in principals() {
        let direct = match &token {
            Some(t) => Ws::connect_as(cluster.ws_port, t),
            None => cluster.ws(),
        };
        clients.push((
            format!("{who} on the database host"),
            subscribed(direct, filter),
        ));
        for (name, edge) in [("edge a", &a), ("edge b", &b)] {
            let ws = subscribed(edge.ws(token.as_deref()), filter);
            clients.push((format!("{who} on {name}"), ws));
        }
    }
    // The Supabase endpoint, served by an edge as by the host.
    let (mut supabase, _) = tungstenite::connect(format!(
        "ws://127.0.0.1:{}/realtime/v1/websocket?vsn=2.0.0",
        a.port
    ))
    .unwrap();
    let join = r#"["1","1","realtime:d","phx_join",{"config":{"postgres_changes":[{"event":"*","schema":"public","table":"defects"}]}}]"#;
    supabase.send(tungstenite::Message::text(join)).unwrap();
    let mut read_until = |what: &str| loop {
        let frame = supabase.read().unwrap();
        if frame.to_text().unwrap().contains(what) {
            return frame.to_text().unwrap().to_string();
        }
    };
    read_until("Subscribed to PostgreSQL");
    let mut db = cluster.client();
    let mut round = 1;
    let compare = |clients: &mut Vec<(String, Ws)>, round: i32, what: &str| {
        let heard: Vec<(String, Vec<Value>)> = clients
            .iter_mut()
            .map(|(who, ws)| (who.clone(), until_done(ws, round as i64)))
            .collect();
        for group in heard.chunks(3) {
            let (host, expected) = &group[0];
            for (edge, got) in &group[1..] {
                assert_eq!(got, expected, "{what}: {edge} heard otherwise than {host}");
            }
        }
        heard
    };
    write_mix(&mut db, round);
    let heard = compare(&mut clients, round, "rows, updates and deletes");
    let change = read_until("postgres_changes");
    assert!(change.contains(r#""table":"defects""#), "{change}");
    let count = |n: usize| heard[n].1.iter().filter(|m| m["type"] == "change").count();
    assert!(count(0) > count(3), "the filter keeps some out");
    assert!(
        count(6) > 0 && count(6) < count(0),
        "alice sees some: {}",
        count(6)
    );
    assert!(
        count(9) > 0 && count(9) < count(0),
        "bob sees some: {}",
        count(9)
    );
    assert!(
        heard[12].1.iter().all(|m| m["new"].get("note").is_none()),
        "the clerk never sees a note"
    );
    assert!(
        heard[9].1.iter().any(|m| m["type"] == "leave"),
        "bob sees rows leave"
    );

    // A change of membership (data: judged per change) and of policy (catalog).
    round += 1;
    db.batch_execute(
        "INSERT INTO members VALUES ('B', 'bob');
         ALTER POLICY mine ON defects USING (owner = 'carol');",
    )
    .unwrap();
    write_mix(&mut db, round);
    let heard = compare(
        &mut clients,
        round,
        "after a membership and a policy change",
    );
    assert!(heard[6]
        .1
        .iter()
        .all(|m| m["new"].get("owner").is_none_or(|o| *o == "carol")));

    // Snapshots: read on the database host for edge clients, the same rows in the same pages.
    for (n, (who, token, filter)) in principals().into_iter().enumerate() {
        let mut heard = Vec::new();
        for port in [cluster.ws_port, a.port, b.port] {
            let mut ws = match &token {
                Some(t) => Ws::connect_as(port, t),
                None => Ws::connect(port),
            };
            let mut subscribe = json!({"type": "subscribe", "id": "snap", "table": "defects",
                                       "snapshot": true, "order": "id"});
            if let Some(filter) = filter {
                subscribe["filter"] = json!(filter);
            }
            ws.send(subscribe);
            let mut pages = Vec::new();
            loop {
                let mut m = ws.recv();
                match m["type"].as_str() {
                    Some("snapshot") => pages.push(m),
                    Some("snapshot_end") => {
                        // Where the snapshot stands is the host's to say, at each read.
                        m["token"].take();
                        m["position"].take();
                        pages.push(m);
                        break;
                    }
                    Some("subscribed") => {}
                    _ => panic!("{who}: {m}"),
                }
            }
            heard.push(pages);
        }
        assert!(heard[0].len() >= 2, "{who}: a page and its end");
        assert_eq!(heard[1], heard[0], "{who} on edge a: the snapshot");
        assert_eq!(heard[2], heard[0], "{who} on edge b: the snapshot");
        assert!(n != 4 || heard[0][0]["rows"][0].get("note").is_none());
    }

    // REVOKE ends the clerk's subscription, on the host and on both edges alike.
    round += 1;
    db.batch_execute("REVOKE SELECT ON defects FROM app_clerk")
        .unwrap();
    write_mix(&mut db, round);
    let heard = compare(&mut clients, round, "after REVOKE");
    for (who, messages) in &heard[12..15] {
        assert!(
            messages
                .iter()
                .any(|m| m["type"] == "unsubscribed" && m["reason"] == "forbidden"),
            "{who}: {messages:?}"
        );
    }

    // A dropped table ends every subscription to it, at its place in the stream.
    round += 1;
    db.batch_execute(&format!(
        "DROP TABLE defects; INSERT INTO done VALUES ({round})"
    ))
    .unwrap();
    let heard = compare(&mut clients, round, "after DROP TABLE");
    for (who, messages) in &heard[..12] {
        assert!(
            messages
                .iter()
                .any(|m| m["type"] == "unsubscribed" && m["reason"] == "table_dropped"),
            "{who}: {messages:?}"
        );
    }
}

/// What a client following `defects` across servers has heard: each row's id in order, the
/// last position, and the gaps.
#[derive(Default)]
struct Follower {
    ids: Vec<i64>,
    position: u64,
    gaps: Vec<Value>,
}

impl Follower {
    /// Subscribe on the server at `port`, resuming after what was heard.
    fn connect(&self, port: u16) -> Ws {
        let mut ws = Ws::connect(port);
        let mut subscribe = json!({"type": "subscribe", "id": "d", "table": "defects"});
        if self.position > 0 {
            subscribe["since"] = json!(self.position);
        }
        ws.send(subscribe);
        // Rows committed before the subscription is made are not its to receive.
        let m = ws.recv();
        assert_eq!(m["type"], "subscribed", "{m}");
        // A resume the server can fill from what it holds.
        assert!(m.get("resume").is_none_or(|r| r == "complete"), "{m}");
        ws
    }

    /// Read until `rows` ids were heard; `false` if the connection failed first.
    fn read(&mut self, ws: &mut Ws, rows: usize) -> bool {
        let started = std::time::Instant::now();
        while self.ids.len() < rows {
            if started.elapsed() > PATIENCE {
                let mut sorted = self.ids.clone();
                sorted.sort();
                let missing: Vec<i64> = (1..=rows as i64)
                    .filter(|id| sorted.binary_search(id).is_err())
                    .collect();
                panic!(
                    "heard {} of {rows} rows; missing {missing:?}, last position {}, gaps {:?}",
                    self.ids.len(),
                    self.position,
                    self.gaps
                );
            }
            let text = match ws.socket.read() {
                Ok(tungstenite::Message::Text(t)) => t,
                Ok(tungstenite::Message::Close(_)) | Err(_) => return false,
                Ok(_) => continue,
            };
            let m: Value = serde_json::from_str(&text).unwrap();
            match m["type"].as_str() {
                Some("change") => {
                    self.ids.push(m["new"]["id"].as_i64().unwrap());
                    self.position = m["position"].as_u64().unwrap();
                }
                Some("gap") => {
                    self.position = self.position.max(m["last_position"].as_u64().unwrap());
                    self.gaps.push(m);
                }
                Some("pong") => {}
                _ => panic!("unexpected {m}"),
            }
        }
        true
    }
}

fn insert(db: &mut postgres::Client, rows: i32) {
    db.batch_execute(&format!(
        "INSERT INTO defects (line) SELECT 'A' FROM generate_series(1, {rows})"
    ))
    .unwrap();
}

fn row_count(cluster: &Cluster) -> usize {
    let n: i64 = cluster
        .client()
        .query_one("SELECT count(*) FROM defects", &[])
        .unwrap()
        .get(0);
    n as usize
}

#[test]
fn a_client_whose_edge_dies_resumes_on_another_and_outages_lose_nothing() {
    let (mut nats, cluster, mut a, _) = setup("edge_failover");
    let mut b = Edge::start_with(
        "edge_failover_metrics",
        &nats,
        &[("REALTIME_EDGE_METRICS_ADDRESSES", "127.0.0.1")],
    );
    cluster
        .client()
        .batch_execute(
            "CREATE TABLE defects (id bigserial PRIMARY KEY, line text);
             SELECT realtime_watch('defects');",
        )
        .unwrap();
    let mut db = cluster.client();
    let mut heard = Follower::default();
    let mut ws = heard.connect(a.port);
    insert(&mut db, 100);
    assert!(heard.read(&mut ws, 40));

    // Edge a killed mid-stream: the client goes on at edge b from its last position.
    let writer = std::thread::spawn({
        let conninfo = cluster.conninfo("postgres");
        move || {
            let mut db = postgres::Client::connect(&conninfo, postgres::NoTls).unwrap();
            for _ in 0..20 {
                insert(&mut db, 10);
            }
        }
    });
    a.kill();
    assert!(
        !heard.read(&mut ws, usize::MAX),
        "the connection ends with edge a"
    );
    writer.join().unwrap();
    let mut ws = heard.connect(b.port);
    assert!(heard.read(&mut ws, 300), "edge b serves the rest");

    // nats-server killed and restarted, the worker terminated, the server restarted fast:
    // the client stays on edge b throughout.
    nats.crash_and_restart();
    insert(&mut db, 25);
    cluster.restart_worker();
    insert(&mut db, 25);
    cluster.restart();
    let mut db = cluster.client();
    insert(&mut db, 25);
    let rows = row_count(&cluster);
    assert!(heard.read(&mut ws, rows), "every row reaches edge b");

    let expected: Vec<i64> = cluster
        .client()
        .query("SELECT id FROM defects ORDER BY id", &[])
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(heard.ids, expected, "every row once, in commit order");
    assert!(heard.gaps.is_empty(), "nothing was lost: {:?}", heard.gaps);
    drop(ws);
    let mut ws = heard.connect(b.port);
    ws.nothing_more();

    // A catalog change with nobody connected to the database host: it still reaches the
    // edge's sessions (the worker keeps the stream current and watches the catalogs).
    cluster
        .client()
        .batch_execute(&format!("REVOKE pg_read_all_data FROM {READER}"))
        .unwrap();
    ws.expect_ended("d", "forbidden");

    // Its numbers, for a scraper on an address allowed; then SIGTERM: every client is told
    // the server is restarting (1012), and the process exits cleanly.
    let metrics = b.get("/metrics").unwrap();
    assert!(metrics.starts_with("HTTP/1.1 200"), "{metrics}");
    assert!(
        metrics.contains("\nrealtime_connections{protocol=\"native\"} 1\n"),
        "{metrics}"
    );
    let child = b.child.as_mut().unwrap();
    let term = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(term.success());
    assert_eq!(ws.close_frame().0, 1012);
    let status = child.wait().unwrap();
    b.child = None;
    assert!(status.success(), "{status}");
}
