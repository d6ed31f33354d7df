//! realtime_ext's own WebSocket protocol on `/realtime`: JSON text messages (docs/protocol.md).
//! Parses what clients send and encodes what they are sent, including each
//! change's frame, built once per change for every native session.

use super::{Ask, Protocol, Received, Refusal, Say, SnapshotWish};
use crate::auth::AuthError;
use crate::bridge::Target;
use crate::bridge::{ResolveError, WatchedTable};
use crate::change::{Change, EndReason, FrameSlot, GapReason, Topic, MAX_CHANNEL_BYTES};
use crate::filter::FilterError;
use crate::net::identity;
use crate::net::rooms::{self, Presence, Shout};
use crate::net::subscriptions::{Since, SubscribeError, Wish};
use crate::ops::{Op, OpSet};
use crate::snapshot::{self, OrderBy, Xids};
use crate::stats::Counters;
use crate::visibility;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::HashSet;
use std::fmt::Write;
use std::sync::Arc;
use tokio_tungstenite::tungstenite::{Message, Utf8Bytes};

/// The native protocol's frames on each change: the change, the change without its old row
/// (for subscribers who could not see the row before), and the row leaving a subscription.
pub const CHANGE: FrameSlot = FrameSlot(0);
pub const CHANGE_NO_OLD: FrameSlot = FrameSlot(1);
pub const LEAVE: FrameSlot = FrameSlot(2);
/// Its frame on each client broadcast, and on each presence state or diff.
pub const BROADCAST: FrameSlot = FrameSlot(3);
pub const PRESENCE: FrameSlot = FrameSlot(4);

/// Most columns a `select` may name (a table has at most 1,600).
const MAX_SELECTED: usize = 1600;

/// Messages a client sends.
#[derive(Deserialize, Debug)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum ClientMessage {
    Subscribe {
        /// Client-chosen subscription id (string or number), unique on this connection.
        id: Value,
        /// A table, or (`channel`) a relayed NOTIFY channel or a topic `realtime_send` sends
        /// to: exactly one of the two.
        table: Option<String>,
        channel: Option<String>,
        events: Option<Vec<String>>,
        filter: Option<String>,
        /// Resume: also send the changes after this position that are still in the history.
        since: Option<u64>,
        /// First send the table's current rows (`snapshot` pages, then `snapshot_end`), then
        /// exactly the changes they do not contain.
        snapshot: Option<bool>,
        /// With `snapshot`: at most this many rows, in this order (`col.desc,other`).
        limit: Option<u64>,
        order: Option<String>,
        /// A token from `realtime_snapshot_token()` (or a `snapshot_end`): send only the
        /// changes the reads in that snapshot did not contain.
        after_snapshot: Option<String>,
        /// A channel's: be told who is present (`presence_state`, then `presence_diff`s).
        presence: Option<bool>,
        /// Only these columns of each row.
        select: Option<Vec<String>>,
    },
    Unsubscribe {
        id: Value,
    },
    Ping {
        #[serde(rename = "ref")]
        reference: Option<Value>,
    },
    /// Which watched tables this connection's principal may subscribe to.
    Tables {
        #[serde(rename = "ref")]
        reference: Option<Value>,
    },
    /// Act as the principal of this JWT from now on (first sign-in, or a refresh).
    Auth {
        token: String,
    },
    /// The client has handled everything up to this position (shown to operators).
    Ack {
        position: u64,
    },
    /// Be present on the channel with this state (replacing the last); with a `ref`, the
    /// server answers `tracked`.
    Track {
        channel: String,
        state: Option<Value>,
        #[serde(rename = "ref")]
        reference: Option<Value>,
    },
    Untrack {
        channel: String,
        #[serde(rename = "ref")]
        reference: Option<Value>,
    },
    /// Send to the channel's other subscribers (with `self`, to this connection too); with a
    /// `ref`, the server answers `broadcast_sent`.
    Broadcast {
        channel: String,
        event: String,
        payload: Option<Value>,
        #[serde(rename = "self")]
        include_self: Option<bool>,
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
    UnknownChannel,
    TableNotWatched,
    UnknownColumn,
    InvalidFilter,
    InvalidFilterValue,
    InvalidEvents,
    DuplicateSubscription,
    UnknownSubscription,
    TooManySubscriptions,
    InvalidSnapshot,
    SnapshotFailed,
    NotSubscribed,
    RateLimited,
    PayloadTooLarge,
    PresenceFull,
    Unauthorized,
    Forbidden,
    TokenExpired,
    TooManyConnections,
    Unavailable,
    Internal,
}

