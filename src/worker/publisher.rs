//! Turns queue records into numbered, serialized changes and broadcasts them in batches.
//! Runs on the worker's Postgres thread (it reads clog for prepared transactions).

use super::audiences::Audiences;
use super::relay::Relay;
use super::rows::Rows;
use crate::event::{decode_record, events, EventRef, Item, Record};
use crate::pg::xact::in_any_transaction;
use crate::queue;
use pgrx::pg_sys;
use realtime_core::change::{Batch, Change, EndReason, GapReason, Topic, Txn};
use realtime_core::history::History;
use realtime_core::net::fanout::Fanout;
use realtime_core::net::shared::Shared;
use realtime_core::stats::{Size, Stat, Timing};
use std::collections::HashMap;
use std::io::Read;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Bytes drained from the queue per pass; the queue lock is held while they are copied.
const DRAIN_CHUNK: usize = 512 * 1024;
/// A batch is sent once it holds this many bytes or changes.
const BATCH_BYTES: usize = 256 * 1024;
const BATCH_CHANGES: usize = 1024;
/// How long the head of the queue may wait for its writer before the commit log is asked.
const STUCK_AFTER: std::time::Duration = std::time::Duration::from_millis(50);
/// How often queue statistics are copied for /health.
const STATS_EVERY: std::time::Duration = std::time::Duration::from_millis(100);
/// Spill files are read in chunks of this size.
const SPILL_READ: usize = 1024 * 1024;

/// The event of a relayed notification.
const NOTIFY_EVENT: &str = "notify";

/// Microseconds from the Unix epoch to PostgreSQL's (2000-01-01).
const PG_EPOCH_OFFSET_US: i64 = 946_684_800_000_000;

/// A transaction being turned into changes: its positions run from `next` to `end`.
struct Emitting {
    txn: Arc<Txn>,
    next: u64,
    end: u64,
    /// Table of the tuples that follow (the last shape's).
    shape_relid: u32,
    /// Rendering failed: from here on the transaction is a gap, sent once its end is reached,
    /// to the clients of the tables it names.
    failed: Option<LostRest>,
    /// Changes of it a previous worker already wrote to the history, left out here.
    written: u64,
}

struct LostRest {
    from: u64,
    topics: Vec<Topic>,
}

impl LostRest {
    fn add(&mut self, topic: Topic) {
        if !self.topics.contains(&topic) {
            self.topics.push(topic);
        }
    }
}

/// Each table's current schema and name, shared by its changes (sessions compare them with
/// what a subscription was made for, to notice renames).
#[derive(Default)]
struct Names(HashMap<u32, Arc<(String, String)>>);

impl Names {
    fn get(&mut self, relid: u32, schema: &str, table: &str) -> Arc<(String, String)> {
        let entry = self
            .0
            .entry(relid)
            .or_insert_with(|| Arc::new((schema.to_string(), table.to_string())));
        if entry.0 != schema || entry.1 != table {
            *entry = Arc::new((schema.to_string(), table.to_string()));
        }
        entry.clone()
    }
}

pub struct Publisher {
    tx: Arc<Fanout>,
    names: Names,
    shared: Arc<Shared>,
    buf: Vec<u8>,
    batch: Vec<Change>,
    batch_bytes: usize,
    rows: Rows,
    /// The queue's head record awaits its writer's commit: which record, since when.
    blocked: Option<(u64, std::time::Instant)>,
    /// Next position to assign; written back to the queue (`persist_position`) so that a
    /// restarted worker continues from it.
    next_position: u64,
    stored_position: u64,
    stats_at: std::time::Instant,
    /// Subscribers whose row security is judged here, batch by batch.
    pub audiences: Audiences,
    /// Where every batch is written before sessions are handed it, for clients that resume.
    history: Option<Arc<History>>,
    /// How far the queue has been read, once everything read is in batches (written or not)
    /// and the last position that took: given back to the queue once written.
    read: Option<(queue::Cursor, u64)>,
    /// Per transaction, the changes a previous worker wrote to the history from records the
    /// queue still held (see `queue::rewind`).
    written: HashMap<u32, u64>,
    /// The last write to the history failed (warned once until one succeeds).
    history_failing: bool,
    /// The NOTIFY channels relayed, and whether `realtime.relays` may have changed.
    relay: Relay,
    relays_changed: bool,
}

