//! Supabase's REST broadcast, which its clients fall back to (`send()` on a channel not joined)
//! or use on purpose (`httpSend()`): `POST /realtime/v1/api/broadcast` with
//! `{"messages": [{topic, event, payload, private?}]}`, and
//! `POST /realtime/v1/api/broadcast/{topic}/events/{event}` whose body is the payload. Every
//! message is authorized as a broadcast from a socket would be (the right to send on its topic)
//! and bounded the same way; all are sent, or none, and the answer is `202 Accepted`, which is
//! what the clients take as success. Open to pages of any origin (CORS): the credential is a
//! header or parameter, never a cookie.

use super::head::Head;
use super::response::Response;
use super::upgrade::refused;
use crate::bridge::Target;
use crate::change::MAX_CHANNEL_BYTES;
use crate::net::context::Context;
use crate::net::identity::Identity;
use crate::net::rooms::Shout;
use crate::net::shared::Limits;
use crate::net::stream::Stream;
use serde::Deserialize;
use serde_json::value::RawValue;
use std::collections::HashMap;
use std::net::IpAddr;
use tokio::io::AsyncReadExt;
use tokio::time::Instant;

pub const PATH: &str = "/realtime/v1/api/broadcast";
/// Most messages one request may carry.
const MAX_MESSAGES: usize = 100;
const CORS: &str = "Access-Control-Allow-Origin: *";

/// The answer to a CORS preflight for either path.
pub fn preflight() -> Response {
    Response::text("204 No Content", "text/plain", "")
        .header(CORS)
        .header("Access-Control-Allow-Methods: POST, OPTIONS")
        .header("Access-Control-Allow-Headers: apikey, authorization, content-type, x-client-info")
        .header("Access-Control-Max-Age: 86400")
}

/// Serve one REST broadcast request; the body must arrive by `deadline`.
pub async fn serve<S: Stream>(
    mut stream: S,
    head: Head,
    ip: IpAddr,
    deadline: Instant,
    limits: &Limits,
    context: &Context,
) -> (S, Response) {
    let response = match broadcast(&mut stream, head, ip, deadline, limits, context).await {
        Ok(()) => Response::text("202 Accepted", "text/plain", ""),
        Err(refusal) => refusal,
    };
    (stream, response.header(CORS))
}

#[derive(Deserialize)]
struct Batch<'a> {
    #[serde(borrow)]
    messages: Vec<Message<'a>>,
}

#[derive(Deserialize)]
struct Message<'a> {
    topic: String,
    event: String,
    #[serde(borrow)]
    payload: Option<&'a RawValue>,
}

