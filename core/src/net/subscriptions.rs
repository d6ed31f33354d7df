//! One connection's subscriptions, whatever protocol it speaks: which of them want a change,
//! which end, and which gaps concern them. A session loop hands it batches and writes out,
//! in its own protocol's frames, the `Outgoing` items it gets back.

use super::fanout::{Dropped, Interest, Registrar, Summary};
use super::interest::Keys;
use super::rooms::{Mailbox, Membership};
use crate::auth::Principal;
use crate::bridge::{ChannelRights, ResolveError, Target, WorkerHandle};
use crate::change::{AudienceId, Batch, Change, EndReason, GapReason, Topic};
use crate::filter::{self, FilterError, FilterSpec};
use crate::history::History;
use crate::net::shared::Shared;
use crate::ops::{Op, OpSet};
use crate::snapshot::{OrderBy, Spec, Xids};
use crate::stats::Stat;
use crate::visibility::{Columns, RowAccess};
use std::ops::RangeInclusive;
use std::sync::Arc;

/// Where a batch came from: the worker attached its verdicts to live ones only.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Source {
    Live,
    /// Read back from the history: to catch up, or for a subscription that resumes.
    History,
}

/// Most entries a subscription resuming from a time may ask to be limited to: the lookup
/// keeps their positions (8 bytes each) while it reads.
pub const MAX_NEWEST: usize = 100_000;

/// What a client asked to subscribe to, parsed by its protocol.
#[derive(Clone)]
pub struct Wish {
    pub target: Target,
    /// `None`: every event the table is watched for.
    pub events: Option<OpSet>,
    pub filter: Option<String>,
    /// Resume from the history.
    pub since: Option<Since>,
    /// Send only changes this snapshot does not contain (`after_snapshot`).
    pub after_snapshot: Option<Arc<Xids>>,
    /// A channel's: be told who is present.
    pub presence: bool,
    /// Only these columns of the rows (among those the principal may read).
    pub select: Option<Vec<String>>,
}

/// Where a resuming subscription starts in the history.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Since {
    /// After this position.
    Position(u64),
    /// At the first change or message committed at or after this time (RFC 3339 in UTC with
    /// microseconds), or later so that only the `newest` of its topic's follow.
    Committed { from: String, newest: Option<usize> },
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
    pub topic: &'a Topic,
    pub schema: &'a str,
    pub table: &'a str,
    pub events: OpSet,
    /// Changes after this position are delivered live.
    pub position: u64,
    /// With `Wish::since`: what to read back from the history before the live changes.
    pub resume: Option<Resume>,
    /// Its columns as `Resolved::described` gives them.
    pub described: &'a Arc<str>,
}

/// The stretch a resuming subscription reads back from the history: after `after`, through
/// `through` (the position its live changes start after).
#[derive(Clone, Copy, Debug)]
pub struct Resume {
    pub after: u64,
    pub through: u64,
    /// Nothing in it is missing from the history for this table.
    pub complete: bool,
}

/// The subscriptions of a connection that a change it is sent matched, found when a protocol
/// asks (most do not: one message per change serves all of them).
pub struct Matched<'a, K> {
    subscriptions: &'a [Subscription<K>],
    change: &'a Change,
    /// Read back for this subscription alone (resuming).
    only: Option<&'a K>,
}

impl<'a, K> Matched<'a, K> {
    pub fn ids(&self) -> Vec<&'a K> {
        if let Some(only) = self.only {
            return vec![only];
        }
        self.subscriptions
            .iter()
            .filter(|s| s.wants(self.change) > Wanted::Missed)
            .map(|s| &s.key)
            .collect()
    }
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
    Change {
        index: usize,
        /// The subscriber could see the row before the change: send the old image.
        old: bool,
        columns: Columns,
    },
    /// An UPDATE moved the row out of a subscription's filter or out of the rows the
    /// subscriber may see.
    Leave { index: usize, columns: Columns },
}

struct Subscription<K> {
    key: K,
    wish: Wish,
    topic: Topic,
    schema: String,
    table: String,
    filter: Option<filter::Compiled>,
    ops: OpSet,
    columns: Columns,
    rows: RowAccess,
    /// Changes at or before this position predate the subscription.
    after: u64,
    /// With `RowAccess::Checked`: changes up to here were judged before the worker began
    /// judging for its audience (`Resolved::judged_after`).
    judged_after: u64,
    /// Its columns as `Resolved::described` gives them.
    described: Arc<str>,
    /// The snapshot the client already read: changes of transactions it sees are not sent.
    seen_by: Option<Arc<Xids>>,
    /// Its place in the fan-out's index: the batches that may concern it are handed to this
    /// connection.
    _interest: Interest,
    _audience: Option<Audience>,
    _counted: Counted,
    /// A channel's: what the principal may do there.
    rights: ChannelRights,
    /// A channel's: its seat for client broadcasts.
    _seat: Option<Membership>,
}

/// Holds a place in an audience the worker judges changes for, and leaves it when dropped.
struct Audience(WorkerHandle, AudienceId);

impl Drop for Audience {
    fn drop(&mut self) {
        self.0.release(self.1);
    }
}

/// Keeps `Stat::Subscriptions` counting a subscription for as long as it exists, from the
/// moment it is requested: the worker wakes on commits only while that count is above zero.
struct Counted(Arc<Shared>, Stat);

