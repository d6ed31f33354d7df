//! Who wants which changes: the index the fan-out looks a batch's receivers up in.
//!
//! Every subscription registers its table and, where the rows its subscriber may see are
//! narrowed by values, those values: an owner policy compiled for the claims of `alice`
//! registers `owner = "alice"`, so a change of bob's row wakes nobody but bob's sessions.
//! A change costs one lookup per indexed column of its table plus one per receiver, however
//! many sessions are connected. Subscriptions no value narrows (no row security, a policy
//! that is `true` or a `NOT`) receive every change of their table; those the worker judges
//! (`Checked`) receive the changes their audience's verdicts let through.
//!
//! The index only ever picks too many receivers, never too few: each session still judges
//! what it is handed, with its filters and rules.

use crate::change::AudienceId;
use crate::change::{Batch, Change, Topic};
use crate::ops::Op;
use crate::visibility::RowAccess;
use std::collections::HashMap;
use std::sync::Arc;

/// A session, as the index knows it.
pub type SessionId = u64;

/// What a subscription registers under its topic.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Keys {
    /// Every change of the topic.
    Everything,
    /// Changes whose new or old row holds one of these (column, canonical JSON text) pairs.
    Values(Vec<(String, String)>),
    /// Changes the worker's verdict for this audience lets through (or failed to judge, or
    /// left to the judge).
    Audience(AudienceId),
}

impl Keys {
    pub fn of(rows: &RowAccess) -> Keys {
        match rows {
            RowAccess::All => Keys::Everything,
            RowAccess::Rule(rule) => match rule.keys() {
                None => Keys::Everything,
                Some(keys) => Keys::Values(
                    keys.into_iter()
                        .map(|(c, v)| (c.to_string(), v.to_string()))
                        .collect(),
                ),
            },
            RowAccess::Checked(audience) => Keys::Audience(*audience),
        }
    }
}

/// Sessions, each with how many of its subscriptions put it there.
type Bucket<T> = HashMap<SessionId, (Arc<T>, usize)>;

fn put<T>(bucket: &mut Bucket<T>, session: SessionId, target: &Arc<T>) {
    bucket
        .entry(session)
        .or_insert_with(|| (target.clone(), 0))
        .1 += 1;
}

/// Take one count of `session` out of `bucket`; whether the bucket is now empty.
fn take<T>(bucket: &mut Bucket<T>, session: SessionId) -> bool {
    if let Some(entry) = bucket.get_mut(&session) {
        entry.1 -= 1;
        if entry.1 == 0 {
            bucket.remove(&session);
        }
    }
    bucket.is_empty()
}

struct Listeners<T> {
    /// Every session subscribed to the topic (TRUNCATE, gaps and ends reach them all).
    all: Bucket<T>,
    everything: Bucket<T>,
    /// Column → canonical JSON value → sessions.
    values: HashMap<String, HashMap<String, Bucket<T>>>,
    audiences: HashMap<AudienceId, Bucket<T>>,
}

impl<T> Default for Listeners<T> {
    fn default() -> Self {
        Listeners {
            all: HashMap::new(),
            everything: HashMap::new(),
            values: HashMap::new(),
            audiences: HashMap::new(),
        }
    }
}

/// The index: topics → keys → sessions, each session represented by a `T` to wake.
pub struct Interests<T> {
    topics: HashMap<Topic, Listeners<T>>,
}

impl<T> Default for Interests<T> {
    fn default() -> Self {
        Interests {
            topics: HashMap::new(),
        }
    }
}

impl<T> Interests<T> {
    pub fn add(&mut self, session: SessionId, target: &Arc<T>, topic: &Topic, keys: &Keys) {
        let table = self.topics.entry(topic.clone()).or_default();
        put(&mut table.all, session, target);
        match keys {
            Keys::Everything => put(&mut table.everything, session, target),
            Keys::Values(pairs) => {
                for (column, value) in pairs {
                    let values = table.values.entry(column.clone()).or_default();
                    put(values.entry(value.clone()).or_default(), session, target);
                }
            }
            Keys::Audience(id) => put(table.audiences.entry(*id).or_default(), session, target),
        }
    }

