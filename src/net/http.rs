//! The HTTP front door: `GET /health`, the WebSocket upgrade on `/realtime`, clear errors for
//! everything else. Connections that never finish their request head are dropped on a timeout.

use super::{session, Context};
use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::Notify;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};
use tokio_tungstenite::WebSocketStream;

pub const WEBSOCKET_PATH: &str = "/realtime";
const MAX_HEAD: usize = 16 * 1024;
const READ_BUFFER: usize = 4 * 1024;
/// Outgoing bytes are handed to the socket once this many are buffered; with tungstenite's
/// 128 KiB default, 10,000 clients catching up held over a gigabyte between them.
const WRITE_BUFFER: usize = 16 * 1024;
const MAX_HEADERS: usize = 64;
/// Before closing, unread input is drained for at most this long (or this many bytes), so that
/// the kernel does not answer it with a reset that destroys the response.
const LINGER: Duration = Duration::from_secs(1);
const LINGER_BYTES: usize = 8 * 1024 * 1024;

/// Connections still sending their request head, per source address. At
/// realtime.max_handshakes, a new connection evicts the oldest one of the address that has the
/// most: a flood of silent sockets from one place only ever evicts its own, and never locks
/// anyone else out. They do not count against realtime.max_connections.
#[derive(Default)]
pub struct Handshakes(Mutex<Pending>);

#[derive(Default)]
struct Pending {
    by_address: HashMap<IpAddr, VecDeque<(u64, Arc<Notify>)>>,
    total: usize,
    next_id: u64,
}

/// One connection counted in `Handshakes` until it is dropped; `evicted` fires if it must go.
struct Handshaking<'a> {
    handshakes: &'a Handshakes,
    ip: IpAddr,
    id: u64,
    evicted: Arc<Notify>,
}

impl Handshakes {
    fn begin(&self, ip: IpAddr, max: usize) -> Handshaking<'_> {
        let mut p = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if p.total >= max.max(1) {
            let busiest = p
                .by_address
                .iter_mut()
                .max_by_key(|(_, q)| q.len())
                .and_then(|(_, q)| q.pop_front());
            if let Some((_, evicted)) = busiest {
                evicted.notify_one();
                p.total -= 1;
            }
        }
        p.next_id += 1;
        let (id, evicted) = (p.next_id, Arc::new(Notify::new()));
        p.by_address
            .entry(ip)
            .or_default()
            .push_back((id, evicted.clone()));
        p.total += 1;
        Handshaking {
            handshakes: self,
            ip,
            id,
            evicted,
        }
    }
}

impl Drop for Handshaking<'_> {
    fn drop(&mut self) {
        let mut p = self.handshakes.0.lock().unwrap_or_else(|e| e.into_inner());
        let Some(q) = p.by_address.get_mut(&self.ip) else {
            return;
        };
        let before = q.len();
        q.retain(|(id, _)| *id != self.id);
        let removed = before - q.len();
        if q.is_empty() {
            p.by_address.remove(&self.ip);
        }
        p.total -= removed;
    }
}

/// Counts a WebSocket connection for as long as it lives.
struct Counted<'a>(&'a Context);

impl Drop for Counted<'_> {
    fn drop(&mut self) {
        self.0.shared.connections.fetch_sub(1, Relaxed);
    }
}

