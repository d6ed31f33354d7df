//! The Supabase Realtime protocol on `/realtime/v1/websocket`, as the official clients
//! (supabase-js, realtime-js and their ports) speak it: Phoenix channels (`phoenix` frames) whose
//! joins carry `postgres_changes` bindings, and whose topics are rooms for broadcast and
//! presence (the native channel of the same name, so both protocols meet there).
//!
//! A join becomes one engine subscription per distinct binding, with an id derived from the
//! binding itself (as Supabase derives its own), so equal bindings share one subscription and
//! every channel of every connection names a binding the same way. The join is answered once
//! for all of them: a `Ping` queued behind its subscriptions comes back when each has been
//! answered, and its `Pong` becomes the join's reply. A binding the engine refuses (a bad
//! filter, an unknown or unreadable table) leaves the join `ok` and is told in a `system`
//! message, as Supabase does; an error reply would make the client rejoin forever.
//!
//! A change's `data` is built once per change (`DATA`, `DATA_NO_OLD`), and so is the whole push
//! around it for every connection whose envelope (topic and matched binding ids) is the same
//! (`PUSH`, `PUSH_NO_OLD`); a connection with another envelope wraps the shared `data` itself.

use super::phoenix::{self, BroadcastPayload, Frame, Vsn};
use super::{Ask, Protocol, Received, Refusal, Say};
use crate::bridge::Target;
use crate::change::{Change, EndReason, FrameSlot, GapReason, MAX_CHANNEL_BYTES};
use crate::net::rooms::{Presence, Present};
use crate::net::subscriptions::{Since, Wish};
use crate::ops::{Op, OpSet};
use crate::stats::Counters;
use crate::visibility::{self, Columns};
use serde_json::{json, Value};
use std::collections::{HashMap, HashSet};
use std::fmt::{self, Write};
use std::sync::Arc;
use tokio_tungstenite::tungstenite::Message;

/// Its frame slots on each change: the change's `data`, and the same without `old_record`
/// (for subscribers who could not see the row before); and the whole push the first
/// connection built around each, which every connection with the same envelope (serializer,
/// topic, binding ids: the same for every client of one app) sends as it is.
pub const DATA: FrameSlot = FrameSlot(5);
pub const DATA_NO_OLD: FrameSlot = FrameSlot(6);
pub const PUSH: FrameSlot = FrameSlot(7);
pub const PUSH_NO_OLD: FrameSlot = FrameSlot(8);

/// Every topic a client joins starts with this.
const TOPIC_PREFIX: &str = "realtime:";
/// Most bindings one join may carry (each is a subscription, within realtime.max_subscriptions).
const MAX_BINDINGS: usize = 100;
/// How many messages a broadcast replay sends when it names no limit, as Supabase does.
const REPLAYED_UNLESS_LIMITED: usize = 25;

/// A subscription on a Supabase connection: a channel's topic and one of its bindings' ids.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BindingId {
    pub topic: Arc<str>,
    pub id: u32,
}

impl fmt::Display for BindingId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}#{}", self.topic, self.id)
    }
}

/// One connection's side of the protocol.
pub struct Supabase {
    vsn: Vsn,
    /// The channels joined, by topic.
    channels: HashMap<Arc<str>, Channel>,
    /// The join being answered: its subscriptions' answers are collected until its `Pong`.
    joining: Option<Joining>,
    /// The columns of each table subscribed to, as `Subscribed::described` gave them.
    described: HashMap<u32, Arc<str>>,
    /// The envelopes of the pushes it sent last, by topic and binding ids (a few: one per
    /// set of bindings a change matches), so that most changes cost no formatting at all.
    envelopes: Vec<(Arc<str>, Vec<u32>, String)>,
}

/// Envelopes a connection keeps.
const ENVELOPES_KEPT: usize = 16;

struct Channel {
    join_ref: Option<String>,
    /// Its bindings' ids, distinct, and `ROOM` when it has a seat in its topic's room.
    ids: Vec<u32>,
    /// `config.broadcast`: hear its own broadcasts; have them acknowledged.
    include_self: bool,
    ack: bool,
    /// The key its presence is tracked under (`config.presence.key`, or one made up).
    presence_key: String,
}

struct Joining {
    topic: Arc<str>,
    join_ref: Option<String>,
    reference: Option<String>,
    /// The bindings as the client sent them, each with its id (the reply echoes them).
    bindings: Vec<(Value, u32)>,
    /// The ids the engine subscribed.
    made: Vec<u32>,
    /// What it refused, by extension (`postgres_changes`, `broadcast`).
    refused: Vec<(&'static str, String)>,
    /// The join's own token was refused, or a private channel its room: the join fails.
    unauthorized: Option<String>,
    /// `config.private`: the room must be granted, or the join fails.
    private: bool,
}

/// The id of a channel's seat in its topic's room (broadcast, presence, messages sent with
/// `realtime_send` or relayed NOTIFY); bindings' ids are never 0.
const ROOM: u32 = 0;

/// What a `Ping` the protocol queued stands for, in its `reference`.
const JOINED: &str = "joined";
const LEFT: &str = "left";
const HEARTBEAT: &str = "heartbeat";

impl Supabase {
    pub fn new(vsn: Vsn) -> Supabase {
        Supabase {
            vsn,
            channels: HashMap::new(),
            joining: None,
            described: HashMap::new(),
            envelopes: Vec::new(),
        }
    }

    fn frame(&self, frame: Frame) -> Message {
        Message::Text(phoenix::encode(self.vsn, &frame))
    }

    /// A reply to the client's message `(join_ref, reference)` on `topic`.
    fn reply(
        &self,
        join_ref: Option<String>,
        reference: Option<String>,
        topic: &str,
        status: &str,
        response: Value,
    ) -> Message {
        self.frame(Frame {
            join_ref,
            reference,
            topic: topic.into(),
            event: "phx_reply".into(),
            payload: json!({"status": status, "response": response}),
        })
    }

