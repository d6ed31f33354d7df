//! The history of published changes on disk, so that a client can resume from a position.
//!
//! The worker appends every batch here before it hands it to the sessions, so everything a
//! session could have been handed is already readable. Files live in one directory
//! (`$PGDATA/pg_realtime/history`): segments named by the position they start after, each a
//! header and then records `[length u32][crc32 u32][postcard entry]`, appended and never
//! rewritten. Old segments are deleted whole when the history outgrows its size or age.
//!
//! Readers (sessions replaying for a client) take a snapshot of the segment list and read the
//! files themselves; nothing here touches PostgreSQL, so the network threads may read it.
//!
//! What the history cannot account for is said, never skipped: positions older than it holds
//! (`HistoryExpired`), a stretch missing between segments after a failed write or a lost
//! file (`HistoryLost`), and what a worker or server that stopped without writing its `Stop`
//! entry may have lost (`ServerRestart`, written by the next worker).

use crate::change::{Batch, Change, EndReason, GapReason, Topic, Txn};
use crate::ops::Op;
use serde::{Deserialize, Serialize};
use std::collections::VecDeque;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

/// Every segment starts with this and two digits of its format's version.
const MAGIC: &[u8; 6] = b"RTHIST";
/// Header: magic and version, the position the segment starts after, and the bound of the
/// transaction ids before it (`Inner::xid_bound`).
const HEADER: u64 = 20;
/// One index entry per this many bytes of a segment, for seeking to a position.
const INDEX_EVERY: u64 = 64 * 1024;
/// A segment is closed past this share of the size limit, so that dropping the oldest gives
/// back a small part of the history at a time.
const SEGMENTS: u64 = 16;
const SEGMENT_MIN: u64 = 1 << 20;
const SEGMENT_MAX: u64 = 64 << 20;
/// An entry larger than this is taken for garbage when reading.
const ENTRY_MAX: u32 = 1 << 30;

/// The versions of the entry format. Segments are written in the newest; older ones are read
/// as long as a release can, and a segment of a version it does not know is refused (left on
/// disk, reported, its positions a `HistoryLost` gap), never misread.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Format {
    /// Entries name tables by OID only.
    V2,
    /// Entries name topics.
    V3,
    /// Entries may be messages on channels (the entries of V3 are read unchanged).
    V4,
}

impl Format {
    const WRITTEN: Format = Format::V4;

    fn of(header: &[u8]) -> Result<Format, String> {
        match &header[..8] {
            b"RTHIST02" => Ok(Format::V2),
            b"RTHIST03" => Ok(Format::V3),
            b"RTHIST04" => Ok(Format::V4),
            m if m.starts_with(MAGIC) => Err(String::from_utf8_lossy(&m[6..]).into_owned()),
            _ => Err(String::new()),
        }
    }

    fn magic(self) -> &'static [u8; 8] {
        match self {
            Format::V2 => b"RTHIST02",
            Format::V3 => b"RTHIST03",
            Format::V4 => b"RTHIST04",
        }
    }

    /// One entry, whatever the segment's version, in today's terms.
    fn decode(self, bytes: &[u8]) -> Option<Entry<'_>> {
        match self {
            // V3's variants are V4's first ones: a V3 segment holds no `Message`.
            Format::V3 | Format::V4 => postcard::from_bytes(bytes).ok(),
            Format::V2 => postcard::from_bytes::<v2::Entry>(bytes)
                .ok()
                .map(Into::into),
        }
    }
}

/// A topic as an entry stores it.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
enum Key<'a> {
    Table(u32),
    Channel(&'a str),
}

impl Key<'_> {
    fn of(topic: &Topic) -> Key<'_> {
        match topic {
            Topic::Table(relid) => Key::Table(*relid),
            Topic::Channel(name) => Key::Channel(name),
        }
    }

    fn topic(self) -> Topic {
        match self {
            Key::Table(relid) => Topic::Table(relid),
            Key::Channel(name) => Topic::Channel(name.into()),
        }
    }
}

/// What the history holds: one entry per change, gap, end, and clean stop.
#[derive(Serialize, Deserialize, Debug)]
enum Entry<'a> {
    Change {
        position: u64,
        xid: u32,
        #[serde(borrow)]
        commit_time: &'a str,
        #[serde(borrow)]
        topic: Key<'a>,
        schema: &'a str,
        table: &'a str,
        op: u8,
        new: Option<&'a str>,
        old: Option<&'a str>,
    },
    Gap {
        reason: u8,
        first: u64,
        last: u64,
        #[serde(borrow)]
        topics: Option<Vec<Key<'a>>>,
    },
    Ended {
        #[serde(borrow)]
        topic: Key<'a>,
        reason: u8,
        last_position: u64,
    },
    /// The worker stopped cleanly after publishing everything up to this position.
    Stop { last_position: u64 },
    /// A message on a channel (V4).
    Message {
        position: u64,
        xid: u32,
        #[serde(borrow)]
        commit_time: &'a str,
        channel: &'a str,
        event: &'a str,
        sender: u32,
        payload: &'a str,
    },
}

impl Entry<'_> {
    /// The transaction of a change or message.
    fn xid(&self) -> Option<u32> {
        match self {
            Entry::Change { xid, .. } | Entry::Message { xid, .. } => Some(*xid),
            _ => None,
        }
    }

    /// The last position the entry accounts for.
    fn position(&self) -> u64 {
        match self {
            Entry::Change { position, .. } | Entry::Message { position, .. } => *position,
            Entry::Gap { last, .. } => *last,
            Entry::Ended { last_position, .. } | Entry::Stop { last_position } => *last_position,
        }
    }
}

/// The entries of the release before topics, read into today's.
mod v2 {
    use super::Key;
    use serde::{Deserialize, Serialize};