impl Publisher {
    pub fn new(
        tx: Arc<Fanout>,
        shared: Arc<Shared>,
        history: Option<Arc<History>>,
        written: HashMap<u32, u64>,
    ) -> Publisher {
        let next_position = queue::next_position();
        shared.stats.set(Stat::Position, next_position - 1);
        Publisher {
            tx,
            names: Names::default(),
            audiences: Audiences::new(shared.clone()),
            shared,
            buf: Vec::new(),
            batch: Vec::new(),
            batch_bytes: 0,
            rows: Rows::new(),
            blocked: None,
            next_position,
            stored_position: next_position,
            stats_at: std::time::Instant::now(),
            history,
            read: None,
            written,
            history_failing: false,
            relay: Relay::default(),
            relays_changed: false,
        }
    }

    /// Begin relaying the channels `realtime.relays` names (at start).
    pub fn start_relaying(&mut self) {
        self.relay.reload();
    }

    /// Something will need another look soon even if nobody wakes the worker.
    pub fn needs_poll(&self) -> bool {
        self.blocked.is_some()
    }

    /// Move one chunk of the queue, and the notifications that arrived, out to clients.
    /// Returns whether there may be more.
    pub fn pump(&mut self) -> bool {
        self.relay_notifications();
        let mut buf = std::mem::take(&mut self.buf);
        buf.clear();
        let unsettled = queue::drain(&mut buf, DRAIN_CHUNK);
        let settled_here = match unsettled {
            Some(u) => self.settle_if_stuck(u),
            None => {
                self.blocked = None;
                false
            }
        };
        for record in queue::records(&buf) {
            match decode_record(record) {
                Some(Record::Txn {
                    xid,
                    commit_time,
                    count,
                    events: body,
                }) => {
                    self.emit(xid, commit_time, count, events(body));
                }
                Some(Record::Spilled {
                    xid,
                    commit_time,
                    count,
                    path,
                }) => self.emit_file(xid, commit_time, count, path),
                Some(Record::Gap { lost_events }) => {
                    pgrx::warning!(
                        "realtime_ext: {lost_events} committed changes could not be kept (the change queue was full and its overflow file could not be written); subscribers receive a queue_overflow gap"
                    );
                    self.emit_gap(GapReason::QueueOverflow, lost_events)
                }
                Some(Record::Aborted) => {}
                Some(Record::Pending) | None => {
                    pgrx::warning!("realtime_ext: skipped an unreadable queue record")
                }
            }
        }
        self.rows.finish();
        if !buf.is_empty() {
            self.read = queue::cursor().map(|c| (c, self.published()));
        }
        if std::mem::take(&mut self.relays_changed) {
            self.relay.reload();
        }
        let more = !buf.is_empty() || settled_here;
        // A pump that found records is followed by another at once: its partial batch can wait
        // for that one, so batches stay full at high commit rates.
        if !more {
            self.flush();
        }
        if self.batch.is_empty() || self.history.is_none() {
            self.release();
        }
        self.buf = buf;
        if self.stats_at.elapsed() > STATS_EVERY {
            self.stats_at = std::time::Instant::now();
            let queue = queue::stats();
            let stats = self.shared.stats;
            stats.set(Stat::QueueUsedBytes, queue.used);
            stats.set(Stat::QueueCapacityBytes, queue.capacity);
            stats.set(Stat::QueueOverflowBytes, queue.overflow);
            stats.set(Stat::LostTransactions, queue.lost_txns);
            if let Some(history) = &self.history {
                stats.set(Stat::HistoryBytes, history.bytes());
                let (floor, last) = (history.floor(), history.last());
                stats.set(
                    Stat::HistoryFirstPosition,
                    if last > floor { floor + 1 } else { 0 },
                );
                let oldest = history
                    .oldest_written()
                    .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok());
                stats.set(
                    Stat::HistoryOldestSeconds,
                    oldest.map_or(0, |d| d.as_secs()),
                );
            }
        }
        more
    }

    /// Store the next position in the queue if it moved since last time.
    pub fn persist_position(&mut self) {
        if self.next_position != self.stored_position {
            queue::set_next_position(self.next_position);
            self.stored_position = self.next_position;
        }
    }

    fn emit<'a>(
        &mut self,
        xid: u32,
        commit_time: i64,
        count: u32,
        items: impl Iterator<Item = Item<'a>>,
    ) {
        if self.skip_unheard(count) || self.all_written(xid, count) {
            return;
        }
        let mut txn = self.begin_txn(xid, commit_time, count);
        for item in items {
            self.emit_item(&mut txn, item);
        }
        self.end_txn(txn);
    }

    /// Stream a spilled transaction without holding it in memory at once.
    fn emit_file(&mut self, xid: u32, commit_time: i64, count: u32, path: &str) {
        if self.skip_unheard(count) || self.all_written(xid, count) {
            crate::spill::discard(path);
            return;
        }
        let mut file = match std::fs::File::open(path) {
            Ok(f) => f,
            Err(e) => {
                pgrx::warning!("realtime_ext: could not read spilled changes {path}: {e}");
                return self.emit_gap(GapReason::SpillUnreadable, count as u64);
            }
        };
        let mut txn = self.begin_txn(xid, commit_time, count);
        let mut chunk = Vec::with_capacity(SPILL_READ);
        loop {
            let start = chunk.len();
            chunk.resize(start + SPILL_READ, 0);
            let n = file.read(&mut chunk[start..]).unwrap_or(0);
            chunk.truncate(start + n);
            let mut used = 0;
            while let Some((item, len)) = crate::event::decode_event(&chunk[used..]) {
                self.emit_item(&mut txn, item);
                used += len;
            }
            chunk.drain(..used);
            if n == 0 {
                break;
            }
        }
        self.end_txn(txn);
        crate::spill::discard(path);
    }

    /// A transaction just read from the queue; how long after its commit it was read.
    fn read(&self, xid: u32, commit_time: i64) -> Txn {
        let unix_us = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_micros() as i64);
        let now_us = unix_us - PG_EPOCH_OFFSET_US;
        let waited = (now_us - commit_time).max(0) as u64;
        let stats = self.shared.stats;
        stats.observe(Timing::CommitToRead, Duration::from_micros(waited));
        let mut txn = Txn::new(xid, format_time(commit_time));
        let now = Instant::now();
        txn.read_at = Some(now);
        txn.committed_at = now.checked_sub(Duration::from_micros(waited));
        txn
    }

    /// Whether a previous worker wrote all `count` changes of transaction `xid` to the history.
    fn all_written(&mut self, xid: u32, count: u32) -> bool {
        let all = xid != 0 && self.written.get(&xid).is_some_and(|&w| w >= count as u64);
        if all {
            self.written.remove(&xid);
        }
        all
    }

    fn begin_txn(&mut self, xid: u32, commit_time: i64, count: u32) -> Emitting {
        let written = match xid {
            0 => 0,
            _ => self.written.remove(&xid).unwrap_or(0).min(count as u64),
        };
        let next = self.take_positions(count as u64 - written);
        Emitting {
            txn: Arc::new(self.read(xid, commit_time)),
            next,
            end: next + count as u64 - written,
            shape_relid: 0,
            failed: None,
            written,
        }
    }

    fn end_txn(&mut self, txn: Emitting) {
        if let Some(lost) = txn.failed {
            if lost.from < txn.end {
                self.send_gap(
                    GapReason::RenderFailed,
                    lost.from,
                    txn.end - 1,
                    Some(lost.topics),
                );
            }
        }
    }

    fn emit_item(&mut self, txn: &mut Emitting, item: Item) {
        if let Item::Catalog = item {
            self.flush();
            self.catalog_changed(txn.txn.xid);
            self.send(Batch::Reauthorize {
                last_position: txn.next - 1,
            });
            return;
        }
        if let Item::End { relid, reason } = item {
            // Sent even after a rendering failure: the gap comes later, at the end of the
            // transaction, and only to subscriptions that still exist.
            if let Some(reason) = EndReason::from_u8(reason) {
                self.flush();
                self.send(Batch::Ended {
                    topic: Topic::Table(relid),
                    reason,
                    last_position: txn.next - 1,
                });
            }
            return;
        }
        let topic = match &item {
            Item::Change(ev) => Topic::Table(ev.relid),
            Item::Shape(shape) => {
                txn.shape_relid = shape.relid;
                Topic::Table(shape.relid)
            }
            Item::Tuple(_) => Topic::Table(txn.shape_relid),
            Item::Message(m) => Topic::Channel(m.topic.into()),
            Item::End { .. } | Item::Catalog => return,
        };
        if let Some(lost) = &mut txn.failed {
            // Only which topics the rest belongs to matters now.
            lost.add(topic);
            return;
        }
        let change = match item {
            Item::Change(ev) => Ok(self.change(txn, &ev)),
            Item::Message(m) => Ok(Change::message(
                txn.next,
                txn.txn.clone(),
                Arc::new((m.topic.to_string(), m.event.to_string())),
                m.sender,
                m.payload.into(),
            )),
            Item::Shape(shape) => match self.rows.shape(&shape) {
                Ok(()) => return,
                Err(e) => Err(e),
            },
            Item::End { .. } | Item::Catalog => return,
            Item::Tuple(tuple) => self
                .rows
                .render(&tuple)
                .and_then(|()| self.rows.event(tuple.op))
                .map(|ev| {
                    let names = self.names.get(ev.relid, ev.schema, ev.table);
                    new_change(txn, names, &ev)
                }),
        };
        match change {
            Ok(_) if txn.written > 0 => txn.written -= 1,
            Ok(change) => {
                self.push(change);
                txn.next += 1;
            }
            Err(e) => {
                pgrx::warning!(
                    "realtime_ext: could not render changes of transaction {}: {e}; subscribers receive a gap",
                    txn.txn.xid
                );
                txn.failed = Some(LostRest {
                    from: txn.next,
                    topics: vec![topic],
                });
            }
        }
    }

    /// Transaction `xid` changed who may see what. It sends its cache invalidations just
    /// before it releases its transaction lock, which may be a moment after it settled its
    /// record: once that lock is free, the catalogs read here are the new ones. The audiences
    /// judged here then take their new policies, before anything after it is judged.
    fn catalog_changed(&mut self, xid: u32) {
        self.audiences.policies_changed();
        let result = in_any_transaction(|| {
            // SAFETY: in a transaction, on the worker's Postgres thread; an xid no longer
            // running returns at once.
            unsafe {
                pg_sys::XactLockTableWait(
                    xid.into(),
                    std::ptr::null_mut(),
                    std::ptr::null_mut(),
                    pg_sys::XLTW_Oper::XLTW_None,
                );
                pg_sys::AcceptInvalidationMessages();
            }
            super::invalidation::settle(&self.shared);
            Ok(())
        });
        if let Err(e) = result {
            pgrx::warning!("realtime_ext: could not take in a catalog change: {e}");
        }
        // realtime_relay() and realtime_unrelay() make catalog changes too; the relays are
        // reread once this pass has no transaction open (LISTEN takes effect at commit).
        self.relays_changed = true;
    }

    /// Publish the notifications that arrived on relayed channels, as one transaction's
    /// messages: PostgreSQL does not say which transaction sent each, nor when it committed.
    fn relay_notifications(&mut self) {
        let relayed = self.relay.take();
        if relayed.is_empty() || self.skip_unheard(relayed.len() as u32) {
            return;
        }
        let mut txn = self.begin_txn(0, now(), relayed.len() as u32);
        for r in relayed {
            let names = Arc::new((r.channel, NOTIFY_EVENT.to_string()));
            let message =
                Change::message(txn.next, txn.txn.clone(), names, r.pid, r.payload.into());
            self.push(message);
            txn.next += 1;
        }
        self.end_txn(txn);
    }

    fn change(&mut self, txn: &Emitting, ev: &EventRef) -> Change {
        let names = self.names.get(ev.relid, ev.schema, ev.table);
        new_change(txn, names, ev)
    }

    fn emit_gap(&mut self, reason: GapReason, lost_events: u64) {
        let first = self.take_positions(lost_events.max(1));
        self.send_gap(reason, first, first + lost_events.max(1) - 1, None);
    }

    fn send_gap(&mut self, reason: GapReason, first: u64, last: u64, topics: Option<Vec<Topic>>) {
        self.flush();
        self.send(Batch::Gap {
            reason,
            first_position: first,
            last_position: last,
            topics,
        });
    }

    /// The head of the queue waits for its writer to settle it at commit, which normally takes
    /// no longer than the commit's WAL flush. Only if it has waited for `STUCK_AFTER` (its
    /// writer died, or the commit callback never ran) is it settled from the commit log;
    /// asking earlier would take ProcArrayLock on every pass, which committing backends need.
    fn settle_if_stuck(&mut self, record: queue::Unsettled) -> bool {
        if queue::from_before_start(record.offset) {
            // Its writer is gone; a transaction still prepared gets a new record when it is
            // committed.
            return self.settle(record, committed_before_start(&record));
        }
        let since = match self.blocked {
            Some((offset, since)) if offset == record.offset => since,
            _ => {
                self.blocked = Some((record.offset, std::time::Instant::now()));
                return false;
            }
        };
        if since.elapsed() < STUCK_AFTER {
            return false;
        }
        let Some(committed) = outcome(record.xid) else {
            return false;
        };
        self.settle(record, committed)
    }

    fn settle(&mut self, record: queue::Unsettled, committed: bool) -> bool {
        if committed {
            queue::mark(record.offset, record.kind.committed(), now());
        } else {
            queue::mark(record.offset, crate::event::RecordKind::Aborted, 0);
        }
        self.blocked = None;
        true
    }

    /// With no subscription anywhere and no history, nobody can receive a change: number it
    /// without rendering its rows. Safe against a subscription being made meanwhile: it is
    /// counted before the worker is asked to resolve it, and answered only after this pass, so
    /// it starts after these positions.
    fn skip_unheard(&mut self, count: u32) -> bool {
        // With a history, a client may resume and ask for it later.
        if self.history.is_some() || self.shared.stats.subscriptions() > 0 {
            return false;
        }
        self.flush();
        let first = self.take_positions(count as u64);
        let last = first + count as u64 - 1;
        self.shared.stats.set(Stat::Position, last);
        true
    }

    fn take_positions(&mut self, count: u64) -> u64 {
        let first = self.next_position;
        self.next_position += count;
        first
    }

    fn push(&mut self, change: Change) {
        self.batch_bytes += change.image_bytes();
        self.batch.push(change);
        if self.batch_bytes >= BATCH_BYTES || self.batch.len() >= BATCH_CHANGES {
            self.flush();
        }
    }

    fn flush(&mut self) {
        if !self.batch.is_empty() {
            let mut changes = std::mem::take(&mut self.batch);
            self.audiences.judge(&mut changes);
            self.batch_bytes = 0;
            self.send(Batch::Changes(changes));
        }
    }

    /// Give back to the queue the records read so far, all of whose changes have been sent.
    fn release(&mut self) {
        if let Some((to, position)) = self.read.take() {
            queue::release(to, position);
        }
    }

    /// Have every session authorize its subscriptions again before it delivers anything
    /// published after now (the marker goes to the history's publisher too, for edges).
    pub fn reauthorize(&mut self) {
        // Sent first, as before any batch: the queue's records are given back only once
        // every change read from them is written.
        self.flush();
        self.send(Batch::Reauthorize {
            last_position: self.published(),
        });
    }

    /// The last position published.
    pub fn published(&self) -> u64 {
        self.next_position - 1
    }

    fn send(&mut self, batch: Batch) {
        let last = batch.last_position();
        // Written first: whatever a session is handed, a client can resume from.
        if let Some(history) = &self.history {
            match history.append(&batch) {
                Ok(()) => self.history_failing = false,
                Err(e) if !self.history_failing => {
                    self.history_failing = true;
                    pgrx::warning!("realtime_ext: could not write to the history: {e}; clients that resume across these changes get a history_lost gap");
                }
                Err(_) => {}
            }
            // Everything read before this batch was made is in it or before it.
            self.release();
        }
        if let Batch::Changes(changes) = &batch {
            let stats = self.shared.stats;
            stats.add(Stat::ChangesPublished, changes.len() as u64);
            stats.observe_size(Size::BatchChanges, changes.len() as u64);
        }
        self.tx.publish(batch);
        self.shared.stats.set(Stat::Position, last);
    }
}

