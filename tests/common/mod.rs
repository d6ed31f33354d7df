//! A real PostgreSQL cluster (of the major the tests are built for) with realtime_ext preloaded, and a real WebSocket client.
//! The extension must be installed (`cargo pgrx install`) before these tests run; test.sh does.
#![allow(dead_code)]

use serde_json::{json, Value};
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Mutex, MutexGuard, Once, OnceLock};
use std::time::{Duration, Instant};
use tungstenite::stream::MaybeTlsStream;
use tungstenite::{Message, WebSocket};

/// PostgreSQL's bin directory: that of the pg_config cargo-pgrx was set up with (by
/// .ci/prereqs.sh, from scripts/lib.sh), for the major version the tests are built for.
fn bin() -> &'static str {
    static BIN: OnceLock<String> = OnceLock::new();
    BIN.get_or_init(|| {
        let home = std::env::var("PGRX_HOME")
            .unwrap_or_else(|_| format!("{}/.pgrx", std::env::var("HOME").unwrap_or_default()));
        let config = std::fs::read_to_string(format!("{home}/config.toml"))
            .expect("cargo-pgrx is configured (run ./test.sh, which sets it up)");
        let key = format!("{MAJOR} = ");
        let pg_config = config
            .lines()
            .find_map(|l| l.trim().strip_prefix(key.as_str()))
            .unwrap_or_else(|| panic!("cargo-pgrx knows no {MAJOR} (run PG_MAJOR=... ./test.sh)"))
            .trim_matches('"');
        let out = Command::new(pg_config).arg("--bindir").output().unwrap();
        String::from_utf8(out.stdout).unwrap().trim().to_string()
    })
}

/// The PostgreSQL major these tests are built for (`cargo pgrx test pgNN` picks the feature).
pub const MAJOR: &str = if cfg!(feature = "pg18") {
    "pg18"
} else if cfg!(feature = "pg17") {
    "pg17"
} else if cfg!(feature = "pg16") {
    "pg16"
} else {
    "pg15"
};

pub struct Cluster {
    pub dir: PathBuf,
    pub port: u16,
    pub ws_port: u16,
}

/// A port nobody listens on, never the same twice in one test binary: tests run in parallel,
/// and the kernel may hand a just-released port to the next caller, so two clusters could
/// otherwise race for one port and a client reach the wrong server.
fn free_port() -> u16 {
    static GIVEN: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    let mut given = GIVEN.lock().unwrap_or_else(|e| e.into_inner());
    loop {
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        if !given.contains(&port) {
            given.push(port);
            return port;
        }
    }
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc_geteuid() == 0 }
}
extern "C" {
    fn atexit(f: extern "C" fn()) -> std::ffi::c_int;
    #[link_name = "geteuid"]
    fn libc_geteuid() -> u32;
}

/// Run a PostgreSQL program as the postgres user when we are root (it refuses to run as root).
pub fn pg_command(program: &str) -> Command {
    let path = format!("{}/{program}", bin());
    if is_root() {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--", &path]);
        c
    } else {
        Command::new(path)
    }
}