    /// The error reply to `frame`, with `reason`.
    fn refuse(&self, frame: &Frame, reason: impl Into<Value>) -> Message {
        let (join_ref, reference) = (frame.join_ref.clone(), frame.reference.clone());
        let response = json!({ "reason": reason.into() });
        self.reply(join_ref, reference, &frame.topic, "error", response)
    }

    /// A `system` message on `topic`.
    fn system(&self, topic: &str, extension: &str, status: &str, message: &str) -> Message {
        let channel = topic.strip_prefix(TOPIC_PREFIX).unwrap_or(topic);
        self.frame(Frame {
            join_ref: None,
            reference: None,
            topic: topic.into(),
            event: "system".into(),
            payload: json!({
                "message": message, "status": status, "extension": extension, "channel": channel,
            }),
        })
    }

    /// The channel `topic` closes on the server's side.
    fn close(&mut self, topic: &str) -> Option<Message> {
        let channel = self.channels.remove(topic)?;
        Some(self.frame(Frame {
            join_ref: channel.join_ref.clone(),
            reference: channel.join_ref,
            topic: topic.into(),
            event: "phx_close".into(),
            payload: json!({}),
        }))
    }

    fn join(&mut self, frame: Frame, asks: &mut Vec<Ask<BindingId>>, out: &mut Vec<Message>) {
        if !frame.topic.starts_with(TOPIC_PREFIX) {
            return out.push(self.refuse(&frame, "a channel's topic starts with realtime:"));
        }
        let config = &frame.payload["config"];
        if config["presence"]["key"]
            .as_str()
            .is_some_and(|key| key.len() > MAX_CHANNEL_BYTES)
        {
            let reason = format!("a presence key is at most {MAX_CHANNEL_BYTES} bytes");
            return out.push(self.refuse(&frame, reason));
        }
        let bindings = match &config["postgres_changes"] {
            Value::Null => Vec::new(),
            Value::Array(bindings) if bindings.len() <= MAX_BINDINGS => bindings.clone(),
            Value::Array(_) => {
                let reason = format!("a join carries at most {MAX_BINDINGS} postgres_changes");
                return out.push(self.refuse(&frame, reason));
            }
            _ => return out.push(self.refuse(&frame, "config.postgres_changes is an array")),
        };
        let Frame {
            join_ref,
            reference,
            topic,
            payload,
            ..
        } = frame;
        let config = &payload["config"];
        let topic: Arc<str> = topic.into();
        // Joining a topic again replaces the channel (the client rejoins after a timeout).
        if let Some(old) = self.channels.remove(&topic) {
            for id in old.ids {
                let id = BindingId {
                    topic: topic.clone(),
                    id,
                };
                asks.push(Ask::Unsubscribe { id });
            }
        }
        if let Some(Value::String(token)) = payload.get("access_token") {
            asks.push(Ask::Auth {
                token: token.clone(),
            });
        }
        let mut joining = Joining {
            topic: topic.clone(),
            join_ref: join_ref.clone(),
            reference,
            bindings: Vec::new(),
            made: Vec::new(),
            refused: Vec::new(),
            unauthorized: None,
            private: config["private"] == Value::Bool(true),
        };
        let replay = match &config["broadcast"]["replay"] {
            Value::Null => None,
            _ if !joining.private => {
                let why = "broadcast replay is served on private channels only";
                joining.refused.push(("broadcast", why.into()));
                None
            }
            replay => match replayed(replay) {
                Ok(since) => Some(since),
                Err(why) => {
                    joining.refused.push(("broadcast", why));
                    None
                }
            },
        };
        let mut ids = Vec::new();
        for binding in bindings {
            let id = binding_id(&binding);
            joining.bindings.push((binding.clone(), id));
            if ids.contains(&id) {
                continue;
            }
            ids.push(id);
            match wish(&binding) {
                Ok(wish) => {
                    let id = BindingId {
                        topic: topic.clone(),
                        id,
                    };
                    asks.push(Ask::Subscribe {
                        id,
                        wish,
                        snapshot: None,
                    })
                }
                Err(why) => joining.refused.push(("postgres_changes", why)),
            }
        }
        // Its seat in the room: `realtime.public_topics` opens every room, else the policies
        // on realtime.messages decide (always, for a private channel).
        let room = topic[TOPIC_PREFIX.len()..].to_string();
        let presence = config["presence"]["enabled"] == Value::Bool(true);
        asks.push(Ask::Subscribe {
            id: BindingId {
                topic: topic.clone(),
                id: ROOM,
            },
            wish: Wish {
                target: Target::Channel(room),
                events: None,
                filter: None,
                since: replay,
                after_snapshot: None,
                presence,
                select: None,
            },
            snapshot: None,
        });
        ids.push(ROOM);
        self.joining = Some(joining);
        let broadcast = &config["broadcast"];
        let presence_key = match &config["presence"]["key"] {
            Value::String(key) if !key.is_empty() => key.clone(),
            _ => uuid::Uuid::new_v4().to_string(),
        };
        let channel = Channel {
            join_ref,
            ids,
            include_self: broadcast["self"] == Value::Bool(true),
            ack: broadcast["ack"] == Value::Bool(true),
            presence_key,
        };
        self.channels.insert(topic.clone(), channel);
        asks.push(Ask::Ping {
            reference: Some(json!({ JOINED: &*topic })),
        });
    }

    fn leave(&mut self, frame: Frame, asks: &mut Vec<Ask<BindingId>>) {
        let topic: Arc<str> = frame.topic.into();
        if let Some(channel) = self.channels.get(&topic) {
            for &id in &channel.ids {
                let id = BindingId {
                    topic: topic.clone(),
                    id,
                };
                asks.push(Ask::Unsubscribe { id });
            }
        }
        asks.push(Ask::Ping {
            reference: Some(
                json!({LEFT: &*topic, "ref": frame.reference, "join_ref": frame.join_ref}),
            ),
        });
    }

