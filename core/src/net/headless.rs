//! The engine without a socket: a subscriber that acts as a principal and receives exactly
//! the authorized, filtered changes a WebSocket client with the same subscriptions would, in
//! order, catching up from the history when it falls behind; it keeps its position, and after
//! a restart resumes from it (`Wish::since`). Webhooks and publishing to other systems are
//! built on it.

use crate::auth::Principal;
use crate::change::{Batch, Change, EndReason, GapReason};
use crate::net::context::Context;
use crate::net::subscriber::{Incoming, Subscriber};
use crate::net::subscriptions::{Outgoing, SubscribeError, Wish};
use crate::visibility;
use std::collections::VecDeque;
use std::sync::Arc;

/// What a headless subscriber receives.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// A committed change, for the subscriptions `ids`; row images as JSON text with only the
    /// columns the principal may read. `old` only when the principal could see the row before.
    Change {
        ids: Vec<u64>,
        position: u64,
        /// RFC 3339 in UTC, microseconds.
        commit_time: String,
        op: crate::ops::Op,
        schema: String,
        table: String,
        new: Option<String>,
        old: Option<String>,
    },
    /// An UPDATE moved the row out of what the subscriptions `ids` may see.
    Leave {
        ids: Vec<u64>,
        position: u64,
        old: Option<String>,
    },
    /// The server ended subscription `id`.
    Ended { id: u64, reason: EndReason },
    /// Positions `from` to `to` are missing.
    Gap {
        reason: GapReason,
        from: u64,
        to: u64,
    },
}

/// What `Headless::next_within` found.
#[derive(Debug)]
pub enum Next {
    Event(Event),
    /// Nothing came in the time given.
    Idle,
    /// The server is stopping.
    Stopped,
}

pub struct Headless {
    subscriber: Subscriber<u64>,
    principal: Arc<Principal>,
    ready: VecDeque<Event>,
}

impl Headless {
    /// A subscriber of the engine `context` serves, acting as `principal`.
    pub fn new(context: &Context, principal: Arc<Principal>) -> Headless {
        Headless {
            subscriber: Subscriber::new(context),
            principal,
            ready: VecDeque::new(),
        }
    }

    /// Subscribe `id` to what `wish` describes; with `since`, what the history holds after it
    /// comes first. The position its live changes start after.
    pub async fn subscribe(&mut self, id: u64, wish: Wish) -> Result<u64, SubscribeError> {
        let same = move |key: &u64| *key == id;
        let made = self
            .subscriber
            .subscriptions
            .subscribe(id, wish, &self.principal, |a, b| a == b)
            .await?;
        let (position, resume) = (made.position, made.resume);
        let Some(resume) = resume.filter(|r| r.after < r.through) else {
            return Ok(position);
        };
        let mut out = Vec::new();
        match self.subscriber.replay(resume) {
            Some(mut backlog) => {
                while let Some(batch) = backlog.next().await {
                    let batch = self.subscriber.replayed(same, batch, &mut out).await;
                    self.queue(&batch, &mut out, Some(&id));
                }
            }
            None => {
                out.push(Outgoing::Gap {
                    reason: GapReason::HistoryExpired,
                    from: resume.after + 1,
                    to: resume.through,
                });
                self.queue(&Batch::empty(), &mut out, None);
            }
        }
        Ok(position)
    }

    /// Count its subscriptions in `stat` (a consumer's gauge) rather than the native one.
    pub fn count_as(&mut self, stat: crate::stats::Stat) {
        self.subscriber.subscriptions.count_as(stat);
    }

    pub fn unsubscribe(&mut self, id: u64) -> bool {
        self.subscriber.subscriptions.unsubscribe(|key| *key == id)
    }

    /// Deliver everything after `position` to the subscriptions made so far, in order, from
    /// the history and then live: how a consumer that kept its position resumes all its
    /// subscriptions at once (each `since` of its own would order them per subscription).
    pub fn start_from(&mut self, position: u64) {
        let mut out = Vec::new();
        self.subscriber.start_from(position, &mut out);
        self.queue(&Batch::empty(), &mut out, None);
    }

