//! WebSocket clients and the writer's table, for either target.

use futures_util::{SinkExt, StreamExt};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::{Arc, OnceLock};
use tokio::net::TcpSocket;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Target {
    /// realtime_ext's own WebSocket server.
    Realtime,
    /// The LISTEN/NOTIFY bridge in baselines/node-bridge, fed by a pg_notify trigger.
    Bridge,
    /// realtime_ext relaying the same pg_notify trigger's channel (`realtime_relay`).
    Relay,
    /// `floor-server`: the same socket work with no database (latency only).
    Floor,
    /// `floor-server` told of each row by the writer once its INSERT has committed into a
    /// table with no trigger: the socket work plus PostgreSQL's own commit, with no capture and
    /// no wake-up between the database and the server (latency only).
    CommittedFloor,
}

const READ_BUFFER: usize = 8 * 1024;

/// A client's connection: TCP, or TLS over it for `wss://` URLs.
pub trait Io: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send> Io for T {}

pub type Ws = WebSocketStream<Box<dyn Io>>;

/// How `wss://` servers are trusted: the certificate given with --ca.
static TLS: OnceLock<tokio_rustls::TlsConnector> = OnceLock::new();

/// Trust the PEM certificate in `path` for `wss://` connections.
pub fn trust(path: &str) {
    let mut roots = tokio_rustls::rustls::RootCertStore::empty();
    let pem = std::fs::read(path).expect("read --ca");
    for cert in rustls_pemfile::certs(&mut pem.as_slice()) {
        roots.add(cert.expect("a PEM certificate")).unwrap();
    }
    // Cipher suites in a browser's order (AES-128-GCM first, as Chrome and Firefox offer
    // them): the server takes the client's preference, so this is what browsers get.
    let mut provider = tokio_rustls::rustls::crypto::ring::default_provider();
    provider
        .cipher_suites
        .sort_by_key(|s| !format!("{:?}", s.suite()).contains("AES_128_GCM"));
    let config = tokio_rustls::rustls::ClientConfig::builder_with_provider(Arc::new(provider))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let _ = TLS.set(tokio_rustls::TlsConnector::from(Arc::new(config)));
}

/// Connect client number `n`, from 127.0.0.(2 + n / 20000) so that each source address uses
/// well under the ~28,000 ephemeral ports Linux gives it.
pub async fn connect(url: &str, n: usize) -> std::io::Result<Ws> {
    let tls = url.starts_with("wss://");
    let hostport = url
        .trim_start_matches("ws://")
        .trim_start_matches("wss://")
        .split('/')
        .next()
        .unwrap();
    let server: SocketAddr = tokio::net::lookup_host(hostport).await?.next().unwrap();
    let socket = TcpSocket::new_v4()?;
    if server.ip().is_loopback() {
        // The port is then chosen at connect, unique per destination: a port bound first is
        // taken from every connect, and tens of thousands of them in TIME_WAIT after a large
        // run left no port for the next scenario's database connection.
        let yes: libc::c_int = 1;
        // SAFETY: a valid socket and an int option of the right size.
        unsafe {
            libc::setsockopt(
                std::os::fd::AsRawFd::as_raw_fd(&socket),
                libc::IPPROTO_IP,
                libc::IP_BIND_ADDRESS_NO_PORT,
                (&raw const yes).cast(),
                std::mem::size_of_val(&yes) as libc::socklen_t,
            );
        }
        socket.bind(SocketAddr::new(
            IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2 + (n / 20_000) as u8)),
            0,
        ))?;
    }
    let stream = socket.connect(server).await?;
    stream.set_nodelay(true)?;
    let stream: Box<dyn Io> = if tls {
        let connector = TLS.get().expect("wss:// needs --ca");
        let name = tokio_rustls::rustls::pki_types::ServerName::try_from("localhost").unwrap();
        Box::new(connector.connect(name, stream).await?)
    } else {
        Box::new(stream)
    };
    // tungstenite zero-fills its whole read buffer before every read; at its 128 KiB default
    // that memset was a third of this process's CPU while receiving small messages.
    let config = WebSocketConfig::default().read_buffer_size(READ_BUFFER);
    let (ws, _) = tokio_tungstenite::client_async_with_config(url, stream, Some(config))
        .await
        .map_err(|e| std::io::Error::other(e.to_string()))?;
    Ok(ws)
}

/// Connect and subscribe to `table`; returns once the server acknowledged.
pub async fn subscriber(url: &str, n: usize, table: &str) -> std::io::Result<Ws> {
    subscribe_with(url, n, table, None).await
}

