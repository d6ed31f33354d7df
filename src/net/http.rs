//! The HTTP front door: `GET /health`, the WebSocket upgrade on `/realtime`, clear errors for
//! everything else. Connections that never finish their request head are dropped on a timeout.

use super::{session, Context};
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};
use tokio_tungstenite::WebSocketStream;

pub const WEBSOCKET_PATH: &str = "/realtime";
const MAX_HEAD: usize = 16 * 1024;
const READ_BUFFER: usize = 4 * 1024;
/// Outgoing bytes are handed to the socket once this many are buffered; with tungstenite's
/// 128 KiB default, 10,000 clients catching up held over a gigabyte between them.
const WRITE_BUFFER: usize = 16 * 1024;
const LINGER: Duration = Duration::from_secs(1);
const LINGER_BYTES: usize = 64 * 1024;

/// Counts a connection for as long as it lives.
struct Counted<'a>(&'a Context);

impl Drop for Counted<'_> {
    fn drop(&mut self) {
        self.0.shared.connections.fetch_sub(1, Relaxed);
    }
}

pub async fn serve(mut stream: TcpStream, context: Context) {
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
    let timeout = Duration::from_millis(context.shared.handshake_timeout_ms.load(Relaxed));
    let (buf, head_len) = match tokio::time::timeout(timeout, read_head(&mut stream)).await {
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
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut request = httparse::Request::new(&mut headers);
    if !matches!(
        request.parse(&buf[..head_len]),
        Ok(httparse::Status::Complete(_))
    ) {
        return respond(
            &mut stream,
            "400 Bad Request",
            &error_body("bad_request", "malformed HTTP request"),
            "",
        )
        .await;
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
        (Some("GET"), "/health") => {
            let s = &context.shared;
            let body = serde_json::json!({
                "status": "ok",
                "position": s.position(),
                "connections": s.connections.load(Relaxed),
                "subscriptions": s.subscriptions.load(Relaxed),
                "queue": {
                    "used_bytes": s.queue_used.load(Relaxed),
                    "capacity_bytes": s.queue_capacity.load(Relaxed),
                    "lost_transactions": s.lost_txns.load(Relaxed),
                },
            })
            .to_string();
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
            let body = error_body("method_not_allowed", "only GET is supported");
            respond(
                &mut stream,
                "405 Method Not Allowed",
                &body,
                "Allow: GET\r\n",
            )
            .await
        }
    }
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

async fn respond(stream: &mut TcpStream, status: &str, body: &str, extra_headers: &str) {
    let response = format!(
        "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n{extra_headers}\r\n{body}",
        body.len()
    );
    let _ = stream.write_all(response.as_bytes()).await;
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