impl Counted {
    fn new(shared: &Arc<Shared>, stat: Stat) -> Counted {
        shared.stats.increment(stat);
        Counted(shared.clone(), stat)
    }
}

impl Drop for Counted {
    fn drop(&mut self) {
        self.0.stats.sub(self.1, 1);
    }
}

/// What a subscription makes of a change.
#[derive(PartialEq, Eq, PartialOrd, Ord)]
enum Wanted {
    No,
    /// Row security could not be evaluated for it.
    Missed,
    Leave,
    ChangeWithoutOld,
    Change,
}

impl<K> Subscription<K> {
    fn wants(&self, change: &Change) -> Wanted {
        if change.position <= self.after {
            return Wanted::No;
        }
        self.would_want(change)
    }

    /// What it makes of a change whenever it was committed (for changes read back from the
    /// history, which come before `after`).
    fn would_want(&self, change: &Change) -> Wanted {
        if change.topic != self.topic || !self.ops.contains(change.op) {
            return Wanted::No;
        }
        if self
            .seen_by
            .as_ref()
            .is_some_and(|s| s.contains(change.txn.xid))
        {
            return Wanted::No;
        }
        // Who may read a channel was decided when subscribing; a message has no rows.
        if change.op == Op::Message {
            return Wanted::Change;
        }
        // TRUNCATE affects every row: it reaches everyone who may read the table.
        if change.op == Op::Truncate {
            return Wanted::Change;
        }
        let seen = self.rows.judge(change);
        if seen.failed {
            return Wanted::Missed;
        }
        let passes = |row| self.filter.as_ref().is_none_or(|f| f.matches(row));
        let new = seen.new && passes(change.new_row());
        let old = seen.old && passes(change.old_row());
        match change.op {
            Op::Delete if old => Wanted::Change,
            Op::Insert if new => Wanted::Change,
            Op::Update if new && seen.old => Wanted::Change,
            Op::Update if new => Wanted::ChangeWithoutOld,
            Op::Update if old => Wanted::Leave,
            _ => Wanted::No,
        }
    }

    /// The change is of this subscription's table under another name: it was renamed (or
    /// moved to another schema) since the subscription was made.
    fn renamed(&self, change: &Change) -> bool {
        matches!(self.topic, Topic::Table(_))
            && change.topic == self.topic
            && (change.names.0 != self.schema || change.names.1 != self.table)
    }
}

/// A connection's subscriptions, keyed by the protocol's subscription ids `K`.
pub struct SubscriptionSet<K> {
    shared: Arc<Shared>,
    worker: WorkerHandle,
    registrar: Registrar,
    history: Option<Arc<History>>,
    subscriptions: Vec<Subscription<K>>,
    /// Last position this connection has looked at.
    seen: u64,
    /// The fan-out skipped batches this connection was too slow for.
    lagged: bool,
    /// The first and last position of those it skipped, when known.
    lost: Option<(u64, u64)>,
    /// The last position a resume read back from the history and sent.
    replayed: u64,
    /// Subscription ends in batches it skipped, to send with the next delivery.
    pending_ends: Vec<(Topic, EndReason)>,
    /// A catalog change went by (read, skipped, or unknown): authorize again before the next
    /// delivery.
    reauthorize_pending: bool,
    /// Bumped whenever a subscription is made or ends (for the connection report).
    generation: u64,
    /// Where client broadcasts on its channels reach this connection (none: headless).
    mailbox: Option<Mailbox>,
    /// The gauge its subscriptions are counted in (its protocol's).
    counted_as: Stat,
}

impl<K> SubscriptionSet<K> {
    /// Count its subscriptions in `stat` (a protocol's gauge) rather than the native one.
    pub fn count_as(&mut self, stat: Stat) {
        self.counted_as = stat;
    }

    pub fn new(
        shared: Arc<Shared>,
        worker: WorkerHandle,
        registrar: Registrar,
        history: Option<Arc<History>>,
    ) -> Self {
        let seen = shared.position();
        SubscriptionSet {
            shared,
            worker,
            registrar,
            history,
            subscriptions: Vec::new(),
            seen,
            lagged: false,
            lost: None,
            replayed: 0,
            pending_ends: Vec::new(),
            reauthorize_pending: false,
            generation: 0,
            mailbox: None,
            counted_as: Stat::Subscriptions,
        }
    }

    /// Receive client broadcasts on the channels subscribed to, in `mailbox`.
    pub fn receive_broadcasts(&mut self, mailbox: Mailbox) {
        self.mailbox = Some(mailbox);
    }

    /// What the principal may do on `channel`: `None` when not subscribed to it.
    pub fn rights(&self, channel: &str) -> Option<ChannelRights> {
        self.subscriptions
            .iter()
            .find(|s| matches!(&s.topic, Topic::Channel(c) if &**c == channel))
            .map(|s| s.rights)
    }

    /// The channels subscribed to.
    pub fn channels(&self) -> impl Iterator<Item = &Arc<str>> {
        self.subscriptions.iter().filter_map(|s| match &s.topic {
            Topic::Channel(c) => Some(c),
            Topic::Table(_) => None,
        })
    }

