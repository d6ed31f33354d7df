//! Which requests may be served at all: `Host` against realtime.allowed_hosts (a DNS-rebinding
//! page names its own host), and for WebSocket upgrades `Origin` against
//! realtime.allowed_origins (a page on another site). Browsers always send both; a client that is
//! not a browser can send anything, so these keep pages out, not programs.

use super::head::Head;
use super::response::Response;

/// The refusal for a request whose `Host` is not allowed.
pub fn check_host(head: &Head, allowed: &[String]) -> Result<(), Response> {
    if allowed.is_empty() || allowed.iter().any(|h| *h == host_name(head.header("host"))) {
        return Ok(());
    }
    Err(Response::error(
        "403 Forbidden",
        "host_not_allowed",
        "the Host of this request is not in realtime.allowed_hosts",
    ))
}

/// The refusal for an upgrade from a page whose `Origin` is not allowed. No `Origin`: not a
/// browser page.
pub fn check_origin(head: &Head, allowed: &[String]) -> Result<(), Response> {
    let origin = head.header("origin").trim().to_ascii_lowercase();
    if allowed.is_empty() || origin.is_empty() || allowed.contains(&origin) {
        return Ok(());
    }
    Err(Response::error(
        "403 Forbidden",
        "origin_not_allowed",
        "pages from this Origin may not connect (realtime.allowed_origins)",
    ))
}

/// `Host` without its port, lower-case; IPv6 without brackets.
fn host_name(host: &str) -> String {
    let host = host.trim().to_ascii_lowercase();
    if let Some(v6) = host.strip_prefix('[') {
        return v6.split(']').next().unwrap_or("").to_string();
    }
    host.split(':').next().unwrap_or("").to_string()
}

#[cfg(test)]
mod unit {
    use super::host_name;

    #[test]
    fn host_names_lose_their_port() {
        assert_eq!(host_name("App.Example.com:8080"), "app.example.com");
        assert_eq!(host_name("127.0.0.1"), "127.0.0.1");
        assert_eq!(host_name("[::1]:8080"), "::1");
        assert_eq!(host_name(""), "");
    }
}