    /// The join's reply, then what Supabase tells after it.
    fn joined(&mut self, joining: Joining, out: &mut Vec<Message>) {
        let topic = &joining.topic;
        if let Some(reason) = &joining.unauthorized {
            self.channels.remove(topic);
            let response = json!({"reason": reason});
            let (join_ref, reference) = (joining.join_ref.clone(), joining.reference.clone());
            return out.push(self.reply(join_ref, reference, topic, "error", response));
        }
        let echoed: Vec<Value> = joining
            .bindings
            .iter()
            .map(|(binding, id)| {
                let field = |name: &str| binding.get(name).cloned().unwrap_or(Value::Null);
                json!({
                    "event": field("event"), "schema": field("schema"), "table": field("table"),
                    "filter": field("filter"), "id": id,
                })
            })
            .collect();
        let response = json!({ "postgres_changes": echoed });
        let (join_ref, reference) = (joining.join_ref.clone(), joining.reference.clone());
        out.push(self.reply(join_ref, reference, topic, "ok", response));
        if let Some(channel) = self.channels.get_mut(topic) {
            channel.ids.retain(|id| joining.made.contains(id));
        }
        if joining.made.iter().any(|id| *id != ROOM) {
            out.push(self.system(topic, "postgres_changes", "ok", "Subscribed to PostgreSQL"));
        }
        for (extension, why) in &joining.refused {
            out.push(self.system(topic, extension, "error", why));
        }
    }

    /// A change for the bindings `ids` of each channel it matched.
    fn change(
        &mut self,
        change: &Change,
        old: bool,
        columns: &Columns,
        mut ids: Vec<&BindingId>,
        out: &mut Vec<Message>,
    ) {
        let described = || {
            change
                .topic
                .relid()
                .and_then(|relid| self.described.get(&relid).cloned())
                .unwrap_or_else(|| "[]".into())
        };
        let projected = columns
            .as_ref()
            .map(|columns| data(change, old, &described(), Some(columns)));
        let (data_slot, push_slot) = match old {
            true => (DATA, PUSH),
            false => (DATA_NO_OLD, PUSH_NO_OLD),
        };
        // One push per channel (topic), with the ids of its bindings the change matched, in
        // order: the same bindings make the same envelope on every connection.
        ids.sort_by(|a, b| (&a.topic, a.id).cmp(&(&b.topic, b.id)));
        let end = tail(self.vsn);
        for group in ids.chunk_by(|a, b| a.topic == b.topic) {
            let topic = &group[0].topic;
            let same = |(t, ids, _): &&(Arc<str>, Vec<u32>, String)| {
                t == topic && ids.iter().eq(group.iter().map(|id| &id.id))
            };
            let envelope = match self.envelopes.iter().find(same) {
                Some((_, _, envelope)) => envelope,
                None => {
                    if self.envelopes.len() == ENVELOPES_KEPT {
                        self.envelopes.clear();
                    }
                    let ids: Vec<u32> = group.iter().map(|id| id.id).collect();
                    let envelope = envelope(self.vsn, topic, &ids);
                    self.envelopes.push((topic.clone(), ids, envelope));
                    &self.envelopes.last().expect("just pushed").2
                }
            };
            let frame = match &projected {
                Some(data) => format!("{envelope}{data}{end}").into(),
                None => {
                    let data = || change.encoded(data_slot, |c| data(c, old, &described(), None));
                    let first = change.encoded(push_slot, |_| format!("{envelope}{}{end}", data()));
                    match first.starts_with(envelope.as_str()) {
                        true => first,
                        false => format!("{envelope}{}{end}", data()).into(),
                    }
                }
            };
            out.push(Message::Text(frame));
        }
    }
}

impl Protocol for Supabase {
    type Id = BindingId;
    const COUNTERS: Counters = Counters::SUPABASE;

    fn parse(
        &mut self,
        message: Received<'_>,
        asks: &mut Vec<Ask<BindingId>>,
        out: &mut Vec<Message>,
    ) {
        let text = match message {
            Received::Text(text) => text,
            Received::Binary(bytes) => {
                return match phoenix::parse_binary(bytes) {
                    Ok(push) => match push.payload {
                        BroadcastPayload::Json(body) => {
                            let (jr, r) = (push.join_ref, push.reference);
                            self.broadcast_asked(&push.topic, push.event, body, jr, r, asks, out)
                        }
                        BroadcastPayload::Bytes(_) => {
                            let reason = json!({"reason": "binary broadcast payloads are not served; send JSON"});
                            out.push(self.reply(
                                push.join_ref,
                                push.reference,
                                &push.topic,
                                "error",
                                reason,
                            ))
                        }
                    },
                    Err(e) => {
                        let message = format!("message not understood: {e}");
                        out.push(self.system("phoenix", "system", "error", &message))
                    }
                };
            }
        };
        let frame = match phoenix::parse_text(self.vsn, text) {
            Ok(frame) => frame,
            Err(e) => {
                let message = format!("message not understood: {e}");
                return out.push(self.system("phoenix", "system", "error", &message));
            }
        };
        match (frame.topic.as_str(), frame.event.as_str()) {
            ("phoenix", "heartbeat") => asks.push(Ask::Ping {
                reference: Some(json!({ HEARTBEAT: frame.reference })),
            }),
            (_, "phx_join") => self.join(frame, asks, out),
            (_, "presence") => self.presence_asked(frame, asks, out),
            (_, "broadcast") => {
                let payload = &frame.payload;
                match (&payload["event"], payload.get("payload")) {
                    (Value::String(event), body) => {
                        let body = body.map_or("null".into(), Value::to_string);
                        let (jr, r) = (frame.join_ref.clone(), frame.reference.clone());
                        self.broadcast_asked(&frame.topic, event.clone(), body, jr, r, asks, out)
                    }
                    _ => out.push(self.refuse(&frame, "a broadcast has a string event")),
                }
            }
            (_, "phx_leave") => self.leave(frame, asks),
            (_, "access_token") => match frame.payload.get("access_token") {
                Some(Value::String(token)) => asks.push(Ask::Auth {
                    token: token.clone(),
                }),
                _ => out.push(self.refuse(&frame, "access_token is a string")),
            },
            _ => out.push(self.refuse(&frame, format!("unknown event {:?}", frame.event))),
        }
    }

