//! The delivery of batches from the worker to the sessions they concern, bounded in bytes.
//!
//! A ring of the most recent batches. Each batch is looked up in the index of who wants what
//! (`interest`), and the number of the batch is put in the inbox of each session it may
//! concern, which is woken; nobody else is. A session reads the batches its inbox names, and
//! one whose batches left the ring before it read them is told it lagged (it then sends its
//! client a gap). The ring holds at most `realtime.client_backlog` batches and `realtime.client_memory` bytes,
//! less what stalled sessions pin: a session blocked on a write keeps the batches it is writing
//! alive after the ring dropped them (each counted once, however many sessions hold it), and
//! its socket writer holds a copy of the frame it is writing. When stalled sessions alone pin
//! more than half the budget, the longest-stalled are closed. So the memory held for slow
//! clients stays within the budget across all of them; batches every session has read are
//! dropped, so it is returned when they go.
//!
//! A dropped batch leaves a summary behind (its topics, a few bytes), for the sessions that
//! were to read it: a subscription that ends in it still ends. Batches that concern nobody
//! are dropped as soon as the janitor sees them, so a burst on topics nobody reads costs
//! nothing, and a client never gets a gap for a burst that held nothing for it.

use super::interest::{Interests, Keys, SessionId};
use crate::change::{Batch, Topic};
use crate::stats::{Stat, Stats, Timing};
use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::task::Poll;
use std::time::{Duration, Instant};
use tokio::sync::Notify;

/// A delivery that has not finished after this long counts as stalled. Long enough that a
/// client reading a fast stream, whose writes block now and then, is not taken for one.
const STALLED_AFTER: Duration = Duration::from_secs(1);
/// How often stalled sessions are counted.
pub const JANITOR_EVERY: Duration = Duration::from_millis(100);
/// Rough bytes a change costs besides its images (the struct, the envelope of its frame).
const CHANGE_OVERHEAD: usize = 160;
/// Batches the worker may publish ahead of the dispatcher before it waits.
const HANDOFF: usize = 4096;
/// Summaries of dropped batches kept (each a few dozen bytes).
const SUMMARIES_KEPT: usize = 1 << 16;

pub struct Fanout {
    /// Batches the worker published, for the dispatcher to hand out (`publish`, `dispatch`).
    handoff: tokio::sync::mpsc::Sender<Batch>,
    published: Mutex<tokio::sync::mpsc::Receiver<Batch>>,
    /// Last position published, handed out or not yet: a subscription registered now starts
    /// after it, as it would had the dispatcher already handed it out.
    published_through: AtomicU64,
    ring: Mutex<Ring>,
    index: Mutex<Index>,
    max_batches: usize,
    max_bytes: AtomicUsize,
    /// Bytes pinned by stalled sessions, as last counted by the janitor.
    stalled_bytes: AtomicUsize,
    sessions: Mutex<Vec<Weak<Slot>>>,
    /// Most sessions alive since memory was last handed back to the system.
    peak_sessions: AtomicUsize,
    /// The most the ring held since memory was last given back.
    peak_ring_bytes: AtomicUsize,
    next_session: AtomicU64,
    /// Where it counts the batches it hands out and the bytes it keeps.
    stats: &'static Stats,
    started: Instant,
    closed: AtomicBool,
}

/// Who wants what, and how far batches have been handed out by it.
#[derive(Default)]
struct Index {
    interests: Interests<Slot>,
    /// Last position of the batches handed out so far: a subscription registered now
    /// receives exactly the changes after it.
    dispatched: u64,
    /// Sequence number of the next batch to hand out: the janitor keeps it and later ones,
    /// which may not be in every inbox yet.
    handing: u64,
    /// Sessions handed a catalog change and not yet registered again under what it allows:
    /// their keys may be too narrow now (a policy was loosened, row security turned off), so
    /// they are handed every batch of changes until they settle.
    widened: Vec<Weak<Slot>>,
}

struct Ring {
    /// Each batch, its bytes, and when it was handed out.
    batches: VecDeque<(Arc<Batch>, usize, Instant)>,
    /// Sequence number of `batches[0]`.
    first: u64,
    bytes: usize,
    /// What the batches dropped last were about (with their first and last positions), up to
    /// sequence number `first - 1`.
    dropped: VecDeque<Dropped>,
}

/// What a dropped batch held, for a session that never read it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Summary {
    /// Changes of these topics.
    Changes(Box<[Topic]>),
    /// A gap for the subscribers of these topics (`None`: for everyone).
    Gap(Option<Box<[Topic]>>),
    /// Subscriptions to this table ended.
    Ended(Topic, crate::change::EndReason),
    /// Every session authorizes its subscriptions again.
    Reauthorize,
}