async fn broadcast<S: Stream>(
    stream: &mut S,
    head: Head,
    ip: IpAddr,
    deadline: Instant,
    limits: &Limits,
    context: &Context,
) -> Result<(), Response> {
    let bad = |message: &str| Response::error("400 Bad Request", "bad_request", message);
    let token = match head.header("authorization").strip_prefix("Bearer ") {
        Some(bearer) => Some(bearer.trim().to_string()),
        None if !head.header("apikey").is_empty() => Some(head.header("apikey").to_string()),
        None => head.param("apikey"),
    };
    let identity = Identity::start(
        token.as_deref(),
        context.shared.clone(),
        context.worker.clone(),
        ip,
    )
    .await
    .map_err(|refusal| refused(&refusal))?;
    let principal = identity
        .principal()
        .map_err(|e| Response::error("401 Unauthorized", "unauthorized", &e.to_string()))?
        .clone();
    if head
        .header("content-type")
        .starts_with("application/octet-stream")
    {
        return Err(Response::error(
            "415 Unsupported Media Type",
            "unsupported_media_type",
            "binary broadcast payloads are not served; send JSON",
        ));
    }
    let body = body(stream, &head, deadline, limits.max_message_size).await?;
    let text = std::str::from_utf8(&body).map_err(|_| bad("the body is not UTF-8"))?;
    let messages = match head.path.strip_prefix(PATH).filter(|rest| !rest.is_empty()) {
        None => {
            let batch: Batch = serde_json::from_str(text)
                .map_err(|e| bad(&format!("the body is {{\"messages\": [...]}}: {e}")))?;
            batch.messages
        }
        Some(rest) => {
            let (topic, event) = rest
                .strip_prefix('/')
                .and_then(|rest| rest.split_once("/events/"))
                .ok_or_else(|| {
                    bad("the path is /realtime/v1/api/broadcast/{topic}/events/{event}")
                })?;
            let decode = |part: &str| {
                percent_encoding::percent_decode_str(part)
                    .decode_utf8()
                    .map(String::from)
                    .map_err(|_| bad("the topic and event are percent-encoded UTF-8"))
            };
            let payload: &RawValue = serde_json::from_str(text)
                .map_err(|e| bad(&format!("the body is the payload, as JSON: {e}")))?;
            vec![Message {
                topic: decode(topic)?,
                event: decode(event)?,
                payload: Some(payload),
            }]
        }
    };
    if messages.len() > MAX_MESSAGES {
        return Err(Response::error(
            "413 Content Too Large",
            "too_large",
            &format!("a request carries at most {MAX_MESSAGES} messages"),
        ));
    }
    // Every message is checked before any is sent.
    let mut rights = HashMap::new();
    for message in &messages {
        let (topic, event) = (message.topic.as_str(), message.event.as_str());
        if topic.is_empty()
            || topic.len() > MAX_CHANNEL_BYTES
            || event.is_empty()
            || event.len() > MAX_CHANNEL_BYTES
        {
            return Err(bad(&format!(
                "topics and events are 1 to {MAX_CHANNEL_BYTES} bytes"
            )));
        }
        if message.payload.map_or(4, |p| p.get().len()) > limits.max_broadcast_size {
            return Err(Response::error(
                "413 Content Too Large",
                "too_large",
                &format!(
                    "a payload is at most {} bytes (realtime.max_broadcast_size)",
                    limits.max_broadcast_size
                ),
            ));
        }
        if !rights.contains_key(topic) {
            let target = Target::Channel(topic.to_string());
            let send = match context
                .worker
                .resolve(target, Vec::new(), principal.clone())
                .await
            {
                Ok(resolved) => resolved.rights.send,
                Err(_) => false,
            };
            rights.insert(topic, send);
        }
        if rights.get(topic) != Some(&true) {
            return Err(Response::error(
                "403 Forbidden",
                "forbidden",
                &format!("this role may not broadcast on topic {topic:?}"),
            ));
        }
    }
    let (mailbox, _receiving) = context.hub.mailbox();
    for message in messages {
        let payload = message.payload.map_or("null", RawValue::get);
        let shout = Shout::new(message.topic.into(), message.event.into(), payload.into());
        mailbox.send(shout, false);
    }
    Ok(())
}

/// The request's body: `Content-Length` bytes (at most `max`), read by `deadline`.
async fn body<S: Stream>(
    stream: &mut S,
    head: &Head,
    deadline: Instant,
    max: usize,
) -> Result<Vec<u8>, Response> {
    let length: usize = head.header("content-length").trim().parse().map_err(|_| {
        Response::error(
            "411 Length Required",
            "length_required",
            "a broadcast request has a Content-Length",
        )
    })?;
    if length > max {
        return Err(Response::error(
            "413 Content Too Large",
            "too_large",
            &format!("a body is at most {max} bytes (realtime.max_message_size)"),
        ));
    }
    let mut body = head.rest.clone();
    body.truncate(length);
    let timeout = || {
        Response::error(
            "408 Request Timeout",
            "timeout",
            "the body did not arrive within realtime.handshake_timeout",
        )
    };
    while body.len() < length {
        let mut chunk = vec![0u8; (length - body.len()).min(64 * 1024)];
        match tokio::time::timeout_at(deadline, stream.read(&mut chunk)).await {
            Ok(Ok(0)) | Ok(Err(_)) => {
                return Err(Response::error(
                    "400 Bad Request",
                    "bad_request",
                    "the body ended early",
                ))
            }
            Ok(Ok(n)) => body.extend_from_slice(&chunk[..n]),
            Err(_) => return Err(timeout()),
        }
    }
    Ok(body)
}