    fn same(a: &BindingId, b: &BindingId) -> bool {
        a == b
    }

    fn encode(&mut self, say: Say<'_, BindingId>, out: &mut Vec<Message>) {
        match say {
            Say::Change {
                change,
                old,
                columns,
                matched,
            } if change.op != Op::Message => self.change(change, old, columns, matched.ids(), out),
            Say::Change { change, .. } => {
                let (room, event) = &*change.names;
                let payload = change.new.as_deref().unwrap_or("null");
                self.broadcast(room, event, payload, out)
            }
            Say::Broadcast { shout } => {
                self.broadcast(&shout.channel, &shout.event, &shout.payload, out)
            }
            Say::Presence(told) => self.presence(&told.presence, out),
            Say::Tracked { reference, .. } => out.push(self.reply_to(reference, "ok", json!({}))),
            Say::BroadcastSent { reference, .. } if reference["ack"] == Value::Bool(true) => {
                out.push(self.reply_to(reference, "ok", json!({})))
            }
            Say::Refused {
                refusal:
                    Refusal::Room {
                        refused,
                        reference: Some(reference),
                    },
                ..
            } => {
                let response = json!({"reason": refused.to_string()});
                out.push(self.reply_to(reference, "error", response))
            }
            Say::Subscribed { id, made } => {
                if let Some(relid) = made.topic.relid() {
                    self.described.insert(relid, made.described.clone());
                }
                if let Some(joining) = self.joining.as_mut().filter(|j| j.topic == id.topic) {
                    joining.made.push(id.id);
                }
            }
            Say::Refused {
                id: Some(id),
                refusal,
            } => {
                let why = refusal_text(&refusal);
                match self.joining.as_mut().filter(|j| j.topic == id.topic) {
                    // A public channel without a seat in its room still serves its bindings;
                    // broadcasting or tracking there is refused when tried.
                    Some(joining) if id.id == ROOM && joining.private => {
                        let room = &joining.topic[TOPIC_PREFIX.len()..];
                        joining.unauthorized = Some(format!(
                            "Unauthorized: You do not have permissions to read from this Channel topic: {room}"
                        ))
                    }
                    Some(_) if id.id == ROOM => {}
                    Some(joining) => joining.refused.push(("postgres_changes", why)),
                    None => out.push(self.system(&id.topic, "postgres_changes", "error", &why)),
                }
            }
            Say::Refused { id: None, refusal } => {
                let why = refusal_text(&refusal);
                match self.joining.as_mut() {
                    Some(joining) => joining.unauthorized = Some(why),
                    None => {
                        let topics: Vec<Arc<str>> = self.channels.keys().cloned().collect();
                        for topic in topics {
                            out.push(self.system(&topic, "system", "error", &why));
                        }
                    }
                }
            }
            Say::Pong {
                reference: Some(reference),
                ..
            } => self.answered(reference, out),
            Say::Gap { reason, from, to } => {
                let message = gap_text(reason, from, to);
                let topics: Vec<Arc<str>> = self.channels.keys().cloned().collect();
                for topic in topics {
                    out.push(self.system(&topic, "postgres_changes", "error", &message));
                }
            }
            Say::Ended { id, reason } => {
                let message = match reason {
                    EndReason::TokenExpired => "Token has expired".to_string(),
                    reason => format!("the subscription ended: {}", end_text(reason)),
                };
                if self.channels.contains_key(&id.topic) {
                    out.push(self.system(&id.topic, "system", "error", &message));
                    out.extend(self.close(&id.topic));
                }
            }
            // Rows leaving what a binding may see, snapshots, broadcast and presence have no
            // place in what this endpoint serves; a token accepted needs no answer.
            _ => {}
        }
    }
}

impl Supabase {
    /// A broadcast on `room` as this connection's serializer sends one, on the channel joined
    /// to it.
    fn broadcast(&self, room: &str, event: &str, payload: &str, out: &mut Vec<Message>) {
        let topic = format!("{TOPIC_PREFIX}{room}");
        if self.channels.contains_key(topic.as_str()) {
            out.push(phoenix::encode_broadcast(self.vsn, &topic, event, payload));
        }
    }

    /// A client's broadcast of `event` with `body` (JSON text) on `topic`: to the others in
    /// the room (and itself, with `self`), answered with its refs (with `ack`, or refused).
    #[allow(clippy::too_many_arguments)]
    fn broadcast_asked(
        &self,
        topic: &str,
        event: String,
        body: String,
        join_ref: Option<String>,
        reference: Option<String>,
        asks: &mut Vec<Ask<BindingId>>,
        out: &mut Vec<Message>,
    ) {
        let Some(channel) = self.channels.get(topic) else {
            let reason = json!({"reason": "join the channel before broadcasting on it"});
            return out.push(self.reply(join_ref, reference, topic, "error", reason));
        };
        let answer = json!({
            "topic": topic, "ref": reference, "join_ref": join_ref, "ack": channel.ack,
        });
        asks.push(Ask::Broadcast {
            channel: topic[TOPIC_PREFIX.len()..].to_string(),
            event,
            payload: body,
            include_self: channel.include_self,
            reference: Some(answer),
        });
    }