impl Summary {
    fn of(batch: &Batch) -> Summary {
        match batch {
            Batch::Changes(changes) => {
                let mut topics: Vec<&Topic> = changes.iter().map(|c| &c.topic).collect();
                topics.sort_unstable();
                topics.dedup();
                Summary::Changes(topics.into_iter().cloned().collect())
            }
            Batch::Gap { topics, .. } => Summary::Gap(topics.as_ref().map(|t| t.clone().into())),
            Batch::Ended { topic, reason, .. } => Summary::Ended(topic.clone(), *reason),
            Batch::Reauthorize { .. } => Summary::Reauthorize,
        }
    }
}

/// A dropped batch: its first and last position, and what it held.
pub type Dropped = (u64, u64, Summary);

/// Why a cursor got no batch.
#[derive(Debug, PartialEq, Eq)]
pub enum Missed {
    /// Batches were dropped before this session read them: the first and last position of
    /// each and what it held, or `None` when even that is no longer known.
    Lagged(Option<Vec<Dropped>>),
    /// The worker is stopping.
    Closed,
}

impl Fanout {
    pub fn new(max_batches: usize, max_bytes: usize, stats: &'static Stats) -> Arc<Fanout> {
        let (handoff, published) = tokio::sync::mpsc::channel(HANDOFF);
        Arc::new(Fanout {
            handoff,
            published: Mutex::new(published),
            published_through: AtomicU64::new(0),
            ring: Mutex::new(Ring {
                batches: VecDeque::new(),
                first: 0,
                bytes: 0,
                dropped: VecDeque::new(),
            }),
            index: Mutex::default(),
            max_batches: max_batches.max(1),
            max_bytes: AtomicUsize::new(max_bytes),
            stalled_bytes: AtomicUsize::new(0),
            sessions: Mutex::new(Vec::new()),
            peak_sessions: AtomicUsize::new(0),
            peak_ring_bytes: AtomicUsize::new(0),
            next_session: AtomicU64::new(1),
            stats,
            started: Instant::now(),
            closed: AtomicBool::new(false),
        })
    }

