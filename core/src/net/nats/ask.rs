//! The questions an edge server asks the worker over NATS request/reply, and the answers:
//! the worker channel's requests (`bridge::Request`) in a form that crosses machines.
//!
//! Subject: `_REALTIME.<stream>.ask`, outside the stream's own subjects so that no question
//! is ever stored in it. Bodies are JSON. Every answer names the worker's incarnation: an
//! edge that sees it change knows the worker restarted, and authorizes its sessions again
//! (the audiences they were judged as are gone with it).

use crate::auth::Principal;
use crate::bridge::{ResolveError, Resolved, Target, WatchedTable};
use crate::change::{AudienceId, Change, Topic, Txn, Verdict};
use crate::filter::FilterSpec;
use crate::ops::Op;
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use std::time::Duration;

/// How long an edge waits for an answer: past the worker's own limit on a question (it
/// answers with an error first), and a policy's judging limit.
pub const WAIT: Duration = Duration::from_secs(20);
/// Changes one question may ask to have judged, so that an answer fits a NATS message.
pub const MOST_JUDGED: usize = 1024;

pub fn subject(stream: &str) -> String {
    format!("_REALTIME.{stream}.ask")
}

#[derive(Serialize, Deserialize, Debug)]
pub struct Ask {
    /// The asking edge, for the audiences it holds (`answer::Leases`).
    pub edge: u64,
    pub question: Question,
}

#[derive(Serialize, Deserialize, Debug)]
pub enum Question {
    /// Whether the worker is there, and which one it is.
    Hello,
    Authorize {
        principal: Principal,
    },
    Resolve {
        target: Target,
        filter: Vec<FilterSpec>,
        principal: Principal,
    },
    Tables {
        principal: Principal,
    },
    Judge {
        audience: AudienceId,
        changes: Vec<Image>,
    },
    Release {
        audience: AudienceId,
    },
    /// Start a snapshot reader for `spec` and keep what it sends for `Read`s.
    Snapshot {
        spec: crate::snapshot::Spec,
    },
    /// The next bytes a snapshot reader sent (waiting a little for some).
    Read {
        pipe: u64,
    },
    /// Stop a snapshot reader (the session left).
    Close {
        pipe: u64,
    },
}

/// Bytes of a snapshot one `Read` answers with at most (base64 fits NATS' default 1 MiB).
pub const PIPE_CHUNK: usize = 512 * 1024;

/// What the worker judges of a change: its table and row images.
#[derive(Serialize, Deserialize, Debug)]
pub struct Image {
    pub position: u64,
    pub topic: Topic,
    pub op: Op,
    pub new: Option<Box<str>>,
    pub old: Option<Box<str>>,
}

impl Image {
    pub fn of(change: &Change) -> Image {
        Image {
            position: change.position,
            topic: change.topic.clone(),
            op: change.op,
            new: change.new.clone(),
            old: change.old.clone(),
        }
    }

    /// The change again, as far as judging it needs.
    pub fn change(self) -> Change {
        let names = Arc::new((String::new(), String::new()));
        let txn = Arc::new(Txn::new(0, String::new()));
        Change::new(
            self.position,
            txn,
            self.topic,
            names,
            self.op,
            self.new,
            self.old,
        )
    }
}

#[derive(Serialize, Deserialize, Debug)]
pub struct Reply {
    /// The worker's network side since it started: another value, another worker.
    pub incarnation: u64,
    pub answer: Result<Answer, ResolveError>,
}

#[derive(Serialize, Deserialize, Debug)]
pub enum Answer {
    Done,
    Resolved(Resolved),
    Tables(Vec<WatchedTable>),
    /// One per change asked about, in order.
    Verdicts(Vec<Verdict>),
    /// A snapshot reader started, to `Read` from.
    Pipe(u64),
    /// What a reader sent since the last `Read`, base64; `end`: it stopped (closed).
    Bytes {
        data: String,
        end: bool,
    },
}