/// Run a PostgreSQL program and return its stdout; panics with its output if it fails.
pub fn pg_run(program: &str, args: &[&str]) -> String {
    let mut c = pg_command(program);
    c.args(args);
    let out = c.output().expect("spawn");
    assert!(
        out.status.success(),
        "{program} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn run(mut c: Command) {
    let out = c.output().expect("spawn");
    assert!(
        out.status.success(),
        "{:?} failed: {}{}",
        c,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// How long a test waits for something that normally happens within milliseconds (a reply, a
/// change, a count to settle): ample for a heavily loaded machine, so that running out of it
/// means the thing never happened, not that the machine was slow.
pub const PATIENCE: Duration = Duration::from_secs(60);
/// The HMAC secret test clusters verify tokens with (`token`).
pub const JWT_SECRET: &str = "realtime-ext-test-secret-0123456789abcdef";
/// The role test connections without a token act as: it may read every table.
pub const READER: &str = "realtime_reader";
/// realtime.authenticator of test clusters.
pub const AUTHENTICATOR: &str = "realtime_authenticator";

/// A token signed with the test clusters' secret, carrying `claims`.
pub fn token(claims: Value) -> String {
    token_with(
        jsonwebtoken::Algorithm::HS256,
        JWT_SECRET.as_bytes(),
        claims,
    )
}

pub fn token_with(alg: jsonwebtoken::Algorithm, secret: &[u8], claims: Value) -> String {
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(alg),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(secret),
    )
    .unwrap()
}

/// Seconds since the epoch.
pub fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

impl Cluster {
    /// Start a cluster with the extension created; `conf` lines are appended to postgresql.conf.
    pub fn start(name: &str, conf: &[&str]) -> Cluster {
        let cluster = Cluster::start_plain(name, conf);
        cluster
            .client()
            .batch_execute("CREATE EXTENSION realtime_ext")
            .unwrap();
        cluster.wait_healthy();
        cluster
    }

    /// Start a cluster without creating the extension or waiting for the worker.
    pub fn start_plain(name: &str, conf: &[&str]) -> Cluster {
        let dir =
            std::env::temp_dir().join(format!("realtime_ext_it_{name}_{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        if is_root() {
            run({
                let mut c = Command::new("chown");
                c.args(["postgres:", dir.to_str().unwrap()]);
                c
            });
        }
        let data = dir.join("data");
        run({
            let mut c = pg_command("initdb");
            c.args([
                "-D",
                data.to_str().unwrap(),
                "-U",
                "postgres",
                "--auth=trust",
                "--locale=C.UTF-8",
                "--no-sync",
            ]);
            c
        });
        let cluster = Cluster {
            dir,
            port: free_port(),
            ws_port: free_port(),
        };
        let mut text = format!(
            "port = {}\nlisten_addresses = '127.0.0.1'\nunix_socket_directories = '{}'\n\
             shared_preload_libraries = 'realtime_ext'\nrealtime.port = {}\nrealtime.listen_addresses = '127.0.0.1'\n\
             max_prepared_transactions = 10\nfsync = off\nmax_connections = 100\n\
             realtime.jwt_secret = '{JWT_SECRET}'\nrealtime.anon_role = '{READER}'\nrealtime.authenticator = '{AUTHENTICATOR}'\n",
            cluster.port,
            cluster.dir.display(),
            cluster.ws_port
        );
        for line in conf {
            text.push_str(line);
            text.push('\n');
        }
        std::fs::OpenOptions::new()
            .append(true)
            .open(data.join("postgresql.conf"))
            .unwrap()
            .write_all(text.as_bytes())
            .unwrap();
        cluster.pg_ctl(&[
            "start",
            "-w",
            "-l",
            cluster.dir.join("server.log").to_str().unwrap(),
        ]);
        running(cluster.data());
        cluster
            .client()
            .batch_execute(&format!(
                "CREATE ROLE {READER} NOLOGIN; GRANT pg_read_all_data TO {READER};
                 CREATE ROLE {AUTHENTICATOR} NOLOGIN NOINHERIT;"
            ))
            .unwrap();
        cluster
    }

    pub fn data(&self) -> PathBuf {
        self.dir.join("data")
    }

    pub fn pg_ctl(&self, args: &[&str]) {
        let mut c = pg_command("pg_ctl");
        c.args(["-D", self.data().to_str().unwrap()]).args(args);
        run(c);
    }

    pub fn restart(&self) {
        self.pg_ctl(&[
            "restart",
            "-w",
            "-m",
            "fast",
            "-l",
            self.dir.join("server.log").to_str().unwrap(),
        ]);
        self.wait_healthy();
    }

    pub fn conninfo(&self, db: &str) -> String {
        format!(
            "host=127.0.0.1 port={} user=postgres dbname={db}",
            self.port
        )
    }

    pub fn client(&self) -> postgres::Client {
        self.client_to("postgres")
    }

    /// A connection as another role (the test clusters trust every local connection).
    pub fn client_as(&self, user: &str) -> postgres::Client {
        let conninfo = format!(
            "host=127.0.0.1 port={} user={user} dbname=postgres",
            self.port
        );
        postgres::Client::connect(&conninfo, postgres::NoTls).expect("connect as role")
    }

    pub fn client_to(&self, db: &str) -> postgres::Client {
        postgres::Client::connect(&self.conninfo(db), postgres::NoTls)
            .expect("connect to test cluster")
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("server.log")).unwrap_or_default()
    }

    /// One number of `realtime_stats()`, by its name there (`disconnects_total{reason="client"}`).
    pub fn stat(&self, name: &str) -> i64 {
        self.client()
            .query_one(
                "SELECT value FROM realtime_stats() WHERE name = $1",
                &[&name],
            )
            .unwrap_or_else(|e| panic!("realtime_stats() {name}: {e}"))
            .get(0)
    }

    /// Why the worker's connections ended so far, for a failing test to show.
    pub fn disconnects(&self) -> String {
        let rows = self
            .client()
            .query(
                "SELECT name, value FROM realtime_stats() WHERE name LIKE 'disconnects_total%' AND value > 0",
                &[],
            )
            .unwrap();
        rows.iter()
            .map(|r| format!("{} {}", r.get::<_, String>(0), r.get::<_, i64>(1)))
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// GET a path; returns status code and body.
    pub fn http_get(&self, path: &str) -> (u16, String) {
        let (status, response) = self.http_get_with(path, "");
        let body = response.split("\r\n\r\n").nth(1).unwrap_or("").to_string();
        (status, body)
    }

    /// GET a path with more header lines (each ending in CRLF); status code and the whole
    /// response, head included.
    pub fn http_get_with(&self, path: &str, headers: &str) -> (u16, String) {
        let out =
            self.raw(format!("GET {path} HTTP/1.1\r\nHost: localhost\r\n{headers}\r\n").as_bytes());
        let status = out
            .split(' ')
            .nth(1)
            .and_then(|c| c.parse().ok())
            .unwrap_or(0);
        (status, out)
    }

    /// Send `bytes` to the WebSocket port as they are; everything the server answers until it
    /// closes (or 5 s).
    pub fn raw(&self, bytes: &[u8]) -> String {
        let mut s = TcpStream::connect(("127.0.0.1", self.ws_port)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        // The server may answer (503) before reading the request: a failed write is fine.
        let _ = s.write_all(bytes);
        let mut out = Vec::new();
        let _ = s.read_to_end(&mut out);
        String::from_utf8_lossy(&out).into_owned()
    }

    /// `n` connections to the WebSocket port that never send anything.
    pub fn silent_sockets(&self, n: usize) -> Vec<TcpStream> {
        (0..n)
            .map(|_| TcpStream::connect(("127.0.0.1", self.ws_port)).unwrap())
            .collect()
    }

    pub fn health(&self) -> Option<Value> {
        let mut s = TcpStream::connect(("127.0.0.1", self.ws_port)).ok()?;
        s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
        write!(s, "GET /health HTTP/1.1\r\nHost: localhost\r\n\r\n").ok()?;
        let mut out = String::new();
        s.read_to_string(&mut out).ok()?;
        serde_json::from_str(out.split("\r\n\r\n").nth(1)?).ok()
    }

    pub fn wait_healthy(&self) {
        if !poll(Duration::from_secs(30), || self.health().is_some()) {
            panic!("realtime worker did not come up; log:\n{}", self.log());
        }
    }

    pub fn worker_pid(&self) -> i32 {
        self.running_worker()
            .expect("the realtime worker is running")
    }

    /// The worker's pid; `None` also while the server takes no connection (a crash reset).
    fn running_worker(&self) -> Option<i32> {
        let mut db = postgres::Client::connect(&self.conninfo("postgres"), postgres::NoTls).ok()?;
        db.query_opt(
            "SELECT pid FROM pg_stat_activity WHERE backend_type = 'realtime_ext'",
            &[],
        )
        .ok()
        .flatten()
        .map(|r| r.get(0))
    }

    /// Stop the worker (as pg_terminate_backend does) and wait for its successor to serve.
    pub fn restart_worker(&self) -> i32 {
        let old = self.worker_pid();
        self.client()
            .execute("SELECT pg_terminate_backend($1)", &[&old])
            .unwrap();
        self.wait_for_new_worker(old)
    }

    /// kill -9 the worker and wait out the server's crash reset, which ends every session: a
    /// connection opened before it is not one to use, and a successor exists only after it.
    /// The successor's pid.
    pub fn kill_worker(&self) -> i32 {
        let old = self.worker_pid();
        let status = std::process::Command::new("kill")
            .args(["-9", &old.to_string()])
            .status()
            .unwrap();
        assert!(status.success(), "kill -9 {old}");
        self.wait_for_new_worker(old)
    }

    /// Wait until a worker other than `old` runs and serves; its pid.
    pub fn wait_for_new_worker(&self, old: i32) -> i32 {
        let mut new = None;
        wait_until("a new realtime worker", Duration::from_secs(60), || {
            new = self.running_worker().filter(|pid| *pid != old);
            new.is_some()
        });
        self.wait_healthy();
        new.expect("found")
    }

    pub fn ws(&self) -> Ws {
        Ws::connect(self.ws_port)
    }

    /// A fresh table (`CREATE TABLE {table} {columns}`), watched, and a client subscribed to it
    /// with id "s".
    pub fn watched(&self, table: &str, columns: &str) -> Ws {
        self.client()
            .batch_execute(&format!(
                "CREATE TABLE {table} {columns}; SELECT realtime_watch('{table}')"
            ))
            .unwrap();
        let mut ws = self.ws();
        ws.subscribe("s", table, None);
        ws
    }

    /// Resident memory of the worker process, in KiB.
    pub fn worker_rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.worker_pid()))
            .expect("worker status");
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("VmRSS")
    }
}

impl Cluster {
    fn stop(&self, remove: bool) {
        let data = self.data();
        stop_server(&data);
        lock(&RUNNING).retain(|d| *d != data);
        if remove {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.stop(!std::thread::panicking());
    }
}

fn stop_server(data: &Path) {
    let mut c = pg_command("pg_ctl");
    c.args(["-D", data.to_str().unwrap(), "stop", "-m", "immediate"]);
    let _ = c.output();
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

/// Clusters started and not stopped yet. What a failed test could not drop (one of its threads
/// still held the cluster when it panicked) is stopped when the test process exits, its files
/// kept for a look, rather than left running on the machine.
static RUNNING: Mutex<Vec<PathBuf>> = Mutex::new(Vec::new());

fn running(data: PathBuf) {
    extern "C" fn stop_running() {
        for data in std::mem::take(&mut *lock(&RUNNING)) {
            stop_server(&data);
        }
    }
    static AT_EXIT: Once = Once::new();
    // SAFETY: stop_running is a plain function that lives forever.
    AT_EXIT.call_once(|| unsafe {
        atexit(stop_running);
    });
    lock(&RUNNING).push(data);
}

static SHARED: OnceLock<Cluster> = OnceLock::new();

/// How many of `sockets` the server has closed (read returns end of file at once).
pub fn closed_by_server(sockets: &[TcpStream]) -> usize {
    let mut closed = 0;
    for mut s in sockets {
        s.set_read_timeout(Some(Duration::from_millis(20))).unwrap();
        if matches!(s.read(&mut [0u8; 16]), Ok(0)) {
            closed += 1;
        }
    }
    closed
}

/// One cluster for every test in this test binary. Statics are never dropped, so it is stopped
/// and removed when the test process exits.
pub fn shared(name: &str) -> &'static Cluster {
    extern "C" fn stop_shared() {
        if let Some(c) = SHARED.get() {
            c.stop(true);
        }
    }
    SHARED.get_or_init(|| {
        // SAFETY: stop_shared is a plain function that lives forever.
        unsafe { atexit(stop_shared) };
        Cluster::start(name, &[])
    })
}

pub struct Ws {
    pub socket: WebSocket<MaybeTlsStream<TcpStream>>,
    /// How long `recv` waits (`set_timeout`).
    patience: Duration,
}

impl Ws {
    pub fn connect(port: u16) -> Ws {
        Ws::connect_to(&format!("ws://127.0.0.1:{port}/realtime"))
    }

    /// Connect presenting `token` in the upgrade request.
    pub fn connect_as(port: u16, token: &str) -> Ws {
        Ws::connect_to(&format!("ws://127.0.0.1:{port}/realtime?token={token}"))
    }

    pub fn connect_to(url: &str) -> Ws {
        let (socket, _) = tungstenite::connect(url).expect("websocket connect");
        if let MaybeTlsStream::Plain(s) = socket.get_ref() {
            s.set_read_timeout(Some(PATIENCE)).unwrap();
        }
        Ws::over(socket)
    }

    /// A client over a socket made elsewhere.
    pub fn over(socket: WebSocket<MaybeTlsStream<TcpStream>>) -> Ws {
        Ws {
            socket,
            patience: PATIENCE,
        }
    }

    pub fn set_timeout(&mut self, d: Duration) {
        self.patience = d;
        if let MaybeTlsStream::Plain(s) = self.socket.get_ref() {
            s.set_read_timeout(Some(d)).unwrap();
        }
    }

    pub fn send(&mut self, v: Value) {
        self.socket.send(Message::text(v.to_string())).unwrap();
    }

    pub fn send_text(&mut self, t: &str) {
        self.socket.send(Message::text(t.to_string())).unwrap();
    }

    /// The next message; a read a signal interrupted is tried again.
    fn read(&mut self) -> tungstenite::Result<Message> {
        loop {
            match self.socket.read() {
                Err(tungstenite::Error::Io(e)) if e.kind() == std::io::ErrorKind::Interrupted => {}
                read => return read,
            }
        }
    }

    /// Next JSON message (pings are answered by tungstenite and skipped). The server's pings
    /// keep the socket's read timeout from firing, so the wait has a limit of its own.
    pub fn recv(&mut self) -> Value {
        let started = std::time::Instant::now();
        loop {
            match self.read().expect("websocket read") {
                Message::Text(t) => return serde_json::from_str(&t).expect("server sent JSON"),
                Message::Close(f) => panic!("server closed the connection: {f:?}"),
                _ if started.elapsed() > self.patience => {
                    panic!("no message within {:?}", self.patience)
                }
                _ => continue,
            }
        }
    }

    /// Next message, or None if nothing arrives within `d`.
    pub fn recv_within(&mut self, d: Duration) -> Option<Value> {
        self.set_timeout(d);
        let r = loop {
            match self.read() {
                Ok(Message::Text(t)) => break Some(serde_json::from_str(&t).unwrap()),
                Ok(Message::Close(f)) => panic!("server closed the connection: {f:?}"),
                Ok(_) => continue,
                Err(tungstenite::Error::Io(e))
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) =>
                {
                    break None
                }
                Err(e) => panic!("websocket error: {e}"),
            }
        };
        self.set_timeout(PATIENCE);
        r
    }

    /// Send a subscribe and return the reply, whatever it is.
    pub fn try_subscribe(&mut self, id: &str, table: &str, filter: Option<&str>) -> Value {
        let mut msg = json!({"type": "subscribe", "id": id, "table": table});
        if let Some(f) = filter {
            msg["filter"] = json!(f);
        }
        self.send(msg);
        self.recv()
    }

    /// The close frame the server sends next (code, reason); panics on anything else.
    pub fn close_frame(&mut self) -> (u16, String) {
        loop {
            match self.read() {
                Ok(Message::Close(Some(f))) => return (u16::from(f.code), f.reason.to_string()),
                Ok(Message::Close(None)) => panic!("closed without a code"),
                Ok(_) => continue,
                Err(e) => panic!("expected a close frame, got {e}"),
            }
        }
    }

    pub fn subscribe(&mut self, id: &str, table: &str, filter: Option<&str>) -> Value {
        let mut msg = json!({"type": "subscribe", "id": id, "table": table});
        if let Some(f) = filter {
            msg["filter"] = json!(f);
        }
        self.send(msg);
        let ack = self.recv();
        assert_eq!(
            ack["type"], "subscribed",
            "subscribe {table} {filter:?}: {ack}"
        );
        ack
    }

    /// The next `n` change messages.
    pub fn changes(&mut self, n: usize) -> Vec<Value> {
        (0..n)
            .map(|_| {
                let m = self.recv();
                assert_eq!(m["type"], "change", "expected a change, got {m}");
                m
            })
            .collect()
    }

    /// The `id` of the `new` row of each change message, each also passed to `each` as it
    /// comes, until `written` (negative while a writer runs) names as many as came: more fail
    /// the caller's check of the ids. Silence past `PATIENCE` fails.
    pub fn change_ids_until(&mut self, written: &AtomicI64, mut each: impl FnMut(i64)) -> Vec<i64> {
        let (mut ids, mut heard) = (Vec::new(), Instant::now());
        while !(0..=ids.len() as i64).contains(&written.load(Ordering::Acquire)) {
            let Some(m) = self.recv_within(Duration::from_secs(1)) else {
                assert!(
                    heard.elapsed() < PATIENCE,
                    "heard nothing for {PATIENCE:?} after {} changes",
                    ids.len()
                );
                continue;
            };
            heard = Instant::now();
            assert_eq!(m["type"], "change", "{m}");
            let id = m["new"]["id"].as_i64().unwrap();
            each(id);
            ids.push(id);
        }
        ids
    }

    /// The `id` of the `new` row of each of the next `n` change messages.
    pub fn change_ids(&mut self, n: usize) -> Vec<i64> {
        self.changes(n)
            .iter()
            .map(|c| c["new"]["id"].as_i64().expect("a change with a new.id"))
            .collect()
    }

    /// Every message before the next change of `table` (which is consumed).
    pub fn until_change_of(&mut self, table: &str) -> Vec<Value> {
        let mut before = Vec::new();
        loop {
            let m = self.recv();
            if m["type"] == "change" && m["table"] == table {
                return before;
            }
            before.push(m);
        }
    }

    /// Asserts that nothing arrives for half a second.
    pub fn nothing_more(&mut self) {
        if let Some(m) = self.recv_within(Duration::from_millis(500)) {
            panic!("unexpected message: {m}");
        }
    }

    /// Asserts the next message ends subscription `id` for `reason`.
    pub fn expect_ended(&mut self, id: &str, reason: &str) {
        let m = self.recv();
        assert_eq!(
            (m["type"].as_str(), m["id"].as_str(), m["reason"].as_str()),
            (Some("unsubscribed"), Some(id), Some(reason)),
            "{m}"
        );
    }

    /// Sends an application ping and collects every message received before its pong.
    pub fn drain(&mut self) -> Vec<Value> {
        self.send(json!({"type": "ping", "ref": "drain"}));
        let mut out = Vec::new();
        loop {
            let m = self.recv();
            if m["type"] == "pong" && m["ref"] == "drain" {
                return out;
            }
            out.push(m);
        }
    }
}

/// Whether `condition` held within `limit`, asked every 20 ms.
pub fn poll(limit: Duration, mut condition: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    loop {
        if condition() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Wait until `condition` holds; fail the test, naming `what`, if it does not within `limit`.
pub fn wait_until(what: &str, limit: Duration, condition: impl FnMut() -> bool) {
    assert!(
        poll(limit, condition),
        "gave up waiting for {what} after {limit:?}"
    );
}

/// Node's test runner on `tests` (paths from the repository root), with the server described
/// in the environment (clients/js/test/server.mjs reads it). Node and the packages the tests
/// import are installed by .ci/prereqs.sh; a missing one fails the tests rather than skipping them.
pub fn node_test(cluster: &Cluster, tests: &[&str]) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let shots = root.join("target/browser-screenshots");
    std::fs::create_dir_all(&shots).unwrap();
    let bin = String::from_utf8(
        pg_command("pg_config")
            .arg("--bindir")
            .output()
            .unwrap()
            .stdout,
    )
    .unwrap();
    let mut node = Command::new("node");
    // Node 20 and 21 have WebSocket behind a flag; 22 and later have it on.
    if !Command::new("node")
        .args([
            "-e",
            "process.exit(typeof WebSocket === 'function' ? 0 : 1)",
        ])
        .status()
        .expect("node is installed (.ci/prereqs.sh installs it)")
        .success()
    {
        node.arg("--experimental-websocket");
    }
    let status = node
        .args(["--test", "--test-concurrency=1", "--test-force-exit"])
        .args(tests)
        .current_dir(root)
        .env(
            "REALTIME_WS_URL",
            format!("ws://127.0.0.1:{}/realtime", cluster.ws_port),
        )
        .env(
            "REALTIME_HTTP_URL",
            format!("http://127.0.0.1:{}", cluster.ws_port),
        )
        .env("REALTIME_PSQL", format!("{}/psql", bin.trim()))
        .env("REALTIME_PGPORT", cluster.port.to_string())
        .env("REALTIME_JWT_SECRET", JWT_SECRET)
        .env("REALTIME_SCREENSHOTS", &shots)
        .status()
        .expect("run node");
    assert!(
        status.success(),
        "node --test {tests:?} failed (its report is above); server log:\n{}",
        cluster.log()
    );
}