    /// Undo one `add` with the same arguments.
    pub fn remove(&mut self, session: SessionId, topic: &Topic, keys: &Keys) {
        let Some(table) = self.topics.get_mut(topic) else {
            return;
        };
        match keys {
            Keys::Everything => {
                take(&mut table.everything, session);
            }
            Keys::Values(pairs) => {
                for (column, value) in pairs {
                    let Some(values) = table.values.get_mut(column) else {
                        continue;
                    };
                    if values.get_mut(value).is_some_and(|b| take(b, session)) {
                        values.remove(value);
                    }
                    if values.is_empty() {
                        table.values.remove(column);
                    }
                }
            }
            Keys::Audience(id) => {
                if table
                    .audiences
                    .get_mut(id)
                    .is_some_and(|b| take(b, session))
                {
                    table.audiences.remove(id);
                }
            }
        }
        if take(&mut table.all, session) {
            self.topics.remove(topic);
        }
    }

    /// Call `visit` for every session `batch` may concern; a session may be visited more
    /// than once.
    pub fn receivers(&self, batch: &Batch, mut visit: impl FnMut(&Arc<T>)) {
        let all = |table: &Listeners<T>| table.all.values().for_each(|(t, _)| visit(t));
        match batch {
            Batch::Gap { topics: None, .. } | Batch::Reauthorize { .. } => {
                self.topics.values().for_each(all)
            }
            Batch::Gap {
                topics: Some(topics),
                ..
            } => topics
                .iter()
                .filter_map(|t| self.topics.get(t))
                .for_each(all),
            Batch::Ended { topic, .. } => self.topics.get(topic).into_iter().for_each(all),
            Batch::Changes(changes) => {
                // Whoever wants a whole topic, or all an audience may see of it, is visited
                // once per batch, not once per change: a batch of a hundred changes to a table
                // ten thousand sessions watch is ten thousand visits, not a million.
                let mut visited: Vec<(&Topic, Option<AudienceId>)> = Vec::new();
                for change in changes {
                    if let Some(table) = self.topics.get(&change.topic) {
                        let mut first = |audience| {
                            let key = (&change.topic, audience);
                            let first = !visited.contains(&key);
                            if first {
                                visited.push(key);
                            }
                            first
                        };
                        table.receivers(change, &mut first, &mut visit);
                    }
                }
            }
        }
    }
}

impl<T> Listeners<T> {
    /// `first(None)` says whether the whole-topic sessions were not visited yet for this
    /// batch, `first(Some(audience))` the same of an audience's.
    fn receivers(
        &self,
        change: &Change,
        first: &mut impl FnMut(Option<AudienceId>) -> bool,
        visit: &mut impl FnMut(&Arc<T>),
    ) {
        let mut bucket = |b: &Bucket<T>| b.values().for_each(|(t, _)| visit(t));
        // TRUNCATE reaches everyone who may read the table.
        if change.op == Op::Truncate {
            return bucket(&self.all);
        }
        if first(None) {
            bucket(&self.everything);
        }
        if !self.values.is_empty() {
            for row in [change.new_row(), change.old_row()].into_iter().flatten() {
                for (column, values) in &self.values {
                    let found = row
                        .get(column)
                        .filter(|v| !v.is_null())
                        .and_then(|v| values.get(&v.to_string()));
                    if let Some(b) = found {
                        bucket(b);
                    }
                }
            }
        }
        for (audience, verdict) in change.verdicts() {
            // Judged apart: the session asks the judge.
            if verdict.new_visible || verdict.old_visible || verdict.failed || verdict.apart {
                if let Some(b) = self
                    .audiences
                    .get(audience)
                    .filter(|_| first(Some(*audience)))
                {
                    bucket(b);
                }
            }
        }
    }
}

#[cfg(test)]
mod unit {
    use super::*;
    use crate::change::Txn;
    use crate::visibility::Rule;

    const T7: Topic = Topic::Table(7);

    fn change(op: Op, new: Option<&str>, old: Option<&str>) -> Change {
        let txn = Arc::new(Txn::new(1, String::new()));
        let names = Arc::new(("s".to_string(), "t".to_string()));
        Change::new(
            1,
            txn,
            T7,
            names,
            op,
            new.map(Into::into),
            old.map(Into::into),
        )
    }

    fn receivers(index: &Interests<u32>, batch: &Batch) -> Vec<u32> {
        let mut found = Vec::new();
        index.receivers(batch, |t| found.push(**t));
        found.sort();
        found.dedup();
        found
    }