/// Messages the server sends, apart from `change` and `leave` (`change_frame`, `leave_frame`).
#[derive(Serialize, Debug)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ServerMessage<'a> {
    Subscribed {
        id: &'a Value,
        #[serde(skip_serializing_if = "Option::is_none")]
        schema: Option<&'a str>,
        #[serde(skip_serializing_if = "Option::is_none")]
        table: Option<&'a str>,
        #[serde(skip_serializing_if = "Option::is_none")]
        channel: Option<&'a str>,
        #[serde(skip_serializing_if = "Option::is_none")]
        events: Option<Vec<&'static str>>,
        position: u64,
        /// With `since`: "complete" when every change after it follows, "partial" when a
        /// `gap` will say what is missing.
        #[serde(skip_serializing_if = "Option::is_none")]
        resume: Option<&'static str>,
    },
    Unsubscribed {
        id: &'a Value,
        /// Why the server ended it; absent when the client asked.
        #[serde(skip_serializing_if = "Option::is_none")]
        reason: Option<EndReason>,
    },
    Pong {
        #[serde(rename = "ref", skip_serializing_if = "Option::is_none")]
        reference: Option<&'a Value>,
        position: u64,
    },
    Tables {
        #[serde(rename = "ref", skip_serializing_if = "Option::is_none")]
        reference: Option<&'a Value>,
        tables: &'a [WatchedTable],
    },
    Error {
        code: ErrorCode,
        message: &'a str,
        #[serde(skip_serializing_if = "Option::is_none")]
        id: Option<&'a Value>,
        /// The `ref` of the broadcast refused.
        #[serde(rename = "ref", skip_serializing_if = "Option::is_none")]
        reference: Option<&'a Value>,
    },
    Gap {
        reason: GapReason,
        from_position: u64,
        to_position: u64,
    },
    /// The snapshot of subscription `id` is complete: `rows` were sent; changes after
    /// `position` that it did not contain follow. `token` resumes without duplicates (as
    /// `after_snapshot`, with `since`).
    SnapshotEnd {
        id: &'a Value,
        rows: u64,
        position: u64,
        token: String,
    },
    /// The connection now acts as `role`; `expires_at` is when its token stops being valid
    /// (Unix seconds), absent when it does not expire.
    Authenticated {
        role: &'a str,
        #[serde(skip_serializing_if = "Option::is_none")]
        expires_at: Option<u64>,
    },
    /// The connection's broadcast went to `receivers` connections.
    BroadcastSent {
        #[serde(rename = "ref")]
        reference: &'a Value,
        receivers: usize,
    },
    /// The connection is present on `channel` under `key`.
    Tracked {
        #[serde(rename = "ref")]
        reference: &'a Value,
        channel: &'a str,
        key: String,
    },
    Untracked {
        #[serde(rename = "ref")]
        reference: &'a Value,
        channel: &'a str,
    },
}

impl Serialize for EndReason {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(match self {
            EndReason::Dropped => "table_dropped",
            EndReason::Unwatched => "table_unwatched",
            EndReason::Renamed => "table_renamed",
            EndReason::Forbidden => "forbidden",
            EndReason::TokenExpired => "token_expired",
        })
    }
}

impl Serialize for GapReason {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(match self {
            GapReason::QueueOverflow => "queue_overflow",
            GapReason::SpillUnreadable => "spill_unreadable",
            GapReason::RenderFailed => "render_failed",
            GapReason::SlowClient => "slow_client",
            GapReason::PolicyFailed => "policy_failed",
            GapReason::ServerRestart => "server_restart",
            GapReason::HistoryExpired => "history_expired",
            GapReason::HistoryLost => "history_lost",
            GapReason::TooLarge => "too_large",
        })
    }
}

impl ServerMessage<'_> {
    pub fn to_text(&self) -> String {
        serde_json::to_string(self).expect("server messages always serialize")
    }
}

