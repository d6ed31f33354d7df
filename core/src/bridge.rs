//! The worker channel: how the network threads ask the worker's Postgres thread what only the
//! database can answer.
//!
//! Network threads never call Postgres: they send a `Request` through `WorkerHandle` and await
//! the reply. (The worker publishes changes as `change::Batch`es on the fan-out, and mirrors
//! its settings into `net::shared::Shared`.)

use crate::auth::Principal;
use crate::change::{AudienceId, Change, Topic};
use crate::filter::{FilterSpec, ResolvedFilter};
use crate::ops::OpSet;
use crate::visibility::RowAccess;
use std::collections::HashSet;
use std::io::Write;
use std::os::unix::net::UnixStream;
use std::sync::Arc;

/// What a client names to subscribe to.
#[derive(serde::Serialize, serde::Deserialize, Clone, Debug, PartialEq, Eq)]
pub enum Target {
    /// A table, as SQL would read the name (quotes, case folding, unqualified: public).
    Table(String),
    /// A channel: a relayed NOTIFY channel, or a topic `realtime_send` sends to.
    Channel(String),
}

/// A subscription's topic as the worker resolved it for a principal, with what it may see.
#[derive(serde::Serialize, serde::Deserialize, Clone, Debug)]
pub struct Resolved {
    pub topic: Topic,
    /// A table's schema and name; for a channel, an empty schema and its name.
    pub schema: String,
    pub table: String,
    /// Events the table is watched for (`Op::Message` for a channel).
    pub watched: OpSet,
    /// The filter's conditions, checked (none: no filter).
    pub filter: Vec<ResolvedFilter>,
    /// The columns the principal may SELECT, when it may not SELECT them all.
    pub columns: Option<HashSet<String>>,
    /// The columns the principal may SELECT, in the table's order, as a JSON array of
    /// `{"name", "type"}` (the type's name in pg_type): how Supabase's clients learn them.
    /// `[]` for a channel.
    pub described: Arc<str>,
    pub rows: RowAccess,
    /// With `RowAccess::Checked`: the last position the worker had judged before it began
    /// judging for this audience. Later changes carry its verdict; earlier ones do not.
    pub judged_after: u64,
    /// For a channel: what the principal may do there besides receiving its messages.
    pub rights: ChannelRights,
}

/// What a principal may do on a channel besides receiving its messages (nothing, on a table).
#[derive(serde::Serialize, serde::Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ChannelRights {
    /// Broadcast to the others.
    pub send: bool,
    /// Be told who is present.
    pub presence: bool,
    /// Track its own presence.
    pub track: bool,
}

/// Why the worker could not resolve a subscription.
#[derive(serde::Serialize, serde::Deserialize, Debug, thiserror::Error)]
pub enum ResolveError {
    #[error("table \"{0}\" does not exist or is not readable")]
    UnknownTable(String),
    /// The table exists, but the principal may read none of its columns: told exactly what a
    /// missing table is told, so that only those who may read a table learn it exists.
    #[error("table \"{0}\" does not exist or is not readable")]
    Unreadable(String),
    /// Neither relayed nor a topic this principal may receive: told the same either way.
    #[error("channel \"{0}\" is not relayed, or not readable")]
    UnknownChannel(String),
    #[error("table \"{table}\" is not watched; run SELECT realtime_watch('{quoted}')")]
    NotWatched { table: String, quoted: String },
    #[error("column \"{0}\" does not exist")]
    UnknownColumn(String),
    #[error("column \"{column}\": {why}")]
    FilterRefused { column: String, why: String },
    #[error("{0}")]
    FilterValue(String),
    /// The principal may not be used: unknown role, not granted to realtime.authenticator, or
    /// privileged.
    #[error("{0}")]
    Unauthorized(String),
    #[error("{0}")]
    Forbidden(String),
    #[error("the realtime worker is restarting; retry")]
    Unavailable,
    #[error("{0}")]
    Internal(String),
}

/// A table a principal may subscribe to, as `tables` lists it.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct WatchedTable {
    pub schema: String,
    pub table: String,
    pub events: Vec<String>,
}

pub type Reply<T> = tokio::sync::oneshot::Sender<Result<T, ResolveError>>;