    fn owner(name: &str) -> Keys {
        Keys::of(&RowAccess::Rule(Arc::new(Rule::In {
            column: "owner".into(),
            values: Some([format!("\"{name}\"")].into()),
            has_null: false,
        })))
    }

    #[test]
    fn a_session_that_wants_a_whole_topic_is_visited_once_per_batch() {
        let mut index = Interests::default();
        let (alice, all) = (Arc::new(1), Arc::new(3));
        index.add(1, &alice, &T7, &owner("alice"));
        index.add(3, &all, &T7, &Keys::Everything);
        let row = Some(r#"{"owner":"alice"}"#);
        let batch = Batch::Changes((0..100).map(|_| change(Op::Insert, row, None)).collect());
        let mut visits = Vec::new();
        index.receivers(&batch, |t| visits.push(**t));
        // Alice's key is looked up per change (each may name someone else); the whole-topic
        // session is visited once.
        assert_eq!(visits.iter().filter(|v| **v == 3).count(), 1);
        assert_eq!(visits.iter().filter(|v| **v == 1).count(), 100);
    }

    #[test]
    fn a_change_reaches_the_sessions_its_values_name() {
        let mut index = Interests::default();
        let (alice, bob, all) = (Arc::new(1), Arc::new(2), Arc::new(3));
        index.add(1, &alice, &T7, &owner("alice"));
        index.add(2, &bob, &T7, &owner("bob"));
        index.add(3, &all, &T7, &Keys::Everything);
        let batch = |changes| Batch::Changes(changes);
        let insert = change(Op::Insert, Some(r#"{"owner":"alice"}"#), None);
        assert_eq!(receivers(&index, &batch(vec![insert])), [1, 3]);
        // An UPDATE from bob to alice concerns both: bob sees it leave.
        let moved = change(
            Op::Update,
            Some(r#"{"owner":"alice"}"#),
            Some(r#"{"owner":"bob"}"#),
        );
        assert_eq!(receivers(&index, &batch(vec![moved])), [1, 2, 3]);
        let nobody = change(Op::Delete, None, Some(r#"{"owner":null}"#));
        assert_eq!(receivers(&index, &batch(vec![nobody])), [3]);
        let truncate = change(Op::Truncate, None, None);
        assert_eq!(receivers(&index, &batch(vec![truncate])), [1, 2, 3]);
        let ended = Batch::Ended {
            topic: T7,
            reason: crate::change::EndReason::Dropped,
            last_position: 1,
        };
        assert_eq!(receivers(&index, &ended), [1, 2, 3]);
        // Another table's changes and gaps reach nobody here.
        let gap = Batch::Gap {
            reason: crate::change::GapReason::QueueOverflow,
            first_position: 1,
            last_position: 2,
            topics: Some(vec![Topic::Table(8)]),
        };
        assert!(receivers(&index, &gap).is_empty());

        // Removing undoes adding, one subscription at a time.
        index.add(1, &alice, &T7, &owner("alice"));
        index.remove(1, &T7, &owner("alice"));
        let insert = change(Op::Insert, Some(r#"{"owner":"alice"}"#), None);
        assert_eq!(receivers(&index, &batch(vec![insert])), [1, 3]);
        for (session, keys) in [
            (1, owner("alice")),
            (2, owner("bob")),
            (3, Keys::Everything),
        ] {
            index.remove(session, &T7, &keys);
        }
        assert!(index.topics.is_empty());
    }

    #[test]
    fn audiences_receive_what_their_verdicts_let_through() {
        use crate::change::Verdict;
        let mut index = Interests::default();
        index.add(1, &Arc::new(1), &T7, &Keys::Audience(10));
        index.add(2, &Arc::new(2), &T7, &Keys::Audience(11));
        let mut seen = change(Op::Insert, Some("{}"), None);
        let verdict = |new_visible, failed| Verdict {
            new_visible,
            old_visible: false,
            failed,
            apart: false,
        };
        seen.set_verdicts(vec![
            (10, verdict(false, false)),
            (11, verdict(true, false)),
        ]);
        assert_eq!(receivers(&index, &Batch::Changes(vec![seen])), [2]);
        let mut failed = change(Op::Insert, Some("{}"), None);
        failed.set_verdicts(vec![(10, verdict(false, true))]);
        assert_eq!(receivers(&index, &Batch::Changes(vec![failed])), [1]);
    }
}