/// A change of `txn` at its next position. The images are already JSON (rendered in the
/// writer, or by `Rows`); each protocol wraps them in its own frame later.
fn new_change(txn: &Emitting, names: Arc<(String, String)>, ev: &EventRef) -> Change {
    Change::new(
        txn.next,
        txn.txn.clone(),
        Topic::Table(ev.relid),
        names,
        ev.op,
        ev.new.map(Box::from),
        ev.old.map(Box::from),
    )
}

/// Whether the transaction of a record left pending by a writer that a restart ended committed.
/// Its xid alone does not say: one whose WAL never left the shared buffers may be handed out
/// again after crash recovery, and the commit log then answers for that other transaction. Its
/// commit record follows the WAL position noted at its reservation, so if recovery ended at or
/// before that position it never committed; if after, its own records were replayed and the
/// xid is its own.
fn committed_before_start(record: &queue::Unsettled) -> bool {
    // SAFETY: the worker's Postgres thread; reads the end of the replayed WAL.
    let replayed_to = unsafe { pg_sys::GetXLogReplayRecPtr(std::ptr::null_mut()) };
    // SAFETY: the worker's Postgres thread; reads the commit log.
    let did_commit = || unsafe { pg_sys::TransactionIdDidCommit(record.xid.into()) };
    committed_after_recovery(record.wal_at, replayed_to, did_commit)
}

