//! One request: the JSON body for a run of changes, its Standard Webhooks headers and
//! signature, and what the receiver's answer means.
//!
//! A change's body is shaped as Supabase's database webhooks shape theirs (`type`, `schema`,
//! `table`, `record`, `old_record`), plus its `position` and `commit_timestamp`; a message on
//! a topic is `{type: "MESSAGE", topic, event, payload, ...}`. With a batch size above 1 the
//! body is `{"events": [...]}`, whatever the number of changes in it.

use crate::net::headless::Event;
use crate::webhook::Webhook;
use base64::Engine;
use std::time::{Duration, Instant};

/// Most bytes of a refusal's body kept for its error message.
const ERROR_BODY_BYTES: usize = 512;

/// What a receiver made of a request.
#[derive(Debug)]
pub enum Answer {
    /// A 2xx.
    Acknowledged(u16),
    /// 410: it wants no more.
    Gone(u16),
    /// Any other status; with its `Retry-After`, if it gave one.
    Refused {
        status: u16,
        error: String,
        retry_after: Option<Duration>,
    },
    /// No answer: refused address, no connection, a timeout, TLS, ...
    Failed(String),
}

/// The body for `events` (changes and messages only), one object or a list of them.
pub fn body(events: &[Event], batched: bool) -> String {
    let objects: Vec<String> = events.iter().filter_map(object).collect();
    match batched {
        true => format!(r#"{{"events":[{}]}}"#, objects.join(",")),
        false => objects.join(","),
    }
}

fn object(event: &Event) -> Option<String> {
    let Event::Change {
        position,
        commit_time,
        op,
        schema,
        table,
        new,
        old,
        ..
    } = event
    else {
        return None;
    };
    // Row images and payloads are JSON the engine rendered: written as they are, not parsed.
    let json = |text: &Option<String>| text.as_deref().unwrap_or("null").to_string();
    let quoted = |text: &str| serde_json::Value::from(text).to_string();
    Some(if *op == crate::ops::Op::Message {
        format!(
            r#"{{"type":"MESSAGE","topic":{},"event":{},"payload":{},"position":{position},"commit_timestamp":{}}}"#,
            quoted(schema),
            quoted(table),
            json(new),
            quoted(commit_time),
        )
    } else {
        format!(
            r#"{{"type":"{}","schema":{},"table":{},"record":{},"old_record":{},"position":{position},"commit_timestamp":{}}}"#,
            op.name(),
            quoted(schema),
            quoted(table),
            json(new),
            json(old),
            quoted(commit_time),
        )
    })
}

/// The request's `webhook-id`: the same for every attempt at the same changes, and after a
/// restart, so a receiver can tell a retry from a new delivery.
pub fn message_id(hook: &Webhook, first: u64, last: u64) -> String {
    match hook.batch_size > 1 {
        true => format!("msg_{}_{first}_{last}", hook.id),
        false => format!("msg_{}_{first}", hook.id),
    }
}

/// `webhook-signature`: `v1,` and the base64 HMAC-SHA256 of `id.timestamp.body`.
pub fn sign(secret: &[u8], id: &str, timestamp: u64, body: &str) -> String {
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret);
    let mut context = ring::hmac::Context::with_key(&key);
    context.update(id.as_bytes());
    context.update(b".");
    context.update(timestamp.to_string().as_bytes());
    context.update(b".");
    context.update(body.as_bytes());
    let tag = context.sign();
    format!(
        "v1,{}",
        base64::engine::general_purpose::STANDARD.encode(tag.as_ref())
    )
}

/// POST `body` to the webhook's receiver; its answer and how long it took to come.
pub async fn send(
    client: &reqwest::Client,
    hook: &Webhook,
    id: &str,
    body: String,
) -> (Answer, Duration) {
    let timestamp = crate::auth::now();
    let signature = sign(&hook.secret, id, timestamp, &body);
    let mut request = client
        .post(&hook.url)
        .timeout(hook.timeout)
        .header("content-type", "application/json")
        .header("webhook-id", id)
        .header("webhook-timestamp", timestamp.to_string())
        .header("webhook-signature", signature);
    for (name, value) in &hook.headers {
        request = request.header(name, value);
    }
    let started = Instant::now();
    let answer = match request.body(body).send().await {
        Ok(response) => answer(response).await,
        Err(e) => Answer::Failed(describe(&e)),
    };
    (answer, started.elapsed())
}

