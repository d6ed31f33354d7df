//! The engine's numbers, in one place every process can read: the worker and its network
//! threads write them, `/health` and SQL's `realtime_stats()` read them. The extension places
//! the one `Stats` in PostgreSQL's shared memory; here it is only atomics.

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
    ($($stat:ident: $kind:ident, $name:literal, $help:literal;)*) => {
        /// One number of `Stats`.
        #[derive(Clone, Copy, Debug, PartialEq, Eq)]
        #[repr(usize)]
        pub enum Stat { $($stat),* }

        impl Stat {
            pub const ALL: &'static [Stat] = &[$(Stat::$stat),*];

            /// Its name in `realtime_stats()` (and, prefixed, in metrics).
            pub fn name(self) -> &'static str {
                match self { $(Stat::$stat => $name),* }
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

stats! {
    Position: Gauge, "position", "last position published";
    ChangesPublished: Counter, "changes_published_total", "changes published to subscribers";
    QueueUsedBytes: Gauge, "queue_used_bytes", "bytes of the shared queue in use";
    QueueCapacityBytes: Gauge, "queue_capacity_bytes", "size of the shared queue";
    QueueOverflowBytes: Gauge, "queue_overflow_bytes", "bytes of the queue waiting on disk";
    LostTransactions: Counter, "lost_transactions_total", "transactions lost because the queue could not take them";
    Connections: Gauge, "connections", "open WebSocket connections";
    Subscriptions: Gauge, "subscriptions", "subscriptions held or being made";
    BacklogBytes: Gauge, "backlog_bytes", "bytes of recent batches kept in memory for subscribers";
    BatchesHanded: Counter, "batches_handed_total", "batches handed to subscribers, once per subscriber";
    CatchingUp: Gauge, "catching_up", "subscribers reading the history after falling behind the memory ring";
    CatchUps: Counter, "catch_ups_total", "times a subscriber fell behind the memory ring and went on from the history";
    SlowClientGaps: Counter, "slow_client_gaps_total", "gaps sent to subscribers that fell behind what memory and history keep";
    HistoryBytes: Gauge, "history_bytes", "bytes of the history on disk";
}

/// Where a change's time goes, stage by stage, from its commit to the last socket write.
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
}

impl Timing {
    pub const ALL: &'static [Timing] = &[
        Timing::CommitToRead,
        Timing::ReadToDispatch,
        Timing::DispatchToTake,
        Timing::TakeToSent,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Timing::CommitToRead => "commit_to_read",
            Timing::ReadToDispatch => "read_to_dispatch",
            Timing::DispatchToTake => "dispatch_to_take",
            Timing::TakeToSent => "take_to_sent",
        }
    }
}

/// Upper bounds of the histogram buckets, in microseconds (and one more for the rest).
pub const BUCKETS_US: [u64; 16] = [
    25, 50, 100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 500_000,
    1_000_000, 2_500_000,
];

/// Durations observed: a count per bucket and their sum.
#[repr(C)]
pub struct Histogram {
    buckets: [AtomicU64; BUCKETS_US.len() + 1],
    sum_us: AtomicU64,
}

impl Histogram {
    const fn new() -> Histogram {
        Histogram {
            buckets: [const { AtomicU64::new(0) }; BUCKETS_US.len() + 1],
            sum_us: AtomicU64::new(0),
        }
    }

    fn observe(&self, us: u64) {
        let bucket = BUCKETS_US.partition_point(|&b| b < us);
        self.buckets[bucket].fetch_add(1, Relaxed);
        self.sum_us.fetch_add(us, Relaxed);
    }

    /// Observations so far.
    pub fn count(&self) -> u64 {
        self.buckets.iter().map(|b| b.load(Relaxed)).sum()
    }

    pub fn sum_us(&self) -> u64 {
        self.sum_us.load(Relaxed)
    }

    /// The count in each bucket (the last: above every bound).
    pub fn buckets(&self) -> Vec<u64> {
        self.buckets.iter().map(|b| b.load(Relaxed)).collect()
    }

    /// The bound of the bucket the `q` quantile falls in (0 with no observation; `u64::MAX`
    /// above the last bound).
    pub fn quantile_us(&self, q: f64) -> u64 {
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
                return BUCKETS_US.get(i).copied().unwrap_or(u64::MAX);
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
}

impl Default for Stats {
    fn default() -> Stats {
        Stats::new()
    }
}

impl Stats {
    pub const fn new() -> Stats {
        Stats {
            values: [const { AtomicU64::new(0) }; Stat::ALL.len()],
            timings: [const { Histogram::new() }; Timing::ALL.len()],
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

    /// Add one; the value before.
    pub fn increment(&self, stat: Stat) -> u64 {
        self.values[stat as usize].fetch_add(1, Relaxed)
    }

    /// A duration of `stage`.
    pub fn observe(&self, stage: Timing, took: std::time::Duration) {
        self.timings[stage as usize].observe(took.as_micros() as u64);
    }

    pub fn timing(&self, stage: Timing) -> &Histogram {
        &self.timings[stage as usize]
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
        let mut names: Vec<_> = Stat::ALL.iter().map(|s| s.name()).collect();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), Stat::ALL.len());
        assert!(Stat::ALL
            .iter()
            .all(|s| (s.kind() == Kind::Counter) == s.name().ends_with("_total")));
    }

    #[test]
    fn durations_land_in_their_buckets() {
        let stats = Stats::new();
        let h = stats.timing(Timing::TakeToSent);
        assert_eq!(h.quantile_us(0.5), 0);
        for us in [10, 30, 30, 900, 3_000_000] {
            stats.observe(Timing::TakeToSent, std::time::Duration::from_micros(us));
        }
        assert_eq!(h.count(), 5);
        assert_eq!(h.sum_us(), 3_000_970);
        assert_eq!(h.buckets()[..3], [1, 2, 0]);
        assert_eq!(h.quantile_us(0.5), 50);
        assert_eq!(h.quantile_us(0.8), 1_000);
        assert_eq!(h.quantile_us(1.0), u64::MAX);
    }
}
