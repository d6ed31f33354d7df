//! Everything that crosses between the worker's Postgres thread and the network threads.
//!
//! Network threads never call Postgres: they send a `Request` through `WorkerHandle` and await
//! the reply. The Postgres thread publishes changes as `Batch`es on the fan-out (`net::fanout`)
//! and mirrors its numbers (positions, queue state) and settings into `Shared`.

use crate::auth::{AuthConfig, Principal};
use crate::filter::{FilterSpec, ResolvedFilter};
use crate::ops::{Op, OpSet};
use crate::visibility::{ApartSpec, AudienceId, RowAccess, Verdict};
use std::collections::HashSet;
use std::io::Write;
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;
use tokio_tungstenite::tungstenite::Utf8Bytes;

type Row = serde_json::Map<String, serde_json::Value>;

/// The transaction a change belongs to, shared by all of its changes.
#[derive(Debug)]
pub struct Txn {
    pub xid: u32,
    /// RFC 3339 in UTC, microseconds.
    pub commit_time: String,
}

/// One committed change: its row images as JSON text (`row_to_json` of the row) and what is
/// known about it. Each protocol encodes it once (`encoded`) and every matching session of that
/// protocol is sent the same bytes.
pub struct Change {
    pub position: u64,
    pub txn: Arc<Txn>,
    pub relid: u32,
    /// The table's schema and name when the change was captured (shared between changes).
    pub names: Arc<(String, String)>,
    pub op: Op,
    pub new: Option<Box<str>>,
    pub old: Option<Box<str>>,
    /// `new` and `old` parsed, on first use by a filter.
    rows: OnceLock<(Option<Row>, Option<Row>)>,
    frames: [OnceLock<Utf8Bytes>; Encoding::COUNT],
    /// The worker's row-security verdicts for the audiences it judges this change for.
    verdicts: Vec<(AudienceId, Verdict)>,
}

/// The frames a change is encoded into, one slot each on every change.
#[derive(Clone, Copy, Debug)]
pub enum Encoding {
    NativeChange,
    /// The change without its old row, for subscribers who could not see the row before.
    NativeChangeNoOld,
    NativeLeave,
}

impl Encoding {
    const COUNT: usize = 3;
}

impl Change {
    pub fn new(
        position: u64,
        txn: Arc<Txn>,
        relid: u32,
        names: Arc<(String, String)>,
        op: Op,
        new: Option<Box<str>>,
        old: Option<Box<str>>,
    ) -> Change {
        Change {
            position,
            txn,
            relid,
            names,
            op,
            new,
            old,
            rows: OnceLock::new(),
            frames: Default::default(),
            verdicts: Vec::new(),
        }
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
            self.relid,
            self.names.clone(),
            self.op,
            self.new.clone(),
            self.old.clone(),
        );
        copy.verdicts = self.verdicts.clone();
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

    /// The change as `encoding`, built by `encode` the first time any session asks.
    pub fn encoded(&self, encoding: Encoding, encode: impl FnOnce(&Change) -> String) -> Utf8Bytes {
        self.frames[encoding as usize]
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
        relid: u32,
        reason: EndReason,
        last_position: u64,
    },
    Gap {
        reason: GapReason,
        first_position: u64,
        last_position: u64,
        /// Tables whose changes are in the gap, for clients subscribed to one of them; `None`
        /// when nobody knows which (the changes were lost before they were read), for everyone.
        tables: Option<Vec<u32>>,
    },
    /// A committed transaction changed who may see what (GRANT, REVOKE, a policy, row
    /// security, a role): every session authorizes its subscriptions again before it delivers
    /// anything after `last_position`, so no later change reaches anyone under the old rules.
    Reauthorize {
        last_position: u64,
    },
}