/// Why a client message was refused before anything was done with it.
#[derive(Debug, thiserror::Error)]
pub enum ParseError {
    #[error("invalid JSON: {0}")]
    Json(serde_json::Error),
    #[error("message must be a JSON object with a string \"type\"")]
    NoType,
    #[error("unknown message type \"{0}\"")]
    UnknownType(String),
    #[error("invalid {kind} message: {source}")]
    Invalid {
        kind: String,
        source: serde_json::Error,
    },
    #[error("id must be a string of at most {MAX_ID_BYTES} bytes or an integer from -{MAX_INTEGER_ID} to {MAX_INTEGER_ID}")]
    Id,
    #[error("limit must be from 0 to {}", i64::MAX)]
    Limit,
    /// PostgreSQL text cannot hold NUL: a name would be cut at it and mean another table.
    #[error("subscribe strings cannot contain NUL characters")]
    Nul,
}

/// Parse a client message, telling malformed JSON from an unknown message type.
pub fn parse(text: &str) -> Result<ClientMessage, ParseError> {
    let value: Value = serde_json::from_str(text).map_err(ParseError::Json)?;
    let kind = match value.get("type").and_then(Value::as_str) {
        None => return Err(ParseError::NoType),
        Some(
            kind @ ("subscribe" | "unsubscribe" | "ping" | "tables" | "auth" | "ack" | "broadcast"
            | "track" | "untrack"),
        ) => kind.to_string(),
        Some(other) => return Err(ParseError::UnknownType(other.to_string())),
    };
    let message =
        serde_json::from_value(value).map_err(|source| ParseError::Invalid { kind, source })?;
    match &message {
        ClientMessage::Subscribe { id, .. } | ClientMessage::Unsubscribe { id }
            if !valid_id(id) =>
        {
            Err(ParseError::Id)
        }
        // Snapshot limits are bigints in SQL.
        ClientMessage::Subscribe {
            limit: Some(limit), ..
        } if *limit > i64::MAX as u64 => Err(ParseError::Limit),
        ClientMessage::Subscribe {
            table,
            channel,
            filter,
            events,
            order,
            ..
        } if table.iter().chain(channel).any(|name| name.contains('\0'))
            || filter.as_deref().is_some_and(|f| f.contains('\0'))
            || order.as_deref().is_some_and(|o| o.contains('\0'))
            || events.iter().flatten().any(|e| e.contains('\0')) =>
        {
            Err(ParseError::Nul)
        }
        _ => Ok(message),
    }
}

/// Longest string id.
pub const MAX_ID_BYTES: usize = 256;
/// Largest integer id: what a JavaScript number holds exactly (2^53 - 1).
pub const MAX_INTEGER_ID: i64 = (1 << 53) - 1;

/// A string of at most `MAX_ID_BYTES`, or an integer (however written: `1`, `1.0`, `1e2`)
/// within ±`MAX_INTEGER_ID`, so that every id the server accepts compares by value exactly.
fn valid_id(id: &Value) -> bool {
    match id {
        Value::String(s) => s.len() <= MAX_ID_BYTES,
        Value::Number(n) => match n.as_i64() {
            Some(i) => i.unsigned_abs() <= MAX_INTEGER_ID as u64,
            None => n
                .as_f64()
                .is_some_and(|f| f.fract() == 0.0 && f.abs() <= MAX_INTEGER_ID as f64),
        },
        _ => false,
    }
}

/// Whether two subscription ids are the same: numbers by value (`1` and `1.0` are one id).
pub fn same_id(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => {
            crate::filter::numbers_equal(&x.to_string(), &y.to_string())
        }
        _ => a == b,
    }
}

/// Each refusal's stable code on the wire.
pub trait Coded: std::fmt::Display {
    fn code(&self) -> ErrorCode;
}

impl Coded for ParseError {
    fn code(&self) -> ErrorCode {
        match self {
            ParseError::Json(_) => ErrorCode::InvalidJson,
            ParseError::UnknownType(_) => ErrorCode::UnknownType,
            ParseError::NoType
            | ParseError::Invalid { .. }
            | ParseError::Id
            | ParseError::Limit
            | ParseError::Nul => ErrorCode::InvalidMessage,
        }
    }
}

impl Coded for FilterError {
    fn code(&self) -> ErrorCode {
        match self {
            FilterError::Unreadable(_) => ErrorCode::Internal,
            _ => ErrorCode::InvalidFilter,
        }
    }
}

