//! A subscriber of the engine, with a socket or without: its subscriptions, its place in the
//! fan-out, and the history as its backlog. Whoever drives it (a connection, or a headless
//! consumer) waits for the next batch, has it turn that batch into what to send
//! (`Outgoing`), and writes those out in its own form.
//!
//! Live batches come from the fan-out's memory ring. A subscriber that falls out of the ring
//! goes on reading the history from where it left off, in order, and returns to the live
//! stream when it has caught up: nothing is lost or sent twice, and it is told of a gap only
//! when the history no longer holds what it missed (or there is no history).

use crate::bridge::WorkerHandle;
use crate::change::{AudienceId, Batch, Change, GapReason, Topic, Verdict};
use crate::net::apart::Judges;
use crate::net::backlog::{Backlog, ReadBack};
use crate::net::context::Context;
use crate::net::fanout::{Cursor, Delivering, Missed};
use crate::net::shared::Shared;
use crate::net::subscriptions::{Outgoing, Resume, Source, SubscriptionSet};
use crate::stats::Stat;
use std::sync::Arc;

/// What a subscriber waited for.
pub enum Incoming {
    /// A batch to deliver, live from the fan-out or read back from the history.
    Batch(Arc<Batch>, Source),
    /// Batches that concerned it were lost and no history holds them.
    Lagged(Option<Vec<crate::net::fanout::Dropped>>),
    /// The server is stopping.
    Closed,
}

pub struct Subscriber<K> {
    pub subscriptions: SubscriptionSet<K>,
    cursor: Cursor,
    /// Catching up from the history, after falling out of the fan-out.
    backlog: Option<Backlog>,
    read_back: Option<Arc<ReadBack>>,
    worker: WorkerHandle,
    judges: Arc<Judges>,
    shared: Arc<Shared>,
}

impl<K: Clone> Subscriber<K> {
    pub fn new(context: &Context) -> Subscriber<K> {
        let cursor = context.batches.cursor();
        let subscriptions = SubscriptionSet::new(
            context.shared.clone(),
            context.worker.clone(),
            cursor.registrar(),
            context.history.clone(),
        );
        Subscriber {
            subscriptions,
            cursor,
            backlog: None,
            read_back: context.read_back.clone(),
            worker: context.worker.clone(),
            judges: context.judges.clone(),
            shared: context.shared.clone(),
        }
    }

    pub fn cursor(&self) -> &Cursor {
        &self.cursor
    }

    /// Whether it is reading the history to catch up.
    pub fn catching_up(&self) -> bool {
        self.backlog.is_some()
    }

    /// The next batch to deliver. Cancel-safe.
    pub async fn wait(&mut self) -> Incoming {
        loop {
            if let Some(backlog) = &mut self.backlog {
                match backlog.next().await {
                    Some(batch) => return Incoming::Batch(caught_up_to(batch), Source::History),
                    None => self.caught_up(),
                }
            }
            let received = self.cursor.recv().await;
            if let Some(incoming) = self.received(received) {
                return incoming;
            }
        }
    }

    /// The next batch already at hand: read from the history when catching up, else live if
    /// one is ready. Never waits for a new one.
    pub async fn next_at_hand(&mut self) -> Option<Incoming> {
        if let Some(backlog) = &mut self.backlog {
            match backlog.next().await {
                Some(batch) => return Some(Incoming::Batch(caught_up_to(batch), Source::History)),
                None => self.caught_up(),
            }
        }
        self.try_next()
    }

    /// The next batch if one is ready without waiting (live ones only: a read from the
    /// history is waited for).
    pub fn try_next(&mut self) -> Option<Incoming> {
        // Once behind, nothing live goes out before what the history holds.
        while self.backlog.is_none() {
            let received = self.cursor.try_recv()?;
            if let Some(incoming) = self.received(received) {
                return Some(incoming);
            }
        }
        None
    }