impl Batch {
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

pub type BatchSender = Arc<crate::net::fanout::Fanout>;

#[derive(Clone, Debug)]
pub struct ResolvedTable {
    pub relid: u32,
    pub schema: String,
    pub table: String,
    /// Events the table is watched for.
    pub watched: OpSet,
    pub filter: Option<ResolvedFilter>,
    /// The columns the principal may SELECT, when it may not SELECT them all.
    pub columns: Option<HashSet<String>>,
    pub rows: RowAccess,
    /// With `RowAccess::Checked`: the last position the worker had judged before it began
    /// judging for this audience. Later changes carry its verdict; earlier ones do not.
    pub judged_after: u64,
}

/// Why the worker could not resolve a subscription.
#[derive(Debug, thiserror::Error)]
pub enum ResolveError {
    #[error("table \"{0}\" does not exist or is not readable")]
    UnknownTable(String),
    /// The table exists, but the principal may read none of its columns: told exactly what a
    /// missing table is told, so that only those who may read a table learn it exists.
    #[error("table \"{0}\" does not exist or is not readable")]
    Unreadable(String),
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
#[derive(Debug, Clone, serde::Serialize)]
pub struct WatchedTable {
    pub schema: String,
    pub table: String,
    pub events: Vec<&'static str>,
}

pub type Reply<T> = tokio::sync::oneshot::Sender<Result<T, ResolveError>>;

pub enum Request {
    /// Whether a principal's role may be used.
    Authorize {
        principal: Arc<Principal>,
        reply: Reply<()>,
    },
    /// Look up a table for a subscription by `principal`: its privileges and row security,
    /// and check its filter.
    Resolve {
        table: String,
        filter: Option<FilterSpec>,
        principal: Arc<Principal>,
        reply: Reply<ResolvedTable>,
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
        table: String,
        filter: Option<FilterSpec>,
        principal: Arc<Principal>,
    ) -> Result<ResolvedTable, ResolveError> {
        self.ask(|reply| Request::Resolve {
            table,
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
        if self.tx.send(Request::Release { audience }).is_ok() {
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

/// The reloadable settings the network side obeys, as the worker last read them.
#[derive(Clone, Debug)]
pub struct Limits {
    pub max_connections: usize,
    /// Most connections one role may hold at once; 0: no limit.
    pub max_connections_per_role: usize,
    /// Most anonymous connections one address may hold at once; 0: no limit.
    pub max_anonymous_per_address: usize,
    pub max_message_size: usize,
    pub max_subscriptions: usize,
    pub max_handshakes: usize,
    /// Snapshot readers that may run at once (realtime.max_snapshot_workers).
    pub max_snapshot_workers: usize,
    pub heartbeat_interval: Duration,
    pub handshake_timeout: Duration,
    /// Lower-case origins a WebSocket upgrade may come from; empty: any.
    pub allowed_origins: Vec<String>,
    /// Lower-case host names (no port) requests may name in `Host`; empty: any.
    pub allowed_hosts: Vec<String>,
    /// Serve the inspector and the example pages (realtime.serve_pages).
    pub serve_pages: bool,
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

fn take<K: std::hash::Hash + Eq>(
    counts: &Mutex<std::collections::HashMap<K, usize>>,
    key: K,
    max: usize,
) -> bool {
    let mut counts = lock(counts);
    let n = counts.entry(key).or_default();
    if max > 0 && *n >= max {
        return false;
    }
    *n += 1;
    true
}

fn release<K: std::hash::Hash + Eq>(counts: &Mutex<std::collections::HashMap<K, usize>>, key: &K) {
    let mut counts = lock(counts);
    if let Some(n) = counts.get_mut(key) {
        *n -= 1;
        if *n == 0 {
            counts.remove(key);
        }
    }
}

/// Roles remembered as authorized; past it the memory starts over.
const MAX_AUTHORIZED_ROLES: usize = 10_000;

/// Numbers both sides read; written by the side named in each comment.
pub struct Shared {
    /// Worker: last position broadcast.
    pub position: AtomicU64,
    /// Worker: queue bytes in use / capacity, transactions lost to overflow.
    pub queue_used: AtomicU64,
    pub queue_capacity: AtomicU64,
    /// Worker: bytes of the queue waiting on disk (its overflow file).
    pub queue_overflow: AtomicU64,
    pub lost_txns: AtomicU64,
    /// Network: open connections, and subscriptions held or being made on them.
    pub connections: AtomicUsize,
    pub subscriptions: AtomicUsize,
    /// Worker, from reloadable settings (`set_limits`).
    limits: Mutex<Arc<Limits>>,
    /// Worker: how new connections are accepted over TLS (realtime.ssl), or `None`.
    tls: Mutex<Option<crate::net::tls::TlsAcceptor>>,
    /// Worker: how tokens are checked (realtime.jwt_*, realtime.anon_role).
    auth: Mutex<Arc<AuthConfig>>,
    /// Worker: bumped when a catalog change may alter what a principal may see (GRANT,
    /// REVOKE, policies, row security, roles); sessions then authorize again.
    pub catalog_epoch: tokio::sync::watch::Sender<u64>,
    /// Network: connections per role, for realtime.max_connections_per_role, and anonymous
    /// ones per address, for realtime.max_anonymous_per_address.
    roles: Mutex<std::collections::HashMap<String, usize>>,
    anonymous: Mutex<std::collections::HashMap<std::net::IpAddr, usize>>,
    /// Worker: the audiences it judges apart, and how (`net::apart`).
    apart: Mutex<std::collections::HashMap<AudienceId, Arc<ApartSpec>>>,
    /// Network: roles the worker accepted, with the catalog epoch it did so in (a connection
    /// of a known role then needs no question).
    authorized: Mutex<std::collections::HashMap<String, u64>>,
}

impl Shared {
    pub fn new(limits: Limits) -> Shared {
        Shared {
            position: AtomicU64::new(0),
            queue_used: AtomicU64::new(0),
            queue_capacity: AtomicU64::new(0),
            queue_overflow: AtomicU64::new(0),
            lost_txns: AtomicU64::new(0),
            connections: AtomicUsize::new(0),
            subscriptions: AtomicUsize::new(0),
            limits: Mutex::new(Arc::new(limits)),
            tls: Mutex::new(None),
            auth: Mutex::new(Arc::new(AuthConfig::closed())),
            catalog_epoch: tokio::sync::watch::Sender::new(0),
            roles: Mutex::default(),
            anonymous: Mutex::default(),
            apart: Mutex::default(),
            authorized: Mutex::default(),
        }
    }
    pub fn position(&self) -> u64 {
        self.position.load(Relaxed)
    }
    pub fn limits(&self) -> Arc<Limits> {
        self.limits
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
    pub fn set_limits(&self, limits: Limits) {
        *self.limits.lock().unwrap_or_else(|e| e.into_inner()) = Arc::new(limits);
    }
    pub fn tls(&self) -> Option<crate::net::tls::TlsAcceptor> {
        self.tls.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
    pub fn set_tls(&self, tls: Option<crate::net::tls::TlsAcceptor>) {
        *self.tls.lock().unwrap_or_else(|e| e.into_inner()) = tls;
    }
    /// Count a connection for `role` unless it already has `max` (0: no limit).
    pub fn take_role(&self, role: &str, max: usize) -> bool {
        take(&self.roles, role.to_string(), max)
    }
    pub fn release_role(&self, role: &str) {
        release(&self.roles, &role.to_string());
    }
    /// Count an anonymous connection from `address` unless it already has `max` (0: no limit).
    pub fn take_anonymous(&self, address: std::net::IpAddr, max: usize) -> bool {
        take(&self.anonymous, address, max)
    }
    pub fn release_anonymous(&self, address: std::net::IpAddr) {
        release(&self.anonymous, &address);
    }
    /// How audience `id` is judged apart, if it is.
    pub fn apart(&self, id: AudienceId) -> Option<Arc<ApartSpec>> {
        lock(&self.apart).get(&id).cloned()
    }
    /// Judge `id` apart as `spec` says (`None`: not apart any more).
    pub fn set_apart(&self, id: AudienceId, spec: Option<ApartSpec>) {
        let mut apart = lock(&self.apart);
        match spec {
            Some(spec) => apart.insert(id, Arc::new(spec)),
            None => apart.remove(&id),
        };
    }
    /// Whether the worker accepted `role` since the catalogs last changed.
    pub fn recently_authorized(&self, role: &str) -> bool {
        let epoch = *self.catalog_epoch.borrow();
        let authorized = self.authorized.lock().unwrap_or_else(|e| e.into_inner());
        authorized.get(role) == Some(&epoch)
    }
    pub fn note_authorized(&self, role: &str, epoch: u64) {
        let mut authorized = self.authorized.lock().unwrap_or_else(|e| e.into_inner());
        if authorized.len() >= MAX_AUTHORIZED_ROLES {
            authorized.clear();
        }
        authorized.insert(role.to_string(), epoch);
    }
    pub fn auth(&self) -> Arc<AuthConfig> {
        self.auth.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
    pub fn set_auth(&self, auth: AuthConfig) {
        *self.auth.lock().unwrap_or_else(|e| e.into_inner()) = Arc::new(auth);
    }
}
