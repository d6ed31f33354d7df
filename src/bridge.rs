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

type Row = serde_json::Map<String, serde_json::Value>;

/// One committed change, serialized once; every matching client is sent the same bytes.
pub struct Change {
    pub position: u64,
    pub relid: u32,
    /// The table's schema and name when the change was captured (shared between changes).
    pub names: Arc<(String, String)>,
    pub op: Op,
    pub frame: Utf8Bytes,
    /// `new` and `old` parsed from `frame`, on first use by a filter.
    rows: OnceLock<(Option<Row>, Option<Row>)>,
    /// The `leave` message for subscribers whose filter the row no longer matches, built from
    /// `frame` on first use, once for all of them.
    leave: OnceLock<Utf8Bytes>,
}

impl Change {
    pub fn new(
        position: u64,
        relid: u32,
        names: Arc<(String, String)>,
        op: Op,
        frame: String,
    ) -> Change {
        Change {
            position,
            relid,
            names,
            op,
            frame: frame.into(),
            rows: OnceLock::new(),
            leave: OnceLock::new(),
        }
    }

    fn rows(&self) -> &(Option<Row>, Option<Row>) {
        self.rows.get_or_init(|| {
            #[derive(serde::Deserialize)]
            struct Images {
                new: Option<Row>,
                old: Option<Row>,
            }
            serde_json::from_str::<Images>(&self.frame)
                .map_or((None, None), |images| (images.new, images.old))
        })
    }

    /// The row a filter looks at: `new`, or `old` for DELETE.
    pub fn row(&self) -> Option<&Row> {
        if self.op == Op::Delete {
            self.old_row()
        } else {
            self.rows().0.as_ref()
        }
    }

    pub fn old_row(&self) -> Option<&Row> {
        self.rows().1.as_ref()
    }

    /// `{"type":"leave",...}`: the change's position, transaction, table and old row.
    pub fn leave_frame(&self) -> Utf8Bytes {
        self.leave
            .get_or_init(|| {
                #[derive(serde::Deserialize, serde::Serialize)]
                struct Leave<'a> {
                    #[serde(rename = "type", skip_deserializing)]
                    kind: &'static str,
                    position: u64,
                    xid: u64,
                    #[serde(borrow)]
                    commit_time: &'a serde_json::value::RawValue,
                    op: &'a serde_json::value::RawValue,
                    schema: &'a serde_json::value::RawValue,
                    table: &'a serde_json::value::RawValue,
                    old: &'a serde_json::value::RawValue,
                }
                serde_json::from_str::<Leave>(&self.frame)
                    .and_then(|leave| {
                        serde_json::to_string(&Leave {
                            kind: "leave",
                            ..leave
                        })
                    })
                    .unwrap_or_default()
                    .into()
            })
            .clone()
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
            Batch::Gap { last_position, .. } | Batch::Ended { last_position, .. } => *last_position,
        }
    }
    pub fn last_position(&self) -> u64 {
        match self {
            Batch::Changes(c) => c.last().map_or(0, |c| c.position),
            Batch::Gap { last_position, .. } | Batch::Ended { last_position, .. } => *last_position,
        }
    }
}

/// Why the server ended a subscription (the `reason` of its `unsubscribed` message).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum EndReason {
    Dropped = 1,
    Unwatched = 2,
    Renamed = 3,
}

impl EndReason {
    pub fn name(self) -> &'static str {
        match self {
            EndReason::Dropped => "table_dropped",
            EndReason::Unwatched => "table_unwatched",
            EndReason::Renamed => "table_renamed",
        }
    }
    pub fn from_u8(b: u8) -> Option<EndReason> {
        [EndReason::Dropped, EndReason::Unwatched, EndReason::Renamed]
            .into_iter()
            .find(|r| *r as u8 == b)
    }
}

pub type BatchSender = Arc<crate::fanout::Fanout>;

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

/// How values of a column compare, decided by the worker from its SQL type and collation.
/// Types not listed have no kind: filters on them are refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ValueKind {
    /// int2/4/8, numeric, float4/8, oid: exact decimals; NaN above Infinity.
    Number,
    /// timestamptz: instants, whatever offset a writer's TimeZone rendered.
    Instant,
    /// timestamp without time zone.
    Timestamp,
    Date,
    /// time without time zone.
    Time,
    /// text, varchar, bpchar, name, uuid. `ordered`: the collation orders by code point, so
    /// lt/gt agree with SQL; `blank_padded`: bpchar, whose trailing spaces do not count.
    Text {
        ordered: bool,
        blank_padded: bool,
    },
    /// bool, enums, inet, cidr, macaddr, timetz, bit, "char": equality only, and their
    /// rendering is canonical (equal text iff equal values).
    Exact,
    /// jsonb: equality as jsonb defines it.
    Jsonb,
}

impl ValueKind {
    /// Whether lt/lte/gt/gte agree with SQL for this kind.
    pub fn ordered(self) -> bool {
        match self {
            ValueKind::Number
            | ValueKind::Instant
            | ValueKind::Timestamp
            | ValueKind::Date
            | ValueKind::Time => true,
            ValueKind::Text { ordered, .. } => ordered,
            ValueKind::Exact | ValueKind::Jsonb => false,
        }
    }
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
    pub max_subscriptions: AtomicUsize,
    pub max_handshakes: AtomicUsize,
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
            max_subscriptions: AtomicUsize::new(100),
            max_handshakes: AtomicUsize::new(4096),
            heartbeat_interval_s: AtomicU64::new(30),
            handshake_timeout_ms: AtomicU64::new(10_000),
        }
    }
    pub fn position(&self) -> u64 {
        self.position.load(Relaxed)
    }
}