    /// The last position it has looked at: resume from here after a restart.
    pub fn position(&self) -> u64 {
        self.subscriber.subscriptions.seen()
    }

    /// The next event, waiting for one; `None` when the server stops.
    pub async fn next(&mut self) -> Option<Event> {
        loop {
            if let Some(event) = self.ready.pop_front() {
                return Some(event);
            }
            let incoming = self.subscriber.wait().await;
            if !self.take(incoming).await {
                return None;
            }
        }
    }

    /// The next event, waiting at most `wait` for one to come.
    pub async fn next_within(&mut self, wait: std::time::Duration) -> Next {
        loop {
            if let Some(event) = self.ready.pop_front() {
                return Next::Event(event);
            }
            // Waiting is cancel-safe; turning a batch into events is not, and is not timed.
            let Ok(incoming) = tokio::time::timeout(wait, self.subscriber.wait()).await else {
                return Next::Idle;
            };
            if !self.take(incoming).await {
                return Next::Stopped;
            }
        }
    }

    /// The next event among the batches already at hand (read from the history when catching
    /// up), without waiting for new ones: to gather a batch of events after `next`.
    pub async fn next_at_hand(&mut self) -> Option<Event> {
        loop {
            if let Some(event) = self.ready.pop_front() {
                return Some(event);
            }
            let incoming = self.subscriber.next_at_hand().await?;
            if !self.take(incoming).await {
                return None;
            }
        }
    }

    /// Turn what the subscriber was handed into events; false once the server stops.
    async fn take(&mut self, incoming: Incoming) -> bool {
        let mut out = Vec::new();
        match incoming {
            Incoming::Batch(batch, source) => {
                let principal = self.principal.clone();
                let batch = self
                    .subscriber
                    .deliver(batch, source, Some(&principal), &mut out)
                    .await;
                self.queue(&batch, &mut out, None);
            }
            Incoming::Lagged(missed) => {
                self.subscriber.lagged(missed, &mut out);
                self.queue(&Batch::empty(), &mut out, None);
            }
            Incoming::Closed => return false,
        }
        true
    }

    fn queue(&mut self, batch: &Batch, out: &mut Vec<Outgoing<u64>>, only: Option<&u64>) {
        let changes = match batch {
            Batch::Changes(changes) => changes.as_slice(),
            _ => &[],
        };
        let subscriptions = &self.subscriber.subscriptions;
        let ids = |change: &Change| -> Vec<u64> {
            subscriptions
                .matched(change, only)
                .ids()
                .into_iter()
                .copied()
                .collect()
        };
        let image = |row: Option<&serde_json::Map<String, serde_json::Value>>,
                     text: &Option<Box<str>>,
                     columns: &visibility::Columns| {
            match columns {
                Some(columns) => row.map(|r| visibility::project(r, columns)),
                None => text.as_deref().map(str::to_string),
            }
        };
        for item in out.drain(..) {
            self.ready.push_back(match item {
                Outgoing::Change {
                    index,
                    old,
                    columns,
                } => {
                    let c = &changes[index];
                    Event::Change {
                        ids: ids(c),
                        position: c.position,
                        commit_time: c.txn.commit_time.clone(),
                        op: c.op,
                        schema: c.names.0.clone(),
                        table: c.names.1.clone(),
                        new: image(c.new_row(), &c.new, &columns),
                        old: image(c.old_row(), &c.old, &columns).filter(|_| old),
                    }
                }
                Outgoing::Leave { index, columns } => {
                    let c = &changes[index];
                    Event::Leave {
                        ids: ids(c),
                        position: c.position,
                        old: image(c.old_row(), &c.old, &columns),
                    }
                }
                Outgoing::Ended(id, reason) => Event::Ended { id, reason },
                Outgoing::Gap { reason, from, to } => Event::Gap { reason, from, to },
            });
        }
    }
}

#[cfg(test)]
mod unit {
    use super::*;
    use crate::bridge::Target;
    use crate::history::{History, Limits as HistoryLimits};
    use crate::net::fanout::Fanout;
    use crate::net::testing::{self, insert, runtime};
    use crate::stats::{Stat, Stats};
    use std::time::Duration;