pub async fn serve(mut stream: TcpStream, ip: IpAddr, context: Context) {
    let handshaking = context
        .handshakes
        .begin(ip, context.shared.max_handshakes.load(Relaxed));
    let timeout = Duration::from_millis(context.shared.handshake_timeout_ms.load(Relaxed));
    let head = tokio::select! {
        head = tokio::time::timeout(timeout, read_head(&mut stream)) => head,
        // Evicted to make room: it sent nothing useful for longer than anyone else there.
        _ = handshaking.evicted.notified() => return,
    };
    let (buf, head_len) = match head {
        Err(_) => {
            let body = error_body(
                "timeout",
                "no complete HTTP request within realtime.handshake_timeout",
            );
            return respond(&mut stream, "408 Request Timeout", &body, "").await;
        }
        Ok(Err(Some(status))) => {
            return respond(
                &mut stream,
                status,
                &error_body("bad_request", "malformed or oversized HTTP request"),
                "",
            )
            .await;
        }
        Ok(Err(None)) => return,
        Ok(Ok(head)) => head,
    };
    drop(handshaking);
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut request = httparse::Request::new(&mut headers);
    match request.parse(&buf[..head_len]) {
        Ok(httparse::Status::Complete(_)) => {}
        Err(httparse::Error::TooManyHeaders) => {
            let body = error_body(
                "too_many_headers",
                &format!("a request may have at most {MAX_HEADERS} headers"),
            );
            return respond(
                &mut stream,
                "431 Request Header Fields Too Large",
                &body,
                "",
            )
            .await;
        }
        _ => {
            let body = error_body("bad_request", "malformed HTTP request");
            return respond(&mut stream, "400 Bad Request", &body, "").await;
        }
    }
    let path = request.path.unwrap_or("/").split('?').next().unwrap_or("/");
    let header = |name: &str| {
        request
            .headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case(name))
            .and_then(|h| std::str::from_utf8(h.value).ok())
            .unwrap_or("")
    };
    match (request.method, path) {
        (Some(method @ ("GET" | "HEAD")), "/health") => {
            let s = &context.shared;
            let body = serde_json::json!({
                "status": "ok",
                "position": s.position(),
                "connections": s.connections.load(Relaxed),
                "subscriptions": s.subscriptions.load(Relaxed),
                "backlog_bytes": context.batches.ring_bytes(),
                "queue": {
                    "used_bytes": s.queue_used.load(Relaxed),
                    "capacity_bytes": s.queue_capacity.load(Relaxed),
                    "lost_transactions": s.lost_txns.load(Relaxed),
                },
            })
            .to_string();
            if method == "HEAD" {
                let head = response("200 OK", &body, "");
                let head = &head[..head.len() - body.len()];
                let _ = stream.write_all(head.as_bytes()).await;
                return;
            }
            respond(&mut stream, "200 OK", &body, "").await
        }
        (Some("GET"), WEBSOCKET_PATH) | (Some("GET"), "/realtime/") => {
            let upgrade = header("upgrade").eq_ignore_ascii_case("websocket")
                && header("connection")
                    .split(',')
                    .any(|t| t.trim().eq_ignore_ascii_case("upgrade"));
            let key = header("sec-websocket-key");
            if !upgrade || key.is_empty() {
                let body = error_body(
                    "upgrade_required",
                    "this path speaks WebSocket; connect with a WebSocket client",
                );
                return respond(
                    &mut stream,
                    "426 Upgrade Required",
                    &body,
                    "Upgrade: websocket\r\nConnection: Upgrade\r\n",
                )
                .await;
            }
            if header("sec-websocket-version") != "13" {
                let body = error_body(
                    "unsupported_version",
                    "only WebSocket version 13 is supported",
                );
                return respond(
                    &mut stream,
                    "426 Upgrade Required",
                    &body,
                    "Sec-WebSocket-Version: 13\r\n",
                )
                .await;
            }
            if !valid_key(key) {
                let body = error_body(
                    "bad_request",
                    "Sec-WebSocket-Key must be 16 bytes in base64 (RFC 6455 section 4.1)",
                );
                return respond(&mut stream, "400 Bad Request", &body, "").await;
            }
            let open = context.shared.connections.fetch_add(1, Relaxed) + 1;
            let _counted = Counted(&context);
            if open > context.shared.max_connections.load(Relaxed) {
                let body = error_body(
                    "too_many_connections",
                    "the server has reached realtime.max_connections",
                );
                return respond(
                    &mut stream,
                    "503 Service Unavailable",
                    &body,
                    "Retry-After: 1\r\n",
                )
                .await;
            }
            let accept = derive_accept_key(key.as_bytes());
            let response = format!(
                "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {accept}\r\n\r\n"
            );
            if stream.write_all(response.as_bytes()).await.is_err() {
                return;
            }
            let limit = context.shared.max_message_size.load(Relaxed);
            // tungstenite preallocates its read buffer; 128 KiB by default would cost an idle
            // connection 128 KiB. It grows when a larger message arrives.
            let config = WebSocketConfig::default()
                .read_buffer_size(READ_BUFFER)
                .write_buffer_size(WRITE_BUFFER)
                .max_message_size(Some(limit))
                .max_frame_size(Some(limit));
            let leftover = buf[head_len..].to_vec();
            let ws =
                WebSocketStream::from_partially_read(stream, leftover, Role::Server, Some(config))
                    .await;
            session::run(ws, context.clone()).await
        }
        (Some("GET" | "HEAD"), _) => {
            let body = error_body(
                "not_found",
                &format!("no such path; WebSocket clients connect to {WEBSOCKET_PATH}"),
            );
            respond(&mut stream, "404 Not Found", &body, "").await
        }
        _ => {
            let body = error_body("method_not_allowed", "only GET and HEAD are supported");
            respond(
                &mut stream,
                "405 Method Not Allowed",
                &body,
                "Allow: GET, HEAD\r\n",
            )
            .await
        }
    }
}