impl Coded for ResolveError {
    fn code(&self) -> ErrorCode {
        match self {
            ResolveError::UnknownTable(_) | ResolveError::Unreadable(_) => ErrorCode::UnknownTable,
            ResolveError::UnknownChannel(_) => ErrorCode::UnknownChannel,
            ResolveError::NotWatched { .. } => ErrorCode::TableNotWatched,
            ResolveError::UnknownColumn(_) => ErrorCode::UnknownColumn,
            ResolveError::FilterRefused { .. } => ErrorCode::InvalidFilter,
            ResolveError::FilterValue(_) => ErrorCode::InvalidFilterValue,
            ResolveError::Unauthorized(_) => ErrorCode::Unauthorized,
            ResolveError::Forbidden(_) => ErrorCode::Forbidden,
            ResolveError::Unavailable => ErrorCode::Unavailable,
            ResolveError::Internal(_) => ErrorCode::Internal,
        }
    }
}

impl Coded for AuthError {
    fn code(&self) -> ErrorCode {
        match self {
            AuthError::Expired => ErrorCode::TokenExpired,
            _ => ErrorCode::Unauthorized,
        }
    }
}

impl Coded for identity::Refusal {
    fn code(&self) -> ErrorCode {
        match self {
            identity::Refusal::Token(e) => e.code(),
            identity::Refusal::Role(e) => e.code(),
            identity::Refusal::TooManyConnections { .. }
            | identity::Refusal::TooManyAnonymous { .. } => ErrorCode::TooManyConnections,
        }
    }
}

impl Coded for rooms::Refused {
    fn code(&self) -> ErrorCode {
        match self {
            rooms::Refused::NotSubscribed => ErrorCode::NotSubscribed,
            rooms::Refused::Forbidden => ErrorCode::Forbidden,
            rooms::Refused::RateLimited(_) => ErrorCode::RateLimited,
            rooms::Refused::TooLarge(_) => ErrorCode::PayloadTooLarge,
            rooms::Refused::BadEvent => ErrorCode::InvalidMessage,
            rooms::Refused::TrackForbidden => ErrorCode::Forbidden,
            rooms::Refused::StateTooLarge(_) => ErrorCode::PayloadTooLarge,
            rooms::Refused::PresenceFull(_) => ErrorCode::PresenceFull,
        }
    }
}

impl Coded for SubscribeError {
    fn code(&self) -> ErrorCode {
        match self {
            SubscribeError::Duplicate => ErrorCode::DuplicateSubscription,
            SubscribeError::TooMany(_) => ErrorCode::TooManySubscriptions,
            SubscribeError::NoEvents
            | SubscribeError::UnknownEvent(_)
            | SubscribeError::NotWatched => ErrorCode::InvalidEvents,
            SubscribeError::Filter(e) => e.code(),
            SubscribeError::Resolve(e) => e.code(),
        }
    }
}

/// realtime_ext's own protocol, as the connection driver speaks it.
pub struct Native;

impl Protocol for Native {
    type Id = Value;
    const COUNTERS: Counters = Counters::NATIVE;

    fn parse(&mut self, message: Received<'_>, asks: &mut Vec<Ask<Value>>, out: &mut Vec<Message>) {
        match message {
            Received::Text(text) => match ask(text) {
                Ok(ask) => asks.push(ask),
                Err(refused) => out.push(Message::Text(refused)),
            },
            Received::Binary(_) => out.push(Message::Text(encode(Say::Refused {
                id: None,
                refusal: Refusal::Binary,
            }))),
        }
    }

    fn same(a: &Value, b: &Value) -> bool {
        same_id(a, b)
    }

    fn encode(&mut self, say: Say<'_, Value>, out: &mut Vec<Message>) {
        out.push(Message::Text(encode(say)))
    }
}

/// The frame refusing a message with `refusal`'s code and text.
fn refused(refusal: &dyn Coded, id: Option<&Value>) -> Utf8Bytes {
    error_frame(refusal.code(), &refusal.to_string(), id)
}

fn error_frame(code: ErrorCode, message: &str, id: Option<&Value>) -> Utf8Bytes {
    let reference = None;
    ServerMessage::Error {
        code,
        message,
        id,
        reference,
    }
    .to_text()
    .into()
}

