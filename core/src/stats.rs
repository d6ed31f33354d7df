//! The engine's numbers, in one place every process can read: the worker and its network
//! threads write them, `/health` and SQL's `realtime_stats()` read them. The extension places
//! the one `Stats` in PostgreSQL's shared memory; here it is only atomics.

use crate::change::GapReason;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

/// How a number behaves, for those who graph it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// Only grows (until the server restarts).
    Counter,
    /// Goes up and down.
    Gauge,
}

macro_rules! stats {
    ($($stat:ident: $kind:ident, $name:literal, [$($key:literal = $value:literal)?], $help:literal;)*) => {
        /// One number of `Stats`.
        #[derive(Clone, Copy, Debug, PartialEq, Eq)]
        #[repr(usize)]
        pub enum Stat { $($stat),* }

        impl Stat {
            pub const ALL: &'static [Stat] = &[$(Stat::$stat),*];

            /// Its name in `realtime_stats()` and, prefixed, in metrics; several numbers of one
            /// family share it and differ by `label`.
            pub fn name(self) -> &'static str {
                match self { $(Stat::$stat => $name),* }
            }

            /// The label that sets it apart from the rest of its family: (key, value).
            pub fn label(self) -> Option<(&'static str, &'static str)> {
                match self { $(Stat::$stat => None $(.or(Some(($key, $value))))?),* }
            }

            pub fn kind(self) -> Kind {
                match self { $(Stat::$stat => Kind::$kind),* }
            }

            pub fn help(self) -> &'static str {
                match self { $(Stat::$stat => $help),* }
            }
        }
    };
}

