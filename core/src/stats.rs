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

/// The numbers, each an atomic: written with relaxed stores, read without locks.
#[repr(C)]
pub struct Stats {
    values: [AtomicU64; Stat::ALL.len()],
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
}
