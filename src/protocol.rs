//! The WebSocket protocol: JSON text messages. See README.md, "Protocol".

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Messages a client sends.
#[derive(Deserialize, Debug)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum ClientMessage {
    Subscribe {
        /// Client-chosen subscription id (string or number), unique on this connection.
        id: Value,
        table: String,
        events: Option<Vec<String>>,
        filter: Option<String>,
    },
    Unsubscribe {
        id: Value,
    },
    Ping {
        #[serde(rename = "ref")]
        reference: Option<Value>,
    },
}

/// Stable error codes.
#[derive(Serialize, Debug, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    InvalidJson,
    InvalidMessage,
    UnknownType,
    BinaryNotSupported,
    UnknownTable,
    TableNotWatched,
    UnknownColumn,
    InvalidFilter,
    InvalidFilterValue,
    InvalidEvents,
    DuplicateSubscription,
    UnknownSubscription,
    TooManySubscriptions,
    Unavailable,
    Internal,
}

/// Messages the server sends, apart from `change` and `gap` (built by the worker).
#[derive(Serialize, Debug)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ServerMessage<'a> {
    Subscribed {
        id: &'a Value,
        schema: &'a str,
        table: &'a str,
        events: Vec<&'static str>,
        position: u64,
    },
    Unsubscribed {
        id: &'a Value,
        /// Why the server ended it; absent when the client asked.
        #[serde(skip_serializing_if = "Option::is_none")]
        reason: Option<&'static str>,
    },
    Pong {
        #[serde(rename = "ref", skip_serializing_if = "Option::is_none")]
        reference: Option<&'a Value>,
        position: u64,
    },
    Error {
        code: ErrorCode,
        message: &'a str,
        #[serde(skip_serializing_if = "Option::is_none")]
        id: Option<&'a Value>,
    },
    Gap {
        reason: &'static str,
        from_position: u64,
        to_position: u64,
    },
}

impl ServerMessage<'_> {
    pub fn to_text(&self) -> String {
        serde_json::to_string(self).expect("server messages always serialize")
    }
}

/// Parse a client message, telling malformed JSON from an unknown message type.
pub fn parse(text: &str) -> Result<ClientMessage, (ErrorCode, String)> {
    let message = parse_json(text)?;
    let invalid = |m: &str| Err((ErrorCode::InvalidMessage, m.to_string()));
    match &message {
        ClientMessage::Subscribe { id, .. } | ClientMessage::Unsubscribe { id }
            if !valid_id(id) =>
        {
            invalid("id must be a string or a number")
        }
        // PostgreSQL text cannot hold NUL: a name would be cut at it and mean another table.
        ClientMessage::Subscribe {
            table,
            filter,
            events,
            ..
        } if table.contains('\0')
            || filter.as_deref().is_some_and(|f| f.contains('\0'))
            || events.iter().flatten().any(|e| e.contains('\0')) =>
        {
            invalid("subscribe strings cannot contain NUL characters")
        }
        _ => Ok(message),
    }
}

fn valid_id(id: &Value) -> bool {
    id.is_string() || id.is_number()
}

/// Whether two subscription ids are the same: numbers by value (`1` and `1.0` are one id).
pub fn same_id(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => {
            crate::net::filter::numbers_equal(&x.to_string(), &y.to_string())
        }
        _ => a == b,
    }
}

fn parse_json(text: &str) -> Result<ClientMessage, (ErrorCode, String)> {
    let value: Value = serde_json::from_str(text)
        .map_err(|e| (ErrorCode::InvalidJson, format!("invalid JSON: {e}")))?;
    let kind = value.get("type").and_then(Value::as_str).map(str::to_owned);
    match kind.as_deref() {
        None => Err((
            ErrorCode::InvalidMessage,
            "message must be a JSON object with a string \"type\"".into(),
        )),
        Some("subscribe" | "unsubscribe" | "ping") => serde_json::from_value(value).map_err(|e| {
            (
                ErrorCode::InvalidMessage,
                format!("invalid {} message: {e}", kind.unwrap()),
            )
        }),
        Some(other) => Err((
            ErrorCode::UnknownType,
            format!("unknown message type \"{other}\""),
        )),
    }
}

#[cfg(test)]
mod unit {
    use super::*;

    #[test]
    fn parse_errors_are_distinguished() {
        assert_eq!(parse("{").unwrap_err().0, ErrorCode::InvalidJson);
        assert_eq!(parse("[1]").unwrap_err().0, ErrorCode::InvalidMessage);
        assert_eq!(
            parse(r#"{"type":"nope"}"#).unwrap_err().0,
            ErrorCode::UnknownType
        );
        assert_eq!(
            parse(r#"{"type":"subscribe"}"#).unwrap_err().0,
            ErrorCode::InvalidMessage
        );
        assert!(matches!(
            parse(r#"{"type":"subscribe","id":1,"table":"t","filter":"a=eq.1"}"#),
            Ok(ClientMessage::Subscribe { .. })
        ));
    }

    #[test]
    fn nul_and_odd_ids_are_refused() {
        for bad in [
            r#"{"type":"subscribe","id":1,"table":"pulse\u0000"}"#,
            r#"{"type":"subscribe","id":1,"table":"t","filter":"a=eq.\u0000"}"#,
            r#"{"type":"subscribe","id":{"a":1},"table":"t"}"#,
            r#"{"type":"unsubscribe","id":null}"#,
        ] {
            assert_eq!(
                parse(bad).unwrap_err().0,
                ErrorCode::InvalidMessage,
                "{bad}"
            );
        }
        let n = |s: &str| serde_json::from_str::<Value>(s).unwrap();
        assert!(same_id(&n("1"), &n("1.0")));
        assert!(same_id(&n("1e2"), &n("100")));
        assert!(!same_id(&n("1"), &n("\"1\"")));
    }
}
