//! What the stream holds: one NATS message per history entry (a change, a message on a
//! channel, a gap or an end), in position order. The subject says what it concerns, so a
//! consumer can take one table or channel; the body is JSON any client can read; two headers
//! make the order checkable and republishing harmless.
//!
//! Subjects, under the stream's prefix `p`:
//! - `p.table.<schema>.<table>`: a row change;
//! - `p.channel.<channel>`: a message on a channel;
//! - `p.control`: gaps and ends (a consumer that takes only some subjects takes this one too).
//!
//! Names are one subject token each: bytes other than ASCII letters, digits, `_` and `-` are
//! written `%XX`, so a dot, a space or a wildcard in a name cannot change the subject's shape.

use crate::change::{Batch, Change, EndReason, GapReason, Topic, Txn};
use crate::ops::Op;
use crate::webhook::reason_name;
use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use std::borrow::Cow;
use std::sync::Arc;

/// The position a message accounts for through (a change's own; a gap's or end's last).
pub const POSITION: &str = "Realtime-Position";
/// JetStream drops a message whose id it has stored within its duplicate window.
pub const MSG_ID: &str = "Nats-Msg-Id";

/// Everything but letters, digits, `_` and `-`.
const TOKEN: &AsciiSet = &NON_ALPHANUMERIC.remove(b'_').remove(b'-');

/// One message of the stream, as published.
pub struct Message {
    pub subject: String,
    /// Unique within the stream (`Nats-Msg-Id`).
    pub id: String,
    pub position: u64,
    pub body: Vec<u8>,
}

/// A body, tagged with its `kind` (written only: a tagged enum cannot read raw JSON back, so
/// `decode` reads the kind first and then the variant's own fields).
#[derive(Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
enum Body<'a> {
    Change(ChangeBody<'a>),
    Message(MessageBody<'a>),
    Gap(GapBody<'a>),
    Ended(EndedBody<'a>),
    Reauthorize(ReauthorizeBody),
}

#[derive(Serialize, Deserialize)]
struct ReauthorizeBody {
    last_position: u64,
}

#[derive(Deserialize)]
struct Kind<'a> {
    #[serde(borrow)]
    kind: Cow<'a, str>,
}

#[derive(Serialize, Deserialize)]
struct ChangeBody<'a> {
    position: u64,
    xid: u32,
    #[serde(borrow)]
    commit_time: Cow<'a, str>,
    table_oid: u32,
    #[serde(borrow)]
    schema: Cow<'a, str>,
    #[serde(borrow)]
    table: Cow<'a, str>,
    #[serde(rename = "type", borrow)]
    op: Cow<'a, str>,
    #[serde(borrow)]
    record: Option<&'a RawValue>,
    #[serde(borrow)]
    old_record: Option<&'a RawValue>,
}

#[derive(Serialize, Deserialize)]
struct MessageBody<'a> {
    position: u64,
    xid: u32,
    #[serde(borrow)]
    commit_time: Cow<'a, str>,
    #[serde(borrow)]
    channel: Cow<'a, str>,
    #[serde(borrow)]
    event: Cow<'a, str>,
    sender: u32,
    #[serde(borrow)]
    payload: &'a RawValue,
}

#[derive(Serialize, Deserialize)]
struct GapBody<'a> {
    #[serde(borrow)]
    reason: Cow<'a, str>,
    first_position: u64,
    last_position: u64,
    /// `None`: it concerns every topic.
    #[serde(borrow)]
    topics: Option<Vec<TopicRef<'a>>>,
}

#[derive(Serialize, Deserialize)]
struct EndedBody<'a> {
    #[serde(borrow)]
    topic: TopicRef<'a>,
    #[serde(borrow)]
    reason: Cow<'a, str>,
    last_position: u64,
}

#[derive(Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum TopicRef<'a> {
    Table(u32),
    #[serde(borrow)]
    Channel(Cow<'a, str>),
}