    /// The position this connection has caught up to.
    pub fn position(&self) -> u64 {
        self.shared.position().max(self.seen)
    }

    /// The last position of the batches it was handed and looked at.
    pub fn seen(&self) -> u64 {
        self.seen
    }

    /// Take every subscription back to start after `position`, as if all had been made
    /// there: what came since is to be read from the history, in one pass for all of them.
    /// False (nothing changed) if every subscription already starts there or before.
    pub fn rewind(&mut self, position: u64) -> bool {
        let mut moved = false;
        for s in &mut self.subscriptions {
            if position < s.after {
                s.after = position;
                moved = true;
            }
        }
        if moved {
            self.seen = position;
        }
        moved
    }

    /// Changes whenever the set of subscriptions does.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// `key: schema.table` of each subscription, `key` as `name` writes it.
    pub fn describe(&self, name: impl Fn(&K) -> String) -> Vec<String> {
        self.subscriptions
            .iter()
            .map(|s| match s.topic {
                Topic::Table(_) => format!("{}: {}.{}", name(&s.key), s.schema, s.table),
                Topic::Channel(_) => format!("{}: channel {}", name(&s.key), s.table),
            })
            .collect()
    }

    /// Subscribe `key` (unique on the connection by `same`) to what `wish` describes, as
    /// `principal`. The worker resolves the table, checks the principal's rights to it and
    /// the filter.
    pub async fn subscribe(
        &mut self,
        key: K,
        wish: Wish,
        principal: &Arc<Principal>,
        same: impl Fn(&K, &K) -> bool,
    ) -> Result<Subscribed<'_>, SubscribeError> {
        if self.subscriptions.iter().any(|s| same(&s.key, &key)) {
            return Err(SubscribeError::Duplicate);
        }
        let max = self.shared.limits().max_subscriptions;
        if self.subscriptions.len() >= max {
            return Err(SubscribeError::TooMany(max));
        }
        // Counted before the worker is asked, so that by the time it answers, commits already
        // wake it (see queue::set_wake_on_commit); a failed subscribe drops the count.
        let counted = Counted::new(&self.shared, self.counted_as);
        // Read back from the history: after `since`; or, for a snapshot, from where every
        // change it does not contain follows (unknown: from the start, with a gap).
        let since = wish.since.clone();
        let after_snapshot = match (&since, &wish.after_snapshot) {
            (None, Some(seen_by)) => Some(
                self.history
                    .as_ref()
                    .and_then(|h| h.before_xid(seen_by.xmin32()))
                    .unwrap_or(0),
            ),
            _ => None,
        };
        let resuming = since.is_some();
        let made = self.make(key, wish, principal, counted).await?;
        let since = match since {
            Some(Since::Position(after)) => Some(after),
            Some(Since::Committed { from, newest }) => {
                Some(self.after_time(from, newest, &made).await)
            }
            None => after_snapshot,
        };
        if resuming {
            self.shared.stats.increment(Stat::Resumes);
        }
        let resume = since.map(|after| {
            let through = made.after;
            Resume {
                after,
                through,
                complete: after >= through
                    || self
                        .history
                        .as_ref()
                        .is_some_and(|h| h.complete(after, through, &made.topic)),
            }
        });
        self.subscriptions.push(made);
        self.generation += 1;
        let s = self.subscriptions.last().expect("just pushed");
        Ok(Subscribed {
            topic: &s.topic,
            schema: &s.schema,
            table: &s.table,
            events: s.ops,
            position: s.after,
            resume,
            described: &s.described,
        })
    }

    /// Where a subscription resuming from a commit time starts: looked up in the history off
    /// the network threads (it reads files). Without a history: from the start, which the
    /// replay tells is gone.
    async fn after_time(&self, from: String, newest: Option<usize>, made: &Subscription<K>) -> u64 {
        let Some(history) = self.history.clone() else {
            return 0;
        };
        let (topic, through) = (made.topic.clone(), made.after);
        let newest = newest.map(|n| n.min(MAX_NEWEST));
        // With a limit it reads all the history after the time: two lookups at a time, so
        // that joins asking for it cannot take every blocking thread and the disk.
        static LOOKUPS: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(2);
        let Ok(_turn) = LOOKUPS.acquire().await else {
            return 0;
        };
        tokio::task::spawn_blocking(move || {
            history.after_time(&from, newest.map(|n| (n, &topic)), through)
        })
        .await
        .unwrap_or(0)
    }

    async fn make(
        &self,
        key: K,
        wish: Wish,
        principal: &Arc<Principal>,
        counted: Counted,
    ) -> Result<Subscription<K>, SubscribeError> {
        if wish.events.is_some_and(OpSet::is_empty) {
            return Err(SubscribeError::NoEvents);
        }
        let spec: Vec<FilterSpec> = match wish.filter.as_deref() {
            Some(text) => filter::parse_all(text)?,
            None => Vec::new(),
        };
        let resolved = self
            .worker
            .resolve(wish.target.clone(), spec, principal.clone())
            .await?;
        // Left if anything below refuses the subscription.
        let audience = match resolved.rows {
            RowAccess::Checked(id) => Some(Audience(self.worker.clone(), id)),
            _ => None,
        };
        let filter = match resolved.filter {
            conditions if conditions.is_empty() => None,
            conditions => Some(filter::Compiled::new(conditions)?),
        };
        let columns = select(
            resolved.columns,
            &resolved.described,
            wish.select.as_deref(),
        )?;
        let requested = wish.events.unwrap_or(resolved.watched);
        let ops = requested.intersection(resolved.watched);
        if wish.events.is_some() && ops != requested {
            return Err(SubscribeError::NotWatched);
        }
        let (interest, registered_after) = self
            .registrar
            .register(resolved.topic.clone(), Keys::of(&resolved.rows));
        let seen_by = wish.after_snapshot.clone();
        if wish.presence && !resolved.rights.presence {
            return Err(SubscribeError::Resolve(ResolveError::Forbidden(
                "this role may not see presence on this channel".into(),
            )));
        }
        let rights = ChannelRights {
            presence: wish.presence,
            ..resolved.rights
        };
        let seat = match (&resolved.topic, &self.mailbox) {
            (Topic::Channel(channel), Some(mailbox)) => Some(mailbox.join(channel, rights)),
            _ => None,
        };
        Ok(Subscription {
            key,
            wish,
            topic: resolved.topic,
            schema: resolved.schema,
            table: resolved.table,
            filter,
            ops,
            columns: columns.map(Arc::new),
            described: resolved.described,
            rows: resolved.rows,
            judged_after: resolved.judged_after,
            after: registered_after.max(self.seen),
            seen_by,
            _interest: interest,
            _audience: audience,
            _counted: counted,
            rights,
            _seat: seat,
        })
    }

    /// Work out every subscription's rights again, as `principal` (a refreshed token, or a
    /// catalog change): each keeps its place in the stream with what it may see now, or ends
    /// (`Ended` in `out`) if it may no longer read its table.
    pub async fn reauthorize(&mut self, principal: &Arc<Principal>, out: &mut Vec<Outgoing<K>>)
    where
        K: Clone,
    {
        self.generation += 1;
        for old in std::mem::take(&mut self.subscriptions) {
            let counted = Counted::new(&self.shared, self.counted_as);
            let again = self
                .make(old.key.clone(), old.wish.clone(), principal, counted)
                .await;
            match again {
                Ok(mut made) if made.topic == old.topic => {
                    made.after = old.after;
                    made.seen_by = old.seen_by;
                    self.subscriptions.push(made)
                }
                Err(SubscribeError::Resolve(
                    ResolveError::Unauthorized(_)
                    | ResolveError::Forbidden(_)
                    | ResolveError::Unreadable(_)
                    | ResolveError::UnknownChannel(_),
                )) => out.push(Outgoing::Ended(old.key, EndReason::Forbidden)),
                // Dropped, unwatched or renamed: the change that did it ends the
                // subscription in its place in the stream. Worker restarting: nothing changed.
                _ => self.subscriptions.push(old),
            }
        }
    }

    /// End every subscription, for `reason`.
    pub fn end_all(&mut self, reason: EndReason, out: &mut Vec<Outgoing<K>>) {
        self.end(reason, |_| true, out);
    }

    /// Remove the subscription `same` picks; whether there was one.
    pub fn unsubscribe(&mut self, same: impl Fn(&K) -> bool) -> bool {
        let before = self.subscriptions.len();
        self.generation += 1;
        self.subscriptions.retain(|s| !same(&s.key));
        self.subscriptions.len() != before
    }

    /// For each subscription the worker judges, the changes of its topic among `changes`
    /// that lack its audience's verdict and that it may deliver: its audience, topic and the
    /// stretch of positions to judge. Live changes lack one only up to where the worker began
    /// judging for the audience (`Resolved::judged_after`: made again at a catalog
    /// change, it is newly judged); changes read back from the history lack them all.
    /// `replay`: for a resuming subscription, whose changes precede the connection's.
    pub fn missing_verdicts(
        &self,
        changes: &[Change],
        source: Source,
        replay: bool,
    ) -> Vec<(AudienceId, Topic, RangeInclusive<u64>)> {
        self.subscriptions
            .iter()
            .filter_map(|s| {
                let RowAccess::Checked(id) = s.rows else {
                    return None;
                };
                let from = if replay { 0 } else { s.after.max(self.seen) };
                let through = match source {
                    Source::Live if s.judged_after <= from => return None,
                    Source::Live => s.judged_after,
                    Source::History => u64::MAX,
                };
                let range = from + 1..=through;
                changes
                    .iter()
                    .any(|c| {
                        c.topic == s.topic && range.contains(&c.position) && c.verdict(id).is_none()
                    })
                    .then(|| (id, s.topic.clone(), range))
            })
            .collect()
    }

    /// The audiences of this connection's subscriptions that the worker judges apart and that
    /// have changes among `changes` still to deliver (`replay`: whatever their position),
    /// with their topics.
    pub fn judged_apart(&self, changes: &[Change], replay: bool) -> Vec<(AudienceId, Topic)> {
        let floor = if replay { 0 } else { self.seen };
        let mut apart: Vec<(AudienceId, Topic)> = self
            .subscriptions
            .iter()
            .filter_map(|s| match s.rows {
                RowAccess::Checked(id) => Some((id, s.topic.clone())),
                _ => None,
            })
            .filter(|(id, topic)| {
                changes.iter().any(|c| {
                    c.topic == *topic
                        && c.position > floor
                        && c.verdict(*id).is_some_and(|v| v.apart)
                })
            })
            .collect();
        apart.sort_unstable();
        apart.dedup();
        apart
    }

    /// Authorize again before the next delivery.
    pub fn reauthorize_later(&mut self) {
        self.reauthorize_pending = true;
    }

    /// Whether a batch this connection skipped may have changed who may see what (told once).
    pub fn take_reauthorize(&mut self) -> bool {
        std::mem::take(&mut self.reauthorize_pending)
    }

    /// Batches went by that this connection never read; whether any could have concerned
    /// it. A catalog change among them has it authorize again before the next delivery.
    /// `backlog`: it will read them from the history, ends and all; otherwise it owes its
    /// client a gap, and ended subscriptions are still ended (by the next delivery).
    pub fn missed(&mut self, missed: Option<Vec<Dropped>>, backlog: bool) -> bool {
        let Some(missed) = missed else {
            // Whatever went by may have changed who may see what.
            self.reauthorize_pending = true;
            self.lagged |= !backlog;
            return true;
        };
        let mut any = false;
        for (first, last, summary) in missed {
            let concerned = match summary {
                Summary::Changes(topics) | Summary::Gap(Some(topics)) => {
                    topics.iter().any(|topic| self.subscribed_to(topic))
                }
                Summary::Gap(None) => true,
                Summary::Ended(topic, _) if backlog => self.subscribed_to(&topic),
                Summary::Ended(topic, reason) => {
                    self.pending_ends.push((topic, reason));
                    false
                }
                Summary::Reauthorize => {
                    self.reauthorize_pending = true;
                    false
                }
            };
            any |= concerned;
            if concerned && !backlog {
                self.lagged = true;
                let (from, to) = self.lost.unwrap_or((first, last));
                self.lost = Some((from.min(first), to.max(last)));
            }
        }
        any
    }

    /// The `slow_client` gap for batches skipped since the last one, if any: from the first
    /// to the last lost position when known; otherwise from after everything sent (live or
    /// read back by a resume) to before `next` (the batch about to be sent), or to the
    /// position published so far when nothing follows yet.
    pub fn lag_gap(&mut self, next: Option<u64>, out: &mut Vec<Outgoing<K>>) {
        if !std::mem::take(&mut self.lagged) {
            return;
        }
        let (from, to) = self.lost.take().unwrap_or_else(|| {
            let from = self.seen.max(self.replayed) + 1;
            let to = next.map_or(self.shared.position(), |n| n.saturating_sub(1));
            (from, to.max(from))
        });
        out.push(Outgoing::Gap {
            reason: GapReason::SlowClient,
            from,
            to,
        });
    }

    fn subscribed_to(&self, topic: &Topic) -> bool {
        self.subscriptions.iter().any(|s| s.topic == *topic)
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
        if !ended.is_empty() {
            self.generation += 1;
        }
        out.extend(ended.into_iter().map(|s| Outgoing::Ended(s.key, reason)));
    }

    /// Append to `out` what to send for `batch`, in order. (`out` is the session's, reused
    /// from batch to batch: thousands of sessions each reading every batch would otherwise
    /// allocate for each.)
    pub fn deliver(&mut self, batch: &Batch, out: &mut Vec<Outgoing<K>>) {
        for (topic, reason) in std::mem::take(&mut self.pending_ends) {
            self.end(reason, |s| s.topic == topic, out);
        }
        self.lag_gap(Some(batch.first_position()), out);
        match batch {
            Batch::Gap { .. } => out.extend(gap_for(batch, |topic| self.subscribed_to(topic))),
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
                    // One message per change, whichever subscriptions want it. They all
                    // see the table as the same principal, so with the same columns.
                    let wanted = self
                        .subscriptions
                        .iter()
                        .map(|s| (s.wants(change), &s.columns))
                        .max_by(|a, b| a.0.cmp(&b.0));
                    let Some((wanted, columns)) = wanted else {
                        continue;
                    };
                    push(out, wanted, i, change.position, columns.clone());
                }
                // 32-bit transaction ids wrap: a snapshot is forgotten long before they do
                // (by then everything it saw has long been published).
                if let Some(last) = changes.last() {
                    for s in &mut self.subscriptions {
                        if s.seen_by
                            .as_ref()
                            .is_some_and(|x| x.long_past(last.txn.xid))
                        {
                            s.seen_by = None;
                        }
                    }
                }
            }
            Batch::Ended { topic, reason, .. } => self.end(*reason, |s| s.topic == *topic, out),
            // The session authorized its subscriptions again before delivering it.
            Batch::Reauthorize { .. } => {}
        }
        self.seen = self.seen.max(batch.last_position());
    }

    /// Append to `out` what to send for `batch`, read back from the history, to the
    /// subscription `same` picks (resuming). A change this connection was already sent live
    /// for another subscription is not sent again.
    pub fn replay(&mut self, same: impl Fn(&K) -> bool, batch: &Batch, out: &mut Vec<Outgoing<K>>) {
        let Some(at) = self.subscriptions.iter().position(|s| same(&s.key)) else {
            return;
        };
        let s = &self.subscriptions[at];
        self.replayed = self.replayed.max(batch.last_position());
        match batch {
            Batch::Gap { .. } => out.extend(gap_for(batch, |topic| *topic == s.topic)),
            Batch::Changes(changes) => {
                for (i, change) in changes.iter().enumerate() {
                    let sent_live = change.position <= self.seen
                        && self
                            .subscriptions
                            .iter()
                            .any(|other| other.wants(change) != Wanted::No);
                    if !sent_live {
                        push(
                            out,
                            s.would_want(change),
                            i,
                            change.position,
                            s.columns.clone(),
                        );
                    }
                }
            }
            Batch::Ended { topic, reason, .. } if *topic == s.topic => {
                self.end(*reason, |s| same(&s.key), out)
            }
            Batch::Ended { .. } | Batch::Reauthorize { .. } => {}
        }
    }

    /// From now on, do not send the subscription `same` picks the changes `seen_by` contains
    /// (its snapshot was read in it).
    pub fn set_seen_by(&mut self, same: impl Fn(&K) -> bool, seen_by: Arc<Xids>) {
        if let Some(s) = self.subscriptions.iter_mut().find(|s| same(&s.key)) {
            s.seen_by = Some(seen_by);
        }
    }

    /// What a snapshot reader is to read for the subscription `same` picks, as `principal`.
    /// The session applies its filter to the rows, so then the reader cannot apply `limit`.
    pub fn snapshot_spec(
        &self,
        same: impl Fn(&K) -> bool,
        principal: &Principal,
        order: Vec<OrderBy>,
        limit: Option<u64>,
    ) -> Option<Spec> {
        let s = self.get(same)?;
        let spec = Spec {
            role: principal.role.clone(),
            claims: principal.claims.clone(),
            relid: s.topic.relid()?,
            schema: s.schema.clone(),
            table: s.table.clone(),
            columns: s.columns.as_ref().map(|c| c.iter().cloned().collect()),
            order,
            limit: limit.filter(|_| s.filter.is_none()),
        };
        Some(spec)
    }

    /// The filter of the subscription `same` picks, if it has one.
    pub fn filter(&self, same: impl Fn(&K) -> bool) -> Option<&filter::Compiled> {
        self.get(same).and_then(|s| s.filter.as_ref())
    }

    /// The subscriptions `change` (sent for a batch just delivered) matched; for a
    /// replayed one, the subscription `only` it was read back for.
    pub fn matched<'a>(&'a self, change: &'a Change, only: Option<&'a K>) -> Matched<'a, K> {
        Matched {
            subscriptions: &self.subscriptions,
            change,
            only,
        }
    }

    /// The subscription `same` picks.
    fn get(&self, same: impl Fn(&K) -> bool) -> Option<&Subscription<K>> {
        self.subscriptions.iter().find(|s| same(&s.key))
    }

    /// The audience that judges the rows of the subscription `same` picks, if the worker does.
    pub fn audience(&self, same: impl Fn(&K) -> bool) -> Option<AudienceId> {
        self.get(same).and_then(|s| match s.rows {
            RowAccess::Checked(id) => Some(id),
            _ => None,
        })
    }
}