pub enum Request {
    /// Whether a principal's role may be used.
    Authorize {
        principal: Arc<Principal>,
        reply: Reply<()>,
    },
    /// Look up a table or channel for a subscription by `principal`: its privileges and row
    /// security, and check its filter.
    Resolve {
        target: Target,
        filter: Vec<FilterSpec>,
        principal: Arc<Principal>,
        reply: Reply<Resolved>,
    },
    /// A subscription judged by the worker (`RowAccess::Checked`) ended.
    Release { audience: AudienceId },
    /// Judge changes read back from the history for one audience, as live ones were: they
    /// come back with its verdicts attached.
    Judge {
        audience: AudienceId,
        changes: Vec<Change>,
        reply: Reply<Vec<Change>>,
    },
    /// The watched tables `principal` may read (any column of).
    Tables {
        principal: Arc<Principal>,
        reply: Reply<Vec<WatchedTable>>,
    },
    /// Start a snapshot reader that will connect to `net::snapshots::SOCKET` with `ticket`.
    StartSnapshot { ticket: u64, reply: Reply<()> },
    /// Start the judge of audiences judged apart (`net::apart`); it connects on its own.
    StartJudge { reply: Reply<()> },
    /// What became of a webhook's request: to keep its position and show its deliveries.
    Webhook(crate::webhook::Attempt),
}

/// The network side's way to ask the Postgres thread something.
#[derive(Clone)]
pub struct WorkerHandle {
    tx: crossbeam_channel::Sender<Request>,
    /// Writing a byte here wakes the worker's WaitLatchOrSocket.
    poke: Arc<UnixStream>,
}

impl WorkerHandle {
    pub async fn authorize(&self, principal: Arc<Principal>) -> Result<(), ResolveError> {
        self.ask(|reply| Request::Authorize { principal, reply })
            .await
    }

    pub async fn resolve(
        &self,
        target: Target,
        filter: Vec<FilterSpec>,
        principal: Arc<Principal>,
    ) -> Result<Resolved, ResolveError> {
        self.ask(|reply| Request::Resolve {
            target,
            filter,
            principal,
            reply,
        })
        .await
    }

    pub async fn tables(
        &self,
        principal: Arc<Principal>,
    ) -> Result<Vec<WatchedTable>, ResolveError> {
        self.ask(|reply| Request::Tables { principal, reply }).await
    }

    pub async fn judge(
        &self,
        audience: AudienceId,
        changes: Vec<Change>,
    ) -> Result<Vec<Change>, ResolveError> {
        self.ask(|reply| Request::Judge {
            audience,
            changes,
            reply,
        })
        .await
    }

    pub async fn start_judge(&self) -> Result<(), ResolveError> {
        self.ask(|reply| Request::StartJudge { reply }).await
    }

    pub async fn start_snapshot(&self, ticket: u64) -> Result<(), ResolveError> {
        self.ask(|reply| Request::StartSnapshot { ticket, reply })
            .await
    }

    /// Tell the worker, without waiting, that nobody is left in `audience`.
    pub fn release(&self, audience: AudienceId) {
        self.tell(Request::Release { audience });
    }

    /// Tell the worker, without waiting, what became of a webhook's request.
    pub fn webhook(&self, attempt: crate::webhook::Attempt) {
        self.tell(Request::Webhook(attempt));
    }

    /// Send `request`, expecting no answer.
    fn tell(&self, request: Request) {
        if self.tx.send(request).is_ok() {
            self.wake();
        }
    }

    async fn ask<T>(&self, request: impl FnOnce(Reply<T>) -> Request) -> Result<T, ResolveError> {
        let (reply, rx) = tokio::sync::oneshot::channel();
        self.tx
            .send(request(reply))
            .map_err(|_| ResolveError::Unavailable)?;
        self.wake();
        rx.await.map_err(|_| ResolveError::Unavailable)?
    }

    fn wake(&self) {
        // A full socket buffer means a wake-up is already pending.
        let _ = (&*self.poke).write(&[1]);
    }
}

/// The worker's end of the request channel.
pub struct RequestInbox {
    pub rx: crossbeam_channel::Receiver<Request>,
    pub poke: UnixStream,
}

pub fn request_channel() -> std::io::Result<(WorkerHandle, RequestInbox)> {
    let (tx, rx) = crossbeam_channel::unbounded();
    let (a, b) = UnixStream::pair()?;
    a.set_nonblocking(true)?;
    b.set_nonblocking(true)?;
    Ok((
        WorkerHandle {
            tx,
            poke: Arc::new(a),
        },
        RequestInbox { rx, poke: b },
    ))
}