// No table names or roles in labels: a label's values are fixed here.
stats! {
    Position: Gauge, "position", [], "last position published";
    ChangesPublished: Counter, "changes_published_total", [], "changes published to subscribers";
    QueueUsedBytes: Gauge, "queue_used_bytes", [], "bytes of the shared queue in use";
    QueueCapacityBytes: Gauge, "queue_capacity_bytes", [], "size of the shared queue";
    QueueOverflowBytes: Gauge, "queue_overflow_bytes", [], "bytes of transactions spilled to disk, waiting for room in the queue";
    LostTransactions: Counter, "lost_transactions_total", [], "transactions lost because the queue could not take them";
    // A family's series stay together: /metrics types each family once, before its samples.
    Connections: Gauge, "connections", ["protocol" = "native"], "open WebSocket connections";
    SupabaseConnections: Gauge, "connections", ["protocol" = "supabase"], "open WebSocket connections";
    Subscriptions: Gauge, "subscriptions", ["protocol" = "native"], "subscriptions held or being made";
    SupabaseSubscriptions: Gauge, "subscriptions", ["protocol" = "supabase"], "subscriptions held or being made";
    WebhookSubscriptions: Gauge, "subscriptions", ["protocol" = "webhook"], "subscriptions held or being made";
    MessagesSent: Counter, "messages_sent_total", ["protocol" = "native"], "changes, leaves, gaps and ends written to clients";
    SupabaseMessagesSent: Counter, "messages_sent_total", ["protocol" = "supabase"], "changes, leaves, gaps and ends written to clients";
    SentBytes: Counter, "sent_bytes_total", ["protocol" = "native"], "bytes of those messages";
    SupabaseSentBytes: Counter, "sent_bytes_total", ["protocol" = "supabase"], "bytes of those messages";
    BacklogBytes: Gauge, "backlog_bytes", [], "bytes of recent batches kept in memory for subscribers";
    BatchesHanded: Counter, "batches_handed_total", [], "batches handed to subscribers, once per subscriber";
    CatchingUp: Gauge, "catching_up", [], "subscribers reading the history after falling behind the memory ring";
    CatchUps: Counter, "catch_ups_total", [], "times a subscriber fell behind the memory ring and went on from the history";
    Reauthorizations: Counter, "reauthorizations_total", [], "catalog changes that had every subscriber authorize its subscriptions again";
    GapsQueueOverflow: Counter, "gaps_total", ["reason" = "queue_overflow"], "gaps told to subscribers";
    GapsSpillUnreadable: Counter, "gaps_total", ["reason" = "spill_unreadable"], "gaps told to subscribers";
    GapsRenderFailed: Counter, "gaps_total", ["reason" = "render_failed"], "gaps told to subscribers";
    GapsSlowClient: Counter, "gaps_total", ["reason" = "slow_client"], "gaps told to subscribers";
    GapsPolicyFailed: Counter, "gaps_total", ["reason" = "policy_failed"], "gaps told to subscribers";
    GapsServerRestart: Counter, "gaps_total", ["reason" = "server_restart"], "gaps told to subscribers";
    GapsHistoryExpired: Counter, "gaps_total", ["reason" = "history_expired"], "gaps told to subscribers";
    GapsHistoryLost: Counter, "gaps_total", ["reason" = "history_lost"], "gaps told to subscribers";
    GapsTooLarge: Counter, "gaps_total", ["reason" = "too_large"], "gaps told to subscribers";
    PolicyFailures: Counter, "policy_failures_total", [], "row security judgements that failed or ran out of time (the subscribers concerned get a policy_failed gap)";
    Snapshots: Counter, "snapshots_total", [], "snapshots started";
    SnapshotRows: Counter, "snapshot_rows_total", [], "rows sent in snapshots";
    Resumes: Counter, "resumes_total", [], "subscriptions that resumed from a position";
    BroadcastsSent: Counter, "broadcasts_sent_total", [], "client broadcasts handed to connections, once per receiving connection";
    BroadcastsDropped: Counter, "broadcasts_dropped_total", [], "client broadcasts a connection missed because it was not reading them";
    HistoryBytes: Gauge, "history_bytes", [], "bytes of the history on disk";
    HistoryFirstPosition: Gauge, "history_first_position", [], "oldest position the history holds (0: none)";
    NatsConnected: Gauge, "nats_connected", [], "1 while the history is being published to NATS (realtime.nats_url)";
    NatsPosition: Gauge, "nats_position", [], "last position the NATS stream acknowledged";
    NatsMessages: Counter, "nats_messages_total", [], "messages the NATS stream acknowledged";
    HistoryOldestSeconds: Gauge, "history_oldest_timestamp_seconds", [], "when the oldest file of the history was written, in seconds since 1970 (0: none)";
    ClosedByClient: Counter, "disconnects_total", ["reason" = "client"], "WebSocket connections ended, by why: the client closed or its socket failed, or the server closed it";
    ClosedProtocol: Counter, "disconnects_total", ["reason" = "protocol_violation"], "WebSocket connections ended, by why: the client closed or its socket failed, or the server closed it";
    ClosedSilent: Counter, "disconnects_total", ["reason" = "heartbeat_timeout"], "WebSocket connections ended, by why: the client closed or its socket failed, or the server closed it";
    ClosedWriteTimeout: Counter, "disconnects_total", ["reason" = "write_timeout"], "WebSocket connections ended, by why: the client closed or its socket failed, or the server closed it";
    ClosedSlowClient: Counter, "disconnects_total", ["reason" = "slow_client"], "WebSocket connections ended, by why: the client closed or its socket failed, or the server closed it";
    ClosedRestart: Counter, "disconnects_total", ["reason" = "server_restart"], "WebSocket connections ended, by why: the client closed or its socket failed, or the server closed it";
    RefusedTimeout: Counter, "handshake_refusals_total", ["reason" = "timeout"], "connections refused before the WebSocket opened";
    RefusedMalformed: Counter, "handshake_refusals_total", ["reason" = "malformed"], "connections refused before the WebSocket opened";
    RefusedHost: Counter, "handshake_refusals_total", ["reason" = "host_not_allowed"], "connections refused before the WebSocket opened";
    RefusedOrigin: Counter, "handshake_refusals_total", ["reason" = "origin_not_allowed"], "connections refused before the WebSocket opened";
    RefusedNotWebSocket: Counter, "handshake_refusals_total", ["reason" = "not_websocket"], "connections refused before the WebSocket opened";
    RefusedTooMany: Counter, "handshake_refusals_total", ["reason" = "too_many_connections"], "connections refused before the WebSocket opened";
    RefusedToken: Counter, "handshake_refusals_total", ["reason" = "unauthorized"], "connections refused before the WebSocket opened";
    RefusedUnavailable: Counter, "handshake_refusals_total", ["reason" = "unavailable"], "connections refused before the WebSocket opened";
}