/// What to send for a gap batch, if it is for everyone or names a topic `concerns` accepts.
fn gap_for<K>(batch: &Batch, concerns: impl Fn(&Topic) -> bool) -> Option<Outgoing<K>> {
    let Batch::Gap {
        reason,
        first_position,
        last_position,
        topics,
    } = batch
    else {
        return None;
    };
    let concerned = topics
        .as_ref()
        .is_none_or(|topics| topics.iter().any(concerns));
    concerned.then_some(Outgoing::Gap {
        reason: *reason,
        from: *first_position,
        to: *last_position,
    })
}

/// Append what a subscription makes of the change at `index` (`position`) to `out`;
/// consecutive misses make one gap.
fn push<K>(
    out: &mut Vec<Outgoing<K>>,
    wanted: Wanted,
    index: usize,
    position: u64,
    columns: Columns,
) {
    if wanted == Wanted::Missed {
        if let Some(Outgoing::Gap {
            reason: GapReason::PolicyFailed,
            to,
            ..
        }) = out.last_mut()
        {
            *to = position;
            return;
        }
    }
    out.push(match wanted {
        Wanted::No => return,
        Wanted::Missed => Outgoing::Gap {
            reason: GapReason::PolicyFailed,
            from: position,
            to: position,
        },
        Wanted::Leave => Outgoing::Leave { index, columns },
        Wanted::ChangeWithoutOld | Wanted::Change => Outgoing::Change {
            index,
            old: wanted == Wanted::Change,
            columns,
        },
    });
}