    /// A client's `track` or `untrack` on a joined channel.
    fn presence_asked(&self, frame: Frame, asks: &mut Vec<Ask<BindingId>>, out: &mut Vec<Message>) {
        let Some(channel) = self.channels.get(frame.topic.as_str()) else {
            return out
                .push(self.refuse(&frame, "join the channel before tracking presence on it"));
        };
        let room = frame.topic[TOPIC_PREFIX.len()..].to_string();
        let answer =
            json!({"topic": frame.topic, "ref": frame.reference, "join_ref": frame.join_ref});
        match frame.payload["event"].as_str() {
            Some("track") => asks.push(Ask::Track {
                channel: room,
                key: Some(channel.presence_key.clone()),
                state: frame
                    .payload
                    .get("payload")
                    .unwrap_or(&json!({}))
                    .to_string(),
                reference: Some(answer),
            }),
            Some("untrack") => asks.push(Ask::Untrack {
                channel: room,
                reference: Some(answer),
            }),
            _ => out.push(self.refuse(&frame, "presence events are track and untrack")),
        }
    }

    /// Presence on a joined channel: `presence_state`, or `presence_diff`, with members
    /// grouped by key as Phoenix Presence groups them.
    fn presence(&self, presence: &Presence, out: &mut Vec<Message>) {
        let (room, event, payload) = match presence {
            Presence::State { channel, members } => (channel, "presence_state", by_key(members)),
            Presence::Diff {
                channel,
                joins,
                leaves,
            } => (
                channel,
                "presence_diff",
                json!({"joins": by_key(joins), "leaves": by_key(leaves)}),
            ),
        };
        let topic = format!("{TOPIC_PREFIX}{room}");
        if self.channels.contains_key(topic.as_str()) {
            out.push(self.frame(Frame {
                join_ref: None,
                reference: None,
                topic,
                event: event.into(),
                payload,
            }));
        }
    }

    /// A reply to the message an `answer` reference (`broadcast_asked`) stands for.
    fn reply_to(&self, answer: &Value, status: &str, response: Value) -> Message {
        let text = |name: &str| answer[name].as_str().map(String::from);
        let topic = text("topic").unwrap_or_default();
        self.reply(text("join_ref"), text("ref"), &topic, status, response)
    }

    /// A `Pong` for a `Ping` this protocol queued.
    fn answered(&mut self, reference: &Value, out: &mut Vec<Message>) {
        if let Some(heartbeat) = reference.get(HEARTBEAT) {
            let reference = heartbeat.as_str().map(String::from);
            out.push(self.reply(None, reference, "phoenix", "ok", json!({})));
        } else if reference.get(JOINED).is_some() {
            if let Some(joining) = self.joining.take() {
                self.joined(joining, out);
            }
        } else if let Some(Value::String(topic)) = reference.get(LEFT) {
            let text = |name: &str| reference[name].as_str().map(String::from);
            let (join_ref, reference) = (text("join_ref"), text("ref"));
            out.push(self.reply(join_ref.clone(), reference, topic, "ok", json!({})));
            self.channels.remove(topic.as_str());
            out.push(self.frame(Frame {
                join_ref: join_ref.clone(),
                reference: join_ref,
                topic: topic.clone(),
                event: "phx_close".into(),
                payload: json!({}),
            }));
        }
    }
}

/// Members as Phoenix Presence shows them: `{key: {metas: [{phx_ref, ...state}]}}`. A member
/// tracked without a key (a native client) is shown under its member number; `phx_ref`, which
/// the clients tell metas apart by, is the member and a hash of its state, so a member that
/// tracks a new state leaves with one ref and joins with another.
fn by_key(members: &[Present]) -> Value {
    let mut keys = serde_json::Map::new();
    for (member, tracked) in members {
        let key = tracked
            .key
            .as_deref()
            .map_or_else(|| member.to_string(), String::from);
        let mut meta = match serde_json::from_str(&tracked.state) {
            Ok(Value::Object(meta)) => meta,
            Ok(state) => serde_json::Map::from_iter([("state".to_string(), state)]),
            Err(_) => serde_json::Map::new(),
        };
        let reference = format!("{member:x}.{:x}", fnv(tracked.state.as_bytes()));
        meta.insert("phx_ref".into(), reference.into());
        let entry = keys.entry(key).or_insert_with(|| json!({"metas": []}));
        if let Some(metas) = entry["metas"].as_array_mut() {
            metas.push(Value::Object(meta));
        }
    }
    Value::Object(keys)
}

fn fnv(bytes: &[u8]) -> u32 {
    bytes.iter().fold(0x811c_9dc5, |hash: u32, byte| {
        (hash ^ *byte as u32).wrapping_mul(0x0100_0193)
    })
}

/// A binding's id: a hash of what it asks, so the same binding has the same id everywhere (as
/// Supabase's), truthy and an integer for the clients.
fn binding_id(binding: &Value) -> u32 {
    let mut text = String::new();
    for field in ["event", "schema", "table", "filter", "select"] {
        text += &binding.get(field).map(Value::to_string).unwrap_or_default();
        text.push('\0');
    }
    // Kept within JavaScript's safe integers and never 0 (falsy to the client).
    (fnv(text.as_bytes()) & 0x7fff_ffff).max(1)
}

/// Where `config.broadcast.replay` (`{since, limit}`) starts: Supabase's meaning (messages
/// sent at or after `since`, in ms, the newest `limit`, 25 unless given), without its cap
/// of 25.
fn replayed(replay: &Value) -> Result<Since, String> {
    let refused = || "broadcast replay is {since, limit}: milliseconds since 1970 and a count";
    let since = match &replay["since"] {
        Value::Null => Value::from(0),
        since => since.clone(),
    };
    let from = commit_time(&since)
        .filter(|_| since.is_number())
        .ok_or_else(refused)?;
    let newest = match &replay["limit"] {
        Value::Null => REPLAYED_UNLESS_LIMITED,
        limit => limit.as_u64().ok_or_else(refused)?.max(1) as usize,
    };
    Ok(Since::Committed {
        from,
        newest: Some(newest),
    })
}

/// A commit time as the history keeps them (RFC 3339 in UTC with microseconds), from a
/// `commit_timestamp` as a push carries it (any offset) or milliseconds since 1970; years
/// 0 to 9999 only, so that such times compare as text.
fn commit_time(value: &Value) -> Option<String> {
    let time = match value {
        Value::Number(ms) => chrono::DateTime::from_timestamp_millis(ms.as_i64()?)?,
        Value::String(text) => chrono::DateTime::parse_from_rfc3339(text).ok()?.to_utc(),
        _ => return None,
    };
    let year = chrono::Datelike::year(&time);
    (0..=9999)
        .contains(&year)
        .then(|| time.to_rfc3339_opts(chrono::SecondsFormat::Micros, true))
}

/// The engine subscription for a binding, or why there is none.
fn wish(binding: &Value) -> Result<Wish, String> {
    let text = |name: &str| match binding.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.as_str())),
        Some(_) => Err(format!("postgres_changes {name} is a string")),
    };
    let schema = text("schema")?.unwrap_or("public");
    let Some(table) = text("table")? else {
        return Err(
            "postgres_changes without a table (a whole schema) is not served; name the table"
                .into(),
        );
    };
    if schema == "*" || table == "*" {
        return Err("postgres_changes on every table is not served; name the table".into());
    }
    let events = match text("event")?.map(str::to_ascii_uppercase).as_deref() {
        None | Some("*") => [Op::Insert, Op::Update, Op::Delete].into_iter().collect(),
        Some("INSERT") => OpSet::EMPTY.with(Op::Insert),
        Some("UPDATE") => OpSet::EMPTY.with(Op::Update),
        Some("DELETE") => OpSet::EMPTY.with(Op::Delete),
        Some(other) => return Err(format!("unknown postgres_changes event {other:?}")),
    };
    Ok(Wish {
        target: Target::Table(format!("{}.{}", quote_ident(schema), quote_ident(table))),
        events: Some(events),
        filter: text("filter")?.map(String::from),
        since: match binding.get("since") {
            None | Some(Value::Null) => None,
            Some(since) => Some(Since::Committed {
                from: commit_time(since).ok_or(
                    "postgres_changes since is a commit_timestamp or milliseconds since 1970",
                )?,
                newest: None,
            }),
        },
        after_snapshot: None,
        presence: false,
        select: match binding.get("select") {
            None | Some(Value::Null) => None,
            Some(Value::Array(columns)) => Some(
                columns
                    .iter()
                    .map(|c| c.as_str().map(String::from))
                    .collect::<Option<_>>()
                    .ok_or("postgres_changes select is an array of column names")?,
            ),
            Some(_) => return Err("postgres_changes select is an array of column names".into()),
        },
    })
}

