//! Pages from other sites and DNS-rebinding host names are refused before any WebSocket is
//! opened: realtime.allowed_origins and realtime.allowed_hosts.
mod common;
use common::Cluster;
use std::time::{Duration, Instant};

fn upgrade(host: &str, origin: Option<&str>) -> String {
    let origin = origin.map_or(String::new(), |o| format!("Origin: {o}\r\n"));
    format!(
        "GET /realtime HTTP/1.1\r\nHost: {host}\r\n{origin}Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
}

/// The status line's code of the server's answer to `request`.
fn status(cluster: &Cluster, request: &str) -> (String, String) {
    let answer = cluster.raw(request.as_bytes());
    let code = answer.split(' ').nth(1).unwrap_or("").to_string();
    (code, answer)
}

#[test]
fn origins_and_hosts_not_listed_are_refused_and_a_reload_changes_the_lists() {
    let cluster = Cluster::start(
        "access",
        &[
            "realtime.allowed_origins = 'https://app.example, http://localhost:3000'",
            "realtime.allowed_hosts = 'localhost, 127.0.0.1'",
        ],
    );
    let (code, body) = status(
        &cluster,
        &upgrade("127.0.0.1", Some("https://evil.example")),
    );
    assert_eq!(code, "403", "{body}");
    assert!(body.contains("origin_not_allowed"), "{body}");
    // Origins compare as browsers send them, whatever the case; no Origin is not a page.
    for origin in [
        Some("https://APP.example"),
        Some("http://localhost:3000"),
        None,
    ] {
        let (code, body) = status(&cluster, &upgrade("localhost:8080", origin));
        assert_eq!(code, "101", "{origin:?}: {body}");
    }
    // A rebinding page reaches the port under its own host name: refused on every route.
    let (code, body) = status(
        &cluster,
        &upgrade("evil.example", Some("https://app.example")),
    );
    assert_eq!(code, "403", "{body}");
    assert!(body.contains("host_not_allowed"), "{body}");
    let (code, _) = status(
        &cluster,
        "GET /health HTTP/1.1\r\nHost: evil.example:80\r\n\r\n",
    );
    assert_eq!(code, "403");
    let (code, _) = status(&cluster, "GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n");
    assert_eq!(code, "200");
    // A second Host or Origin cannot smuggle a name past the lists, in either order.
    for (first, second) in [("127.0.0.1", "evil.example"), ("evil.example", "127.0.0.1")] {
        let request = upgrade(first, Some("https://app.example")).replacen(
            "\r\n\r\n",
            &format!("\r\nHost: {second}\r\n\r\n"),
            1,
        );
        let (code, body) = status(&cluster, &request);
        assert_eq!(code, "400", "Host {first} then {second}: {body}");
        assert!(
            body.contains("the host header may appear only once"),
            "{body}"
        );
    }
    for (first, second) in [
        ("https://app.example", "https://evil.example"),
        ("https://evil.example", "https://app.example"),
    ] {
        let request = upgrade("127.0.0.1", Some(first)).replacen(
            "\r\n\r\n",
            &format!("\r\nOrigin: {second}\r\n\r\n"),
            1,
        );
        let (code, body) = status(&cluster, &request);
        assert_eq!(code, "400", "Origin {first} then {second}: {body}");
    }
    let (code, body) = status(
        &cluster,
        "GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nhost: evil.example\r\n\r\n",
    );
    assert_eq!(code, "400", "{body}");

    // Emptied by a reload: any origin and host again.
    let mut sql = cluster.client();
    for statement in [
        "ALTER SYSTEM SET realtime.allowed_origins = ''",
        "ALTER SYSTEM SET realtime.allowed_hosts = ''",
        "SELECT pg_reload_conf()",
    ] {
        sql.batch_execute(statement).unwrap();
    }
    let deadline = Instant::now() + common::PATIENCE;
    loop {
        let (code, body) = status(
            &cluster,
            &upgrade("evil.example", Some("https://evil.example")),
        );
        if code == "101" {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "still refused after the reload: {body}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}
