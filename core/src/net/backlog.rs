//! Reading the history back for subscribers, a bounded chunk at a time: a subscription that
//! resumes (`since`), and a subscriber that fell out of the in-memory fan-out and goes on from
//! where it left off.
//!
//! Subscribers that fall behind together read the same stretch: thousands of them behind one
//! burst would each decode it and each encode its frames. So the chunks read back are shared
//! (`ReadBack`): the history's index cuts its files into stretches of about 64 KiB
//! (`History::stretch`), each is read from disk once however many subscribers wait for it,
//! and is kept while recent, so its changes are decoded once and each protocol's frame for a
//! change is built once, as for live batches.
//!
//! Files are read on tokio's blocking threads, one chunk per trip, so thousands of
//! subscribers catching up at once never hold a thread each; a subscriber holds at most one
//! chunk at a time.

use crate::change::{Batch, Change, GapReason};
use crate::history::History;
use futures_util::future::{BoxFuture, FutureExt, Shared};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

/// Chunks kept once read, for the subscribers behind the first to read them.
const KEPT: usize = 64;

/// Chunks of the history read back recently, shared by every subscriber reading them.
pub struct ReadBack {
    history: Arc<History>,
    /// Each chunk by the first position it covers, read or being read.
    chunks: Mutex<BTreeMap<u64, Reading>>,
}

/// A chunk's read: on a blocking thread, awaited by every subscriber that wants it. A
/// subscriber that stops waiting (its connection had something else to do) leaves the read
/// running for the next to wait; `None` if it failed.
type Reading = Shared<BoxFuture<'static, Option<Arc<Chunk>>>>;

/// What the history held from a chunk's first position through `through`, in order.
struct Chunk {
    through: u64,
    batches: Vec<Arc<Batch>>,
}

impl ReadBack {
    pub fn new(history: Arc<History>) -> Arc<ReadBack> {
        Arc::new(ReadBack {
            history,
            chunks: Mutex::default(),
        })
    }

    /// The chunk holding position `first`, read now unless it was read recently.
    async fn chunk(&self, first: u64) -> Read {
        // The second read is made for `first`, so covers it; a third would mean the history's
        // positions went backwards (a clock set back across a restart): told as a loss rather
        // than read forever.
        for _ in 0..2 {
            // Checked first, so that looking past the end keeps the chunk read at the end.
            if self.history.last() < first {
                return Read::Nothing;
            }
            match self.reading_for(first).await {
                Some(chunk) if chunk.through >= first => return Read::Chunk(chunk),
                // Read at the end of the history before `first` was written: read again.
                Some(_) => {}
                None => break,
            }
        }
        Read::Failed
    }

    /// The read that holds, or will hold, `first`.
    fn reading_for(&self, first: u64) -> Reading {
        let (start, through) = self.history.stretch(first);
        let mut chunks = self.chunks.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(reading) = chunks.get(&start) {
            match reading.peek() {
                Some(Some(chunk)) if chunk.through >= first => return reading.clone(),
                None => return reading.clone(),
                // Read at the end of the history before `first` was written, or failed.
                Some(_) => {}
            }
        }
        let history = self.history.clone();
        let through = through.unwrap_or_else(|| history.last());
        let read = move || Arc::new(read_chunk(&history, start, through));
        let reading = tokio::task::spawn_blocking(read)
            .map(Result::ok)
            .boxed()
            .shared();
        chunks.insert(start, reading.clone());
        while chunks.len() > KEPT {
            chunks.pop_first();
        }
        reading
    }
}

/// What the history holds after a position, read in order.
pub struct Backlog {
    read_back: Arc<ReadBack>,
    /// The last position read so far.
    after: u64,
    /// Read through this position; `None`: through whatever the history holds when it is
    /// reached, following it as it grows (a subscriber catching up).
    through: Option<u64>,
    /// The chunk being read, its next batch, and the last position read before it.
    chunk: Option<(Arc<Chunk>, usize, u64)>,
}

impl Backlog {
    pub fn new(read_back: Arc<ReadBack>, after: u64, through: Option<u64>) -> Backlog {
        Backlog {
            read_back,
            after,
            through,
            chunk: None,
        }
    }

    /// The next batch, or `None` once everything up to `through` (or everything the history
    /// holds) was read. Cancel-safe: a read in flight is resumed by the next call.
    pub async fn next(&mut self) -> Option<Arc<Batch>> {
        let through = self.through.unwrap_or(u64::MAX);
        loop {
            if let Some((chunk, next, before)) = &mut self.chunk {
                while let Some(batch) = chunk.batches.get(*next) {
                    *next += 1;
                    if let Some(batch) = within(batch, *before, through) {
                        self.after = self.after.max(batch.last_position());
                        return Some(batch);
                    }
                }
                self.after = self.after.max(chunk.through.min(through));
                self.chunk = None;
            }
            if self.after >= through {
                return None;
            }
            match self.read_back.chunk(self.after + 1).await {
                Read::Chunk(chunk) => self.chunk = Some((chunk, 0, self.after)),
                Read::Nothing => return None,
                // The blocking pool is shutting down with the server, or the history is not
                // in order.
                Read::Failed => {
                    let (from, to) = (self.after + 1, self.through.unwrap_or(self.after + 1));
                    self.after = to;
                    return Some(Arc::new(Batch::Gap {
                        reason: GapReason::HistoryLost,
                        first_position: from,
                        last_position: to,
                        topics: None,
                    }));
                }
            }
        }
    }
}