    fn wish(since: Option<u64>) -> Wish {
        let since = since.map(crate::net::subscriptions::Since::Position);
        Wish {
            target: Target::Table("t".into()),
            events: None,
            filter: None,
            since,
            after_snapshot: None,
            presence: false,
            select: None,
        }
    }

    async fn changes(headless: &mut Headless, n: usize) -> Vec<(u64, Option<String>)> {
        let mut got = Vec::new();
        while got.len() < n {
            let event = tokio::time::timeout(Duration::from_secs(5), headless.next())
                .await
                .expect("an event within 5 s")
                .expect("the engine is running");
            match event {
                Event::Change {
                    ids, position, new, ..
                } => {
                    assert_eq!(ids, [1]);
                    got.push((position, new));
                }
                other => panic!("unexpected {other:?}"),
            }
        }
        got
    }

    /// What the tests need of a running engine: a history, a fan-out of two batches (a
    /// subscriber that reads nothing falls out of it at once), the numbers, the worker.
    struct Engine {
        dir: std::path::PathBuf,
        context: Context,
        alice: Arc<Principal>,
    }

    impl Engine {
        fn start(name: &str) -> Engine {
            // Each engine its own numbers: the position it publishes is where its
            // subscribers start.
            let stats: &'static Stats = Box::leak(Box::default());
            let dir = std::env::temp_dir()
                .join(format!("realtime_headless_{name}_{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&dir);
            let limits = HistoryLimits {
                bytes: 1 << 30,
                age: Duration::from_secs(3600),
            };
            let (history, _) = History::open(&dir, limits).unwrap();
            history.begin(0).unwrap();
            let context = Context {
                shared: testing::shared(stats),
                worker: testing::worker(),
                batches: Fanout::new(2, 1 << 20, stats),
                handshakes: Arc::default(),
                read_back: Some(crate::net::backlog::ReadBack::new(history.clone())),
                history: Some(history),
                clients: Arc::default(),
                snapshots: Arc::default(),
                judges: Arc::default(),
                hub: crate::net::rooms::Hub::new(stats),
            };
            Engine {
                dir,
                context,
                alice: testing::alice(),
            }
        }

        /// What the worker does with each batch: the history first, then the fan-out.
        fn publish(&self, position: u64) {
            let owner = if position.is_multiple_of(2) {
                "alice"
            } else {
                "bob"
            };
            self.publish_batch(position, insert(position, owner));
        }

        fn publish_batch(&self, position: u64, batch: Batch) {
            let history = self.context.history.as_ref().expect("a history");
            history.append(&batch).unwrap();
            self.context.shared.stats.set(Stat::Position, position);
            self.context.batches.send(batch);
        }

        fn headless(&self) -> Headless {
            Headless::new(&self.context, self.alice.clone())
        }
    }

    impl Drop for Engine {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }

    /// Alice's rows (even positions) among `positions`, as she may see them.
    fn expected(positions: std::ops::RangeInclusive<u64>) -> Vec<(u64, Option<String>)> {
        positions
            .filter(|p| p.is_multiple_of(2))
            .map(|p| (p, Some(format!(r#"{{"id":{p},"owner":"alice"}}"#))))
            .collect()
    }

    #[test]
    fn a_headless_subscriber_gets_what_it_may_see_catches_up_and_resumes() {
        let engine = Engine::start("resumes");
        runtime().block_on(async {
            let mut sub = engine.headless();
            assert_eq!(sub.subscribe(1, wish(None)).await.unwrap(), 0);
            // Even positions are alice's rows, odd ones bob's; only hers arrive, without the
            // column she may not read. 100 batches went through a ring of 2 before she read
            // any: she reads them from the history, in order, once.
            (1..=100).for_each(|p| engine.publish(p));
            assert_eq!(changes(&mut sub, 50).await, expected(1..=100));
            // Back on the live stream.
            engine.publish(102);
            assert_eq!(changes(&mut sub, 1).await, expected(102..=102));
            let kept = sub.position();
            assert_eq!(kept, 102);
            drop(sub);

            // Restarted: it resumes from the position it kept, and misses nothing.
            (103..=110).for_each(|p| engine.publish(p));
            let mut again = engine.headless();
            again.subscribe(1, wish(Some(kept))).await.unwrap();
            assert_eq!(changes(&mut again, 4).await, expected(103..=110));
            engine.publish(112);
            assert_eq!(changes(&mut again, 1).await, expected(112..=112));
        });
    }

    /// Two tables, subscribed one after the other while changes go by, then resumed from
    /// one position together: every change of either comes once, in commit order.
    #[test]
    fn subscriptions_resumed_together_come_in_commit_order() {
        let engine = Engine::start("together");
        let open = |p: u64| {
            let new = format!(r#"{{"id":{p}}}"#);
            Batch::Changes(vec![testing::change(
                p,
                8,
                crate::ops::Op::Insert,
                Some(&new),
                None,
            )])
        };
        runtime().block_on(async {
            let mut sub = engine.headless();
            (1..=10).for_each(|p| engine.publish_batch(p, open(p)));
            sub.subscribe(1, wish(None)).await.unwrap();
            (11..=20).for_each(|p| engine.publish(p));
            let mut other = wish(None);
            other.target = Target::Table("open".into());
            sub.subscribe(2, other).await.unwrap();
            (21..=30).for_each(|p| engine.publish_batch(p, open(p)));
            sub.start_from(4);
            let mut got = Vec::new();
            while got.last() != Some(&30) {
                match tokio::time::timeout(Duration::from_secs(5), sub.next()).await {
                    Ok(Some(Event::Change { position, .. })) => got.push(position),
                    other => panic!("unexpected {other:?}"),
                }
            }
            // Table t's rows are alice's at even positions only; "open" shows every row.
            let expected: Vec<u64> = (5..=10)
                .chain((11..=20u64).filter(|p| p.is_multiple_of(2)))
                .chain(21..=30)
                .collect();
            assert_eq!(got, expected);
            assert_eq!(sub.position(), 30);
        });
    }

    /// A gap the history holds comes whole, in its place, to a subscriber resuming before it.
    #[test]
    fn a_gap_in_the_history_comes_whole_in_its_place() {
        let engine = Engine::start("gap");
        runtime().block_on(async {
            (1..=10).for_each(|p| engine.publish(p));
            let gap = Batch::Gap {
                reason: crate::change::GapReason::ServerRestart,
                first_position: 11,
                last_position: 20,
                topics: None,
            };
            engine.publish_batch(20, gap);
            (21..=24).for_each(|p| engine.publish(p));
            let mut sub = engine.headless();
            sub.subscribe(1, wish(None)).await.unwrap();
            sub.start_from(6);
            let mut got = Vec::new();
            while got.len() < 5 {
                match tokio::time::timeout(Duration::from_secs(5), sub.next()).await {
                    Ok(Some(Event::Change { position, .. })) => got.push(format!("{position}")),
                    Ok(Some(Event::Gap { from, to, .. })) => got.push(format!("gap {from}-{to}")),
                    other => panic!("unexpected {other:?}"),
                }
            }
            assert_eq!(got, ["8", "10", "gap 11-20", "22", "24"]);
        });
    }

    /// A subscriber draining what is ready without waiting (as a connection does after each
    /// batch) stops at the point it fell behind: the newer batches still in memory wait until
    /// the history has given it what came before them.
    #[test]
    fn nothing_live_overtakes_what_the_history_still_owes() {
        let engine = Engine::start("overtake");
        runtime().block_on(async {
            let mut sub = engine.headless();
            sub.subscribe(1, wish(None)).await.unwrap();
            (1..=20).for_each(|p| engine.publish(p));
            let subscriber = &mut sub.subscriber;
            assert!(subscriber.try_next().is_none(), "behind: nothing is ready");
            assert!(subscriber.catching_up());
            assert_eq!(changes(&mut sub, 10).await, expected(1..=20));
        });
    }
}
