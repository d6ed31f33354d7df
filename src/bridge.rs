//! Everything that crosses between the worker's Postgres thread and the network threads.
//!
//! Network threads never call Postgres: they send a `Request` through `WorkerHandle` and await
//! the reply. The Postgres thread publishes changes as `Batch`es on a broadcast channel and
//! mirrors the numbers the network side reports (positions, queue state) into `Shared`.

use crate::event::Op;
use crate::protocol::ErrorCode;
use std::io::Write;
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, OnceLock};
use tokio_tungstenite::tungstenite::Utf8Bytes;

/// One committed change, serialized once; every matching client is sent the same bytes.
pub struct Change {
    pub position: u64,
    pub relid: u32,
    pub op: Op,
    pub frame: Utf8Bytes,
    /// The row filters look at (`new`, or `old` for DELETE), parsed from `frame` on first use.
    row: OnceLock<Option<serde_json::Map<String, serde_json::Value>>>,
}

impl Change {
    pub fn new(position: u64, relid: u32, op: Op, frame: String) -> Change {
        Change {
            position,
            relid,
            op,
            frame: frame.into(),
            row: OnceLock::new(),
        }
    }

    pub fn row(&self) -> Option<&serde_json::Map<String, serde_json::Value>> {
        self.row
            .get_or_init(|| {
                #[derive(serde::Deserialize)]
                struct Images {
                    new: Option<serde_json::Map<String, serde_json::Value>>,
                    old: Option<serde_json::Map<String, serde_json::Value>>,
                }
                let images: Images = serde_json::from_str(&self.frame).ok()?;
                if self.op == Op::Delete {
                    images.old
                } else {
                    images.new
                }
            })
            .as_ref()
    }
}

/// What the worker broadcasts: consecutive changes, or a gap clients must be told of.
pub enum Batch {
    Changes(Vec<Change>),
    Gap {
        frame: Utf8Bytes,
        last_position: u64,
        /// Tables whose changes are in the gap, for clients subscribed to one of them; `None`
        /// when nobody knows which (the changes were lost before they were read), for everyone.
        tables: Option<Vec<u32>>,
    },
}

impl Batch {
    pub fn first_position(&self) -> u64 {
        match self {
            Batch::Changes(c) => c.first().map_or(0, |c| c.position),
            Batch::Gap { last_position, .. } => *last_position,
        }
    }
    pub fn last_position(&self) -> u64 {
        match self {
            Batch::Changes(c) => c.last().map_or(0, |c| c.position),
            Batch::Gap { last_position, .. } => *last_position,
        }
    }
}

pub type BatchSender = tokio::sync::broadcast::Sender<Arc<Batch>>;

/// A filter as the client wrote it: `column=op.value`.
#[derive(Clone, Debug, PartialEq)]
pub struct FilterSpec {
    pub column: String,
    pub op: FilterOp,
    pub values: Vec<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FilterOp {
    Eq,
    Neq,
    Lt,
    Lte,
    Gt,
    Gte,
    In,
}

/// How values of a column compare, decided from its SQL type.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ValueKind {
    /// int2/4/8, numeric, float4/8, oid: compared as exact decimals.
    Number,
    /// timestamptz: compared as instants whatever the offset they were rendered in.
    Instant,
    /// text, varchar, uuid, date, timestamp, time: ordered by code point (C collation).
    Text,
    /// Anything else (bool, jsonb, enums...): equality only.
    Other,
}

/// A filter whose column and values Postgres has checked: values are the column type's own
/// JSON rendering of what the client wrote (`to_json(value::type)`).
#[derive(Clone, Debug)]
pub struct ResolvedFilter {
    pub column: String,
    pub op: FilterOp,
    pub kind: ValueKind,
    pub values: Vec<serde_json::Value>,
}

#[derive(Clone, Debug)]
pub struct ResolvedTable {
    pub relid: u32,
    pub schema: String,
    pub table: String,
    /// Events the table is watched for (bits of `Op::bit`).
    pub watched_ops: u8,
    pub filter: Option<ResolvedFilter>,
}

pub type Reply<T> = tokio::sync::oneshot::Sender<Result<T, (ErrorCode, String)>>;

pub enum Request {
    /// Look up a table for a subscription, and check its filter.
    Resolve {
        table: String,
        filter: Option<FilterSpec>,
        reply: Reply<ResolvedTable>,
    },
}

/// The network side's way to ask the Postgres thread something.
#[derive(Clone)]
pub struct WorkerHandle {
    tx: crossbeam_channel::Sender<Request>,
    /// Writing a byte here wakes the worker's WaitLatchOrSocket.
    poke: Arc<UnixStream>,
}

impl WorkerHandle {
    pub async fn resolve(
        &self,
        table: String,
        filter: Option<FilterSpec>,
    ) -> Result<ResolvedTable, (ErrorCode, String)> {
        let (reply, rx) = tokio::sync::oneshot::channel();
        let unavailable = || {
            (
                ErrorCode::Unavailable,
                "the realtime worker is restarting; retry".to_string(),
            )
        };
        self.tx
            .send(Request::Resolve {
                table,
                filter,
                reply,
            })
            .map_err(|_| unavailable())?;
        // A full socket buffer means a wake-up is already pending.
        let _ = (&*self.poke).write(&[1]);
        rx.await.map_err(|_| unavailable())?
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

/// Numbers and settings both sides read; written by the side named in each comment.
pub struct Shared {
    /// Worker: last position broadcast.
    pub position: AtomicU64,
    /// Worker: queue bytes in use / capacity, transactions lost to overflow.
    pub queue_used: AtomicU64,
    pub queue_capacity: AtomicU64,
    pub lost_txns: AtomicU64,
    /// Network: open connections, and subscriptions held or being made on them.
    pub connections: AtomicUsize,
    pub subscriptions: AtomicUsize,
    /// Worker, from reloadable settings.
    pub max_connections: AtomicUsize,
    pub max_message_size: AtomicUsize,
    pub heartbeat_interval_s: AtomicU64,
    pub handshake_timeout_ms: AtomicU64,
}

impl Shared {
    pub fn new() -> Shared {
        Shared {
            position: AtomicU64::new(0),
            queue_used: AtomicU64::new(0),
            queue_capacity: AtomicU64::new(0),
            lost_txns: AtomicU64::new(0),
            connections: AtomicUsize::new(0),
            subscriptions: AtomicUsize::new(0),
            max_connections: AtomicUsize::new(0),
            max_message_size: AtomicUsize::new(0),
            heartbeat_interval_s: AtomicU64::new(30),
            handshake_timeout_ms: AtomicU64::new(10_000),
        }
    }
    pub fn position(&self) -> u64 {
        self.position.load(Relaxed)
    }
}