impl Stat {
    /// The gap counter of `reason`.
    pub fn gaps(reason: GapReason) -> Stat {
        match reason {
            GapReason::QueueOverflow => Stat::GapsQueueOverflow,
            GapReason::SpillUnreadable => Stat::GapsSpillUnreadable,
            GapReason::RenderFailed => Stat::GapsRenderFailed,
            GapReason::SlowClient => Stat::GapsSlowClient,
            GapReason::PolicyFailed => Stat::GapsPolicyFailed,
            GapReason::ServerRestart => Stat::GapsServerRestart,
            GapReason::HistoryExpired => Stat::GapsHistoryExpired,
            GapReason::HistoryLost => Stat::GapsHistoryLost,
            GapReason::TooLarge => Stat::GapsTooLarge,
        }
    }

    /// The refusal counter for a handshake answered with error `code`.
    pub fn refused(code: &str) -> Stat {
        match code {
            "timeout" => Stat::RefusedTimeout,
            "host_not_allowed" => Stat::RefusedHost,
            "origin_not_allowed" => Stat::RefusedOrigin,
            "upgrade_required" | "unsupported_version" => Stat::RefusedNotWebSocket,
            "too_many_connections" => Stat::RefusedTooMany,
            "unauthorized" | "token_expired" => Stat::RefusedToken,
            "unavailable" => Stat::RefusedUnavailable,
            _ => Stat::RefusedMalformed,
        }
    }
}

/// Durations observed, each a histogram in microseconds (`BUCKETS_US`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(usize)]
pub enum Timing {
    /// From the commit to the worker reading the transaction from the queue.
    CommitToRead,
    /// From then to the fan-out handing it out (rendered, judged, in the history).
    ReadToDispatch,
    /// From then to a subscriber taking it (its wake-up).
    DispatchToTake,
    /// From then to its frames being written to the subscriber's socket.
    TakeToSent,
    /// The whole way, from the commit to the subscriber's socket.
    CommitToSent,
    /// The worker judging one batch's changes by row security, for every audience.
    PolicyJudging,
}

impl Timing {
    pub const ALL: &'static [Timing] = &[
        Timing::CommitToRead,
        Timing::ReadToDispatch,
        Timing::DispatchToTake,
        Timing::TakeToSent,
        Timing::CommitToSent,
        Timing::PolicyJudging,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Timing::CommitToRead => "commit_to_read",
            Timing::ReadToDispatch => "read_to_dispatch",
            Timing::DispatchToTake => "dispatch_to_take",
            Timing::TakeToSent => "take_to_sent",
            Timing::CommitToSent => "commit_to_sent",
            Timing::PolicyJudging => "policy_judging",
        }
    }

    /// The stages of a change's way from its commit to a socket, one after the other.
    pub fn is_stage(self) -> bool {
        matches!(
            self,
            Timing::CommitToRead
                | Timing::ReadToDispatch
                | Timing::DispatchToTake
                | Timing::TakeToSent
        )
    }
}

/// Upper bounds of the histogram buckets of `Timing`, in microseconds (and one more for the
/// rest).
pub const BUCKETS_US: [u64; 16] = [
    25, 50, 100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 500_000,
    1_000_000, 2_500_000,
];

/// Sizes observed, each a histogram of counts (`BUCKETS_COUNT`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(usize)]
pub enum Size {
    /// Changes in each batch the worker publishes.
    BatchChanges,
}

