//! realtime.ssl: wss:// and https:// with PostgreSQL's own certificate files, plain connections
//! refused, and a reload that names an unreadable certificate keeps the working one.
mod common;
use common::{Cluster, Ws};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tungstenite::stream::MaybeTlsStream;

/// A self-signed certificate for localhost, and its key, readable by the server.
fn certificate(dir: &Path) -> (PathBuf, PathBuf) {
    std::fs::create_dir_all(dir).unwrap();
    let (crt, key) = (dir.join("server.crt"), dir.join("server.key"));
    let out = Command::new("openssl")
        .args([
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
        ])
        .args([
            "-subj",
            "/CN=localhost",
            "-addext",
            "subjectAltName=DNS:localhost",
            // An end-entity certificate: webpki refuses a CA certificate as a server's.
            "-addext",
            "basicConstraints=critical,CA:FALSE",
        ])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&crt)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for f in [&crt, &key] {
        Command::new("chmod").arg("644").arg(f).status().unwrap();
    }
    (crt, key)
}

/// A client that trusts only `crt`.
fn trusting(crt: &Path) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    let pem = std::fs::read(crt).unwrap();
    for cert in rustls_pemfile::certs(&mut pem.as_slice()) {
        roots.add(cert.unwrap()).unwrap();
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Arc::new(
        rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth(),
    )
}

fn wss(cluster: &Cluster, config: &Arc<rustls::ClientConfig>) -> Result<Ws, String> {
    let tcp = TcpStream::connect(("127.0.0.1", cluster.ws_port)).map_err(|e| e.to_string())?;
    tcp.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let url = format!("wss://localhost:{}/realtime", cluster.ws_port);
    let connector = tungstenite::Connector::Rustls(config.clone());
    tungstenite::client_tls_with_config(url, tcp, None, Some(connector))
        .map(|(socket, _)| Ws::over(socket))
        .map_err(|e| e.to_string())
}

fn https_get(cluster: &Cluster, config: &Arc<rustls::ClientConfig>, path: &str) -> String {
    let name = "localhost".try_into().unwrap();
    let conn = rustls::ClientConnection::new(config.clone(), name).unwrap();
    let tcp = TcpStream::connect(("127.0.0.1", cluster.ws_port)).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut tls = rustls::StreamOwned::new(conn, tcp);
    tls.write_all(format!("GET {path} HTTP/1.1\r\nHost: localhost\r\n\r\n").as_bytes())
        .unwrap();
    let mut out = Vec::new();
    let _ = tls.read_to_end(&mut out);
    String::from_utf8_lossy(&out).into_owned()
}

#[test]
fn wss_with_postgres_certificate_and_a_bad_reload_keeps_it() {
    let certs = std::env::temp_dir().join(format!("realtime_ext_tls_{}", std::process::id()));
    let (crt, key) = certificate(&certs);
    let cluster = Cluster::start_plain(
        "tls",
        &[
            "realtime.ssl = on",
            "realtime.max_handshakes = 100",
            &format!("ssl_cert_file = '{}'", crt.display()),
            &format!("ssl_key_file = '{}'", key.display()),
        ],
    );
    cluster
        .client()
        .batch_execute(
            "CREATE EXTENSION realtime_ext;
             CREATE TABLE t (id int PRIMARY KEY);
             SELECT realtime_watch('t');",
        )
        .unwrap();
    let config = trusting(&crt);
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut ws = loop {
        match wss(&cluster, &config) {
            Ok(ws) => break ws,
            Err(e) if Instant::now() > deadline => panic!("{e}; log:\n{}", cluster.log()),
            Err(_) => std::thread::sleep(Duration::from_millis(100)),
        }
    };
    assert!(matches!(ws.socket.get_ref(), MaybeTlsStream::Rustls(_)));
    ws.subscribe("s", "t", None);
    cluster
        .client()
        .batch_execute("INSERT INTO t VALUES (1)")
        .unwrap();
    assert_eq!(ws.change_ids(1), [1]);

    let health = https_get(&cluster, &config, "/health");
    assert!(health.starts_with("HTTP/1.1 200"), "{health}");
    // Plain WebSocket and HTTP on the TLS port get no answer they could read.
    assert!(tungstenite::connect(format!("ws://127.0.0.1:{}/realtime", cluster.ws_port)).is_err());
    assert!(cluster.http_get("/health").0 != 200);

    // Silent sockets that never start their TLS handshake count as handshakes: three times
    // more than may wait, and the oldest 200 are dropped to make room.
    let silent = cluster.silent_sockets(300);
    let mut closed = 0;
    common::wait_until("silent sockets to be dropped", common::PATIENCE, || {
        closed = common::closed_by_server(&silent);
        closed >= 200
    });
    assert_eq!(closed, 200, "the 200 oldest silent sockets were dropped");
    drop(silent);

    // A reload naming a file that is not there keeps the certificate that works.
    let mut sql = cluster.client();
    sql.batch_execute("ALTER SYSTEM SET realtime.ssl_cert_file = '/nonexistent/server.crt'")
        .unwrap();
    sql.batch_execute("SELECT pg_reload_conf()").unwrap();
    let deadline = Instant::now() + common::PATIENCE;
    while !cluster
        .log()
        .contains("keeping the previous TLS certificate")
    {
        assert!(
            Instant::now() < deadline,
            "no warning; log:\n{}",
            cluster.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(cluster.log().contains("/nonexistent/server.crt"));
    let mut again = wss(&cluster, &config).expect("the previous certificate still serves");
    again.subscribe("s", "t", None);
    cluster
        .client()
        .batch_execute("INSERT INTO t VALUES (2)")
        .unwrap();
    assert_eq!(again.change_ids(1), [2]);
    assert_eq!(ws.change_ids(1), [2]);
    let _ = std::fs::remove_dir_all(certs);
}