    #[derive(Deserialize, Serialize)]
    pub(super) enum Entry<'a> {
        Change {
            position: u64,
            xid: u32,
            #[serde(borrow)]
            commit_time: &'a str,
            relid: u32,
            schema: &'a str,
            table: &'a str,
            op: u8,
            new: Option<&'a str>,
            old: Option<&'a str>,
        },
        Gap {
            reason: u8,
            first: u64,
            last: u64,
            tables: Option<Vec<u32>>,
        },
        Ended {
            relid: u32,
            reason: u8,
            last_position: u64,
        },
        Stop {
            last_position: u64,
        },
    }

    impl<'a> From<Entry<'a>> for super::Entry<'a> {
        fn from(entry: Entry<'a>) -> super::Entry<'a> {
            match entry {
                Entry::Change {
                    position,
                    xid,
                    commit_time,
                    relid,
                    schema,
                    table,
                    op,
                    new,
                    old,
                } => super::Entry::Change {
                    position,
                    xid,
                    commit_time,
                    topic: Key::Table(relid),
                    schema,
                    table,
                    op,
                    new,
                    old,
                },
                Entry::Gap {
                    reason,
                    first,
                    last,
                    tables,
                } => super::Entry::Gap {
                    reason,
                    first,
                    last,
                    topics: tables.map(|t| t.into_iter().map(Key::Table).collect()),
                },
                Entry::Ended {
                    relid,
                    reason,
                    last_position,
                } => super::Entry::Ended {
                    topic: Key::Table(relid),
                    reason,
                    last_position,
                },
                Entry::Stop { last_position } => super::Entry::Stop { last_position },
            }
        }
    }
}

struct Segment {
    path: PathBuf,
    format: Format,
    /// Positions after this one are in this segment or later ones.
    after: u64,
    /// The last position it accounts for (`after` while empty).
    last: u64,
    /// Bytes written, header included.
    len: u64,
    /// Transaction ids of every change before the segment precede this one (0: unknown).
    xid_base: u32,
    /// (position of the first entry at or after each `INDEX_EVERY` bytes, its offset, the
    /// bound of the transaction ids of every change before it).
    index: Vec<(u64, u64, u32)>,
    written_at: SystemTime,
}

struct Inner {
    segments: VecDeque<Segment>,
    /// The open last segment.
    file: Option<File>,
    limits: Limits,
    /// An append failed: the next starts a new segment, leaving a hole readers report.
    broken: bool,
    /// The gap entries it holds: (first, last, topics), for `complete` without reading.
    gaps: Vec<GapSpan>,
    /// Positions after this one, up to the first segment read, are in segments of a format
    /// this release does not know: a `HistoryLost` gap rather than an expired one.
    refused_after: Option<u64>,
    /// Every change published so far has a transaction id preceding this one (0: unknown):
    /// what lets a snapshot find where the changes it does not contain begin.
    xid_bound: u32,
}

/// `bound` moved past `xid` (ids 0 to 2 are special, never a change's).
fn past(bound: u32, xid: u32) -> u32 {
    later(bound, xid.wrapping_add(1).max(3))
}

/// The later of two transaction ids or bounds (as PostgreSQL compares them, modulo 2^32),
/// 0 meaning unknown.
fn later(a: u32, b: u32) -> u32 {
    match (a, b) {
        (0, x) | (x, 0) => x,
        _ if (b.wrapping_sub(a) as i32) > 0 => b,
        _ => a,
    }
}

/// A gap entry's first and last position and the topics it concerns (`None`: all).
type GapSpan = (u64, u64, Option<Vec<Topic>>);

#[derive(Clone, Copy, Debug)]
pub struct Limits {
    pub bytes: u64,
    pub age: Duration,
}

/// How the previous worker left the history.
#[derive(Debug, PartialEq, Eq)]
pub struct Recovered {
    /// The last position it accounts for (0: empty).
    pub last_position: u64,
    /// It ends with a clean stop.
    pub stopped_cleanly: bool,
    /// Files left unread, each with why (a format this release does not know), to log.
    pub refused: Vec<String>,
}

pub struct History {
    dir: PathBuf,
    inner: Mutex<Inner>,
    /// The last position written, for readers that follow the history as it grows.
    appended: tokio::sync::watch::Sender<u64>,
    /// The latest catalog markers (`Batch::Reauthorize`) as (number, position): not entries
    /// (a replay judges by the rules of its own time), kept for the NATS publisher to place
    /// among them. Several may share a position; each has its own number.
    markers: Mutex<Markers>,
}

/// Catalog markers, and the number the next one takes: the clock in microseconds at start,
/// so that no number repeats across restarts (the stream's duplicate window would drop it).
struct Markers {
    kept: VecDeque<(u64, u64)>,
    next: u64,
}

impl Default for Markers {
    fn default() -> Markers {
        let micros = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.as_micros() as u64);
        Markers {
            kept: VecDeque::new(),
            next: micros,
        }
    }
}

/// Catalog markers kept in memory.
const MARKERS_KEPT: usize = 1024;

impl History {
    /// Open (creating) the history in `dir`, dropping a torn tail left by a crash.
    pub fn open(dir: &Path, limits: Limits) -> io::Result<(Arc<History>, Recovered)> {
        fs::create_dir_all(dir)?;
        let mut names: Vec<(u64, PathBuf)> = fs::read_dir(dir)?
            .filter_map(|e| e.ok())
            .filter_map(|e| {
                let after = u64::from_str_radix(e.file_name().to_str()?, 16).ok()?;
                Some((after, e.path()))
            })
            .collect();
        names.sort();
        let mut segments = VecDeque::new();
        let mut gaps = Vec::new();
        let mut recovered = Recovered {
            last_position: 0,
            stopped_cleanly: false,
            refused: Vec::new(),
        };
        let mut xid_bound = 0;
        let mut refused_after = None;
        for (after, path) in names {
            let (segment, stop) = match scan(&path, after, &mut gaps, &mut xid_bound)? {
                Scanned::Segment(segment, stop) => (segment, stop),
                Scanned::Garbage => {
                    let _ = fs::remove_file(&path);
                    continue;
                }
                Scanned::Unknown(version) => {
                    recovered.refused.push(format!(
                        "{} is in history format {version:?}, which this release cannot read; its changes cannot be resumed from",
                        path.display()
                    ));
                    if segments.is_empty() {
                        refused_after.get_or_insert(after);
                    }
                    continue;
                }
            };
            recovered.last_position = recovered.last_position.max(segment.last);
            recovered.stopped_cleanly = stop;
            segments.push_back(segment);
        }
        let history = History {
            dir: dir.to_path_buf(),
            appended: tokio::sync::watch::Sender::new(recovered.last_position),
            markers: Mutex::default(),
            inner: Mutex::new(Inner {
                segments,
                file: None,
                limits,
                broken: false,
                gaps,
                refused_after,
                xid_bound,
            }),
        };
        Ok((Arc::new(history), recovered))
    }