fn ask(text: &str) -> Result<Ask<Value>, Utf8Bytes> {
    Ok(match parse(text).map_err(|e| refused(&e, None))? {
        ClientMessage::Ack { position } => Ask::Ack { position },
        ClientMessage::Auth { token } => Ask::Auth { token },
        ClientMessage::Ping { reference } => Ask::Ping { reference },
        ClientMessage::Tables { reference } => Ask::Tables { reference },
        ClientMessage::Unsubscribe { id } => Ask::Unsubscribe { id },
        ClientMessage::Track {
            channel,
            state,
            reference,
        } => Ask::Track {
            channel,
            key: None,
            state: state.unwrap_or(Value::Null).to_string(),
            reference,
        },
        ClientMessage::Untrack { channel, reference } => Ask::Untrack { channel, reference },
        ClientMessage::Broadcast {
            channel,
            event,
            payload,
            include_self,
            reference,
        } => Ask::Broadcast {
            channel,
            event,
            payload: payload.unwrap_or(Value::Null).to_string(),
            include_self: include_self == Some(true),
            reference,
        },
        ClientMessage::Subscribe {
            id,
            table,
            channel,
            events,
            filter,
            since,
            snapshot,
            limit,
            order,
            after_snapshot,
            presence,
            select,
        } => {
            let invalid = |why: &str| error_frame(ErrorCode::InvalidMessage, why, Some(&id));
            if select
                .as_ref()
                .is_some_and(|s| s.len() > MAX_SELECTED || s.iter().any(|c| c.contains('\0')))
            {
                return Err(invalid("select names at most 1,600 columns, without NUL"));
            }
            if select.is_some() && snapshot == Some(true) {
                return Err(invalid("select and snapshot cannot be combined"));
            }
            let target = match (table, channel) {
                (Some(_), None) if presence.is_some() => {
                    return Err(invalid("presence applies to channels, not tables"));
                }
                (Some(table), None) => Target::Table(table),
                (None, Some(channel)) => {
                    if channel.is_empty() || channel.len() > MAX_CHANNEL_BYTES {
                        return Err(invalid(&format!(
                            "a channel's name is 1 to {MAX_CHANNEL_BYTES} bytes"
                        )));
                    }
                    if events.is_some() || filter.is_some() || snapshot.is_some() {
                        return Err(invalid(
                            "events, filter and snapshot apply to tables, not channels",
                        ));
                    }
                    Target::Channel(channel)
                }
                _ => return Err(invalid("subscribe names either a table or a channel")),
            };
            let events = events
                .as_deref()
                .map(OpSet::parse)
                .transpose()
                .map_err(|name| refused(&SubscribeError::UnknownEvent(name), Some(&id)))?;
            let snapshot = snapshot == Some(true);
            let (order, after_snapshot) = stitching(snapshot, since, after_snapshot, order, limit)
                .map_err(|why| error_frame(ErrorCode::InvalidSnapshot, &why, Some(&id)))?;
            Ask::Subscribe {
                id,
                wish: Wish {
                    target,
                    events,
                    filter,
                    since: since.map(Since::Position),
                    after_snapshot,
                    presence: presence == Some(true),
                    select,
                },
                snapshot: snapshot.then_some(SnapshotWish { order, limit }),
            }
        }
    })
}

/// A subscribe's snapshot options, checked: its `order` and the snapshot it resumes after.
fn stitching(
    snapshot: bool,
    since: Option<u64>,
    after_snapshot: Option<String>,
    order: Option<String>,
    limit: Option<u64>,
) -> Result<(Vec<OrderBy>, Option<Arc<Xids>>), String> {
    if !snapshot && (limit.is_some() || order.is_some()) {
        return Err("limit and order apply to \"snapshot\": true".into());
    }
    if snapshot && (since.is_some() || after_snapshot.is_some()) {
        return Err("a snapshot subscription starts from its own snapshot; to resume one, subscribe with since and after_snapshot (snapshot_end's token)".into());
    }
    let order = order.as_deref().map(snapshot::parse_order).transpose();
    let after = after_snapshot.as_deref().map(Xids::parse).transpose();
    Ok((
        order.map_err(|e| e.to_string())?.unwrap_or_default(),
        after.map_err(|e| e.to_string())?.map(Arc::new),
    ))
}