impl Size {
    pub const ALL: &'static [Size] = &[Size::BatchChanges];

    pub fn name(self) -> &'static str {
        match self {
            Size::BatchChanges => "batch_changes",
        }
    }
}

/// Upper bounds of the histogram buckets of `Size`.
pub const BUCKETS_COUNT: [u64; 16] = [
    1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1_024, 4_096, 16_384, 65_536, 262_144, 1_048_576,
];

/// Values observed: a count per bucket (bounds given by the owner) and their sum.
#[repr(C)]
pub struct Histogram {
    buckets: [AtomicU64; BUCKETS_US.len() + 1],
    sum: AtomicU64,
}

impl Histogram {
    const fn new() -> Histogram {
        Histogram {
            buckets: [const { AtomicU64::new(0) }; BUCKETS_US.len() + 1],
            sum: AtomicU64::new(0),
        }
    }

    fn observe(&self, value: u64, bounds: &[u64; 16]) {
        let bucket = bounds.partition_point(|&b| b < value);
        self.buckets[bucket].fetch_add(1, Relaxed);
        self.sum.fetch_add(value, Relaxed);
    }

    /// Observations so far.
    pub fn count(&self) -> u64 {
        self.buckets.iter().map(|b| b.load(Relaxed)).sum()
    }

    pub fn sum(&self) -> u64 {
        self.sum.load(Relaxed)
    }

    /// The count in each bucket (the last: above every bound).
    pub fn buckets(&self) -> Vec<u64> {
        self.buckets.iter().map(|b| b.load(Relaxed)).collect()
    }

    /// The bound of the bucket the `q` quantile falls in (0 with no observation; `u64::MAX`
    /// above the last bound).
    pub fn quantile(&self, q: f64, bounds: &[u64; 16]) -> u64 {
        let counts = self.buckets();
        let total: u64 = counts.iter().sum();
        if total == 0 {
            return 0;
        }
        let rank = ((total as f64) * q).ceil().max(1.0) as u64;
        let mut seen = 0;
        for (i, n) in counts.iter().enumerate() {
            seen += n;
            if seen >= rank {
                return bounds.get(i).copied().unwrap_or(u64::MAX);
            }
        }
        u64::MAX
    }
}

/// The numbers, each an atomic: written with relaxed stores, read without locks.
#[repr(C)]
pub struct Stats {
    values: [AtomicU64; Stat::ALL.len()],
    timings: [Histogram; Timing::ALL.len()],
    sizes: [Histogram; Size::ALL.len()],
}

impl Default for Stats {
    fn default() -> Stats {
        Stats::new()
    }
}

/// The counters a protocol's connections are counted in.
#[derive(Clone, Copy, Debug)]
pub struct Counters {
    pub connections: Stat,
    pub subscriptions: Stat,
    pub messages: Stat,
    pub bytes: Stat,
}

impl Counters {
    pub const NATIVE: Counters = Counters {
        connections: Stat::Connections,
        subscriptions: Stat::Subscriptions,
        messages: Stat::MessagesSent,
        bytes: Stat::SentBytes,
    };
    pub const SUPABASE: Counters = Counters {
        connections: Stat::SupabaseConnections,
        subscriptions: Stat::SupabaseSubscriptions,
        messages: Stat::SupabaseMessagesSent,
        bytes: Stat::SupabaseSentBytes,
    };
}

impl Stats {
    pub const fn new() -> Stats {
        Stats {
            values: [const { AtomicU64::new(0) }; Stat::ALL.len()],
            timings: [const { Histogram::new() }; Timing::ALL.len()],
            sizes: [const { Histogram::new() }; Size::ALL.len()],
        }
    }

    pub fn get(&self, stat: Stat) -> u64 {
        self.values[stat as usize].load(Relaxed)
    }

    pub fn set(&self, stat: Stat, value: u64) {
        self.values[stat as usize].store(value, Relaxed)
    }

