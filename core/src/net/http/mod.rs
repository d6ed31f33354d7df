//! The HTTP front door: read the request head (`head`), check its `Host` (`access`), pick a
//! route (`router`), and answer with that route's one function (`health`, `metrics`, `pages`,
//! `upgrade`). Errors are JSON bodies with a code.

mod access;
mod broadcast;
pub mod head;
mod health;
mod metrics;
mod pages;
mod response;
mod router;
mod upgrade;

use crate::net::connection;
use crate::net::context::Context;
use crate::net::shared::Limits;
use crate::net::stream::Stream;
use crate::protocol::native::Native;
use crate::protocol::phoenix::Vsn;
use crate::protocol::supabase::Supabase;
use crate::protocol::Protocol;
use crate::stats::Stat;
use head::{Handshaking, HeadError};
use response::Response;
use router::Route;
use std::net::IpAddr;
use tokio::net::TcpStream;
use tokio::time::Instant;

pub use head::Handshakes;
pub use router::WEBSOCKET_PATH;

/// Serve one connection: over TLS if realtime.ssl is on. The TLS handshake and the request
/// head share realtime.handshake_timeout and count as one handshake in `Handshakes`.
pub async fn serve(stream: TcpStream, ip: IpAddr, context: Context) {
    let limits = context.shared.limits();
    let handshaking = context.handshakes.begin(ip, limits.max_handshakes);
    let deadline = Instant::now() + limits.handshake_timeout;
    match context.shared.tls() {
        None => answer(stream, ip, handshaking, deadline, &limits, context).await,
        Some(tls) => {
            let accepted = tokio::select! {
                accepted = tokio::time::timeout_at(deadline, tls.accept(stream)) => accepted,
                _ = handshaking.evicted() => return,
            };
            // Boxed: inline, the TLS stream's larger state would size every plain
            // connection's task as well.
            if let Ok(Ok(stream)) = accepted {
                Box::pin(answer(stream, ip, handshaking, deadline, &limits, context)).await
            }
        }
    }
}

async fn answer<S: Stream>(
    mut stream: S,
    ip: IpAddr,
    handshaking: Handshaking,
    deadline: Instant,
    limits: &Limits,
    context: Context,
) {
    let head = head::read(&mut stream, &handshaking, deadline).await;
    // A request with a body is still being read: it keeps its place among the handshakes.
    let reading = head.as_ref().is_ok_and(|head| head.method == "POST");
    let handshaking = reading.then_some(handshaking);
    let head = match head {
        Ok(head) => head,
        Err(e) => {
            let response = match e {
                HeadError::Gone => return,
                HeadError::Timeout => Response::error(
                    "408 Request Timeout",
                    "timeout",
                    "no complete HTTP request within realtime.handshake_timeout",
                ),
                HeadError::TooLarge => Response::error(
                    "431 Request Header Fields Too Large",
                    "bad_request",
                    "malformed or oversized HTTP request",
                ),
                HeadError::TooManyHeaders => Response::error(
                    "431 Request Header Fields Too Large",
                    "too_many_headers",
                    &format!("a request may have at most {} headers", head::MAX_HEADERS),
                ),
                HeadError::Repeated(name) => Response::error(
                    "400 Bad Request",
                    "bad_request",
                    &format!("the {name} header may appear only once"),
                ),
                HeadError::Malformed => {
                    Response::error("400 Bad Request", "bad_request", "malformed HTTP request")
                }
            };
            return refuse(response, stream, &context).await;
        }
    };
    if let Err(refusal) = access::check_host(&head, &limits.allowed_hosts) {
        return refuse(refusal, stream, &context).await;
    }
    match router::route(&head.method, &head.path, limits.serve_pages) {
        Route::Health { head_only } => {
            let mut response = health::health(&context);
            response.head_only = head_only;
            response.send(stream).await
        }
        Route::Metrics { head_only } => {
            let mut response = metrics::metrics(&head, ip, &context);
            response.head_only = head_only;
            response.send(stream).await
        }
        Route::Asset(asset) => asset.response(&head).send(stream).await,
        Route::Native => speak(stream, head, ip, context, Native).await,
        Route::Supabase => match Vsn::from_query(head.param("vsn").as_deref()) {
            Ok(vsn) => speak(stream, head, ip, context, Supabase::new(vsn)).await,
            Err(e) => {
                let response = Response::error("400 Bad Request", "bad_request", &e.to_string());
                refuse(response, stream, &context).await
            }
        },
        Route::RestBroadcast => {
            let (stream, response) =
                broadcast::serve(stream, head, ip, deadline, limits, &context).await;
            drop(handshaking);
            match response.error_code() {
                Some(_) => refuse(response, stream, &context).await,
                None => response.send(stream).await,
            }
        }
        Route::Preflight => broadcast::preflight().send(stream).await,
        Route::NotFound => {
            let message = format!("no such path; WebSocket clients connect to {WEBSOCKET_PATH}");
            Response::error("404 Not Found", "not_found", &message)
                .send(stream)
                .await
        }
        Route::MethodNotAllowed => {
            Response::error(
                "405 Method Not Allowed",
                "method_not_allowed",
                "only GET and HEAD are supported",
            )
            .header("Allow: GET, HEAD")
            .send(stream)
            .await
        }
    }
}

/// Upgrade to a WebSocket speaking `protocol`, and drive it until it ends.
async fn speak<S: Stream, P: Protocol>(
    stream: S,
    head: head::Head,
    ip: std::net::IpAddr,
    context: Context,
    protocol: P,
) {
    let limits = context.shared.limits();
    match upgrade::upgrade(stream, head, ip, &limits, &context, P::COUNTERS.connections).await {
        Ok(upgrade::Upgraded {
            ws,
            identity,
            counted,
        }) => {
            connection::run(ws, context, identity, ip, protocol).await;
            drop(counted)
        }
        Err(Some((stream, refusal))) => refuse(refusal, stream, &context).await,
        Err(None) => {}
    }
}

/// Answer a connection that will not be served, counted by why.
async fn refuse<S: Stream>(response: Response, stream: S, context: &Context) {
    let stat = Stat::refused(response.error_code().unwrap_or_default());
    context.shared.stats.increment(stat);
    response.send(stream).await
}
