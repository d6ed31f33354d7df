//! Wire protocols. The connection driver (`net::connection`) owns everything a connection
//! does; a protocol only turns client text into what the client asks (`Ask`) and encodes what
//! the driver has it say (`Say`), each change's frames built once for all of its sessions in
//! the slots it owns on the change (`change::FrameSlot`).
//!
//! - `native`: realtime_ext's own JSON messages on `/realtime`.
//! - `phoenix`: the framing of Phoenix channels, which the Supabase Realtime clients speak.
//! - `supabase`: the Supabase Realtime protocol on `/realtime/v1/websocket`, over that framing.

pub mod native;
pub mod phoenix;
pub mod supabase;

use crate::auth::AuthError;
use crate::bridge::{ResolveError, WatchedTable};
use crate::change::{Change, EndReason, GapReason};
use crate::net::rooms::{self, Shout, Told};
use crate::net::subscriptions::{Matched, SubscribeError, Subscribed, Wish};
use crate::snapshot::OrderBy;
use crate::stats::Counters;
use crate::visibility::Columns;
use serde_json::Value;
use tokio_tungstenite::tungstenite::Message;

/// A wire protocol, as the connection driver uses it.
pub trait Protocol: Send + 'static {
    /// A subscription's id on the wire, unique on a connection.
    type Id: Clone + Send + Sync + std::fmt::Display + 'static;

    /// What a client's message asks, appended to `asks` in order (one message may ask several
    /// things: a Phoenix join makes a subscription per binding); frames answering it at once
    /// (a refusal, say) go to `out`, and are sent before the asks are handled.
    fn parse(
        &mut self,
        message: Received<'_>,
        asks: &mut Vec<Ask<Self::Id>>,
        out: &mut Vec<Message>,
    );

    /// The counters its connections are counted in.
    const COUNTERS: Counters;

    /// Whether two ids name the same subscription.
    fn same(a: &Self::Id, b: &Self::Id) -> bool;

    /// The frames for `say`, appended to `out`: usually one, but none or several where the
    /// protocol's messages do not map one to one onto the engine's (a Phoenix join is answered
    /// once for all the subscriptions it made; a change goes once to each channel it matched).
    fn encode(&mut self, say: Say<'_, Self::Id>, out: &mut Vec<Message>);
}

/// A data message from the client.
#[derive(Clone, Copy)]
pub enum Received<'a> {
    Text(&'a str),
    Binary(&'a [u8]),
}

/// What a client asks of the engine.
pub enum Ask<Id> {
    Subscribe {
        id: Id,
        wish: Wish,
        /// Send the table's current rows first.
        snapshot: Option<SnapshotWish>,
    },
    Unsubscribe {
        id: Id,
    },
    /// Act as the principal of this token from now on.
    Auth {
        token: String,
    },
    /// Answer with the position the connection has caught up to.
    Ping {
        reference: Option<Value>,
    },
    /// The watched tables the principal may subscribe to.
    Tables {
        reference: Option<Value>,
    },
    /// The client has handled everything up to here (shown to operators).
    Ack {
        position: u64,
    },
    /// Send `payload` (JSON text) as `event` to the other subscribers of `channel` (and to
    /// this connection if `include_self`); with a `reference`, answer how many got it.
    Broadcast {
        channel: String,
        event: String,
        payload: String,
        include_self: bool,
        reference: Option<Value>,
    },
    /// Be present on `channel` with `state` (JSON text), replacing what it had; `key`: the
    /// key it is shown under where a protocol groups members by key.
    Track {
        channel: String,
        key: Option<String>,
        state: String,
        reference: Option<Value>,
    },
    /// No longer be present on `channel`.
    Untrack {
        channel: String,
        reference: Option<Value>,
    },
}

/// A snapshot a subscription starts with: at most `limit` rows, in `order`.
pub struct SnapshotWish {
    pub order: Vec<OrderBy>,
    pub limit: Option<u64>,
}

/// What the driver has a protocol encode.
pub enum Say<'a, Id> {
    /// A change for the subscriptions `matched` names; `old`: the subscriber could see the row
    /// before, so the old image goes too; `columns`: only these, when not all.
    Change {
        change: &'a Change,
        old: bool,
        columns: &'a Columns,
        matched: Matched<'a, Id>,
    },
    /// An UPDATE moved the row out of what the subscriptions `matched` names may see.
    Leave {
        change: &'a Change,
        columns: &'a Columns,
        matched: Matched<'a, Id>,
    },
    /// The server ended a subscription.
    Ended { id: &'a Id, reason: EndReason },
    /// Positions `from` to `to` are missing for this connection.
    Gap {
        reason: GapReason,
        from: u64,
        to: u64,
    },
    Subscribed {
        id: &'a Id,
        made: &'a Subscribed<'a>,
    },
    /// The client's unsubscribe was done.
    Unsubscribed { id: &'a Id },
    Authenticated {
        role: &'a str,
        expires_at: Option<u64>,
    },
    Pong {
        reference: Option<&'a Value>,
        position: u64,
    },
    Tables {
        reference: Option<&'a Value>,
        tables: &'a [WatchedTable],
    },
    /// A page of a subscription's snapshot: rows as JSON text.
    SnapshotRows { id: &'a Id, rows: Vec<&'a str> },
    /// The snapshot is complete: `rows` were sent; changes after `position` it did not contain
    /// follow; `token` resumes without duplicates.
    SnapshotEnd {
        id: &'a Id,
        rows: u64,
        position: u64,
        token: String,
    },
    /// A client broadcast on a channel this connection is subscribed to.
    Broadcast { shout: &'a Shout },
    /// Who is present on a channel: everyone, or what changed.
    Presence(&'a Told),
    /// The connection is tracked (`key` its presence key) or, without a key, untracked.
    Tracked {
        reference: &'a Value,
        channel: &'a str,
        key: Option<u64>,
    },
    /// This connection's broadcast went to `receivers` connections.
    BroadcastSent {
        reference: &'a Value,
        receivers: usize,
    },
    /// A request was refused (`id`: the subscription it was about).
    Refused {
        id: Option<&'a Id>,
        refusal: Refusal<'a>,
    },
}

/// Why the engine refused what a client asked.
pub enum Refusal<'a> {
    Subscribe(&'a SubscribeError),
    Token(&'a AuthError),
    Identity(&'a crate::net::identity::Refusal),
    Worker(&'a ResolveError),
    UnknownSubscription,
    /// The snapshot could not be read; the subscription was removed.
    SnapshotFailed(&'a str),
    /// Binary messages are not part of the protocol.
    Binary,
    /// A broadcast or a presence request was refused; `reference`: the one it came with.
    Room {
        refused: &'a rooms::Refused,
        reference: Option<&'a Value>,
    },
}