    fn inner(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn set_limits(&self, limits: Limits) {
        self.inner().limits = limits;
    }

    /// Every change published so far, written or not, has a transaction id before
    /// `next_xid` (the worker says so at start: what a crash lost is covered too).
    pub fn published_before(&self, next_xid: u32) {
        let mut inner = self.inner();
        inner.xid_bound = later(inner.xid_bound, next_xid);
    }

    /// The last position after which every change a snapshot with this `xmin` does not
    /// contain follows: each change up to it has an older transaction id, so the snapshot
    /// saw it. `None` when the history does not reach back that far.
    pub fn before_xid(&self, xmin: u32) -> Option<u64> {
        let inner = self.inner();
        let saw_all = |bound: u32| bound != 0 && (xmin.wrapping_sub(bound) as i32) >= 0;
        let mut found = None;
        for s in &inner.segments {
            let points = std::iter::once((s.after, s.xid_base))
                .chain(s.index.iter().map(|&(p, _, b)| (p.saturating_sub(1), b)));
            for (position, bound) in points {
                // Bounds only grow: past the first that fails, none holds.
                if !saw_all(bound) {
                    return found;
                }
                found = Some(position);
            }
        }
        // And the end: everything written so far.
        match inner.segments.back() {
            Some(s) if saw_all(inner.xid_bound) => Some(s.last),
            _ => found,
        }
    }

    /// The position after which every change or message committed at or after `from` (RFC
    /// 3339 in UTC with microseconds, as `Txn::commit_time`), up to `through`, follows:
    /// where a client that asks for what was committed since a time resumes. With `newest`,
    /// later if need be, so that at most that many entries of the topic follow. Before the
    /// history when it starts at or after `from` (unless it holds everything from position
    /// 0), so that the reader tells what it no longer holds.
    ///
    /// Commit times follow positions, but only nearly (concurrent commits may swap by a few
    /// microseconds): the search halves on the first time of each segment and index stretch,
    /// starts one stretch early, and reads forward to the first entry at or after `from`;
    /// whatever comes after it is included, whatever its time, so nothing is missed.
    pub fn after_time(&self, from: &str, newest: Option<(usize, &Topic)>, through: u64) -> u64 {
        let (points, floor) = {
            let inner = self.inner();
            let points: Vec<u64> = inner
                .segments
                .iter()
                .flat_map(|s| std::iter::once(s.after).chain(s.index.iter().map(|(p, _, _)| p - 1)))
                .filter(|p| *p < through)
                .collect();
            (points, inner.segments.front().map_or(0, |s| s.after))
        };
        let first_time = |after: u64| {
            self.read(after, through).find_map(|batch| match batch {
                Batch::Changes(c) => c.first().map(|c| c.txn.commit_time.clone()),
                _ => None,
            })
        };
        // The last point whose first entry is older than `from`; none: the history's start.
        let older = points.partition_point(|p| first_time(*p).is_some_and(|t| t.as_str() < from));
        let Some(start) = older.checked_sub(1) else {
            return floor.saturating_sub(1);
        };
        let start = points[start.saturating_sub(1)];
        let mut first = None;
        // The positions of the topic's last `n` entries so far.
        let mut kept = VecDeque::new();
        for batch in self.read(start, through) {
            let Batch::Changes(changes) = batch else {
                continue;
            };
            for c in changes {
                if first.is_none() {
                    if c.txn.commit_time.as_str() < from {
                        continue;
                    }
                    first = Some(c.position - 1);
                }
                let Some((n, topic)) = newest else {
                    return c.position - 1;
                };
                if c.topic == *topic {
                    if kept.len() == n {
                        kept.pop_front();
                    }
                    kept.push_back(c.position);
                }
            }
        }
        match (newest, kept.front()) {
            (Some((n, _)), Some(oldest)) if kept.len() == n => oldest - 1,
            _ => first.unwrap_or(through),
        }
    }

    /// Start an empty history at `position`: it accounts for what comes after.
    pub fn begin(&self, position: u64) -> io::Result<()> {
        let mut inner = self.inner();
        if inner.segments.is_empty() {
            self.start_segment(&mut inner, position)?;
        }
        Ok(())
    }

    /// Positions after this one are all accounted for (0 when the history is empty).
    pub fn floor(&self) -> u64 {
        self.inner().segments.front().map_or(0, |s| s.after)
    }

    /// Whether reading from `after` through `through` gives everything of `topic` with no
    /// gap: nothing older than the history, no hole, no gap entry concerning it.
    pub fn complete(&self, after: u64, through: u64, topic: &Topic) -> bool {
        let inner = self.inner();
        let Some(first) = inner.segments.front() else {
            return false;
        };
        let overlaps = |first: u64, last: u64| first <= through && last > after;
        let holes = inner
            .segments
            .iter()
            .zip(inner.segments.iter().skip(1))
            .any(|(a, b)| b.after > a.last && overlaps(a.last + 1, b.after));
        let gaps = inner.gaps.iter().any(|(first, last, topics)| {
            overlaps(*first, *last) && topics.as_ref().is_none_or(|t| t.contains(topic))
        });
        first.after <= after && !holes && !gaps
    }

    /// The last position it accounts for.
    pub fn last(&self) -> u64 {
        self.inner().segments.back().map_or(0, |s| s.last)
    }

    /// When its oldest file was begun (or, where the file system keeps no birth time, last
    /// written): how far back clients can resume, in time.
    pub fn oldest_written(&self) -> Option<std::time::SystemTime> {
        let path = self.inner().segments.front()?.path.clone();
        let meta = fs::metadata(path).ok()?;
        meta.created().or_else(|_| meta.modified()).ok()
    }

    /// Bytes on disk.
    pub fn bytes(&self) -> u64 {
        self.inner().segments.iter().map(|s| s.len).sum()
    }

    /// Append what the worker publishes.
    pub fn append(&self, batch: &Batch) -> io::Result<()> {
        let mut bytes = Vec::new();
        let mut positions = Vec::new();
        let mut bound = self.inner().xid_bound;
        let mut add = |entry: Entry| -> io::Result<()> {
            positions.push((bytes.len() as u64, entry.position(), bound));
            if let Some(xid) = entry.xid() {
                bound = past(bound, xid);
            }
            frame(&mut bytes, &entry)
        };
        match batch {
            // Replays judge what they read by the rules in force then: no entry, a marker.
            Batch::Reauthorize { last_position } => {
                let mut markers = self.markers.lock().unwrap_or_else(|e| e.into_inner());
                if markers.kept.len() == MARKERS_KEPT {
                    markers.kept.pop_front();
                }
                let number = markers.next;
                markers.next += 1;
                markers.kept.push_back((number, *last_position));
                drop(markers);
                self.appended.send_modify(|_| ());
                return Ok(());
            }
            Batch::Changes(changes) => {
                for c in changes {
                    if c.op == Op::Message {
                        add(Entry::Message {
                            position: c.position,
                            xid: c.txn.xid,
                            commit_time: &c.txn.commit_time,
                            channel: &c.names.0,
                            event: &c.names.1,
                            sender: c.sender,
                            payload: c.new.as_deref().unwrap_or("null"),
                        })?;
                        continue;
                    }
                    add(Entry::Change {
                        position: c.position,
                        xid: c.txn.xid,
                        commit_time: &c.txn.commit_time,
                        topic: Key::of(&c.topic),
                        schema: &c.names.0,
                        table: &c.names.1,
                        op: c.op as u8,
                        new: c.new.as_deref(),
                        old: c.old.as_deref(),
                    })?
                }
            }
            Batch::Gap {
                reason,
                first_position,
                last_position,
                topics,
            } => add(Entry::Gap {
                reason: *reason as u8,
                first: *first_position,
                last: *last_position,
                topics: topics.as_ref().map(|t| t.iter().map(Key::of).collect()),
            })?,
            Batch::Ended {
                topic,
                reason,
                last_position,
            } => add(Entry::Ended {
                topic: Key::of(topic),
                reason: *reason as u8,
                last_position: *last_position,
            })?,
        }
        // A segment this write starts takes the bound from before these changes; a write that
        // fails still counts them (they were published).
        let written = self.write(&bytes, &positions, batch.first_position());
        self.inner().xid_bound = bound;
        written?;
        if let Batch::Gap {
            first_position,
            last_position,
            topics,
            ..
        } = batch
        {
            let gap = (*first_position, *last_position, topics.clone());
            self.inner().gaps.push(gap);
        }
        Ok(())
    }

    /// Record that the worker stopped cleanly after `last_position`.
    pub fn stop(&self, last_position: u64) -> io::Result<()> {
        let mut bytes = Vec::new();
        frame(&mut bytes, &Entry::Stop { last_position })?;
        let bound = self.inner().xid_bound;
        self.write(&bytes, &[(0, last_position, bound)], last_position)
    }

    /// Write framed entries (each at an offset in `bytes`, with its position); `first` is the
    /// first position they account for.
    fn write(&self, bytes: &[u8], positions: &[(u64, u64, u32)], first: u64) -> io::Result<()> {
        let Some(&(_, last, _)) = positions.last() else {
            return Ok(());
        };
        let mut inner = self.inner();
        let result = self.write_locked(&mut inner, bytes, positions, first, last);
        if result.is_err() {
            inner.broken = true;
            inner.file = None;
        }
        drop(inner);
        self.appended.send_replace(last);
        result
    }

    /// The catalog markers kept, numbered after `after`, in order, as (number, position).
    pub fn markers_after(&self, after: u64) -> Vec<(u64, u64)> {
        let markers = self.markers.lock().unwrap_or_else(|e| e.into_inner());
        markers
            .kept
            .iter()
            .copied()
            .filter(|&(n, _)| n > after)
            .collect()
    }

    /// Told the last position written each time the history grows (or a marker is added).
    pub fn appended(&self) -> tokio::sync::watch::Receiver<u64> {
        self.appended.subscribe()
    }

    fn write_locked(
        &self,
        inner: &mut Inner,
        bytes: &[u8],
        positions: &[(u64, u64, u32)],
        first: u64,
        last: u64,
    ) -> io::Result<()> {
        let segment_max = (inner.limits.bytes / SEGMENTS).clamp(SEGMENT_MIN, SEGMENT_MAX);
        let full = inner.segments.back().is_none_or(|s| s.len >= segment_max);
        if inner.broken || inner.file.is_none() || full {
            // A new segment starts just before what it is given: after what the last one
            // holds, unless positions were published and not written in between (a failed
            // write, a worker that died), which readers then report as a hole.
            self.start_segment(inner, first.saturating_sub(1))?;
            inner.broken = false;
        }
        let file = inner.file.as_mut().expect("a segment is open");
        file.write_all(bytes)?;
        let segment = inner.segments.back_mut().expect("a segment is open");
        for &(offset, position, bound) in positions {
            let at = segment.len + offset;
            if segment
                .index
                .last()
                .is_none_or(|(_, o, _)| at >= o + INDEX_EVERY)
            {
                segment.index.push((position, at, bound));
            }
        }
        segment.len += bytes.len() as u64;
        segment.last = segment.last.max(last);
        segment.written_at = SystemTime::now();
        Self::retire(inner);
        Ok(())
    }

    fn start_segment(&self, inner: &mut Inner, after: u64) -> io::Result<()> {
        let path = self.dir.join(format!("{after:016x}"));
        let mut file = OpenOptions::new()
            .create(true)
            .truncate(true)
            .write(true)
            .open(&path)?;
        file.write_all(Format::WRITTEN.magic())?;
        file.write_all(&after.to_le_bytes())?;
        file.write_all(&inner.xid_bound.to_le_bytes())?;
        // A segment with this name (an empty one left by a failure) is replaced.
        inner.segments.retain(|s| s.path != path);
        inner.segments.push_back(Segment {
            path,
            format: Format::WRITTEN,
            after,
            last: after,
            len: HEADER,
            xid_base: inner.xid_bound,
            index: Vec::new(),
            written_at: SystemTime::now(),
        });
        inner.file = Some(file);
        Ok(())
    }

    /// Delete the oldest segments while the history is over its size or age; the open one stays.
    fn retire(inner: &mut Inner) {
        let now = SystemTime::now();
        while inner.segments.len() > 1 {
            let total: u64 = inner.segments.iter().map(|s| s.len).sum();
            let oldest = &inner.segments[0];
            let expired = now
                .duration_since(oldest.written_at)
                .is_ok_and(|age| age > inner.limits.age);
            if total <= inner.limits.bytes && !expired {
                break;
            }
            let _ = fs::remove_file(&oldest.path);
            inner.segments.pop_front();
            let floor = inner.segments[0].after;
            inner.gaps.retain(|(_, last, _)| *last > floor);
        }
    }

    /// The stretch of positions that holds `position`, as the index divides the files (about
    /// `INDEX_EVERY` bytes each, however sparse the positions): from the indexed position at
    /// or before it through the one before the next; `None` at the end of the history, where
    /// it is still growing. Readers that share what they read back cut the history here, so
    /// that they all cut it alike.
    pub fn stretch(&self, position: u64) -> (u64, Option<u64>) {
        let inner = self.inner();
        let segments = &inner.segments;
        let holding = segments.partition_point(|s| s.after < position);
        let Some(segment) = holding.checked_sub(1).map(|i| &segments[i]) else {
            // Older than the history: up to where it begins.
            return (position, segments.front().map(|s| s.after));
        };
        let indexed = segment.index.partition_point(|(p, _, _)| *p <= position);
        let from = match indexed {
            0 => segment.after + 1,
            k => segment.index[k - 1].0,
        };
        let through = match segment.index.get(indexed) {
            Some((next, _, _)) => Some(next - 1),
            None => segments.get(holding).map(|next| next.after),
        };
        (from, through)
    }

    /// Everything after position `after` up to and including `through`, in order. Reads
    /// happen as the iterator is consumed (blocking file reads).
    pub fn read(&self, after: u64, through: u64) -> Reader {
        let inner = self.inner();
        let segments = inner
            .segments
            .iter()
            .filter(|s| s.last > after || s.after >= after)
            .map(|s| {
                let start = s
                    .index
                    .iter()
                    .take_while(|(position, _, _)| *position <= after)
                    .last()
                    .map_or(HEADER, |(_, offset, _)| *offset);
                (s.path.clone(), s.format, s.after, start, s.len)
            })
            .collect();
        Reader {
            segments,
            after,
            through,
            floor: inner.segments.front().map(|s| s.after),
            refused_after: inner.refused_after,
            current: None,
            reported: after,
        }
    }
}

fn frame(out: &mut Vec<u8>, entry: &impl Serialize) -> io::Result<()> {
    let payload = postcard::to_stdvec(entry).map_err(io::Error::other)?;
    out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    out.extend_from_slice(&crc32fast::hash(&payload).to_le_bytes());
    out.extend_from_slice(&payload);
    Ok(())
}

/// Read one framed entry's payload into `buf`; `None` at the end or at a torn or corrupt one.
fn read_frame(file: &mut impl Read, buf: &mut Vec<u8>) -> Option<u64> {
    let mut head = [0u8; 8];
    file.read_exact(&mut head).ok()?;
    let len = u32::from_le_bytes(head[..4].try_into().ok()?);
    let crc = u32::from_le_bytes(head[4..].try_into().ok()?);
    if len > ENTRY_MAX {
        return None;
    }
    buf.resize(len as usize, 0);
    file.read_exact(buf).ok()?;
    (crc32fast::hash(buf) == crc).then_some(8 + len as u64)
}

/// What a file of the history directory turned out to be.
enum Scanned {
    /// A segment, and whether it ends with a clean stop.
    Segment(Segment, bool),
    /// A segment of a version this release does not read.
    Unknown(String),
    /// Not a segment (an empty file left by a crash).
    Garbage,
}

/// Check a segment from the start, cutting it at the first torn or corrupt entry.
fn scan(
    path: &Path,
    named_after: u64,
    gaps: &mut Vec<GapSpan>,
    xid_bound: &mut u32,
) -> io::Result<Scanned> {
    let mut file = OpenOptions::new().read(true).write(true).open(path)?;
    let mut header = [0u8; HEADER as usize];
    if file.read_exact(&mut header).is_err() {
        return Ok(Scanned::Garbage);
    }
    let format = match Format::of(&header) {
        Ok(format) => format,
        Err(version) if !version.is_empty() => return Ok(Scanned::Unknown(version)),
        Err(_) => return Ok(Scanned::Garbage),
    };
    let after = u64::from_le_bytes(header[8..16].try_into().expect("8 bytes"));
    if after != named_after {
        return Ok(Scanned::Garbage);
    }
    let xid_base = u32::from_le_bytes(header[16..].try_into().expect("4 bytes"));
    *xid_bound = later(*xid_bound, xid_base);
    let written_at = file.metadata()?.modified().unwrap_or(SystemTime::now());
    let mut reader = io::BufReader::new(&mut file);
    let mut segment = Segment {
        path: path.to_path_buf(),
        format,
        after,
        last: after,
        len: HEADER,
        xid_base,
        index: Vec::new(),
        written_at,
    };
    let mut stop = false;
    let mut buf = Vec::new();
    while let Some(size) = read_frame(&mut reader, &mut buf) {
        let Some(entry) = format.decode(&buf) else {
            break;
        };
        if segment
            .index
            .last()
            .is_none_or(|(_, o, _)| segment.len >= o + INDEX_EVERY)
        {
            segment
                .index
                .push((entry.position(), segment.len, *xid_bound));
        }
        if let Some(xid) = entry.xid() {
            *xid_bound = past(*xid_bound, xid);
        }
        segment.last = segment.last.max(entry.position());
        stop = matches!(entry, Entry::Stop { .. });
        if let Entry::Gap {
            first,
            last,
            topics,
            ..
        } = entry
        {
            let topics = topics.map(|t| t.into_iter().map(Key::topic).collect());
            gaps.push((first, last, topics));
        }
        segment.len += size;
    }
    drop(reader);
    if file.metadata()?.len() != segment.len {
        file.set_len(segment.len)?;
    }
    Ok(Scanned::Segment(segment, stop))
}

/// Reads entries after a position, across segments; see `History::read`.
pub struct Reader {
    /// (path, format, starts after, offset to start reading at, bytes to read up to).
    segments: VecDeque<(PathBuf, Format, u64, u64, u64)>,
    after: u64,
    through: u64,
    floor: Option<u64>,
    refused_after: Option<u64>,
    current: Option<(io::BufReader<io::Take<File>>, Format)>,
    /// The last position accounted for so far: a segment starting later leaves a hole.
    reported: u64,
}

impl Iterator for Reader {
    /// One change per `Batch::Changes`, or a gap or an end.
    type Item = Batch;