fn encode(say: Say<'_, Value>) -> Utf8Bytes {
    let message = match say {
        Say::Change { change, .. } if change.op == Op::Message => {
            return change.encoded(CHANGE, message_frame)
        }
        Say::Change {
            change,
            old,
            columns: None,
            ..
        } => {
            return match old {
                true => change.encoded(CHANGE, change_frame),
                false => change.encoded(CHANGE_NO_OLD, change_frame_without_old),
            }
        }
        Say::Change {
            change,
            old,
            columns: Some(columns),
            ..
        } => return projected_frame(change, false, old, columns).into(),
        Say::Leave {
            change,
            columns: None,
            ..
        } => return change.encoded(LEAVE, leave_frame),
        Say::Leave {
            change,
            columns: Some(columns),
            ..
        } => return projected_frame(change, true, true, columns).into(),
        Say::SnapshotRows { id, rows } => return snapshot_frame(id, rows).into(),
        Say::Broadcast { shout } => return shout.encoded(BROADCAST, broadcast_frame),
        Say::Presence(told) => return told.encoded(PRESENCE, presence_frame),
        Say::Tracked {
            reference,
            channel,
            key: Some(key),
        } => ServerMessage::Tracked {
            reference,
            channel,
            key: key.to_string(),
        },
        Say::Tracked {
            reference,
            channel,
            key: None,
        } => ServerMessage::Untracked { reference, channel },
        Say::BroadcastSent {
            reference,
            receivers,
        } => ServerMessage::BroadcastSent {
            reference,
            receivers,
        },
        Say::Refused {
            refusal: Refusal::Room { refused, reference },
            ..
        } => {
            let message = ServerMessage::Error {
                code: refused.code(),
                message: &refused.to_string(),
                id: None,
                reference,
            };
            return message.to_text().into();
        }
        Say::Refused { id, refusal } => {
            let (code, message) = match refusal {
                Refusal::Subscribe(e) => (e.code(), e.to_string()),
                Refusal::Token(e) => (e.code(), e.to_string()),
                Refusal::Identity(e) => (e.code(), e.to_string()),
                Refusal::Worker(e) => (e.code(), e.to_string()),
                Refusal::UnknownSubscription => (
                    ErrorCode::UnknownSubscription,
                    "no subscription with this id".into(),
                ),
                Refusal::SnapshotFailed(why) => (ErrorCode::SnapshotFailed, why.to_string()),
                Refusal::Binary => (
                    ErrorCode::BinaryNotSupported,
                    "send JSON text messages".into(),
                ),
                Refusal::Room { refused, .. } => (refused.code(), refused.to_string()),
            };
            return error_frame(code, &message, id);
        }
        Say::Ended { id, reason } => ServerMessage::Unsubscribed {
            id,
            reason: Some(reason),
        },
        Say::Unsubscribed { id } => ServerMessage::Unsubscribed { id, reason: None },
        Say::Gap { reason, from, to } => ServerMessage::Gap {
            reason,
            from_position: from,
            to_position: to,
        },
        Say::Subscribed { id, made } => {
            let table = matches!(made.topic, Topic::Table(_));
            ServerMessage::Subscribed {
                id,
                schema: table.then_some(made.schema),
                table: table.then_some(made.table),
                channel: (!table).then_some(made.table),
                events: table.then(|| made.events.iter().map(|op| op.name()).collect()),
                position: made.position,
                resume: made
                    .resume
                    .map(|r| if r.complete { "complete" } else { "partial" }),
            }
        }
        Say::Authenticated { role, expires_at } => {
            ServerMessage::Authenticated { role, expires_at }
        }
        Say::Pong {
            reference,
            position,
        } => ServerMessage::Pong {
            reference,
            position,
        },
        Say::Tables { reference, tables } => ServerMessage::Tables { reference, tables },
        Say::SnapshotEnd {
            id,
            rows,
            position,
            token,
        } => ServerMessage::SnapshotEnd {
            id,
            rows,
            position,
            token,
        },
    };
    message.to_text().into()
}