async fn answer(mut response: reqwest::Response) -> Answer {
    let status = response.status().as_u16();
    if response.status().is_success() {
        return Answer::Acknowledged(status);
    }
    if status == 410 {
        return Answer::Gone(status);
    }
    let retry_after = response
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| super::retry::retry_after(v, std::time::SystemTime::now()));
    let location = response
        .headers()
        .get("location")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    // Only the start of a refusal is read: a receiver cannot make the worker hold much.
    let mut text = Vec::new();
    while text.len() < ERROR_BODY_BYTES {
        match response.chunk().await {
            Ok(Some(chunk)) => text.extend_from_slice(&chunk),
            _ => break,
        }
    }
    text.truncate(ERROR_BODY_BYTES);
    let said = String::from_utf8_lossy(&text).trim().to_string();
    let error = match location {
        Some(to) if response.status().is_redirection() => {
            format!("HTTP {status}: redirects are not followed (to {to})")
        }
        _ if said.is_empty() => format!("HTTP {status}"),
        _ => format!("HTTP {status}: {said}"),
    };
    Answer::Refused {
        status,
        error,
        retry_after,
    }
}

/// An error with its causes: reqwest's own message names only the URL.
fn describe(e: &reqwest::Error) -> String {
    let mut text = if e.is_timeout() {
        "timed out".to_string()
    } else if e.is_connect() {
        "could not connect".to_string()
    } else {
        "request failed".to_string()
    };
    let mut source = std::error::Error::source(e);
    while let Some(cause) = source {
        let said = cause.to_string();
        if !text.contains(&said) {
            text.push_str(": ");
            text.push_str(&said);
        }
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod unit {
    use super::*;

    /// The example of the Standard Webhooks specification and its reference libraries.
    #[test]
    fn signatures_are_standard_webhooks_ones() {
        let secret = base64::engine::general_purpose::STANDARD
            .decode("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")
            .unwrap();
        assert_eq!(
            sign(
                &secret,
                "msg_p5jXN8AQM9LWM0D4loKWxJek",
                1614265330,
                r#"{"test": 2432232314}"#
            ),
            "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
        );
    }

    fn change(position: u64, op: crate::ops::Op, new: Option<&str>) -> Event {
        Event::Change {
            ids: vec![0],
            position,
            commit_time: "2026-12-03T10:00:00.000001Z".into(),
            op,
            schema: "public".into(),
            table: "defects".into(),
            new: new.map(str::to_string),
            old: None,
        }
    }

    #[test]
    fn bodies_carry_rows_as_json() {
        let insert = change(7, crate::ops::Op::Insert, Some(r#"{"id":1,"note":"a\"b"}"#));
        let one: serde_json::Value =
            serde_json::from_str(&body(std::slice::from_ref(&insert), false)).unwrap();
        assert_eq!(
            one,
            serde_json::json!({"type": "INSERT", "schema": "public", "table": "defects",
                "record": {"id": 1, "note": "a\"b"}, "old_record": null, "position": 7,
                "commit_timestamp": "2026-12-03T10:00:00.000001Z"})
        );
        let gap = Event::Gap {
            reason: crate::change::GapReason::HistoryExpired,
            from: 1,
            to: 2,
        };
        let message = change(8, crate::ops::Op::Message, Some(r#"{"x":[1]}"#));
        let many: serde_json::Value =
            serde_json::from_str(&body(&[insert, gap, message], true)).unwrap();
        let events = many["events"].as_array().unwrap();
        assert_eq!(events.len(), 2);
        assert_eq!(events[1]["type"], "MESSAGE");
        assert_eq!(events[1]["topic"], "public");
        assert_eq!(events[1]["payload"], serde_json::json!({"x": [1]}));
    }
}