/// The columns a subscription sends: those the principal may read (`readable`, `None` for
/// all of `described`), narrowed to `select` when the client chose some.
fn select(
    readable: Option<std::collections::HashSet<String>>,
    described: &str,
    select: Option<&[String]>,
) -> Result<Option<std::collections::HashSet<String>>, SubscribeError> {
    let Some(select) = select else {
        return Ok(readable);
    };
    let names: Vec<serde_json::Value> = serde_json::from_str(described).unwrap_or_default();
    let known = |column: &String| {
        names.iter().any(|c| c["name"].as_str() == Some(column))
            && readable.as_ref().is_none_or(|r| r.contains(column))
    };
    match select.iter().find(|column| !known(column)) {
        Some(column) => Err(ResolveError::UnknownColumn(column.clone()).into()),
        None => Ok(Some(select.iter().cloned().collect())),
    }
}

#[cfg(test)]
mod unit {
    use super::*;
    use crate::net::fanout::{Cursor, Fanout};
    use crate::net::testing::{self, change, insert, runtime};
    use crate::stats::{Stat, Stats};

    /// A connection's subscription set, on a fan-out of its own.
    fn connection(stats: &'static Stats) -> (SubscriptionSet<u32>, Cursor) {
        let fanout = Fanout::new(16, 1 << 20, stats);
        let cursor = fanout.cursor();
        let shared = testing::shared(stats);
        let set = SubscriptionSet::new(shared, testing::worker(), cursor.registrar(), None);
        (set, cursor)
    }