/// A Sec-WebSocket-Key is a 16-byte nonce in base64: 22 characters, the last of which carries
/// only two bits, then `==`.
fn valid_key(key: &str) -> bool {
    let b = key.as_bytes();
    b.len() == 24
        && b[..22]
            .iter()
            .all(|c| c.is_ascii_alphanumeric() || *c == b'+' || *c == b'/')
        && matches!(b[21], b'A' | b'Q' | b'g' | b'w')
        && &b[22..] == b"=="
}

/// Read until the end of the request head. Returns the bytes read and the head's length;
/// `Err(Some(status))` for a request to answer with an error, `Err(None)` if the peer left.
async fn read_head(stream: &mut TcpStream) -> Result<(Vec<u8>, usize), Option<&'static str>> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 2048];
    loop {
        let n = stream.read(&mut chunk).await.map_err(|_| None)?;
        if n == 0 {
            return Err(if buf.is_empty() {
                None
            } else {
                Some("400 Bad Request")
            });
        }
        let searched_from = buf.len().saturating_sub(3);
        buf.extend_from_slice(&chunk[..n]);
        if let Some(i) = buf[searched_from..]
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
        {
            let head_len = searched_from + i + 4;
            return Ok((buf, head_len));
        }
        if buf.len() > MAX_HEAD {
            return Err(Some("431 Request Header Fields Too Large"));
        }
    }
}

fn error_body(code: &str, message: &str) -> String {
    serde_json::json!({ "error": code, "message": message }).to_string()
}

fn response(status: &str, body: &str, extra_headers: &str) -> String {
    format!(
        "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n{extra_headers}\r\n{body}",
        body.len()
    )
}

async fn respond(stream: &mut TcpStream, status: &str, body: &str, extra_headers: &str) {
    let _ = stream
        .write_all(response(status, body, extra_headers).as_bytes())
        .await;
    let _ = stream.shutdown().await;
    // Lingering close: closing with unread input makes the kernel send a reset, which can
    // destroy the response before the client reads it. Drain a little first, bounded.
    let mut sink = [0u8; 4096];
    let _ = tokio::time::timeout(LINGER, async {
        let mut drained = 0;
        while drained < LINGER_BYTES {
            match stream.read(&mut sink).await {
                Ok(0) | Err(_) => break,
                Ok(n) => drained += n,
            }
        }
    })
    .await;
}