    fn ring(&self) -> MutexGuard<'_, Ring> {
        lock(&self.ring)
    }

    fn index(&self) -> MutexGuard<'_, Index> {
        lock(&self.index)
    }

    fn live(&self) -> Vec<Arc<Slot>> {
        lock(&self.sessions)
            .iter()
            .filter_map(Weak::upgrade)
            .collect()
    }

    pub fn set_max_bytes(&self, bytes: usize) {
        self.max_bytes.store(bytes, Relaxed);
    }

    /// Bytes the ring holds now.
    pub fn ring_bytes(&self) -> usize {
        self.ring().bytes
    }

    /// Hand `batch` to the dispatcher (from the worker's thread, never a network thread):
    /// sessions are woken from the network threads themselves, where a wake-up is a push on
    /// the waking thread's own queue rather than on the runtime's shared one and a
    /// cross-thread signal per session. Waits while `HANDOFF` batches are already waiting.
    pub fn publish(&self, batch: Batch) {
        self.published_through
            .fetch_max(batch.last_position(), Relaxed);
        // Closed only once the network side has stopped.
        let _ = self.handoff.blocking_send(batch);
    }

    /// Publish `batch` from the network threads (an edge server's feed, the only publisher
    /// there).
    pub fn hand_out(&self, batch: Batch) {
        self.published_through
            .fetch_max(batch.last_position(), Relaxed);
        self.send(batch);
    }

    /// Hand out what the worker publishes, in order, until it stops. Run on the network
    /// threads.
    pub async fn dispatch(self: Arc<Fanout>) {
        // The batch is handed out under the lock it was received under: a network thread
        // helping (`help_dispatch`) cannot overtake it.
        std::future::poll_fn(|cx| {
            let mut published = lock(&self.published);
            loop {
                match published.poll_recv(cx) {
                    Poll::Ready(Some(batch)) => self.send(batch),
                    Poll::Ready(None) => return Poll::Ready(()),
                    Poll::Pending => return Poll::Pending,
                }
            }
        })
        .await
    }

    /// Hand out what the worker has published, if the dispatcher has not yet: called by a
    /// network thread after a delivery. The dispatcher is woken from outside the runtime, so
    /// it waits in the runtime's shared queue behind every session the previous batch woke;
    /// a session that has just written is running already and saves the next batch that
    /// wait. Nothing to do costs one atomic read.
    pub fn help_dispatch(&self) {
        // The channel's free capacity is one atomic: nothing published is all of it.
        if self.handoff.capacity() == HANDOFF {
            return;
        }
        let Ok(mut published) = self.published.try_lock() else {
            return;
        };
        while let Ok(batch) = published.try_recv() {
            self.send(batch);
        }
    }

    /// Add `batch` to the ring and wake the sessions it may concern.
    pub fn send(&self, batch: Batch) {
        let size = batch_bytes(&batch);
        let batch = Arc::new(batch);
        let seq = {
            let mut ring = self.ring();
            let now = Instant::now();
            if let Some(read_at) = batch.first_txn().and_then(|t| t.read_at) {
                self.stats.observe(Timing::ReadToDispatch, now - read_at);
            }
            ring.batches.push_back((batch.clone(), size, now));
            ring.bytes += size;
            self.evict(&mut ring);
            self.stats.set(Stat::BacklogBytes, ring.bytes as u64);
            ring.first + ring.batches.len() as u64 - 1
        };
        let mut index = self.index();
        let Index {
            interests, widened, ..
        } = &mut *index;
        let mut handed = 0;
        let reauthorize = matches!(*batch, Batch::Reauthorize { .. });
        interests.receivers(&batch, |slot| {
            handed += slot.hand(seq, self.max_batches) as u64;
            if reauthorize && slot.widened_through.swap(seq + 1, Relaxed) == 0 {
                widened.push(Arc::downgrade(slot));
            }
        });
        if let Batch::Changes(_) = *batch {
            widened.retain(|slot| {
                let Some(slot) = slot.upgrade() else {
                    return false;
                };
                handed += slot.hand(seq, self.max_batches) as u64;
                true
            });
        }
        self.stats.add(Stat::BatchesHanded, handed);
        // Counted when it had somebody authorize again, not for a catalog change nobody heard.
        if reauthorize && handed > 0 {
            self.stats.increment(Stat::Reauthorizations);
        }
        index.dispatched = index.dispatched.max(batch.last_position());
        index.handing = seq + 1;
    }

    fn evict(&self, ring: &mut Ring) {
        let budget = self
            .max_bytes
            .load(Relaxed)
            .saturating_sub(self.stalled_bytes.load(Relaxed));
        // The newest batch always stays: a session that keeps up must be able to read it.
        while ring.batches.len() > 1
            && (ring.bytes > budget || ring.batches.len() > self.max_batches)
        {
            let (batch, size, _) = ring.batches.pop_front().expect("non-empty");
            ring.bytes -= size;
            ring.first += 1;
            if ring.dropped.len() == SUMMARIES_KEPT {
                ring.dropped.pop_front();
            }
            ring.dropped.push_back((
                batch.first_position(),
                batch.last_position(),
                Summary::of(&batch),
            ));
        }
    }

    /// Wake every session with `Missed::Closed`.
    pub fn close(&self) {
        self.closed.store(true, Relaxed);
        for slot in self.live() {
            slot.ready.notify_one();
        }
    }

    /// A new session's cursor: it reads the batches sent, from now on, to the subscriptions
    /// registered through its `Registrar`.
    pub fn cursor(self: &Arc<Fanout>) -> Cursor {
        let slot = Arc::new(Slot::default());
        let mut sessions = lock(&self.sessions);
        sessions.retain(|s| s.strong_count() > 0);
        sessions.push(Arc::downgrade(&slot));
        drop(sessions);
        Cursor {
            registrar: Registrar {
                fanout: self.clone(),
                session: self.next_session.fetch_add(1, Relaxed),
                slot: slot.clone(),
            },
            last: 0,
            taken_at: Instant::now(),
            passed: 0,
            slot,
        }
    }

    fn now_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64 + 1
    }

    /// Drop the batches every session has read; count what stalled sessions pin, shrink the
    /// ring by it, and close the longest-stalled sessions while they alone pin more than half
    /// the budget, and any whose delivery has not finished for `write_limit`. Run every
    /// `JANITOR_EVERY`.
    pub fn sweep(&self, write_limit: Duration) {
        let now = self.now_ms();
        let stalled_after = STALLED_AFTER.as_millis() as u64;
        // Read before the inboxes: every batch before it is in the inbox of each session that
        // has yet to read it.
        let handing = self.index().handing;
        let live = self.live();
        let read_by_all = live
            .iter()
            .filter_map(|s| s.waiting_for())
            .min()
            .unwrap_or(handing)
            .min(handing);
        let sessions = live.len();
        let mut stalled: Vec<(u64, Arc<Slot>)> = live
            .into_iter()
            .filter_map(|slot| {
                let since = slot.since.load(Relaxed);
                (since != 0 && now.saturating_sub(since) > stalled_after).then_some((since, slot))
            })
            .collect();
        stalled.sort_by_key(|s| s.0);
        // One timer for every session's writes, rather than one per delivery.
        let too_long = write_limit.as_millis() as u64;
        for (since, slot) in &stalled {
            if now.saturating_sub(*since) > too_long {
                slot.kick_for(Kick::WriteTimedOut);
            }
        }
        // Batches the ring no longer holds count once, with how many stalled sessions hold them.
        let first = self.ring().first;
        let mut outside: HashMap<u64, (usize, usize)> = HashMap::new();
        let mut total = 0;
        let held: Vec<Vec<(Option<u64>, usize)>> =
            stalled.iter().map(|(_, slot)| slot.held()).collect();
        for ((_, slot), held) in stalled.iter().zip(&held) {
            total += slot.copy.load(Relaxed);
            for &(seq, size) in held {
                match seq {
                    Some(seq) if seq < first => {
                        let entry = outside.entry(seq).or_insert((size, 0));
                        if entry.1 == 0 {
                            total += size;
                        }
                        entry.1 += 1;
                    }
                    Some(_) => {}
                    None => total += size,
                }
            }
        }
        let limit = self.max_bytes.load(Relaxed) / 2;
        for ((_, slot), held) in stalled.iter().zip(&held) {
            if total <= limit {
                break;
            }
            slot.kick_for(Kick::OutOfMemory);
            total -= slot.copy.load(Relaxed);
            for &(seq, own) in held {
                match seq {
                    Some(seq) => {
                        if let Some((size, holders)) = outside.get_mut(&seq) {
                            *holders -= 1;
                            if *holders == 0 {
                                total -= *size;
                            }
                        }
                    }
                    None => total -= own,
                }
            }
        }
        self.stalled_bytes.store(total, Relaxed);
        let mut ring = self.ring();
        while ring.first < read_by_all {
            let Some((_, size, _)) = ring.batches.pop_front() else {
                break;
            };
            ring.bytes -= size;
            ring.first += 1;
        }
        self.evict(&mut ring);
        let ring_bytes = ring.bytes;
        self.stats.set(Stat::BacklogBytes, ring_bytes as u64);
        drop(ring);
        self.return_memory(sessions, ring_bytes);
    }
}