/// What a chunk's `batch` holds after `after` and through `through`: shared as it is when it
/// lies wholly within (all but the first and last a subscriber reads), else a trimmed copy.
/// An end stands at the position of the change before it: one at `after` was read with it.
fn within(batch: &Arc<Batch>, after: u64, through: u64) -> Option<Arc<Batch>> {
    let (first, last) = (batch.first_position(), batch.last_position());
    if last <= after || first > through {
        return None;
    }
    if first > after && last <= through {
        return Some(batch.clone());
    }
    Some(Arc::new(match &**batch {
        Batch::Changes(changes) => Batch::Changes(
            changes
                .iter()
                .filter(|c| c.position > after && c.position <= through)
                .map(Change::copy)
                .collect(),
        ),
        Batch::Gap { reason, topics, .. } => Batch::Gap {
            reason: *reason,
            first_position: first.max(after + 1),
            last_position: last.min(through),
            topics: topics.clone(),
        },
        // Ends and markers stand at one position: wholly within, above.
        _ => return Some(batch.clone()),
    }))
}

/// What reading a chunk gave.
enum Read {
    Chunk(Arc<Chunk>),
    /// The history holds nothing from there yet.
    Nothing,
    Failed,
}

/// The history from position `start` through `through`: its changes in batches, each gap or
/// end on its own.
fn read_chunk(history: &History, start: u64, through: u64) -> Chunk {
    let mut batches = Vec::new();
    let mut changes: Vec<Change> = Vec::new();
    for batch in history.read(start - 1, through) {
        match batch {
            Batch::Changes(more) => changes.extend(more),
            other => {
                if !changes.is_empty() {
                    batches.push(Arc::new(Batch::Changes(std::mem::take(&mut changes))));
                }
                batches.push(Arc::new(other));
            }
        }
    }
    if !changes.is_empty() {
        batches.push(Arc::new(Batch::Changes(changes)));
    }
    Chunk { through, batches }
}

#[cfg(test)]
mod unit {
    use super::*;
    use crate::change::{EndReason, Topic};
    use crate::history::Limits;
    use crate::net::testing::{change, runtime};
    use crate::ops::Op;
    use std::time::Duration;

    /// A history in its own directory, removed when the test ends.
    struct Disk(std::path::PathBuf, Arc<History>);