impl<'a> TopicRef<'a> {
    fn of(topic: &'a Topic) -> TopicRef<'a> {
        match topic {
            Topic::Table(oid) => TopicRef::Table(*oid),
            Topic::Channel(name) => TopicRef::Channel(Cow::Borrowed(name)),
        }
    }

    fn topic(&self) -> Topic {
        match self {
            TopicRef::Table(oid) => Topic::Table(*oid),
            TopicRef::Channel(name) => Topic::Channel(name.as_ref().into()),
        }
    }
}

fn token(name: &str) -> String {
    utf8_percent_encode(name, TOKEN).to_string()
}

/// The subject `change` is published on.
fn subject(prefix: &str, change: &Change) -> String {
    if change.op == Op::Message {
        format!("{prefix}.channel.{}", token(&change.names.0))
    } else {
        format!(
            "{prefix}.table.{}.{}",
            token(&change.names.0),
            token(&change.names.1)
        )
    }
}

/// The messages of one batch as the history reads it back. A row image that is not JSON
/// (never written so) is sent as `null` rather than as a body no one can parse.
pub fn encode(prefix: &str, batch: &Batch) -> Vec<Message> {
    fn raw(image: &Option<Box<str>>) -> Option<&RawValue> {
        image
            .as_deref()
            .and_then(|text| serde_json::from_str::<&RawValue>(text).ok())
    }
    let control = format!("{prefix}.control");
    let json = |body: &Body| serde_json::to_vec(body).expect("bodies always serialize");
    match batch {
        Batch::Changes(changes) => changes
            .iter()
            .map(|c| {
                let body = if c.op == Op::Message {
                    let null: &RawValue = serde_json::from_str("null").expect("null is JSON");
                    Body::Message(MessageBody {
                        position: c.position,
                        xid: c.txn.xid,
                        commit_time: c.txn.commit_time.as_str().into(),
                        channel: c.names.0.as_str().into(),
                        event: c.names.1.as_str().into(),
                        sender: c.sender,
                        payload: raw(&c.new).unwrap_or(null),
                    })
                } else {
                    Body::Change(ChangeBody {
                        position: c.position,
                        xid: c.txn.xid,
                        commit_time: c.txn.commit_time.as_str().into(),
                        table_oid: c.topic.relid().unwrap_or_default(),
                        schema: c.names.0.as_str().into(),
                        table: c.names.1.as_str().into(),
                        op: c.op.name().into(),
                        record: raw(&c.new),
                        old_record: raw(&c.old),
                    })
                };
                Message {
                    subject: subject(prefix, c),
                    id: c.position.to_string(),
                    position: c.position,
                    body: json(&body),
                }
            })
            .collect(),
        Batch::Gap {
            reason,
            first_position,
            last_position,
            topics,
        } => vec![Message {
            subject: control,
            id: format!("gap-{first_position}-{last_position}"),
            position: *last_position,
            body: json(&Body::Gap(GapBody {
                reason: reason_name(reason).into(),
                first_position: *first_position,
                last_position: *last_position,
                topics: topics
                    .as_ref()
                    .map(|t| t.iter().map(TopicRef::of).collect()),
            })),
        }],
        Batch::Ended {
            topic,
            reason,
            last_position,
        } => {
            let which = match topic {
                Topic::Table(oid) => format!("table-{oid}"),
                Topic::Channel(name) => format!("channel-{}", token(name)),
            };
            vec![Message {
                subject: control,
                id: format!("ended-{last_position}-{which}"),
                position: *last_position,
                body: json(&Body::Ended(EndedBody {
                    topic: TopicRef::of(topic),
                    reason: reason_name(reason).into(),
                    last_position: *last_position,
                })),
            }]
        }
        // Not entries: the publisher places the history's markers (`reauthorize`).
        Batch::Reauthorize { .. } => Vec::new(),
    }
}

/// A catalog marker (`Batch::Reauthorize`, the history's marker `number`): who may see what
/// changed after `position`.
pub fn reauthorize(prefix: &str, position: u64, number: u64) -> Message {
    Message {
        subject: format!("{prefix}.control"),
        id: format!("reauthorize-{position}-{number}"),
        position,
        body: serde_json::to_vec(&Body::Reauthorize(ReauthorizeBody {
            last_position: position,
        }))
        .expect("bodies always serialize"),
    }
}

/// A gap standing for one change the stream would not take (larger than the server's
/// max_payload): its subscribers are told, never silently skipped.
pub fn too_large(prefix: &str, change: &Change) -> Message {
    let position = change.position;
    let batch = Batch::Gap {
        reason: GapReason::TooLarge,
        first_position: position,
        last_position: position,
        topics: Some(vec![change.topic.clone()]),
    };
    encode(prefix, &batch).pop().expect("a gap is one message")
}

/// A message's body read back into the batch it was made from.
pub fn decode(body: &[u8]) -> Result<Batch, String> {
    fn read<'a, T: Deserialize<'a>>(body: &'a [u8]) -> Result<T, String> {
        serde_json::from_slice(body).map_err(|e| e.to_string())
    }
    let txn = |xid, commit_time: &str| Arc::new(Txn::new(xid, commit_time.to_string()));
    let kind: Kind = read(body)?;
    Ok(match kind.kind.as_ref() {
        "change" => {
            let c: ChangeBody = read(body)?;
            let op = Op::from_name(&c.op).ok_or_else(|| format!("unknown type {:?}", c.op))?;
            Batch::Changes(vec![Change::new(
                c.position,
                txn(c.xid, &c.commit_time),
                Topic::Table(c.table_oid),
                Arc::new((c.schema.into_owned(), c.table.into_owned())),
                op,
                c.record.map(|r| r.get().into()),
                c.old_record.map(|r| r.get().into()),
            )])
        }
        "message" => {
            let m: MessageBody = read(body)?;
            Batch::Changes(vec![Change::message(
                m.position,
                txn(m.xid, &m.commit_time),
                Arc::new((m.channel.into_owned(), m.event.into_owned())),
                m.sender,
                m.payload.get().into(),
            )])
        }
        "gap" => {
            let g: GapBody = read(body)?;
            Batch::Gap {
                reason: named(&g.reason, GapReason::from_u8)?,
                first_position: g.first_position,
                last_position: g.last_position,
                topics: g.topics.map(|t| t.iter().map(TopicRef::topic).collect()),
            }
        }
        "ended" => {
            let e: EndedBody = read(body)?;
            Batch::Ended {
                topic: e.topic.topic(),
                reason: named(&e.reason, EndReason::from_u8)?,
                last_position: e.last_position,
            }
        }
        "reauthorize" => {
            let r: ReauthorizeBody = read(body)?;
            Batch::Reauthorize {
                last_position: r.last_position,
            }
        }
        other => return Err(format!("unknown kind {other:?}")),
    })
}

/// The reason `name` stands for, of those `from_u8` knows.
fn named<R: Serialize>(name: &str, from_u8: fn(u8) -> Option<R>) -> Result<R, String> {
    (1..=u8::MAX)
        .filter_map(from_u8)
        .find(|r| reason_name(r) == name)
        .ok_or_else(|| format!("unknown reason {name:?}"))
}