    fn next(&mut self) -> Option<Batch> {
        // Older than the history: say so first.
        if let Some(floor) = self.floor.take() {
            if self.after < floor {
                self.reported = floor;
                // What a segment this release could not read held is lost, not expired.
                let reason = match self.refused_after {
                    Some(refused) if refused <= self.after => GapReason::HistoryLost,
                    _ => GapReason::HistoryExpired,
                };
                return Some(Batch::Gap {
                    reason,
                    first_position: self.after + 1,
                    last_position: floor.min(self.through),
                    topics: None,
                });
            }
        }
        let mut buf = Vec::new();
        loop {
            // Reading goes on at `through` itself: an end shares its position with the change
            // before it, and comes after it.
            if self.current.is_none() {
                let (path, format, segment_after, start, len) = self.segments.pop_front()?;
                if segment_after > self.reported && self.reported < self.through {
                    // Nothing accounts for the positions between the two.
                    let gap = Batch::Gap {
                        reason: GapReason::HistoryLost,
                        first_position: self.reported + 1,
                        last_position: segment_after.min(self.through),
                        topics: None,
                    };
                    self.reported = segment_after;
                    self.segments
                        .push_front((path, format, segment_after, start, len));
                    return Some(gap);
                }
                // It holds only later positions.
                if segment_after >= self.through {
                    return None;
                }
                let Ok(mut file) = File::open(&path) else {
                    continue;
                };
                if file.seek(SeekFrom::Start(start)).is_err() {
                    continue;
                }
                self.current = Some((io::BufReader::new(file.take(len - start)), format));
            }
            let (reader, format) = self.current.as_mut().expect("open");
            let format = *format;
            let Some(_) = read_frame(reader, &mut buf) else {
                self.current = None;
                continue;
            };
            let Some(entry) = format.decode(&buf) else {
                self.current = None;
                continue;
            };
            let position = entry.position();
            if position <= self.after {
                continue;
            }
            if position > self.through {
                self.reported = self.through;
                return None;
            }
            self.reported = self.reported.max(position);
            if let Some(item) = replayed(entry) {
                return Some(item);
            }
        }
    }
}

fn replayed(entry: Entry) -> Option<Batch> {
    Some(match entry {
        Entry::Change {
            position,
            xid,
            commit_time,
            topic,
            schema,
            table,
            op,
            new,
            old,
        } => Batch::Changes(vec![Change::new(
            position,
            Arc::new(Txn::new(xid, commit_time.to_string())),
            topic.topic(),
            Arc::new((schema.to_string(), table.to_string())),
            Op::from_u8(op)?,
            new.map(Into::into),
            old.map(Into::into),
        )]),
        Entry::Gap {
            reason,
            first,
            last,
            topics,
        } => Batch::Gap {
            reason: GapReason::from_u8(reason)?,
            first_position: first,
            last_position: last,
            topics: topics.map(|t| t.into_iter().map(Key::topic).collect()),
        },
        Entry::Ended {
            topic,
            reason,
            last_position,
        } => Batch::Ended {
            topic: topic.topic(),
            reason: EndReason::from_u8(reason)?,
            last_position,
        },
        Entry::Message {
            position,
            xid,
            commit_time,
            channel,
            event,
            sender,
            payload,
        } => Batch::Changes(vec![Change::message(
            position,
            Arc::new(Txn::new(xid, commit_time.to_string())),
            Arc::new((channel.to_string(), event.to_string())),
            sender,
            payload.into(),
        )]),
        Entry::Stop { .. } => return None,
    })
}

#[cfg(test)]
mod unit {
    use super::*;

