//! The data every part of the engine passes around: what was committed (`Change`, grouped in
//! `Batch`es), what it is about (`Topic`), and the worker's row-security `Verdict`s on it.
//! A leaf: it imports nothing else of this crate but `ops`, so the worker channel, the
//! fan-out, the history and the protocols can all build on it.

use crate::ops::Op;
use std::sync::{Arc, OnceLock};
use tokio_tungstenite::tungstenite::Utf8Bytes;

type Row = serde_json::Map<String, serde_json::Value>;

/// Longest name of a channel, and of a message's event, in bytes.
pub const MAX_CHANNEL_BYTES: usize = 255;

/// What a subscription is to: the key of the interest index, the fan-out's summaries, gaps,
/// ends and the history's entries.
#[derive(
    serde::Serialize, serde::Deserialize, Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord,
)]
pub enum Topic {
    /// The changes of a table, by its OID (names change; the OID does not).
    Table(u32),
    /// A named channel: messages that are not row changes.
    Channel(Arc<str>),
}

impl Topic {
    /// The table's OID, for a table's topic.
    pub fn relid(&self) -> Option<u32> {
        match self {
            Topic::Table(relid) => Some(*relid),
            Topic::Channel(_) => None,
        }
    }
}

/// The transaction a change belongs to, shared by all of its changes.
#[derive(Debug)]
pub struct Txn {
    pub xid: u32,
    /// RFC 3339 in UTC, microseconds.
    pub commit_time: String,
    /// When the worker read it from the queue, and when it committed on the same clock
    /// (`None`: read back from the history), for `stats::Timing`.
    pub read_at: Option<std::time::Instant>,
    pub committed_at: Option<std::time::Instant>,
}

impl Txn {
    pub fn new(xid: u32, commit_time: String) -> Txn {
        Txn {
            xid,
            commit_time,
            read_at: None,
            committed_at: None,
        }
    }
}

/// One distinct (table, role, claims) the worker evaluates policies for.
pub type AudienceId = u64;

/// A verdict of the worker on one change for one audience.
#[derive(serde::Serialize, serde::Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub struct Verdict {
    pub new_visible: bool,
    pub old_visible: bool,
    /// The policy could not be evaluated (an error or the time limit): the audience is told
    /// it missed the change.
    pub failed: bool,
    /// Not judged here: the audience is judged apart (`net::apart`), and its sessions ask the
    /// judge before they deliver the change.
    pub apart: bool,
}

impl Verdict {
    pub const FAILED: Verdict = Verdict {
        new_visible: false,
        old_visible: false,
        failed: true,
        apart: false,
    };
    pub const APART: Verdict = Verdict {
        new_visible: false,
        old_visible: false,
        failed: false,
        apart: true,
    };
}

/// A place on every change for one encoding of it by one protocol (each protocol owns its
/// slots): the frame is built once, and every session of that protocol is sent the same bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FrameSlot(pub usize);

impl FrameSlot {
    /// Slots on each change, for all protocols together.
    pub const COUNT: usize = 9;
}

/// One committed change: its row images as JSON text (`row_to_json` of the row) and what is
/// known about it.
pub struct Change {
    pub position: u64,
    pub txn: Arc<Txn>,
    pub topic: Topic,
    /// The table's schema and name when the change was captured (shared between changes);
    /// for a message (`Op::Message`), its channel and event.
    pub names: Arc<(String, String)>,
    pub op: Op,
    /// For a message, the process id of the backend that sent it; 0 for a row change.
    pub sender: u32,
    pub new: Option<Box<str>>,
    pub old: Option<Box<str>>,
    /// `new` and `old` parsed, on first use by a filter.
    rows: OnceLock<(Option<Row>, Option<Row>)>,
    frames: [OnceLock<Utf8Bytes>; FrameSlot::COUNT],
    /// The worker's row-security verdicts for the audiences it judges this change for.
    verdicts: Vec<(AudienceId, Verdict)>,
}

impl Change {
    pub fn new(
        position: u64,
        txn: Arc<Txn>,
        topic: Topic,
        names: Arc<(String, String)>,
        op: Op,
        new: Option<Box<str>>,
        old: Option<Box<str>>,
    ) -> Change {
        Change {
            position,
            txn,
            topic,
            names,
            op,
            new,
            old,
            sender: 0,
            rows: OnceLock::new(),
            frames: Default::default(),
            verdicts: Vec::new(),
        }
    }

    /// A message on `names.0` (a channel), with its event `names.1` and its payload as JSON
    /// text, sent by backend `sender`.
    pub fn message(
        position: u64,
        txn: Arc<Txn>,
        names: Arc<(String, String)>,
        sender: u32,
        payload: Box<str>,
    ) -> Change {
        let topic = Topic::Channel(names.0.as_str().into());
        let mut change = Change::new(
            position,
            txn,
            topic,
            names,
            Op::Message,
            Some(payload),
            None,
        );
        change.sender = sender;
        change
    }

    /// Attach the worker's verdicts, before the change is published.
    pub fn set_verdicts(&mut self, verdicts: Vec<(AudienceId, Verdict)>) {
        self.verdicts = verdicts;
    }

    /// Set the verdict for one audience (judged after the change was published).
    pub fn set_verdict(&mut self, audience: AudienceId, verdict: Verdict) {
        match self.verdicts.iter_mut().find(|(a, _)| *a == audience) {
            Some((_, v)) => *v = verdict,
            None => self.verdicts.push((audience, verdict)),
        }
    }

    /// The same change, without the frames encoded for it, to attach more verdicts to.
    pub fn copy(&self) -> Change {
        let mut copy = Change::new(
            self.position,
            self.txn.clone(),
            self.topic.clone(),
            self.names.clone(),
            self.op,
            self.new.clone(),
            self.old.clone(),
        );
        copy.verdicts = self.verdicts.clone();
        copy.sender = self.sender;
        copy
    }

