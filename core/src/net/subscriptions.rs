//! One connection's subscriptions, whatever protocol it speaks: which of them want a change,
//! which end, and which gaps concern them. A session loop hands it batches and writes out,
//! in its own protocol's frames, the `Outgoing` items it gets back.

use super::fanout::Summary;
use crate::bridge::{Batch, Change, EndReason, GapReason, ResolveError, Shared, WorkerHandle};
use crate::filter::{self, FilterError, FilterSpec};
use crate::ops::{Op, OpSet};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;

/// What a client asked to subscribe to, parsed by its protocol.
pub struct Wish {
    pub table: String,
    /// `None`: every event the table is watched for.
    pub events: Option<OpSet>,
    pub filter: Option<String>,
}

/// Why a subscription was not made.
#[derive(Debug, thiserror::Error)]
pub enum SubscribeError {
    #[error("a subscription with this id already exists")]
    Duplicate,
    #[error("a connection may hold at most {0} subscriptions (realtime.max_subscriptions)")]
    TooMany(usize),
    #[error("events must name at least one of INSERT, UPDATE, DELETE, TRUNCATE")]
    NoEvents,
    #[error("unknown event \"{0}\"")]
    UnknownEvent(String),
    #[error("some requested events are not watched on this table")]
    NotWatched,
    #[error(transparent)]
    Filter(#[from] FilterError),
    #[error(transparent)]
    Resolve(#[from] ResolveError),
}

/// A subscription made: what its protocol confirms to the client.
pub struct Subscribed<'a> {
    pub schema: &'a str,
    pub table: &'a str,
    pub events: OpSet,
    /// Changes after this position are delivered.
    pub position: u64,
}

/// What a session is to send, in order, for a batch (changes by their index in it).
pub enum Outgoing<K> {
    /// The server ended subscription `K`.
    Ended(K, EndReason),
    Gap {
        reason: GapReason,
        from: u64,
        to: u64,
    },
    Change(usize),
    /// An UPDATE moved the row out of a subscription's filter.
    Leave(usize),
}

struct Subscription<K> {
    key: K,
    relid: u32,
    schema: String,
    table: String,
    filter: Option<filter::Compiled>,
    ops: OpSet,
    /// Changes at or before this position predate the subscription.
    after: u64,
    _counted: Counted,
}

/// Keeps `Shared::subscriptions` counting a subscription for as long as it exists, from the
/// moment it is requested: the worker wakes on commits only while that count is above zero.
struct Counted(Arc<Shared>);

impl Counted {
    fn new(shared: &Arc<Shared>) -> Counted {
        shared.subscriptions.fetch_add(1, Relaxed);
        Counted(shared.clone())
    }
}

impl Drop for Counted {
    fn drop(&mut self) {
        self.0.subscriptions.fetch_sub(1, Relaxed);
    }
}

/// What a subscription makes of a change.
#[derive(PartialEq, Eq, PartialOrd, Ord)]
enum Wanted {
    No,
    Leave,
    Change,
}

impl<K> Subscription<K> {
    fn wants(&self, change: &Change) -> Wanted {
        if change.relid != self.relid
            || !self.ops.contains(change.op)
            || change.position <= self.after
        {
            return Wanted::No;
        }
        match &self.filter {
            // TRUNCATE affects every row, so it reaches filtered subscriptions too.
            Some(f) if change.op != Op::Truncate => {
                if f.matches(change.row()) {
                    Wanted::Change
                } else if change.op == Op::Update && f.matches(change.old_row()) {
                    Wanted::Leave
                } else {
                    Wanted::No
                }
            }
            _ => Wanted::Change,
        }
    }

    /// The change is of this subscription's table under another name: it was renamed (or
    /// moved to another schema) since the subscription was made.
    fn renamed(&self, change: &Change) -> bool {
        change.relid == self.relid
            && (change.names.0 != self.schema || change.names.1 != self.table)
    }
}

/// A connection's subscriptions, keyed by the protocol's subscription ids `K`.
pub struct SubscriptionSet<K> {
    shared: Arc<Shared>,
    worker: WorkerHandle,
    subscriptions: Vec<Subscription<K>>,
    /// Last position this connection has looked at.
    seen: u64,
    /// The fan-out skipped batches this connection was too slow for.
    lagged: bool,
    /// Subscription ends in batches it skipped, to send with the next delivery.
    pending_ends: Vec<(u32, EndReason)>,
}

impl<K> SubscriptionSet<K> {
    pub fn new(shared: Arc<Shared>, worker: WorkerHandle) -> SubscriptionSet<K> {
        let seen = shared.position();
        SubscriptionSet {
            shared,
            worker,
            subscriptions: Vec::new(),
            seen,
            lagged: false,
            pending_ends: Vec::new(),
        }
    }

    /// The position this connection has caught up to.
    pub fn position(&self) -> u64 {
        self.shared.position().max(self.seen)
    }