    impl Disk {
        fn new(name: &str) -> Disk {
            let dir = std::env::temp_dir()
                .join(format!("realtime_backlog_{name}_{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&dir);
            let limits = Limits {
                bytes: 1 << 30,
                age: Duration::from_secs(3600),
            };
            let (history, _) = History::open(&dir, limits).unwrap();
            history.begin(0).unwrap();
            Disk(dir, history)
        }

        /// Changes at `positions`, `per` to a batch, each with a row of `bytes` bytes.
        fn write(&self, positions: std::ops::RangeInclusive<u64>, per: usize, bytes: usize) {
            let positions: Vec<u64> = positions.collect();
            for batch in positions.chunks(per) {
                let changes = batch
                    .iter()
                    .map(|&p| {
                        let row = format!(r#"{{"id":{p},"pad":"{}"}}"#, "x".repeat(bytes));
                        change(p, 7, Op::Insert, Some(&row), None)
                    })
                    .collect();
                self.1.append(&Batch::Changes(changes)).unwrap();
            }
        }
    }

    impl Drop for Disk {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    /// Everything `backlog` gives: each batch, and the positions of the changes in order.
    async fn read_all(backlog: &mut Backlog) -> (Vec<Arc<Batch>>, Vec<u64>) {
        let mut batches = Vec::new();
        let mut positions = Vec::new();
        while let Some(batch) = backlog.next().await {
            if let Batch::Changes(changes) = &*batch {
                positions.extend(changes.iter().map(|c| c.position));
            }
            batches.push(batch);
        }
        (batches, positions)
    }

    #[test]
    fn subscribers_behind_together_share_what_is_read_once() {
        let disk = Disk::new("share");
        disk.write(1..=600, 10, 1_000);
        let read_back = ReadBack::new(disk.1.clone());
        runtime().block_on(async {
            let mut first = Backlog::new(read_back.clone(), 0, None);
            let mut second = Backlog::new(read_back.clone(), 5, None);
            let (a, from_0) = read_all(&mut first).await;
            let (b, from_5) = read_all(&mut second).await;
            assert_eq!(from_0, (1..=600).collect::<Vec<_>>());
            assert_eq!(from_5, (6..=600).collect::<Vec<_>>());
            // The first batch of the second is trimmed to what it had not seen; the rest
            // are the very batches the first read.
            assert!(!Arc::ptr_eq(&a[0], &b[0]));
            assert!(a.len() > 5, "read in several chunks");
            assert_eq!(a.len(), b.len());
            assert!(a[1..].iter().zip(&b[1..]).all(|(a, b)| Arc::ptr_eq(a, b)));
        });
    }

    #[test]
    fn a_read_given_up_on_goes_on_for_the_next_to_wait() {
        let disk = Disk::new("cancel");
        disk.write(1..=256, 16, 4_000);
        runtime().block_on(async {
            // Polled once, then dropped, as a connection's loop does when another of its events
            // comes first; tried until that poll found the read still going.
            let (read_back, mut gave_up) = loop {
                let read_back = ReadBack::new(disk.1.clone());
                let mut backlog = Backlog::new(read_back.clone(), 0, None);
                if backlog.next().now_or_never().is_none() {
                    break (read_back, backlog);
                }
            };
            let reading = |read_back: &ReadBack| read_back.chunks.lock().unwrap()[&1].clone();
            let started = reading(&read_back);
            let mut other = Backlog::new(read_back.clone(), 0, None);
            let theirs = other.next().await.unwrap();
            let mine = gave_up.next().await.unwrap();
            assert!(started.ptr_eq(&reading(&read_back)), "read once");
            assert!(Arc::ptr_eq(&theirs, &mine));
            assert_eq!(mine.first_position(), 1);
            let rest = read_all(&mut gave_up).await.1;
            assert_eq!(rest, (mine.last_position() + 1..=256).collect::<Vec<_>>());
        });
    }

    #[test]
    fn a_bounded_read_stops_at_its_end_and_one_following_the_history_sees_it_grow() {
        let disk = Disk::new("bounds");
        disk.write(1..=300, 7, 16);
        let read_back = ReadBack::new(disk.1.clone());
        runtime().block_on(async {
            let mut resume = Backlog::new(read_back.clone(), 3, Some(260));
            assert_eq!(read_all(&mut resume).await.1, (4..=260).collect::<Vec<_>>());
            // At the end of the history: what comes later is read later, from where it was.
            let mut catching_up = Backlog::new(read_back.clone(), 250, None);
            assert_eq!(
                read_all(&mut catching_up).await.1,
                (251..=300).collect::<Vec<_>>()
            );
            disk.write(301..=320, 7, 16);
            assert_eq!(
                read_all(&mut catching_up).await.1,
                (301..=320).collect::<Vec<_>>()
            );
            let mut late = Backlog::new(read_back, 290, None);
            assert_eq!(read_all(&mut late).await.1, (291..=320).collect::<Vec<_>>());
        });
    }

    #[test]
    fn an_end_is_read_with_the_change_before_it_wherever_the_index_cuts() {
        let disk = Disk::new("end");
        // Each change past 64 KiB: the index marks each, and the end after the fourth too,
        // though it stands at the position of the change before it.
        disk.write(1..=4, 1, 70_000);
        disk.1
            .append(&Batch::Ended {
                topic: Topic::Table(7),
                reason: EndReason::Dropped,
                last_position: 4,
            })
            .unwrap();
        disk.write(5..=6, 1, 70_000);
        assert_eq!(disk.1.stretch(4), (4, Some(5)));
        let read_back = ReadBack::new(disk.1.clone());
        runtime().block_on(async {
            for after in [0, 2, 3] {
                let mut backlog = Backlog::new(read_back.clone(), after, None);
                let (batches, positions) = read_all(&mut backlog).await;
                assert_eq!(positions, (after + 1..=6).collect::<Vec<_>>());
                let ends: Vec<usize> = batches
                    .iter()
                    .enumerate()
                    .filter(|(_, b)| matches!(***b, Batch::Ended { .. }))
                    .map(|(i, _)| i)
                    .collect();
                assert_eq!(ends.len(), 1, "read from {after}");
                assert_eq!(batches[ends[0] - 1].last_position(), 4);
            }
        });
    }

    #[test]
    fn sparse_positions_are_read_by_the_stretch_not_by_the_number() {
        // Positions jump after a server restart (they follow the clock): a resume across the
        // jump reads what is there, a chunk or two, not every number in between.
        let disk = Disk::new("sparse");
        disk.write(1..=10, 5, 16);
        disk.write(10_000_000_001..=10_000_000_010, 5, 16);
        let read_back = ReadBack::new(disk.1.clone());
        runtime().block_on(async {
            let mut resume = Backlog::new(read_back.clone(), 5, Some(10_000_000_005));
            let positions = read_all(&mut resume).await.1;
            let mut expected: Vec<u64> = (6..=10).collect();
            expected.extend(10_000_000_001..=10_000_000_005);
            assert_eq!(positions, expected);
            assert!(read_back.chunks.lock().unwrap().len() <= 2);
        });
    }
}