    /// What the fan-out handed it, as something to deliver; `None` for what was already
    /// read from the history, or a loss the history will fill.
    fn received(&mut self, received: Result<Arc<Batch>, Missed>) -> Option<Incoming> {
        match received {
            Ok(batch) => {
                // Ends and catalog markers take no position of their own: only changes and
                // gaps can be told apart as already read (an end read twice ends nothing).
                let read_back = matches!(*batch, Batch::Changes(_) | Batch::Gap { .. })
                    && batch.last_position() <= self.subscriptions.seen();
                (!read_back).then_some(Incoming::Batch(batch, Source::Live))
            }
            Err(Missed::Lagged(missed)) => match &self.read_back {
                Some(read_back) => {
                    if self.subscriptions.missed(missed, true) {
                        let after = self.subscriptions.seen();
                        self.backlog = Some(Backlog::new(read_back.clone(), after, None));
                        self.shared.stats.increment(Stat::CatchUps);
                        self.shared.stats.increment(Stat::CatchingUp);
                    }
                    None
                }
                None => Some(Incoming::Lagged(missed)),
            },
            Err(Missed::Closed) => Some(Incoming::Closed),
        }
    }

    /// Back on the live stream.
    fn caught_up(&mut self) {
        if self.backlog.take().is_some() {
            self.shared.stats.sub(Stat::CatchingUp, 1);
        }
    }

    /// Mark the start of a delivery of live batches (for the fan-out's accounting of the
    /// memory stalled subscribers pin).
    pub fn delivering(&self) -> Delivering {
        self.cursor.delivering()
    }

    /// Work out every subscription's rights again, as `principal` (see
    /// `SubscriptionSet::reauthorize`), and route batches by what they allow from now on.
    pub async fn reauthorize(
        &mut self,
        principal: &Arc<crate::auth::Principal>,
        out: &mut Vec<Outgoing<K>>,
    ) {
        self.subscriptions.reauthorize(principal, out).await;
        self.cursor.settle();
    }

    /// Append to `out` what to send for `batch`, judging first what the worker left to judge
    /// for its subscriptions; the batch to encode those against.
    pub async fn deliver(
        &mut self,
        batch: Arc<Batch>,
        source: Source,
        principal: Option<&Arc<crate::auth::Principal>>,
        out: &mut Vec<Outgoing<K>>,
    ) -> Arc<Batch> {
        // Whatever was committed after a change to who may see what is delivered under the
        // rules it made. Authorized again before the next delivery, not at each marker: a run
        // of catalog changes costs one pass.
        if let Batch::Reauthorize { .. } = *batch {
            self.subscriptions.reauthorize_later();
        } else if self.subscriptions.take_reauthorize() {
            if let Some(principal) = principal {
                self.reauthorize(principal, out).await;
            }
        }
        let batch = match self.complete_verdicts(&batch, source, None).await {
            Some(completed) => Arc::new(completed),
            None => batch,
        };
        self.subscriptions.deliver(&batch, out);
        batch
    }

    /// Batches were lost with no history to read them from: the gap to tell of.
    pub fn lagged(
        &mut self,
        missed: Option<Vec<crate::net::fanout::Dropped>>,
        out: &mut Vec<Outgoing<K>>,
    ) {
        self.subscriptions.missed(missed, false);
        self.subscriptions.lag_gap(None, out);
    }

    /// Deliver everything after `position` to the subscriptions it holds, from the history
    /// and in order, then live. Without a history, what came between is a gap (in `out`).
    pub fn start_from(&mut self, position: u64, out: &mut Vec<Outgoing<K>>) {
        let Some(read_back) = self.read_back.clone() else {
            let through = self.subscriptions.position();
            if position < through {
                out.push(Outgoing::Gap {
                    reason: GapReason::HistoryExpired,
                    from: position + 1,
                    to: through,
                });
            }
            return;
        };
        if self.subscriptions.rewind(position) {
            self.caught_up();
            self.backlog = Some(Backlog::new(read_back, position, None));
            self.shared.stats.increment(Stat::CatchingUp);
        }
    }

    /// The history of the stretch `resume` covers, to replay for the subscription `same`
    /// picks before any of its live changes; `None` without a history (then the whole
    /// stretch is a gap, `replay_missing`).
    pub fn replay(&self, resume: Resume) -> Option<Backlog> {
        let read_back = self.read_back.clone()?;
        Some(Backlog::new(read_back, resume.after, Some(resume.through)))
    }

    /// Append to `out` what to send for `batch`, read back for the subscription `same` picks.
    pub async fn replayed(
        &mut self,
        same: impl Fn(&K) -> bool + Copy,
        batch: Arc<Batch>,
        out: &mut Vec<Outgoing<K>>,
    ) -> Arc<Batch> {
        let audience = self.subscriptions.audience(same);
        let completed = match audience {
            Some(audience) => {
                self.complete_verdicts(&batch, Source::History, Some(audience))
                    .await
            }
            None => None,
        };
        let batch = completed.map_or(batch, Arc::new);
        self.subscriptions.replay(same, &batch, out);
        batch
    }