    /// Subscribe `key` (unique on the connection by `same`) to what `wish` describes. The
    /// worker resolves the table and checks the filter.
    pub async fn subscribe(
        &mut self,
        key: K,
        wish: Wish,
        same: impl Fn(&K, &K) -> bool,
    ) -> Result<Subscribed<'_>, SubscribeError> {
        if self.subscriptions.iter().any(|s| same(&s.key, &key)) {
            return Err(SubscribeError::Duplicate);
        }
        let max = self.shared.limits().max_subscriptions;
        if self.subscriptions.len() >= max {
            return Err(SubscribeError::TooMany(max));
        }
        if wish.events.is_some_and(OpSet::is_empty) {
            return Err(SubscribeError::NoEvents);
        }
        let spec: Option<FilterSpec> = wish.filter.as_deref().map(filter::parse).transpose()?;
        // Counted before the worker is asked, so that by the time it answers, commits already
        // wake it (see queue::set_wake_on_commit); a failed subscribe drops the count.
        let counted = Counted::new(&self.shared);
        let mut resolved = self.worker.resolve(wish.table, spec).await?;
        let filter = resolved
            .filter
            .take()
            .map(filter::Compiled::new)
            .transpose()?;
        let requested = wish.events.unwrap_or(OpSet::ALL);
        let ops = requested.intersection(resolved.watched);
        if wish.events.is_some() && ops != requested {
            return Err(SubscribeError::NotWatched);
        }
        let after = self.position();
        self.subscriptions.push(Subscription {
            key,
            relid: resolved.relid,
            schema: resolved.schema,
            table: resolved.table,
            filter,
            ops,
            after,
            _counted: counted,
        });
        let s = self.subscriptions.last().expect("just pushed");
        Ok(Subscribed {
            schema: &s.schema,
            table: &s.table,
            events: ops,
            position: after,
        })
    }

    /// Remove the subscription `same` picks; whether there was one.
    pub fn unsubscribe(&mut self, same: impl Fn(&K) -> bool) -> bool {
        let before = self.subscriptions.len();
        self.subscriptions.retain(|s| !same(&s.key));
        self.subscriptions.len() != before
    }

    /// Batches went by that this connection never read: a gap if any could have concerned it.
    /// Ended subscriptions are still ended (by the next delivery).
    pub fn missed(&mut self, missed: Option<Vec<Summary>>) {
        let Some(missed) = missed else {
            self.lagged = true;
            return;
        };
        for summary in missed {
            match summary {
                Summary::Changes(tables) | Summary::Gap(Some(tables)) => {
                    self.lagged |= tables.iter().any(|relid| self.subscribed_to(*relid))
                }
                Summary::Gap(None) => self.lagged = true,
                Summary::Ended(relid, reason) => self.pending_ends.push((relid, reason)),
            }
        }
    }

    fn subscribed_to(&self, relid: u32) -> bool {
        self.subscriptions.iter().any(|s| s.relid == relid)
    }

    /// End the subscriptions `which` selects.
    fn end(
        &mut self,
        reason: EndReason,
        which: impl Fn(&Subscription<K>) -> bool,
        out: &mut Vec<Outgoing<K>>,
    ) {
        let (ended, kept) = std::mem::take(&mut self.subscriptions)
            .into_iter()
            .partition::<Vec<_>, _>(|s| which(s));
        self.subscriptions = kept;
        out.extend(ended.into_iter().map(|s| Outgoing::Ended(s.key, reason)));
    }

    /// Append to `out` what to send for `batch`, in order. (`out` is the session's, reused
    /// from batch to batch: thousands of sessions each reading every batch would otherwise
    /// allocate for each.)
    pub fn deliver(&mut self, batch: &Batch, out: &mut Vec<Outgoing<K>>) {
        for (relid, reason) in std::mem::take(&mut self.pending_ends) {
            self.end(reason, |s| s.relid == relid, out);
        }
        if std::mem::take(&mut self.lagged) {
            let from = self.seen + 1;
            let to = batch.first_position().saturating_sub(1).max(from);
            out.push(Outgoing::Gap {
                reason: GapReason::SlowClient,
                from,
                to,
            });
        }
        match batch {
            Batch::Gap {
                reason,
                first_position,
                last_position,
                tables,
            } => {
                let concerned = tables
                    .as_ref()
                    .is_none_or(|relids| relids.iter().any(|r| self.subscribed_to(*r)));
                if concerned {
                    out.push(Outgoing::Gap {
                        reason: *reason,
                        from: *first_position,
                        to: *last_position,
                    });
                }
            }
            Batch::Changes(changes) => {
                let seen = self.seen;
                for (i, change) in changes
                    .iter()
                    .enumerate()
                    .filter(|(_, c)| c.position > seen)
                {
                    if self.subscriptions.iter().any(|s| s.renamed(change)) {
                        self.end(EndReason::Renamed, |s| s.renamed(change), out);
                    }
                    match self.subscriptions.iter().map(|s| s.wants(change)).max() {
                        Some(Wanted::Change) => out.push(Outgoing::Change(i)),
                        Some(Wanted::Leave) => out.push(Outgoing::Leave(i)),
                        _ => {}
                    }
                }
            }
            Batch::Ended { relid, reason, .. } => self.end(*reason, |s| s.relid == *relid, out),
        }
        self.seen = self.seen.max(batch.last_position());
    }
}