    pub fn add(&self, stat: Stat, n: u64) {
        self.values[stat as usize].fetch_add(n, Relaxed);
    }

    pub fn sub(&self, stat: Stat, n: u64) {
        self.values[stat as usize].fetch_sub(n, Relaxed);
    }

    /// Open WebSocket connections, whatever their protocol.
    pub fn connections(&self) -> u64 {
        self.get(Stat::Connections) + self.get(Stat::SupabaseConnections)
    }

    /// Subscriptions held or being made, whatever their protocol, webhooks' included.
    pub fn subscriptions(&self) -> u64 {
        self.get(Stat::Subscriptions)
            + self.get(Stat::SupabaseSubscriptions)
            + self.get(Stat::WebhookSubscriptions)
    }

    /// Add one; the value before.
    pub fn increment(&self, stat: Stat) -> u64 {
        self.values[stat as usize].fetch_add(1, Relaxed)
    }

    /// A duration of `timing`.
    pub fn observe(&self, timing: Timing, took: std::time::Duration) {
        self.timings[timing as usize].observe(took.as_micros() as u64, &BUCKETS_US);
    }

    /// A histogram of durations in microseconds (`BUCKETS_US`).
    pub fn timing(&self, timing: Timing) -> &Histogram {
        &self.timings[timing as usize]
    }

    /// A size of `size`.
    pub fn observe_size(&self, size: Size, n: u64) {
        self.sizes[size as usize].observe(n, &BUCKETS_COUNT);
    }

    /// A histogram of sizes (`BUCKETS_COUNT`).
    pub fn size(&self, size: Size) -> &Histogram {
        &self.sizes[size as usize]
    }

    /// Every number with its value.
    pub fn all(&self) -> impl Iterator<Item = (Stat, u64)> + '_ {
        Stat::ALL.iter().map(|&s| (s, self.get(s)))
    }
}

#[cfg(test)]
mod unit {
    use super::*;

    #[test]
    fn every_number_has_its_own_place_and_a_distinct_name() {
        let stats = Stats::new();
        for (i, &stat) in Stat::ALL.iter().enumerate() {
            assert_eq!(stat as usize, i);
            stats.add(stat, i as u64 + 1);
        }
        for (stat, value) in stats.all() {
            assert_eq!(value, stat as u64 + 1);
        }
        let mut names: Vec<_> = Stat::ALL.iter().map(|s| (s.name(), s.label())).collect();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), Stat::ALL.len());
        // A family is one kind of number, with one help text.
        for a in Stat::ALL {
            for b in Stat::ALL.iter().filter(|b| b.name() == a.name()) {
                assert_eq!((a.kind(), a.help()), (b.kind(), b.help()));
                assert_eq!(a.label().map(|l| l.0), b.label().map(|l| l.0));
            }
        }
        assert!(Stat::ALL
            .iter()
            .all(|s| (s.kind() == Kind::Counter) == s.name().ends_with("_total")));
    }

    #[test]
    fn durations_land_in_their_buckets() {
        let stats = Stats::new();
        let h = stats.timing(Timing::TakeToSent);
        assert_eq!(h.quantile(0.5, &BUCKETS_US), 0);
        for us in [10, 30, 30, 900, 3_000_000] {
            stats.observe(Timing::TakeToSent, std::time::Duration::from_micros(us));
        }
        assert_eq!(h.count(), 5);
        assert_eq!(h.sum(), 3_000_970);
        assert_eq!(h.buckets()[..3], [1, 2, 0]);
        assert_eq!(h.quantile(0.5, &BUCKETS_US), 50);
        assert_eq!(h.quantile(0.8, &BUCKETS_US), 1_000);
        assert_eq!(h.quantile(1.0, &BUCKETS_US), u64::MAX);
        stats.observe_size(Size::BatchChanges, 3);
        assert_eq!(stats.size(Size::BatchChanges).buckets()[2], 1);
    }
}