pub fn snapshot_frame<'a>(id: &Value, rows: impl IntoIterator<Item = &'a str>) -> String {
    let mut s = format!(r#"{{"type":"snapshot","id":{id},"rows":["#);
    for (i, row) in rows.into_iter().enumerate() {
        if i > 0 {
            s.push(',');
        }
        s.push_str(row);
    }
    s.push_str("]}");
    s
}

/// The `change` message, assembled as text: the row images are already JSON and are copied
/// in, not re-encoded.
pub fn change_frame(change: &Change) -> String {
    change_text(change, change.new.as_deref(), change.old.as_deref())
}

/// The `change` message for a subscriber who could not see the row before the UPDATE.
pub fn change_frame_without_old(change: &Change) -> String {
    change_text(change, change.new.as_deref(), None)
}

/// The `leave` message, for subscribers whose filter, or whose view of the table, an
/// UPDATE's new row is no longer in: the change's position, transaction, table and old row.
pub fn leave_frame(change: &Change) -> String {
    leave_text(change, change.old.as_deref())
}

/// A change or leave message with only the columns a subscriber may see: encoded for that
/// subscriber, not shared.
pub fn projected_frame(
    change: &Change,
    leave: bool,
    with_old: bool,
    columns: &HashSet<String>,
) -> String {
    let project =
        |row: Option<&serde_json::Map<String, Value>>| row.map(|r| visibility::project(r, columns));
    let old = project(change.old_row().filter(|_| with_old || leave));
    if leave {
        leave_text(change, old.as_deref())
    } else {
        change_text(change, project(change.new_row()).as_deref(), old.as_deref())
    }
}

fn change_text(change: &Change, new: Option<&str>, old: Option<&str>) -> String {
    let (schema, table) = &*change.names;
    let (new, old) = (new.unwrap_or("null"), old.unwrap_or("null"));
    let mut s = String::with_capacity(160 + new.len() + old.len() + schema.len() + table.len());
    let _ = write!(
        s,
        r#"{{"type":"change","position":{},"xid":{},"commit_time":"{}","op":"{}","schema":{},"table":{},"new":{new},"old":{old}}}"#,
        change.position,
        change.txn.xid,
        change.txn.commit_time,
        change.op.name(),
        json_string(schema),
        json_string(table),
    );
    s
}

/// The `message` message: a relayed notification or a `realtime_send`, its payload already
/// JSON text.
pub fn message_frame(change: &Change) -> String {
    let (channel, event) = &*change.names;
    let payload = change.new.as_deref().unwrap_or("null");
    let mut s = String::with_capacity(160 + payload.len() + channel.len() + event.len());
    let _ = write!(
        s,
        r#"{{"type":"message","position":{},"xid":{},"commit_time":"{}","channel":{},"event":{},"pid":{},"payload":{payload}}}"#,
        change.position,
        change.txn.xid,
        change.txn.commit_time,
        json_string(channel),
        json_string(event),
        change.sender,
    );
    s
}

/// The `broadcast` message a client sent to a channel, its payload already JSON text.
pub fn broadcast_frame(shout: &Shout) -> String {
    format!(
        r#"{{"type":"broadcast","channel":{},"event":{},"payload":{}}}"#,
        json_string(&shout.channel),
        json_string(&shout.event),
        shout.payload
    )
}

/// `presence_state` or `presence_diff`: members by their key, states already JSON text.
pub fn presence_frame(presence: &Presence) -> String {
    let members = |out: &mut String, members: &[rooms::Present]| {
        out.push('{');
        for (i, (key, state)) in members.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            let _ = write!(out, r#""{key}":{}"#, state.state);
        }
        out.push('}');
    };
    let mut s = String::new();
    match presence {
        Presence::State {
            channel,
            members: all,
        } => {
            let _ = write!(
                s,
                r#"{{"type":"presence_state","channel":{},"state":"#,
                json_string(channel)
            );
            members(&mut s, all);
        }
        Presence::Diff {
            channel,
            joins,
            leaves,
        } => {
            let _ = write!(
                s,
                r#"{{"type":"presence_diff","channel":{},"joins":"#,
                json_string(channel)
            );
            members(&mut s, joins);
            s.push_str(r#","leaves":"#);
            members(&mut s, leaves);
        }
    }
    s.push('}');
    s
}

fn leave_text(change: &Change, old: Option<&str>) -> String {
    let (schema, table) = &*change.names;
    let old = old.unwrap_or("null");
    let mut s = String::with_capacity(160 + old.len() + schema.len() + table.len());
    let _ = write!(
        s,
        r#"{{"type":"leave","position":{},"xid":{},"commit_time":"{}","op":"{}","schema":{},"table":{},"old":{old}}}"#,
        change.position,
        change.txn.xid,
        change.txn.commit_time,
        Op::Update.name(),
        json_string(schema),
        json_string(table),
    );
    s
}

fn json_string(s: &str) -> String {
    serde_json::to_string(s).unwrap_or_else(|_| "\"\"".into())
}

#[cfg(test)]
mod unit {
    use super::*;

    #[test]
    fn a_channel_is_subscribed_alone_and_its_messages_framed_with_their_payload() {
        let wish = |text: &str| match ask(text) {
            Ok(Ask::Subscribe { wish, .. }) => Ok(wish.target),
            Ok(_) => panic!("not a subscribe"),
            Err(frame) => Err(frame.to_string()),
        };
        assert_eq!(
            wish(r#"{"type":"subscribe","id":1,"channel":"orders"}"#),
            Ok(Target::Channel("orders".into()))
        );
        for refused in [
            r#"{"type":"subscribe","id":1}"#,
            r#"{"type":"subscribe","id":1,"table":"t","channel":"orders"}"#,
            r#"{"type":"subscribe","id":1,"channel":"orders","filter":"a=eq.1"}"#,
            r#"{"type":"subscribe","id":1,"channel":"orders","snapshot":true}"#,
            r#"{"type":"subscribe","id":1,"channel":""}"#,
        ] {
            let frame = wish(refused).unwrap_err();
            assert!(
                frame.contains(r#""code":"invalid_message""#),
                "{refused}: {frame}"
            );
        }
        let long = format!(
            r#"{{"type":"subscribe","id":1,"channel":"{}"}}"#,
            "x".repeat(256)
        );
        assert!(wish(&long).is_err());
        let txn = Arc::new(crate::change::Txn::new(9, "T".into()));
        let names = Arc::new(("orders".to_string(), "no\"te".to_string()));
        let frame = message_frame(&Change::message(5, txn, names, 77, r#"{"a":[1]}"#.into()));
        let value: Value = serde_json::from_str(&frame).unwrap();
        assert_eq!(
            value,
            serde_json::json!({"type":"message","position":5,"xid":9,"commit_time":"T",
                "channel":"orders","event":"no\"te","pid":77,"payload":{"a":[1]}})
        );
    }

    #[test]
    fn parse_errors_are_distinguished() {
        assert_eq!(parse("{").unwrap_err().code(), ErrorCode::InvalidJson);
        assert_eq!(parse("[1]").unwrap_err().code(), ErrorCode::InvalidMessage);
        assert_eq!(
            parse(r#"{"type":"nope"}"#).unwrap_err().code(),
            ErrorCode::UnknownType
        );
        assert_eq!(
            parse(r#"{"type":"subscribe"}"#).unwrap_err().code(),
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
            r#"{"type":"subscribe","id":1.5,"table":"t"}"#,
            r#"{"type":"subscribe","id":9007199254740992,"table":"t"}"#,
            r#"{"type":"subscribe","id":-9007199254740992,"table":"t"}"#,
            r#"{"type":"subscribe","id":18446744073709551616,"table":"t"}"#,
            r#"{"type":"subscribe","id":1e400,"table":"t"}"#,
            r#"{"type":"subscribe","id":1,"table":"t","snapshot":true,"limit":9223372036854775808}"#,
            r#"{"type":"subscribe","id":1,"table":"t","snapshot":true,"limit":18446744073709551615}"#,
        ] {
            assert_eq!(
                parse(bad).unwrap_err().code(),
                ErrorCode::InvalidMessage,
                "{bad}"
            );
        }
        for good in [
            r#"{"type":"subscribe","id":9007199254740991,"table":"t"}"#,
            r#"{"type":"subscribe","id":-9007199254740991,"table":"t"}"#,
            r#"{"type":"subscribe","id":1e2,"table":"t"}"#,
            r#"{"type":"subscribe","id":1,"table":"t","snapshot":true,"limit":9223372036854775807}"#,
        ] {
            assert!(parse(good).is_ok(), "{good}");
        }
        let n = |s: &str| serde_json::from_str::<Value>(s).unwrap();
        assert!(same_id(&n("1"), &n("1.0")));
        assert!(same_id(&n("1e2"), &n("100")));
        assert!(!same_id(&n("1"), &n("\"1\"")));
    }
}