/// `name` as SQL reads an identifier exactly.
fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// A change's `data`: what the clients turn into the callback's payload.
fn data(change: &Change, old: bool, described: &str, columns: Option<&HashSet<String>>) -> String {
    let kind = match change.op {
        Op::Insert => "INSERT",
        Op::Update => "UPDATE",
        Op::Delete => "DELETE",
        Op::Truncate => "TRUNCATE",
        Op::Message => "MESSAGE",
    };
    let (schema, table) = &*change.names;
    let image = |text: Option<&str>, row: Option<&serde_json::Map<String, Value>>| match columns {
        None => text.map(String::from),
        Some(columns) => row.map(|row| visibility::project(row, columns)),
    };
    let mut out = String::with_capacity(256 + change.image_bytes());
    let _ = write!(
        out,
        r#"{{"schema":{},"table":{},"commit_timestamp":{},"type":"{kind}","columns":{described}"#,
        json_string(schema),
        json_string(table),
        json_string(&millis(&change.txn.commit_time)),
    );
    if matches!(change.op, Op::Insert | Op::Update) {
        if let Some(new) = image(change.new.as_deref(), change.new_row()) {
            let _ = write!(out, r#","record":{new}"#);
        }
    }
    if old && matches!(change.op, Op::Update | Op::Delete) {
        if let Some(old) = image(change.old.as_deref(), change.old_row()) {
            let _ = write!(out, r#","old_record":{old}"#);
        }
    }
    out.push_str(r#","errors":null}"#);
    out
}

/// The start of a `postgres_changes` push on `topic` for the bindings `ids`, up to its `data`
/// (which `tail` closes).
fn envelope(vsn: Vsn, topic: &str, ids: &[u32]) -> String {
    let topic = json_string(topic);
    let ids = ids.iter().map(u32::to_string).collect::<Vec<_>>().join(",");
    match vsn {
        Vsn::V2 => format!(r#"[null,null,{topic},"postgres_changes",{{"ids":[{ids}],"data":"#),
        Vsn::V1 => format!(
            r#"{{"join_ref":null,"ref":null,"topic":{topic},"event":"postgres_changes","payload":{{"ids":[{ids}],"data":"#
        ),
    }
}

fn tail(vsn: Vsn) -> &'static str {
    match vsn {
        Vsn::V2 => "}]",
        Vsn::V1 => "}}",
    }
}

/// An RFC 3339 time with microseconds as Supabase gives it: milliseconds, `Z`.
fn millis(time: &str) -> String {
    match time.find('.') {
        Some(dot) if time.len() >= dot + 4 => format!("{}Z", &time[..dot + 4]),
        _ => time.to_string(),
    }
}

fn json_string(s: &str) -> String {
    Value::from(s).to_string()
}

fn refusal_text(refusal: &Refusal<'_>) -> String {
    match refusal {
        Refusal::Subscribe(e) => e.to_string(),
        Refusal::Token(e) => e.to_string(),
        Refusal::Identity(e) => e.to_string(),
        Refusal::Worker(e) => e.to_string(),
        Refusal::UnknownSubscription => "no such subscription".into(),
        Refusal::SnapshotFailed(why) => why.to_string(),
        Refusal::Binary => "binary messages are not served here".into(),
        Refusal::Room { refused, .. } => refused.to_string(),
    }
}

fn gap_text(reason: GapReason, from: u64, to: u64) -> String {
    let reason = serde_json::to_value(reason).unwrap_or_default();
    format!("changes {from} to {to} were not delivered ({reason}); read the rows again")
}

fn end_text(reason: EndReason) -> String {
    serde_json::to_value(reason).unwrap_or_default().to_string()
}

#[cfg(test)]
mod unit {
    use super::*;
    use crate::change::{Topic, Txn};
    use crate::net::subscriptions::Subscribed;

    fn text(message: &Message) -> Value {
        serde_json::from_str(message.to_text().unwrap()).unwrap()
    }

    /// What the protocol says when the driver answers the ping among `asks`.
    fn pong(protocol: &mut Supabase, asks: &[Ask<BindingId>]) -> Vec<Message> {
        let Some(Ask::Ping { reference }) = asks.iter().rfind(|a| matches!(a, Ask::Ping { .. }))
        else {
            panic!("a ping among the asks");
        };
        let mut out = Vec::new();
        let reference = reference.as_ref();
        protocol.encode(
            Say::Pong {
                reference,
                position: 0,
            },
            &mut out,
        );
        out
    }

    fn join(protocol: &mut Supabase, frame: &str) -> (Vec<Ask<BindingId>>, Vec<Message>) {
        let (mut asks, mut out) = (Vec::new(), Vec::new());
        protocol.parse(Received::Text(frame), &mut asks, &mut out);
        (asks, out)
    }

    #[test]
    fn a_join_is_one_subscription_per_distinct_binding_answered_once() {
        let mut protocol = Supabase::new(Vsn::V2);
        let (asks, out) = join(
            &mut protocol,
            r#"["3","3","realtime:feed","phx_join",{"config":{"postgres_changes":[
                {"event":"*","schema":"public","table":"Defects","filter":"score=gte.0.5"},
                {"event":"*","schema":"public","table":"Defects","filter":"score=gte.0.5"},
                {"event":"INSERT","table":"other"}]},"access_token":"t"}]"#,
        );
        assert!(out.is_empty());
        let [Ask::Auth { token }, Ask::Subscribe {
            id: first, wish, ..
        }, Ask::Subscribe { id: second, .. }, Ask::Subscribe {
            id: room,
            wish: room_wish,
            ..
        }, Ask::Ping { .. }] = asks.as_slice()
        else {
            panic!("auth, two bindings, the room, then the ping that answers the join");
        };
        assert_eq!(room.id, ROOM);
        assert_eq!(room_wish.target, Target::Channel("feed".into()));
        assert_eq!(token, "t");
        assert_eq!(wish.target, Target::Table(r#""public"."Defects""#.into()));
        assert_eq!(wish.filter.as_deref(), Some("score=gte.0.5"));
        assert_ne!(first.id, second.id);

        // Nothing is said until every subscription has been answered.
        let mut out = Vec::new();
        let topic = Topic::Table(7);
        let described: Arc<str> = r#"[{"name":"id","type":"int4"}]"#.into();
        let made = Subscribed {
            topic: &topic,
            schema: "public",
            table: "Defects",
            events: OpSet::ALL,
            position: 0,
            resume: None,
            described: &described,
        };
        protocol.encode(
            Say::Subscribed {
                id: first,
                made: &made,
            },
            &mut out,
        );
        let refused = crate::net::subscriptions::SubscribeError::NoEvents;
        let refusal = Refusal::Subscribe(&refused);
        protocol.encode(
            Say::Refused {
                id: Some(second),
                refusal,
            },
            &mut out,
        );
        assert!(out.is_empty());
        let frames: Vec<Value> = pong(&mut protocol, &asks).iter().map(text).collect();
        assert_eq!(frames[0][3], "phx_reply");
        assert_eq!(frames[0][1], "3");
        let echoed = &frames[0][4]["response"]["postgres_changes"];
        assert_eq!(
            echoed.as_array().unwrap().len(),
            3,
            "every binding echoed, in order"
        );
        assert_eq!(echoed[0]["id"], echoed[1]["id"], "equal bindings, one id");
        assert_eq!(echoed[2]["schema"], Value::Null, "echoed as sent");
        assert_eq!(frames[1][4]["message"], "Subscribed to PostgreSQL");
        assert_eq!(frames[1][4]["channel"], "feed");
        assert_eq!(frames[2][4]["status"], "error");
    }

    #[test]
    fn a_change_goes_once_to_each_channel_with_the_ids_it_matched() {
        let mut protocol = Supabase::new(Vsn::V2);
        let txn = Arc::new(Txn::new(1, "2026-11-23T02:16:19.160123Z".into()));
        let change = Change::new(
            9,
            txn,
            Topic::Table(7),
            Arc::new(("public".into(), "defects".into())),
            Op::Update,
            Some(r#"{"id":1,"kind":"crack"}"#.into()),
            Some(r#"{"id":1,"kind":"scratch"}"#.into()),
        );
        let id = |topic: &str, id| BindingId {
            topic: topic.into(),
            id,
        };
        let (a1, a2, b1) = (
            id("realtime:a", 11),
            id("realtime:a", 12),
            id("realtime:b", 11),
        );
        let mut out = Vec::new();
        protocol.change(&change, true, &None, vec![&a1, &a2, &b1], &mut out);
        let frames: Vec<Value> = out.iter().map(text).collect();
        assert_eq!(frames.len(), 2);
        assert_eq!(frames[0][2], "realtime:a");
        assert_eq!(frames[0][4]["ids"], serde_json::json!([11, 12]));
        assert_eq!(frames[1][4]["ids"], serde_json::json!([11]));
        let data = &frames[0][4]["data"];
        assert_eq!(data["type"], "UPDATE");
        assert_eq!(data["commit_timestamp"], "2026-11-23T02:16:19.160Z");
        assert_eq!(data["record"]["kind"], "crack");
        assert_eq!(data["old_record"]["kind"], "scratch");
        assert_eq!(data["errors"], Value::Null);
        assert!(data["columns"].is_array());

        // Another connection with the same envelope sends the very same bytes.
        let mut again = Vec::new();
        Supabase::new(Vsn::V2).change(&change, true, &None, vec![&a2, &a1], &mut again);
        let ptr = |m: &Message| m.to_text().unwrap().as_ptr();
        assert_eq!(ptr(&again[0]), ptr(&out[0]), "the push is built once");

        // Without the right to see the row before: no old_record.
        out.clear();
        protocol.change(&change, false, &None, vec![&a1], &mut out);
        assert_eq!(text(&out[0])[4]["data"].get("old_record"), None);
    }

    #[test]
    fn heartbeats_leaves_and_bad_frames() {
        let mut protocol = Supabase::new(Vsn::V1);
        let (asks, _) = join(
            &mut protocol,
            r#"{"topic":"phoenix","event":"heartbeat","payload":{},"ref":"19","join_ref":null}"#,
        );
        assert_eq!(asks.len(), 1);
        let reply = text(&pong(&mut protocol, &asks)[0]);
        assert_eq!(
            (reply["topic"].as_str(), reply["ref"].as_str()),
            (Some("phoenix"), Some("19"))
        );
        assert_eq!(reply["payload"]["status"], "ok");

        let (_, out) = join(&mut protocol, r#"["not","v1"]"#);
        assert_eq!(text(&out[0])["payload"]["status"], "error");
        let (asks, out) = join(
            &mut protocol,
            r#"{"topic":"x","event":"phx_join","payload":{},"ref":"1","join_ref":"1"}"#,
        );
        assert!(asks.is_empty());
        assert_eq!(
            text(&out[0])["payload"]["status"],
            "error",
            "topics start with realtime:"
        );

        let (asks, _) = join(
            &mut protocol,
            r#"{"topic":"realtime:t","event":"phx_leave","payload":{},"ref":"5","join_ref":"4"}"#,
        );
        let out = pong(&mut protocol, &asks);
        let (reply, close) = (text(&out[0]), text(&out[1]));
        assert_eq!(reply["ref"], "5");
        assert_eq!(
            (close["event"].as_str(), close["ref"].as_str()),
            (Some("phx_close"), Some("4"))
        );
    }

    #[test]
    fn replay_and_since_resume_from_a_commit_time() {
        let since_of = |asks: &[Ask<BindingId>], id: u32| {
            asks.iter().find_map(|ask| match ask {
                Ask::Subscribe { id: i, wish, .. } if i.id == id => Some(wish.since.clone()),
                _ => None,
            })
        };
        let committed = |from: &str, newest| {
            Some(Some(Since::Committed {
                from: from.into(),
                newest,
            }))
        };
        let binding = r#"{"event":"*","table":"t","since":"2026-12-03T02:16:19.160+01:00"}"#;
        let mut protocol = Supabase::new(Vsn::V2);
        let (asks, _) = join(
            &mut protocol,
            &format!(
                r#"["1","1","realtime:r","phx_join",{{"config":{{"private":true,
                "broadcast":{{"replay":{{"since":1764728179160}}}},"postgres_changes":[{binding}]}}}}]"#
            ),
        );
        let id = binding_id(&serde_json::from_str(binding).unwrap());
        assert_eq!(
            since_of(&asks, id),
            committed("2026-12-03T01:16:19.160000Z", None)
        );
        let replay = committed("2025-12-03T02:16:19.160000Z", Some(REPLAYED_UNLESS_LIMITED));
        assert_eq!(since_of(&asks, ROOM), replay);
        let (asks, _) = join(
            &mut protocol,
            r#"["2","2","realtime:r","phx_join",{"config":{"private":true,
                "broadcast":{"replay":{"limit":1000}}}}]"#,
        );
        let replay = committed("1970-01-01T00:00:00.000000Z", Some(1000));
        assert_eq!(since_of(&asks, ROOM), replay);
        // Public channels have no replay, as with Supabase; the room is joined from now on.
        let (asks, _) = join(
            &mut protocol,
            r#"["3","3","realtime:p","phx_join",{"config":{"broadcast":{"replay":{}}}}]"#,
        );
        assert_eq!(since_of(&asks, ROOM), Some(None));
        for since in ["1.5", "253402300800000", "\"soon\"", "true"] {
            let binding = format!(r#"{{"event":"*","table":"t","since":{since}}}"#);
            assert!(
                wish(&serde_json::from_str(&binding).unwrap()).is_err(),
                "{since}"
            );
        }
    }

    #[test]
    fn what_is_not_served_is_said_not_ignored() {
        let mut protocol = Supabase::new(Vsn::V2);
        let (asks, _) = join(
            &mut protocol,
            r#"["1","1","realtime:r","phx_join",{"config":{"private":true,
                "broadcast":{"replay":{"since":"yesterday"}},"postgres_changes":[{"event":"*"}]}}]"#,
        );
        let frames: Vec<Value> = pong(&mut protocol, &asks).iter().map(text).collect();
        assert_eq!(frames[0][4]["status"], "ok");
        let told: Vec<(&str, &str)> = frames[1..]
            .iter()
            .map(|f| {
                (
                    f[4]["extension"].as_str().unwrap(),
                    f[4]["message"].as_str().unwrap(),
                )
            })
            .collect();
        assert!(
            told.iter()
                .any(|(e, m)| *e == "broadcast" && m.contains("replay")),
            "{told:?}"
        );
        assert!(told
            .iter()
            .any(|(e, m)| *e == "postgres_changes" && m.contains("name the table")));
    }

    #[test]
    fn binding_ids_are_stable_truthy_integers() {
        let binding = serde_json::json!({"event": "*", "schema": "public", "table": "t"});
        assert_eq!(binding_id(&binding), binding_id(&binding.clone()));
        assert_ne!(
            binding_id(&binding),
            binding_id(&serde_json::json!({"event": "*", "table": "t"}))
        );
        assert!(binding_id(&binding) > 0 && binding_id(&binding) <= 0x7fff_ffff);
        assert_eq!(
            millis("2026-11-23T02:16:19.160123Z"),
            "2026-11-23T02:16:19.160Z"
        );
        assert_eq!(quote_ident(r#"a"b"#), r#""a""b""#);
    }
}
