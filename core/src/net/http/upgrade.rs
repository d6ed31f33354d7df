//! The WebSocket upgrade (RFC 6455 section 4.2): checks the request and its `Origin`, counts the connection
//! against realtime.max_connections, checks the token of the `token` (or `apikey`) query
//! parameter, answers 101 and hands over the stream.

use super::access;
use super::head::Head;
use super::response::Response;
use crate::net::context::Context;
use crate::net::identity::{Identity, Refusal};
use crate::net::shared::Limits;
use crate::net::stream::Stream;
use crate::protocol::native::{Coded, ErrorCode};
use crate::stats::Stat;
use tokio::io::AsyncWriteExt;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};
use tokio_tungstenite::WebSocketStream;

const READ_BUFFER: usize = 4 * 1024;
/// Outgoing bytes are handed to the socket once this many are buffered; with tungstenite's
/// 128 KiB default, 10,000 clients catching up held over a gigabyte between them.
const WRITE_BUFFER: usize = 16 * 1024;

/// Counts a WebSocket connection in its protocol's gauge for as long as it lives.
pub struct Counted(Context, Stat);

impl Drop for Counted {
    fn drop(&mut self) {
        self.0.shared.stats.sub(self.1, 1);
    }
}

/// An upgraded connection, counted until dropped.
pub struct Upgraded<S> {
    pub ws: WebSocketStream<S>,
    pub identity: Identity,
    pub counted: Counted,
}

/// Upgrade, counted in `counted_as`, or the response that refuses it (`None`: the client left).
pub async fn upgrade<S: Stream>(
    mut stream: S,
    head: Head,
    ip: std::net::IpAddr,
    limits: &Limits,
    context: &Context,
    counted_as: Stat,
) -> Result<Upgraded<S>, Option<(S, Response)>> {
    if let Err(refusal) =
        check(&head).and_then(|()| access::check_origin(&head, &limits.allowed_origins))
    {
        return Err(Some((stream, refusal)));
    }
    context.shared.stats.increment(counted_as);
    let counted = Counted(context.clone(), counted_as);
    let open = context.shared.stats.connections() as usize;
    if open > limits.max_connections {
        let refusal = Response::error(
            "503 Service Unavailable",
            "too_many_connections",
            "the server has reached realtime.max_connections",
        )
        .header("Retry-After: 1");
        return Err(Some((stream, refusal)));
    }
    let token = head.param("token").or_else(|| head.param("apikey"));
    let identity = Identity::start(
        token.as_deref(),
        context.shared.clone(),
        context.worker.clone(),
        ip,
    )
    .await;
    let identity = match identity {
        Ok(identity) => identity,
        Err(refusal) => return Err(Some((stream, refused(&refusal)))),
    };
    let accept = derive_accept_key(head.header("sec-websocket-key").as_bytes());
    let response = format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {accept}\r\n\r\n"
    );
    stream
        .write_all(response.as_bytes())
        .await
        .map_err(|_| None)?;
    // tungstenite preallocates its read buffer; 128 KiB by default would cost an idle
    // connection 128 KiB. It grows when a larger message arrives.
    let config = WebSocketConfig::default()
        .read_buffer_size(READ_BUFFER)
        .write_buffer_size(WRITE_BUFFER)
        .max_message_size(Some(limits.max_message_size))
        .max_frame_size(Some(limits.max_message_size));
    let ws =
        WebSocketStream::from_partially_read(stream, head.rest, Role::Server, Some(config)).await;
    Ok(Upgraded {
        ws,
        identity,
        counted,
    })
}

/// The HTTP answer to a token or role refused at the upgrade.
pub(super) fn refused(refusal: &Refusal) -> Response {
    let code = refusal.code();
    let status = match code {
        ErrorCode::Unauthorized | ErrorCode::TokenExpired => "401 Unauthorized",
        ErrorCode::TooManyConnections => "429 Too Many Requests",
        ErrorCode::Unavailable => "503 Service Unavailable",
        _ => "500 Internal Server Error",
    };
    let name = serde_json::to_value(code).ok();
    let name = name.as_ref().and_then(|v| v.as_str()).unwrap_or("error");
    Response::error(status, name, &refusal.to_string())
}

/// Everything RFC 6455 asks of the client's handshake.
fn check(head: &Head) -> Result<(), Response> {
    let upgrade = head.header("upgrade").eq_ignore_ascii_case("websocket")
        && head
            .header("connection")
            .split(',')
            .any(|t| t.trim().eq_ignore_ascii_case("upgrade"));
    if !upgrade || head.header("sec-websocket-key").is_empty() {
        return Err(Response::error(
            "426 Upgrade Required",
            "upgrade_required",
            "this path speaks WebSocket; connect with a WebSocket client",
        )
        .header("Upgrade: websocket")
        .header("Connection: Upgrade"));
    }
    if head.header("sec-websocket-version") != "13" {
        return Err(Response::error(
            "426 Upgrade Required",
            "unsupported_version",
            "only WebSocket version 13 is supported",
        )
        .header("Sec-WebSocket-Version: 13"));
    }
    if !valid_key(head.header("sec-websocket-key")) {
        return Err(Response::error(
            "400 Bad Request",
            "bad_request",
            "Sec-WebSocket-Key must be 16 bytes in base64 (RFC 6455 section 4.1)",
        ));
    }
    Ok(())
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