    /// The worker's verdicts, one per audience it judged this change for.
    pub fn verdicts(&self) -> &[(AudienceId, Verdict)] {
        &self.verdicts
    }

    /// The worker's verdict for `audience`, if it judged this change for it.
    pub fn verdict(&self, audience: AudienceId) -> Option<Verdict> {
        self.verdicts
            .iter()
            .find(|(a, _)| *a == audience)
            .map(|(_, v)| *v)
    }

    /// The change as encoded in `slot`, built by `encode` the first time any session asks.
    pub fn encoded(&self, slot: FrameSlot, encode: impl FnOnce(&Change) -> String) -> Utf8Bytes {
        self.frames[slot.0]
            .get_or_init(|| encode(self).into())
            .clone()
    }

    /// Bytes of row images, for memory accounting.
    pub fn image_bytes(&self) -> usize {
        self.new.as_ref().map_or(0, |s| s.len()) + self.old.as_ref().map_or(0, |s| s.len())
    }

    fn rows(&self) -> &(Option<Row>, Option<Row>) {
        self.rows.get_or_init(|| {
            let parse = |image: &Option<Box<str>>| {
                image
                    .as_deref()
                    .and_then(|text| serde_json::from_str::<Row>(text).ok())
            };
            (parse(&self.new), parse(&self.old))
        })
    }

    /// The row a filter looks at: `new`, or `old` for DELETE.
    pub fn row(&self) -> Option<&Row> {
        if self.op == Op::Delete {
            self.old_row()
        } else {
            self.new_row()
        }
    }

    pub fn new_row(&self) -> Option<&Row> {
        self.rows().0.as_ref()
    }

    pub fn old_row(&self) -> Option<&Row> {
        self.rows().1.as_ref()
    }
}

/// What the worker broadcasts: consecutive changes, or a gap clients must be told of.
pub enum Batch {
    Changes(Vec<Change>),
    /// A committed transaction dropped, unwatched or renamed a table: its subscriptions end,
    /// after every change committed before it.
    Ended {
        topic: Topic,
        reason: EndReason,
        last_position: u64,
    },
    Gap {
        reason: GapReason,
        first_position: u64,
        last_position: u64,
        /// Topics whose changes are in the gap, for their subscribers; `None` when nobody
        /// knows which (the changes were lost before they were read), for everyone.
        topics: Option<Vec<Topic>>,
    },
    /// A committed transaction changed who may see what (GRANT, REVOKE, a policy, row
    /// security, a role): every session authorizes its subscriptions again before it delivers
    /// anything after `last_position`, so no later change reaches anyone under the old rules.
    Reauthorize {
        last_position: u64,
    },
}

impl Batch {
    /// The transaction of its first change (none for the other kinds).
    pub fn first_txn(&self) -> Option<&Txn> {
        match self {
            Batch::Changes(changes) => Some(&changes.first()?.txn),
            _ => None,
        }
    }

    pub fn first_position(&self) -> u64 {
        match self {
            Batch::Changes(c) => c.first().map_or(0, |c| c.position),
            Batch::Gap { first_position, .. } => *first_position,
            Batch::Ended { last_position, .. } | Batch::Reauthorize { last_position } => {
                *last_position
            }
        }
    }

    pub fn last_position(&self) -> u64 {
        match self {
            Batch::Changes(c) => c.last().map_or(0, |c| c.position),
            Batch::Gap { last_position, .. }
            | Batch::Ended { last_position, .. }
            | Batch::Reauthorize { last_position } => *last_position,
        }
    }

    /// A batch that holds nothing, to write out what concerns no batch (gaps, ends).
    pub fn empty() -> Batch {
        Batch::Changes(Vec::new())
    }
}

/// Why positions were skipped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum GapReason {
    /// The shared queue was full when transactions committed.
    QueueOverflow = 1,
    /// A spilled transaction's file could not be read back.
    SpillUnreadable = 2,
    /// The worker could not render a transaction's rows.
    RenderFailed = 3,
    /// This session fell behind what the fan-out keeps.
    SlowClient = 4,
    /// Row-level security could not be evaluated for this subscriber (an error in a policy,
    /// or its time limit).
    PolicyFailed = 5,
    /// The worker or the server stopped without accounting for everything committed (a crash,
    /// or commits racing a shutdown).
    ServerRestart = 6,
    /// A resume asked for positions older than the history keeps.
    HistoryExpired = 7,
    /// The history could not be written for a while, or lost a file.
    HistoryLost = 8,
    /// A change larger than the NATS server accepts could not be relayed to edge servers.
    TooLarge = 9,
}

impl GapReason {
    /// The byte the history stores.
    pub fn from_u8(b: u8) -> Option<GapReason> {
        use GapReason::*;
        [
            QueueOverflow,
            SpillUnreadable,
            RenderFailed,
            SlowClient,
            PolicyFailed,
            ServerRestart,
            HistoryExpired,
            HistoryLost,
            TooLarge,
        ]
        .into_iter()
        .find(|r| *r as u8 == b)
    }
}

/// Why the server ended a subscription.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum EndReason {
    Dropped = 1,
    Unwatched = 2,
    Renamed = 3,
    /// The principal lost the right to read the table (REVOKE, a dropped role, ...).
    Forbidden = 4,
    /// The token expired and no fresh one arrived.
    TokenExpired = 5,
}

impl EndReason {
    /// The byte the queue stores.
    pub fn from_u8(b: u8) -> Option<EndReason> {
        [EndReason::Dropped, EndReason::Unwatched, EndReason::Renamed]
            .into_iter()
            .find(|r| *r as u8 == b)
    }
}