/// Connect and subscribe to `channel` (a relayed NOTIFY channel).
pub async fn channel_subscriber(url: &str, n: usize, channel: &str) -> std::io::Result<Ws> {
    let msg = format!(r#"{{"type":"subscribe","id":"b","channel":"{channel}"}}"#);
    subscribe_as(url, n, msg).await
}

/// Connect and subscribe to `channel`'s messages and presence.
pub async fn presence_subscriber(url: &str, n: usize, channel: &str) -> std::io::Result<Ws> {
    let msg = format!(r#"{{"type":"subscribe","id":"p","channel":"{channel}","presence":true}}"#);
    subscribe_as(url, n, msg).await
}

/// Connect to `url` (which may carry `?token=`) and subscribe to `table` with `filter`.
pub async fn subscribe_with(
    url: &str,
    n: usize,
    table: &str,
    filter: Option<&str>,
) -> std::io::Result<Ws> {
    if is_supabase(url) {
        return supabase_subscriber(url, n, table, filter).await;
    }
    let filter = filter.map_or(String::new(), |f| format!(r#","filter":"{f}""#));
    let msg = format!(r#"{{"type":"subscribe","id":"b","table":"{table}"{filter}}}"#);
    subscribe_as(url, n, msg).await
}

/// Whether `url` is the Supabase Realtime endpoint (`/realtime/v1/websocket`).
pub fn is_supabase(url: &str) -> bool {
    url.contains("/realtime/v1/websocket")
}

/// Join a channel with one postgres_changes binding on `table`, as supabase-js does; returns
/// once the server said "Subscribed to PostgreSQL" (after its reply), so that only changes
/// follow.
async fn supabase_subscriber(
    url: &str,
    n: usize,
    table: &str,
    filter: Option<&str>,
) -> std::io::Result<Ws> {
    let mut ws = connect(url, n).await?;
    let filter = filter.map_or(String::new(), |f| format!(r#","filter":"{f}""#));
    let join = format!(
        r#"["1","1","realtime:bench","phx_join",{{"config":{{"broadcast":{{"ack":false,"self":false}},"presence":{{"key":"","enabled":false}},"postgres_changes":[{{"event":"*","schema":"public","table":"{table}"{filter}}}],"private":false}}}}]"#
    );
    ws.send(Message::text(join))
        .await
        .map_err(std::io::Error::other)?;
    loop {
        match ws.next().await {
            Some(Ok(Message::Text(t))) if t.contains("Subscribed to PostgreSQL") => return Ok(ws),
            Some(Ok(Message::Text(t))) if t.contains(r#""status":"error""#) => {
                return Err(std::io::Error::other(format!("join failed: {t}")))
            }
            Some(Ok(_)) => {}
            other => return Err(std::io::Error::other(format!("join failed: {other:?}"))),
        }
    }
}

async fn subscribe_as(url: &str, n: usize, msg: String) -> std::io::Result<Ws> {
    let mut ws = connect(url, n).await?;
    ws.send(Message::text(msg))
        .await
        .map_err(std::io::Error::other)?;
    match ws.next().await {
        Some(Ok(Message::Text(t))) if t.contains("subscribed") => Ok(ws),
        other => Err(std::io::Error::other(format!(
            "subscribe failed: {other:?}"
        ))),
    }
}

/// (Re)create the benchmark table, watched by realtime_ext or fed to the bridge by pg_notify.
pub async fn setup_table(db: &tokio_postgres::Client, target: Target, table: &str) {
    db.batch_execute(&format!(
        "DROP TABLE IF EXISTS {table}; CREATE TABLE {table} (id bigint PRIMARY KEY, sent_at_us bigint, payload text)"
    ))
    .await
    .unwrap();
    let attach = match target {
        Target::Realtime => format!("SELECT realtime_watch('{table}')"),
        Target::Bridge => format!(
            "CREATE TRIGGER notify AFTER INSERT ON {table} FOR EACH ROW EXECUTE FUNCTION bench_notify('bench')"
        ),
        Target::Relay => format!(
            "CREATE TRIGGER notify AFTER INSERT ON {table} FOR EACH ROW EXECUTE FUNCTION bench_notify('bench_relay');
             SELECT realtime_relay('bench_relay', as_json => true, readers => '{{bench_reader}}')"
        ),
        Target::CommittedFloor => return,
        Target::Floor => panic!("the floor server has no database"),
    };
    db.batch_execute(&attach).await.unwrap();
}

pub fn now_us() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_micros() as i64
}

/// The writer's timestamp from a change message, found without parsing the whole message.
pub fn sent_at_us(text: &str) -> Option<i64> {
    number_after(text, "\"sent_at_us\":")
}

/// The unsigned number right after the first `key` in `text` (cheaper than parsing the JSON
/// of every message).
pub fn number_after<T: std::str::FromStr>(text: &str, key: &str) -> Option<T> {
    let at = text.find(key)? + key.len();
    let digits: String = text[at..]
        .chars()
        .take_while(|c| c.is_ascii_digit())
        .collect();
    digits.parse().ok()
}

pub fn raise_fd_limit() {
    unsafe {
        let mut limit: libc::rlimit = std::mem::zeroed();
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0 {
            limit.rlim_cur = limit.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
        }
    }
}

pub fn fd_limit() -> u64 {
    let mut limit: libc::rlimit = unsafe { std::mem::zeroed() };
    unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) };
    limit.rlim_cur
}

/// CPU seconds this process has used.
pub fn cpu_seconds() -> f64 {
    let mut u: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut u) };
    let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    tv(u.ru_utime) + tv(u.ru_stime)
}

/// Resident and peak resident memory of a process, in KiB (from /proc).
pub fn memory_kib(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    (field("VmRSS:"), field("VmHWM:"))
}