    /// Subscribe `id` as alice; what the protocol would confirm.
    fn subscribe(set: &mut SubscriptionSet<u32>, id: u32, wish: Wish) -> (u64, Option<Resume>) {
        runtime().block_on(async {
            let made = set
                .subscribe(id, wish, &testing::alice(), |a, b| a == b)
                .await
                .map_err(|e| e.to_string())
                .unwrap();
            (made.position, made.resume)
        })
    }

    fn wish(table: &str, filter: Option<&str>, since: Option<u64>) -> Wish {
        let since = since.map(Since::Position);
        Wish {
            target: Target::Table(table.into()),
            events: None,
            filter: filter.map(Into::into),
            since,
            after_snapshot: None,
            presence: false,
            select: None,
        }
    }

    /// What `out` says, in words: "change 3 (old) [id,owner]", "leave 5", "gap SlowClient 5-7".
    fn said(batch: &Batch, out: &mut Vec<Outgoing<u32>>) -> Vec<String> {
        let changes = match batch {
            Batch::Changes(c) => c.as_slice(),
            _ => &[],
        };
        let cols = |c: &Columns| {
            c.as_ref().map_or(String::new(), |c| {
                let mut c: Vec<_> = c.iter().cloned().collect();
                c.sort();
                format!(" [{}]", c.join(","))
            })
        };
        out.drain(..)
            .map(|o| match o {
                Outgoing::Change {
                    index,
                    old,
                    columns,
                } => format!(
                    "change {}{}{}",
                    changes[index].position,
                    if old { " (old)" } else { "" },
                    cols(&columns)
                ),
                Outgoing::Leave { index, .. } => format!("leave {}", changes[index].position),
                Outgoing::Ended(id, reason) => format!("ended {id} {reason:?}"),
                Outgoing::Gap { reason, from, to } => format!("gap {reason:?} {from}-{to}"),
            })
            .collect()
    }