/// The decision of `committed_before_start`: a position of 0 is not known (a record of an
/// earlier release, or a start without recovery, after which no xid is handed out twice).
fn committed_after_recovery(
    wal_at: u64,
    replayed_to: u64,
    did_commit: impl FnOnce() -> bool,
) -> bool {
    if wal_at != 0 && replayed_to != 0 && wal_at >= replayed_to {
        return false;
    }
    did_commit()
}

/// How a transaction ended, from the commit log: `None` while it is still running (or
/// prepared), then whether it committed.
fn outcome(xid: u32) -> Option<bool> {
    let xid = pg_sys::TransactionId::from(xid);
    // SAFETY: the worker's Postgres thread; reads the proc array and commit log.
    if unsafe { pg_sys::TransactionIdIsInProgress(xid) } {
        return None;
    }
    // SAFETY: the worker's Postgres thread; reads the commit log.
    Some(unsafe { pg_sys::TransactionIdDidCommit(xid) })
}

fn now() -> i64 {
    // SAFETY: reads the clock.
    unsafe { pg_sys::GetCurrentTimestamp() }
}

/// PostgreSQL timestamp (µs since 2000-01-01) as RFC 3339 in UTC.
fn format_time(pg_time: i64) -> String {
    chrono::DateTime::from_timestamp_micros(pg_time + PG_EPOCH_OFFSET_US)
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Micros, true))
        .unwrap_or_default()
}

#[cfg(test)]
mod unit {
    use super::committed_after_recovery as decide;

    #[test]
    fn a_record_reserved_past_the_end_of_recovery_never_committed() {
        let asked = || panic!("the commit log answers for another transaction here");
        assert!(!decide(0x3000, 0x2000, asked));
        assert!(
            !decide(0x2000, 0x2000, asked),
            "its commit record would end past it"
        );
        assert!(
            decide(0x1000, 0x2000, || true),
            "replayed: its xid is its own"
        );
        assert!(!decide(0x1000, 0x2000, || false));
        assert!(
            decide(0, 0x2000, || true),
            "position not known: the commit log"
        );
        assert!(
            decide(0x3000, 0, || true),
            "no recovery: no xid was handed out twice"
        );
    }
}