impl Fanout {
    /// malloc keeps what departed sessions freed (their buffers, the batches they held) for
    /// reuse; give it back once at least half of a crowd of over 100 sessions has gone (all of
    /// it, in the end), or once the ring holds less than half of what it held, over 32 MB.
    fn return_memory(&self, sessions: usize, ring_bytes: usize) {
        let peak_sessions = self
            .peak_sessions
            .fetch_max(sessions, Relaxed)
            .max(sessions);
        let peak_bytes = self
            .peak_ring_bytes
            .fetch_max(ring_bytes, Relaxed)
            .max(ring_bytes);
        let sessions_left = (peak_sessions > 100 && sessions < peak_sessions / 2)
            || (peak_sessions > 0 && sessions == 0);
        let ring_shrank = peak_bytes > 32 << 20 && ring_bytes < peak_bytes / 2;
        if sessions_left || ring_shrank {
            self.peak_sessions.store(sessions, Relaxed);
            self.peak_ring_bytes.store(ring_bytes, Relaxed);
            // SAFETY: malloc_trim only releases free heap memory; any thread may call it.
            unsafe { libc::malloc_trim(0) };
        }
    }
}

/// What a batch will cost: each change's images, and the frame its protocol encodes them into
/// (about as large again).
fn batch_bytes(batch: &Batch) -> usize {
    match batch {
        Batch::Changes(changes) => changes
            .iter()
            .map(|c| 2 * c.image_bytes() + CHANGE_OVERHEAD)
            .sum(),
        Batch::Gap { .. } | Batch::Ended { .. } | Batch::Reauthorize { .. } => CHANGE_OVERHEAD,
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

/// One session as the fan-out sees it: the batches handed to it, and what it is delivering.
#[derive(Default)]
pub struct Slot {
    /// Sequence numbers of the batches handed to it and not yet read, oldest first.
    inbox: Mutex<VecDeque<u64>>,
    /// The inbox was full and lost its oldest numbers: one more than the first it lost
    /// (0: none lost).
    overflowed_from: AtomicU64,
    /// One more than the last sequence number handed to it: a batch is handed once, however
    /// many of its subscriptions it concerns.
    handed: AtomicU64,
    /// Woken when a batch is handed to it, or the fan-out closes.
    ready: Notify,
    /// The batches the current delivery holds: (sequence number, bytes); no number for one
    /// read back from the history, which only this session holds.
    held: Mutex<Vec<(Option<u64>, usize)>>,
    /// What its socket writer may have copied besides its own buffer (which every connection
    /// has, slow or not): the largest frame it is writing.
    copy: AtomicUsize,
    /// When the delivery started (milliseconds since the fan-out began; 0: not delivering).
    since: AtomicU64,
    /// One more than the sequence number of the last catalog change handed to it while it
    /// has not registered again since (0: settled); see `Index::widened`.
    widened_through: AtomicU64,
    /// Set by the janitor: this session must close, and why.
    kick: Notify,
    kicked_for: std::sync::atomic::AtomicU8,
}

impl Slot {
    /// Put batch `seq` in the inbox. The ring never holds more than `max_batches` batches, so
    /// an inbox that long starts with numbers already gone: the oldest makes room.
    /// Whether it was handed now (not already, for another subscription).
    fn hand(&self, seq: u64, max_batches: usize) -> bool {
        if self.handed.swap(seq + 1, Relaxed) == seq + 1 {
            return false;
        }
        let mut inbox = lock(&self.inbox);
        if inbox.len() >= max_batches {
            if let Some(lost) = inbox.pop_front() {
                let _ = self
                    .overflowed_from
                    .compare_exchange(0, lost + 1, Relaxed, Relaxed);
            }
        }
        inbox.push_back(seq);
        drop(inbox);
        self.ready.notify_one();
        true
    }

    /// The oldest batch handed to this session and not yet read.
    fn waiting_for(&self) -> Option<u64> {
        lock(&self.inbox).front().copied()
    }
}

/// One session's place in the fan-out.
pub struct Cursor {
    registrar: Registrar,
    /// Sequence number of the batch last returned, and when it was taken.
    last: u64,
    taken_at: Instant,
    /// The highest sequence number returned or lost to lag.
    passed: u64,
    slot: Arc<Slot>,
}

/// Registers a session's subscriptions in the fan-out's index.
#[derive(Clone)]
pub struct Registrar {
    fanout: Arc<Fanout>,
    session: SessionId,
    slot: Arc<Slot>,
}

impl Registrar {
    /// Batches handed to the session and not yet read.
    pub fn waiting(&self) -> usize {
        lock(&self.slot.inbox).len()
    }

    /// Hand this session the batches that concern a subscription to `topic` narrowed by
    /// `keys`, for as long as the returned `Interest` lives; and the last position published
    /// before (the subscription's changes come after it).
    pub fn register(&self, topic: Topic, keys: Keys) -> (Interest, u64) {
        let mut index = self.fanout.index();
        index.interests.add(self.session, &self.slot, &topic, &keys);
        let interest = Interest {
            registrar: self.clone(),
            topic,
            keys,
        };
        let published = self.fanout.published_through.load(Relaxed);
        (interest, index.dispatched.max(published))
    }

    /// The session registered again, with what it may see, after every batch up to sequence
    /// number `through`: unless a later catalog change was handed to it since, its keys route
    /// batches for it again.
    pub fn settle(&self, through: u64) {
        let mut index = self.fanout.index();
        let widened = self.slot.widened_through.load(Relaxed);
        if widened != 0 && widened <= through + 1 {
            self.slot.widened_through.store(0, Relaxed);
            index
                .widened
                .retain(|s| !std::ptr::eq(s.as_ptr(), Arc::as_ptr(&self.slot)));
        }
    }
}

/// A subscription's place in the index; it leaves when dropped.
pub struct Interest {
    registrar: Registrar,
    topic: Topic,
    keys: Keys,
}

impl Drop for Interest {
    fn drop(&mut self) {
        let r = &self.registrar;
        r.fanout
            .index()
            .interests
            .remove(r.session, &self.topic, &self.keys);
    }
}

impl Cursor {
    pub fn registrar(&self) -> Registrar {
        self.registrar.clone()
    }

    /// The next batch, waiting for one if need be.
    pub async fn recv(&mut self) -> Result<Arc<Batch>, Missed> {
        loop {
            if let Some(found) = self.take() {
                return found;
            }
            self.slot.ready.notified().await;
        }
    }

    /// The next batch if one is waiting.
    pub fn try_recv(&mut self) -> Option<Result<Arc<Batch>, Missed>> {
        self.take()
    }

    fn take(&mut self) -> Option<Result<Arc<Batch>, Missed>> {
        let fanout = &self.registrar.fanout;
        if fanout.closed.load(Relaxed) {
            return Some(Err(Missed::Closed));
        }
        let mut inbox = lock(&self.slot.inbox);
        let seq = *inbox.front()?;
        let ring = fanout.ring();
        let overflowed_from = self.slot.overflowed_from.swap(0, Relaxed);
        if seq < ring.first || overflowed_from != 0 {
            // What the batches that left the ring held, if every one is still known: those
            // handed to this session, or all of them since the first its full inbox lost.
            let mut lost = Vec::new();
            while let Some(seq) = inbox.front().copied().filter(|s| *s < ring.first) {
                inbox.pop_front();
                lost.push(seq);
            }
            if overflowed_from != 0 {
                lost = (overflowed_from - 1..ring.first).collect();
            }
            self.passed = self.passed.max(ring.first.saturating_sub(1));
            let known = lost
                .into_iter()
                .map(|seq| ring.summary(seq).cloned())
                .collect();
            return Some(Err(Missed::Lagged(known)));
        }
        inbox.pop_front();
        self.last = seq;
        self.passed = seq;
        let (batch, _, dispatched) = &ring.batches[(seq - ring.first) as usize];
        let now = Instant::now();
        fanout
            .stats
            .observe(Timing::DispatchToTake, now - *dispatched);
        self.taken_at = now;
        Some(Ok(batch.clone()))
    }

    /// Sequence number of the batch `recv` or `try_recv` returned last.
    pub fn last_seq(&self) -> u64 {
        self.last
    }

    /// The session registered again under what it may see now, after every batch it read or
    /// lost so far.
    pub fn settle(&self) {
        self.registrar.settle(self.passed)
    }

    /// When the batch `recv` or `try_recv` returned last was taken.
    pub fn taken_at(&self) -> Instant {
        self.taken_at
    }

    /// Mark the start of a delivery; the returned guard counts the batches it writes and
    /// marks its end.
    pub fn delivering(&self) -> Delivering {
        self.slot
            .since
            .store(self.registrar.fanout.now_ms(), Relaxed);
        Delivering(self.slot.clone())
    }

    /// Resolves when the janitor closes this session: to free the memory it pins, or because
    /// its socket took nothing for too long.
    pub fn kicked(&self) -> impl std::future::Future<Output = Kick> + use<> {
        let slot = self.slot.clone();
        async move {
            slot.kick.notified().await;
            match slot.kicked_for.load(Relaxed) {
                1 => Kick::OutOfMemory,
                _ => Kick::WriteTimedOut,
            }
        }
    }
}

/// Why the janitor closes a session.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kick {
    /// Stalled sessions pinned more than half of realtime.client_memory.
    OutOfMemory = 1,
    /// A delivery did not finish within the write limit.
    WriteTimedOut = 2,
}

impl Slot {
    fn kick_for(&self, why: Kick) {
        self.kicked_for.store(why as u8, Relaxed);
        self.kick.notify_one();
    }

    fn held(&self) -> Vec<(Option<u64>, usize)> {
        lock(&self.held).clone()
    }
}

impl Ring {
    /// What dropped batch `seq` held, if that is still kept.
    fn summary(&self, seq: u64) -> Option<&Dropped> {
        let back = self.first.checked_sub(seq).filter(|b| *b > 0)? as usize;
        let len = self.dropped.len();
        (back <= len).then(|| &self.dropped[len - back])
    }
}

pub struct Delivering(Arc<Slot>);

impl Delivering {
    /// This delivery also holds `batch`, number `seq` (`Cursor::last_seq`), or one read back
    /// from the history (`None`).
    pub fn add(&self, seq: Option<u64>, batch: &Batch) {
        let largest = match batch {
            Batch::Changes(changes) => changes
                .iter()
                .map(|c| c.image_bytes() + CHANGE_OVERHEAD)
                .max()
                .unwrap_or(0),
            _ => 0,
        };
        self.0.copy.fetch_max(largest, Relaxed);
        self.0
            .held
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push((seq, batch_bytes(batch)));
    }
}

impl Drop for Delivering {
    fn drop(&mut self) {
        self.0.since.store(0, Relaxed);
        self.0.copy.store(0, Relaxed);
        self.0
            .held
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
    }
}

#[cfg(test)]
mod unit {
    use super::*;

    static STATS: Stats = Stats::new();

    /// A batch of one change whose image is `n` bytes: it costs 2n + CHANGE_OVERHEAD.
    fn batch(n: usize) -> Batch {
        at(1, n)
    }

    /// A batch of one change at `position` whose image is `n` bytes.
    fn at(position: u64, n: usize) -> Batch {
        let txn = Arc::new(crate::change::Txn::new(1, String::new()));
        let names = Arc::new(("s".to_string(), "t".to_string()));
        let image = Some("x".repeat(n).into_boxed_str());
        Batch::Changes(vec![crate::change::Change::new(
            position,
            txn,
            Topic::Table(7),
            names,
            crate::ops::Op::Insert,
            image,
            None,
        )])
    }

    #[test]
    fn the_ring_is_bounded_in_bytes_and_batches_and_laggards_are_told() {
        let fanout = Fanout::new(4, 10_000, &STATS);
        let mut slow = fanout.cursor();
        let _interest = slow.registrar().register(Topic::Table(7), Keys::Everything);
        for _ in 0..10 {
            fanout.send(batch(1_500));
        }
        let ring = fanout.ring();
        assert!(ring.bytes <= 10_000 && ring.batches.len() <= 4);
        drop(ring);
        let Some(Err(Missed::Lagged(Some(missed)))) = slow.try_recv() else {
            panic!("the slow cursor lagged");
        };
        assert_eq!(
            missed.len(),
            7,
            "3 of 10 batches of 3,160 bytes fit in 10,000"
        );
        assert!(missed
            .iter()
            .all(|(_, _, s)| *s == Summary::Changes([Topic::Table(7)].into())));
        assert!(matches!(slow.try_recv(), Some(Ok(_))));
        // One batch larger than the budget is still delivered.
        let mut fast = fanout.cursor();
        let _interest = fast.registrar().register(Topic::Table(7), Keys::Everything);
        fanout.send(batch(25_000));
        assert!(matches!(fast.try_recv(), Some(Ok(_))));
        assert_eq!(fanout.ring().batches.len(), 1);
    }

    #[test]
    fn after_a_catalog_change_sessions_get_every_change_until_they_register_again() {
        let fanout = Fanout::new(1000, 1 << 30, &STATS);
        let mut alice = fanout.cursor();
        let owner = |name: &str| Keys::Values(vec![("owner".into(), format!("\"{name}\""))]);
        let narrow = alice
            .registrar()
            .register(Topic::Table(7), owner("alice"))
            .0;
        let bobs = || {
            let txn = Arc::new(crate::change::Txn::new(1, String::new()));
            let names = Arc::new(("s".to_string(), "t".to_string()));
            let row = Some(r#"{"owner":"bob"}"#.into());
            let change = crate::change::Change::new(
                1,
                txn,
                Topic::Table(7),
                names,
                crate::ops::Op::Insert,
                row,
                None,
            );
            Batch::Changes(vec![change])
        };
        fanout.send(bobs());
        assert!(alice.try_recv().is_none(), "bob's row is not alice's");

        // A policy now lets alice see every row; bob's next row is committed before she has
        // registered again under it, and still reaches her.
        fanout.send(Batch::Reauthorize { last_position: 1 });
        fanout.send(bobs());
        assert!(matches!(
            *alice.try_recv().unwrap().unwrap(),
            Batch::Reauthorize { .. }
        ));
        fanout.send(bobs());
        let wide = alice
            .registrar()
            .register(Topic::Table(7), Keys::Everything)
            .0;
        drop(narrow);
        fanout.send(bobs());
        alice.settle();
        for _ in 0..3 {
            assert!(matches!(
                *alice.try_recv().unwrap().unwrap(),
                Batch::Changes(_)
            ));
        }
        assert!(alice.try_recv().is_none());

        // Settled under narrow keys again, she is handed only what they name.
        drop(wide);
        let _interest = alice.registrar().register(Topic::Table(7), owner("alice"));
        fanout.send(Batch::Reauthorize { last_position: 2 });
        alice.try_recv().unwrap().unwrap();
        alice.settle();
        fanout.send(bobs());
        assert!(alice.try_recv().is_none());
        assert!(fanout.index().widened.is_empty());
    }

    #[test]
    fn a_catalog_change_counts_as_a_pass_only_when_a_session_hears_it() {
        let stats: &'static Stats = Box::leak(Box::new(Stats::new()));
        let fanout = Fanout::new(1000, 1 << 30, stats);
        fanout.send(Batch::Reauthorize { last_position: 1 });
        assert_eq!(stats.get(Stat::Reauthorizations), 0, "nobody to authorize");
        let mut alice = fanout.cursor();
        let _interest = alice
            .registrar()
            .register(Topic::Table(7), Keys::Everything);
        fanout.send(Batch::Reauthorize { last_position: 2 });
        assert_eq!(stats.get(Stat::Reauthorizations), 1);
        assert!(alice.try_recv().is_some());
    }

    #[test]
    fn a_later_catalog_change_keeps_the_session_widened() {
        let fanout = Fanout::new(1000, 1 << 30, &STATS);
        let mut a = fanout.cursor();
        let _interest = a.registrar().register(Topic::Table(7), Keys::Everything);
        fanout.send(Batch::Reauthorize { last_position: 1 });
        a.try_recv().unwrap().unwrap();
        fanout.send(Batch::Reauthorize { last_position: 2 });
        // Registered again for the first only: the second is still to be worked out.
        a.settle();
        assert_eq!(fanout.index().widened.len(), 1);
        a.try_recv().unwrap().unwrap();
        a.settle();
        assert!(fanout.index().widened.is_empty());
    }

    #[test]
    fn batches_everyone_has_read_are_dropped() {
        let fanout = Fanout::new(1000, 1 << 30, &STATS);
        let mut a = fanout.cursor();
        let interest = a.registrar().register(Topic::Table(7), Keys::Everything);
        for _ in 0..5 {
            fanout.send(batch(500));
        }
        fanout.sweep(Duration::from_secs(3600));
        assert_eq!(fanout.ring().batches.len(), 5, "a has read nothing yet");
        while let Some(Ok(_)) = a.try_recv() {}
        fanout.sweep(Duration::from_secs(3600));
        assert_eq!(fanout.ring_bytes(), 0);
        drop((a, interest));
        fanout.send(batch(500));
        fanout.sweep(Duration::from_secs(3600));
        assert_eq!(fanout.ring_bytes(), 0, "nobody is connected");
    }

    #[test]
    fn stalled_sessions_count_their_copies_and_dropped_batches_once() {
        let fanout = Fanout::new(1, 300_000, &STATS);
        let (mut a, mut b) = (fanout.cursor(), fanout.cursor());
        let _interests =
            [&a, &b].map(|c| c.registrar().register(Topic::Table(7), Keys::Everything));
        fanout.send(batch(30_000));
        let big = a.try_recv().unwrap().unwrap();
        b.try_recv().unwrap().unwrap();
        let (da, db) = (a.delivering(), b.delivering());
        da.add(Some(a.last_seq()), &big);
        db.add(Some(b.last_seq()), &big);
        // Both stall; a newer batch pushes theirs out of the ring.
        for slot in [&a.slot, &b.slot] {
            slot.since.store(1, Relaxed);
        }
        std::thread::sleep(STALLED_AFTER + Duration::from_millis(10));
        fanout.send(batch(10));
        fanout.sweep(Duration::from_secs(3600));
        // The dropped batch once (60,160) and each writer's copy of its frame (2 × 30,160):
        // under half of 300,000, so nobody is kicked.
        assert_eq!(fanout.stalled_bytes.load(Relaxed), 60_160 + 2 * 30_160);
        assert!(futures_util::FutureExt::now_or_never(a.kicked()).is_none());
        // With a smaller budget the longest-stalled goes first, then the other.
        fanout.set_max_bytes(200_000);
        a.slot.since.store(1, Relaxed);
        b.slot.since.store(2, Relaxed);
        fanout.sweep(Duration::from_secs(3600));
        assert!(futures_util::FutureExt::now_or_never(a.kicked()).is_some());
        assert!(futures_util::FutureExt::now_or_never(b.kicked()).is_none());
        assert_eq!(fanout.stalled_bytes.load(Relaxed), 60_160 + 30_160);
        drop((da, db));
    }

    #[test]
    fn batches_handed_out_by_the_dispatcher_and_by_helpers_arrive_in_order_once() {
        const BATCHES: u64 = 20_000;
        let fanout = Fanout::new(BATCHES as usize, 1 << 30, &STATS);
        let mut cursor = fanout.cursor();
        let _interest = cursor
            .registrar()
            .register(Topic::Table(7), Keys::Everything);
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .build()
            .unwrap();
        runtime.spawn(fanout.clone().dispatch());
        let publisher = {
            let fanout = fanout.clone();
            std::thread::spawn(move || (1..=BATCHES).for_each(|p| fanout.publish(at(p, 1))))
        };
        let mut read = Vec::new();
        while read.len() < BATCHES as usize {
            fanout.help_dispatch();
            match cursor.try_recv() {
                Some(Ok(batch)) => read.push(batch.first_position()),
                Some(Err(missed)) => panic!("nothing may be missed: {missed:?}"),
                None => std::thread::yield_now(),
            }
        }
        publisher.join().unwrap();
        assert!(read.iter().copied().eq(1..=BATCHES), "in order, each once");
        assert_eq!(fanout.handoff.capacity(), HANDOFF, "nothing left waiting");
    }

    #[test]
    fn a_session_reads_only_the_batches_handed_to_it() {
        let fanout = Fanout::new(1000, 1 << 30, &STATS);
        let mut seven = fanout.cursor();
        let mut other = fanout.cursor();
        let (_seven, before) = seven
            .registrar()
            .register(Topic::Table(7), Keys::Everything);
        let (_other, _) = other
            .registrar()
            .register(Topic::Table(8), Keys::Everything);
        assert_eq!(before, 0);
        fanout.send(batch(10));
        assert!(matches!(seven.try_recv(), Some(Ok(_))));
        assert!(other.try_recv().is_none(), "table 8 had no change");
        assert!(futures_util::FutureExt::now_or_never(other.recv()).is_none());
        // A subscription registered now comes after what was handed out.
        let (_again, after) = other
            .registrar()
            .register(Topic::Table(7), Keys::Everything);
        assert_eq!(after, 1);
        // A batch nobody reads is dropped by the next sweep.
        fanout.sweep(Duration::from_secs(3600));
        assert_eq!(fanout.ring_bytes(), 0);
        // Batches that left the ring unread are reported with what they held.
        let small = Fanout::new(2, 1 << 30, &STATS);
        let mut slow = small.cursor();
        let _slow = slow.registrar().register(Topic::Table(7), Keys::Everything);
        for _ in 0..5 {
            small.send(batch(10));
        }
        let Some(Err(Missed::Lagged(Some(missed)))) = slow.try_recv() else {
            panic!("three batches left the ring");
        };
        assert_eq!(missed.len(), 3);
        assert!(matches!(slow.try_recv(), Some(Ok(_))));
        assert!(matches!(slow.try_recv(), Some(Ok(_))));
        assert!(slow.try_recv().is_none());
    }

    impl PartialEq for Batch {
        fn eq(&self, other: &Batch) -> bool {
            self.last_position() == other.last_position()
        }
    }
    impl std::fmt::Debug for Batch {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            write!(f, "batch up to {}", self.last_position())
        }
    }
}