    #[test]
    fn a_subscription_gets_what_its_rule_and_filter_let_through() {
        static STATS: Stats = Stats::new();
        let (mut set, _cursor) = connection(&STATS);
        subscribe(&mut set, 1, wish("t", None, None));
        subscribe(&mut set, 2, wish("open", Some("kind=eq.scratch"), None));
        let unknown = runtime().block_on(set.subscribe(
            3,
            wish("nope", None, None),
            &testing::alice(),
            |a, b| a == b,
        ));
        assert!(matches!(
            unknown,
            Err(SubscribeError::Resolve(ResolveError::UnknownTable(_)))
        ));
        let row = |id: u64, owner: &str| format!(r#"{{"id":{id},"owner":"{owner}","secret":"x"}}"#);
        let batch = Batch::Changes(vec![
            change(1, 7, Op::Insert, Some(&row(1, "alice")), None),
            change(2, 7, Op::Insert, Some(&row(2, "bob")), None),
            change(3, 8, Op::Insert, Some(r#"{"kind":"scratch"}"#), None),
            change(4, 8, Op::Insert, Some(r#"{"kind":"dent"}"#), None),
            // Alice's row given to bob leaves her view; bob's given to her enters it, without
            // the old row she could not see.
            change(
                5,
                7,
                Op::Update,
                Some(&row(5, "bob")),
                Some(&row(5, "alice")),
            ),
            change(
                6,
                7,
                Op::Update,
                Some(&row(6, "alice")),
                Some(&row(6, "bob")),
            ),
            change(
                7,
                8,
                Op::Update,
                Some(r#"{"kind":"dent"}"#),
                Some(r#"{"kind":"scratch"}"#),
            ),
        ]);
        let mut out = Vec::new();
        set.deliver(&batch, &mut out);
        assert_eq!(
            said(&batch, &mut out),
            [
                "change 1 (old) [id,owner]",
                "change 3 (old)",
                "leave 5",
                "change 6 [id,owner]",
                "leave 7"
            ]
        );
        assert_eq!(set.seen(), 7);
        // Each change names the subscriptions it matched.
        let Batch::Changes(changes) = &batch else {
            unreachable!()
        };
        assert_eq!(set.matched(&changes[0], None).ids(), [&1]);
        assert_eq!(set.matched(&changes[2], None).ids(), [&2]);
        // Changes at or before what was delivered are not delivered again.
        set.deliver(&batch, &mut out);
        assert!(out.is_empty());
    }

    #[test]
    fn a_channel_subscription_gets_its_channel_s_messages_only() {
        static STATS: Stats = Stats::new();
        let (mut set, _cursor) = connection(&STATS);
        let channel = |name: &str| Wish {
            target: Target::Channel(name.into()),
            ..wish("", None, None)
        };
        subscribe(&mut set, 1, channel("news"));
        subscribe(&mut set, 2, wish("open", None, None));
        let unknown =
            runtime()
                .block_on(set.subscribe(3, channel("secret"), &testing::alice(), |a, b| a == b));
        assert!(matches!(
            unknown,
            Err(SubscribeError::Resolve(ResolveError::UnknownChannel(_)))
        ));
        let txn = Arc::new(crate::change::Txn::new(0, String::new()));
        let message = |position, channel: &str| {
            Change::message(
                position,
                txn.clone(),
                Arc::new((channel.into(), "notify".into())),
                42,
                r#""hello""#.into(),
            )
        };
        let batch = Batch::Changes(vec![
            message(1, "news"),
            message(2, "other"),
            change(3, 8, Op::Insert, Some(r#"{"kind":"dent"}"#), None),
            message(4, "news"),
        ]);
        let mut out = Vec::new();
        set.deliver(&batch, &mut out);
        // Two messages of one channel under different events are not a rename.
        assert_eq!(
            said(&batch, &mut out),
            ["change 1 (old)", "change 3 (old)", "change 4 (old)"]
        );
        let Batch::Changes(changes) = &batch else {
            unreachable!()
        };
        assert_eq!(set.matched(&changes[0], None).ids(), [&1]);
    }

    #[test]
    fn what_went_by_unread_is_a_gap_only_if_it_concerned_the_connection() {
        static STATS: Stats = Stats::new();
        let (mut set, _cursor) = connection(&STATS);
        subscribe(&mut set, 1, wish("t", None, None));
        let t = Topic::Table(7);
        let other = Topic::Table(99);
        let mut out = Vec::new();
        // Another table's changes: nothing to say.
        assert!(!set.missed(Some(vec![(1, 4, Summary::Changes([other].into()))]), false));
        set.lag_gap(None, &mut out);
        assert!(out.is_empty());
        // Its own: the exact stretch, merged across the batches lost.
        let lost = vec![
            (5, 7, Summary::Changes([t.clone()].into())),
            (9, 9, Summary::Gap(None)),
        ];
        assert!(set.missed(Some(lost), false));
        let next = insert(12, "alice");
        set.deliver(&next, &mut out);
        assert_eq!(
            said(&next, &mut out),
            ["gap SlowClient 5-9", "change 12 (old) [id,owner]"]
        );
        // Unknown losses: from after what was seen to before what comes next.
        assert!(set.missed(None, false));
        let next = insert(20, "alice");
        set.deliver(&next, &mut out);
        assert_eq!(
            said(&next, &mut out),
            ["gap SlowClient 13-19", "change 20 (old) [id,owner]"]
        );
        // A lost end still ends the subscription, before anything else is delivered.
        let ended = Summary::Ended(t.clone(), EndReason::Dropped);
        assert!(!set.missed(Some(vec![(20, 20, ended)]), false));
        let next = insert(21, "alice");
        set.deliver(&next, &mut out);
        assert_eq!(said(&next, &mut out), ["ended 1 Dropped"]);
    }

    #[test]
    fn a_subscriber_that_reads_the_history_owes_no_gap() {
        static STATS: Stats = Stats::new();
        let (mut set, _cursor) = connection(&STATS);
        subscribe(&mut set, 1, wish("t", None, None));
        let t = Topic::Table(7);
        // Concerned (so it reads the history), but no gap, and ends come from the history.
        let lost = vec![
            (5, 7, Summary::Changes([t.clone()].into())),
            (8, 8, Summary::Ended(t, EndReason::Dropped)),
        ];
        assert!(set.missed(Some(lost), true));
        let mut out = Vec::new();
        let next = insert(6, "alice");
        set.deliver(&next, &mut out);
        assert_eq!(said(&next, &mut out), ["change 6 (old) [id,owner]"]);
    }

    #[test]
    fn a_resume_reads_back_from_since_to_where_live_changes_begin() {
        static STATS: Stats = Stats::new();
        STATS.set(Stat::Position, 10);
        let (mut set, _cursor) = connection(&STATS);
        let (position, _) = subscribe(&mut set, 1, wish("open", None, None));
        assert_eq!(position, 10, "live changes come after what was published");
        let (_, resume) = subscribe(&mut set, 2, wish("t", None, Some(4)));
        let resume = resume.expect("resuming");
        assert_eq!((resume.after, resume.through), (4, 10));
        assert!(!resume.complete, "no history: not complete");
        // What is read back goes to the resuming subscription alone, by its rules.
        let back = Batch::Changes(vec![
            change(5, 7, Op::Insert, Some(r#"{"id":5,"owner":"alice"}"#), None),
            change(6, 7, Op::Insert, Some(r#"{"id":6,"owner":"bob"}"#), None),
            change(7, 8, Op::Insert, Some(r#"{"id":7}"#), None),
        ]);
        let mut out = Vec::new();
        set.replay(|k| *k == 2, &back, &mut out);
        assert_eq!(said(&back, &mut out), ["change 5 (old) [id,owner]"]);
    }
}