    fn change(position: u64, relid: u32) -> Change {
        Change::new(
            position,
            Arc::new(Txn::new(7, "2026-11-23T00:00:00Z".into())),
            Topic::Table(relid),
            Arc::new(("public".into(), "t".into())),
            Op::Insert,
            Some(format!("{{\"id\":{position}}}").into()),
            None,
        )
    }

    fn positions(reader: Reader) -> Vec<String> {
        reader
            .map(|b| match b {
                Batch::Changes(c) => c[0].position.to_string(),
                Batch::Gap {
                    reason,
                    first_position,
                    last_position,
                    ..
                } => format!("{reason:?} {first_position}-{last_position}"),
                Batch::Ended { last_position, .. } => format!("end {last_position}"),
                Batch::Reauthorize { last_position } => format!("reauthorize {last_position}"),
            })
            .collect()
    }

    fn dir(name: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("realtime_history_{name}_{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        dir
    }

    const ROOMY: Limits = Limits {
        bytes: 1 << 30,
        age: Duration::from_secs(3600),
    };

    #[test]
    fn a_read_through_a_position_gets_every_entry_at_it() {
        let (history, _) = History::open(&dir("through"), ROOMY).unwrap();
        history.begin(0).unwrap();
        for p in 1..=3 {
            history.append(&Batch::Changes(vec![change(p, 1)])).unwrap();
        }
        let ended = |last_position| Batch::Ended {
            topic: Topic::Table(1),
            reason: EndReason::Dropped,
            last_position,
        };
        history.append(&ended(3)).unwrap();
        history.append(&Batch::Changes(vec![change(4, 2)])).unwrap();
        assert_eq!(positions(history.read(0, 3)), ["1", "2", "3", "end 3"]);
        assert_eq!(positions(history.read(2, 3)), ["3", "end 3"]);
        assert_eq!(positions(history.read(3, 4)), ["4"]);
    }

    #[test]
    fn a_snapshot_finds_where_the_changes_it_did_not_see_begin_even_after_reopening() {
        let dir = dir("xid");
        let (history, _) = History::open(&dir, ROOMY).unwrap();
        history.published_before(1000);
        history.begin(100).unwrap();
        // One change per position; big enough rows that index points fall every few changes.
        // Transaction ids grow with positions but not strictly: a long transaction (id 1005)
        // commits late, at position 140.
        let xid_of = |p: u64| if p == 140 { 1005 } else { 1000 + p as u32 };
        for p in 101..=200u64 {
            let mut c = change(p, 1);
            c.new = Some(format!("{{\"pad\":\"{}\"}}", "x".repeat(20_000)).into());
            c.txn = Arc::new(Txn::new(xid_of(p), String::new()));
            history.append(&Batch::Changes(vec![c])).unwrap();
        }
        let check = |history: &History| {
            assert_eq!(history.before_xid(999), None, "older than the history");
            assert_eq!(history.before_xid(1000), Some(100));
            for xmin in [1050u32, 1120, 1190, 1201] {
                let after = history.before_xid(xmin).unwrap();
                // Every change up to it is older than xmin (the snapshot saw it) ...
                assert!((101..=after).all(|p| xid_of(p) < xmin), "{xmin}: {after}");
                // ... and it is close: at most one index stretch (3 changes here) back.
                let first_unseen = (101..=200).find(|p| xid_of(*p) >= xmin).unwrap_or(201);
                assert!(
                    after + 4 >= first_unseen,
                    "{xmin}: {after} vs {first_unseen}"
                );
            }
        };
        check(&history);
        drop(history);
        let (history, _) = History::open(&dir, ROOMY).unwrap();
        check(&history);
    }

    #[test]
    fn a_time_finds_where_what_was_committed_since_then_begins() {
        let (history, _) = History::open(&dir("time"), ROOMY).unwrap();
        history.begin(0).unwrap();
        // One change a millisecond, on tables 1 and 2 in turn, rows big enough that index
        // points fall every few changes; positions 150 and 151 committed in swapped order.
        let time_of = |p: u64| {
            let p = match p {
                150 => 151,
                151 => 150,
                p => p,
            };
            format!("2026-12-03T00:00:{:02}.{:03}000Z", p / 1000, p % 1000)
        };
        for p in 1..=300u64 {
            let mut c = change(p, 1 + p as u32 % 2);
            c.new = Some(format!("{{\"pad\":\"{}\"}}", "x".repeat(20_000)).into());
            c.txn = Arc::new(Txn::new(1000 + p as u32, time_of(p)));
            history.append(&Batch::Changes(vec![c])).unwrap();
        }
        let at = |ms: u64| time_of(ms);
        for ms in [2, 40, 149, 150, 151, 152, 299] {
            // Resumes before the first entry committed at or after it; all later ones follow.
            let after = history.after_time(&at(ms), None, 300);
            let first = (1..=300).find(|p| time_of(*p) >= at(ms)).unwrap();
            assert_eq!(after, first - 1, "{ms}");
        }
        assert_eq!(history.after_time(&at(1), None, 300), 0);
        assert_eq!(
            history.after_time("2026-12-03T00:01:00.000000Z", None, 300),
            300
        );
        assert_eq!(history.after_time(&at(100), None, 120), 99);
        // The newest 5 of table 1 (even positions) from ms 200: 292 to 300.
        let newest = |n, ms| history.after_time(&at(ms), Some((n, &Topic::Table(1))), 300);
        assert_eq!(newest(5, 200), 291);
        assert_eq!(
            newest(1000, 200),
            199,
            "fewer than asked: all since the time"
        );
        // A history that starts later than asked says so: before its start.
        let later = dir("time_later");
        let (history, _) = History::open(&later, ROOMY).unwrap();
        history.begin(500).unwrap();
        let mut c = change(501, 1);
        c.txn = Arc::new(Txn::new(1, at(10)));
        history.append(&Batch::Changes(vec![c])).unwrap();
        assert_eq!(history.after_time(&at(5), None, 501), 499);
        assert_eq!(history.after_time(&at(10), None, 501), 499);
    }

    #[test]
    fn messages_are_read_back_as_written() {
        let dir = dir("messages");
        let (history, _) = History::open(&dir, ROOMY).unwrap();
        let txn = Arc::new(Txn::new(1234, "2026-12-02T00:00:00.000000Z".into()));
        let names = Arc::new(("orders".to_string(), "notify".to_string()));
        let message = Change::message(7, txn, names, 4242, r#"{"id":1}"#.into());
        history
            .append(&Batch::Changes(vec![change(6, 1), message]))
            .unwrap();
        drop(history);
        let (history, _) = History::open(&dir, ROOMY).unwrap();
        let mut read = history.read(5, 7);
        let Some(Batch::Changes(first)) = read.next() else {
            panic!("the row change first")
        };
        assert_eq!(first[0].op, Op::Insert);
        let Some(Batch::Changes(second)) = read.next() else {
            panic!("then the message")
        };
        let m = &second[0];
        assert_eq!(
            (m.position, m.op, m.txn.xid, m.sender),
            (7, Op::Message, 1234, 4242)
        );
        assert_eq!(m.topic, Topic::Channel("orders".into()));
        assert_eq!(&*m.names, &("orders".to_string(), "notify".to_string()));
        assert_eq!(m.new.as_deref(), Some(r#"{"id":1}"#));
        assert!(history.complete(5, 7, &Topic::Channel("orders".into())));
    }

    #[test]
    fn what_is_appended_is_read_back_after_any_position_and_survives_reopening() {
        let dir = dir("read");
        let (history, recovered) = History::open(&dir, ROOMY).unwrap();
        assert_eq!(recovered.last_position, 0);
        history
            .append(&Batch::Changes((101..=110).map(|p| change(p, 1)).collect()))
            .unwrap();
        history
            .append(&Batch::Ended {
                topic: Topic::Table(1),
                reason: EndReason::Dropped,
                last_position: 110,
            })
            .unwrap();
        history
            .append(&Batch::Changes((111..=112).map(|p| change(p, 2)).collect()))
            .unwrap();
        assert_eq!(history.floor(), 100);
        assert_eq!(
            positions(history.read(108, 111)),
            ["109", "110", "end 110", "111"]
        );
        assert_eq!(positions(history.read(112, 112)), Vec::<String>::new());
        assert!(
            history.complete(100, 112, &Topic::Table(1))
                && !history.complete(99, 112, &Topic::Table(1))
        );
        history
            .append(&Batch::Gap {
                reason: GapReason::QueueOverflow,
                first_position: 113,
                last_position: 113,
                topics: Some(vec![Topic::Table(2)]),
            })
            .unwrap();
        assert!(
            history.complete(100, 113, &Topic::Table(1))
                && !history.complete(100, 113, &Topic::Table(2))
        );
        // Older than the history: a gap first, then everything.
        let all = positions(history.read(50, 112));
        assert_eq!(all[0], "HistoryExpired 51-100");
        assert_eq!(all.len(), 1 + 12 + 1);
        history.stop(113).unwrap();
        drop(history);
        let (history, recovered) = History::open(&dir, ROOMY).unwrap();
        assert_eq!(
            recovered,
            Recovered {
                last_position: 113,
                stopped_cleanly: true,
                refused: Vec::new(),
            }
        );
        assert_eq!(
            positions(history.read(109, 113)),
            ["110", "end 110", "111", "112", "QueueOverflow 113-113"]
        );
        assert!(
            !history.complete(100, 113, &Topic::Table(2)),
            "gaps are found again on opening"
        );
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_torn_tail_is_cut_and_a_failed_stretch_is_a_hole() {
        let dir = dir("torn");
        let (history, _) = History::open(&dir, ROOMY).unwrap();
        history
            .append(&Batch::Changes((1..=3).map(|p| change(p, 1)).collect()))
            .unwrap();
        drop(history);
        // A crash in the middle of the last entry.
        let path = fs::read_dir(&dir).unwrap().next().unwrap().unwrap().path();
        let len = fs::metadata(&path).unwrap().len();
        OpenOptions::new()
            .write(true)
            .open(&path)
            .unwrap()
            .set_len(len - 3)
            .unwrap();
        let (history, recovered) = History::open(&dir, ROOMY).unwrap();
        assert_eq!(
            recovered,
            Recovered {
                last_position: 2,
                stopped_cleanly: false,
                refused: Vec::new(),
            }
        );
        // The next worker starts a segment after what it published since: 3..=9 are a hole.
        history
            .append(&Batch::Changes(vec![change(10, 1)]))
            .unwrap();
        assert_eq!(
            positions(history.read(0, 10)),
            ["1", "2", "HistoryLost 3-9", "10"]
        );
        assert!(history.complete(0, 2, &Topic::Table(1)));
        assert!(!history.complete(0, 10, &Topic::Table(1)));
        assert!(history.complete(9, 10, &Topic::Table(1)));
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn old_segments_go_when_the_history_outgrows_its_size() {
        let dir = dir("size");
        let limits = Limits {
            bytes: 4 * SEGMENT_MIN,
            age: Duration::from_secs(3600),
        };
        let (history, _) = History::open(&dir, limits).unwrap();
        let payload = "x".repeat(10_000);
        for p in 1..=2_000u64 {
            let mut c = change(p, 1);
            c.new = Some(payload.clone().into());
            history.append(&Batch::Changes(vec![c])).unwrap();
        }
        assert!(
            history.bytes() <= 4 * SEGMENT_MIN + SEGMENT_MIN / 4,
            "{}",
            history.bytes()
        );
        let floor = history.floor();
        assert!(floor > 1000, "old positions were dropped: {floor}");
        let read = positions(history.read(0, 2_000));
        assert_eq!(read[0], format!("HistoryExpired 1-{floor}"));
        assert_eq!(read.len() as u64, 1 + 2_000 - floor);
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn segments_of_the_previous_format_are_read_and_unknown_ones_refused() {
        let dir = dir("formats");
        fs::create_dir_all(&dir).unwrap();
        let segment = |magic: &[u8], after: u64, entries: &[v2::Entry]| {
            let mut bytes = magic.to_vec();
            bytes.extend_from_slice(&after.to_le_bytes());
            bytes.extend_from_slice(&0u32.to_le_bytes());
            for entry in entries {
                frame(&mut bytes, entry).unwrap();
            }
            fs::write(dir.join(format!("{after:016x}")), bytes).unwrap();
        };
        // A newer release's segment, then one of the release before topics.
        segment(b"RTHIST99", 0, &[]);
        let change = v2::Entry::Change {
            position: 11,
            xid: 7,
            commit_time: "2026-11-23T00:00:00Z",
            relid: 5,
            schema: "public",
            table: "t",
            op: Op::Insert as u8,
            new: Some("{}"),
            old: None,
        };
        let gap = v2::Entry::Gap {
            reason: GapReason::QueueOverflow as u8,
            first: 12,
            last: 12,
            tables: Some(vec![5]),
        };
        segment(b"RTHIST02", 10, &[change, gap]);
        let (history, recovered) = History::open(&dir, ROOMY).unwrap();
        assert_eq!(recovered.last_position, 12);
        assert_eq!(recovered.refused.len(), 1, "{:?}", recovered.refused);
        assert!(recovered.refused[0].contains("\"99\""));
        assert!(dir.join(format!("{:016x}", 0)).exists(), "left for the DBA");
        // What the refused segment held is lost, not expired; the old one reads as topics.
        assert_eq!(
            positions(history.read(0, 12)),
            ["HistoryLost 1-10", "11", "QueueOverflow 12-12"]
        );
        let mut read = history.read(10, 12);
        let Some(Batch::Changes(c)) = read.next() else {
            panic!("a change")
        };
        assert_eq!(c[0].topic, Topic::Table(5));
        assert!(!history.complete(10, 12, &Topic::Table(5)));
        assert!(history.complete(10, 12, &Topic::Table(6)));
        // New entries go to a segment of today's format.
        history
            .append(&Batch::Changes(vec![super::unit::change(13, 5)]))
            .unwrap();
        let (again, _) = History::open(&dir, ROOMY).unwrap();
        assert_eq!(positions(again.read(12, 13)), ["13"]);
    }
}