    /// `batch` with the verdicts still missing for this subscriber's subscriptions (only
    /// `audience`'s, when given), or `None` if none are: those the worker did not attach
    /// (changes read back from the history; a subscription it began judging since, at a
    /// catalog change), and those of audiences it judges apart, which the judge gives.
    /// Without them the changes would count as not visible.
    async fn complete_verdicts(
        &self,
        batch: &Batch,
        source: Source,
        audience: Option<AudienceId>,
    ) -> Option<Batch> {
        let Batch::Changes(changes) = batch else {
            return None;
        };
        // A resuming subscription's changes may precede what the connection has seen.
        let replay = audience.is_some();
        let keep = |a: &AudienceId| audience.is_none_or(|only| only == *a);
        let mut missing = self.subscriptions.missing_verdicts(changes, source, replay);
        missing.retain(|(a, _, _)| keep(a));
        let mut apart = self.subscriptions.judged_apart(changes, replay);
        apart.retain(|(a, _)| keep(a));
        if missing.is_empty() && apart.is_empty() {
            return None;
        }
        let mut copies: Vec<Change> = changes.iter().map(Change::copy).collect();
        for (audience, topic, range) in missing {
            let which: Vec<usize> = (0..copies.len())
                .filter(|&i| {
                    let c = &copies[i];
                    c.topic == topic && range.contains(&c.position)
                })
                .collect();
            let judged = self
                .worker
                .judge(audience, which.iter().map(|&i| copies[i].copy()).collect())
                .await;
            for (n, &i) in which.iter().enumerate() {
                // The worker is restarting: a missed change, not an invisible one.
                let verdict = judged
                    .as_ref()
                    .ok()
                    .and_then(|j| j.get(n)?.verdict(audience))
                    .unwrap_or(Verdict::FAILED);
                copies[i].set_verdict(audience, verdict);
            }
        }
        // After the missing ones: the worker may have left those to the judge too.
        let mut apart = self.subscriptions.judged_apart(&copies, replay);
        apart.retain(|(a, _)| keep(a));
        for (audience, topic) in apart {
            self.judge_apart(audience, &topic, &mut copies).await;
        }
        Some(Batch::Changes(copies))
    }

    /// Have the judge decide what `audience`, judged apart, may see of the changes of `topic`
    /// among `changes` that wait for it; a failure is a missed change, as it is in the worker.
    async fn judge_apart(&self, audience: AudienceId, topic: &Topic, changes: &mut [Change]) {
        let which: Vec<usize> = (0..changes.len())
            .filter(|&i| {
                changes[i].topic == *topic && changes[i].verdict(audience).is_some_and(|v| v.apart)
            })
            .collect();
        if which.is_empty() {
            return;
        }
        let visible = match self.shared.apart(audience) {
            Some(spec) => {
                let waiting: Vec<&Change> = which.iter().map(|&i| &changes[i]).collect();
                self.judges.judge(&self.worker, &spec, &waiting).await
            }
            None => Err("the audience is no longer judged apart".to_string()),
        };
        for (n, &i) in which.iter().enumerate() {
            let verdict = match &visible {
                Ok(v) => Verdict {
                    new_visible: v[n][0],
                    old_visible: v[n][1],
                    failed: false,
                    apart: false,
                },
                Err(_) => Verdict::FAILED,
            };
            changes[i].set_verdict(audience, verdict);
        }
    }
}

impl<K> Drop for Subscriber<K> {
    fn drop(&mut self) {
        if self.backlog.is_some() {
            self.shared.stats.sub(Stat::CatchingUp, 1);
        }
    }
}

/// A batch read back to catch up, as a live one would have come: what the history no longer
/// holds is this subscriber's loss.
fn caught_up_to(batch: Arc<Batch>) -> Arc<Batch> {
    match &*batch {
        Batch::Gap {
            reason: GapReason::HistoryExpired | GapReason::HistoryLost,
            first_position,
            last_position,
            topics,
        } => Arc::new(Batch::Gap {
            reason: GapReason::SlowClient,
            first_position: *first_position,
            last_position: *last_position,
            topics: topics.clone(),
        }),
        _ => batch,
    }
}
