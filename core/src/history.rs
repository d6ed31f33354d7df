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

use crate::bridge::{Batch, Change, EndReason, GapReason, Txn};
use crate::ops::Op;
use serde::{Deserialize, Serialize};
use std::collections::VecDeque;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

const MAGIC: &[u8; 8] = b"RTHIST02";
/// Header: magic, the position the segment starts after, and the bound of the transaction ids
/// before it (`Inner::xid_bound`).
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

/// What the history holds: one entry per change, gap, end, and clean stop.
#[derive(Serialize, Deserialize, Debug)]
enum Entry<'a> {
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
    /// The worker stopped cleanly after publishing everything up to this position.
    Stop { last_position: u64 },
}

impl Entry<'_> {
    /// The last position the entry accounts for.
    fn position(&self) -> u64 {
        match self {
            Entry::Change { position, .. } => *position,
            Entry::Gap { last, .. } => *last,
            Entry::Ended { last_position, .. } | Entry::Stop { last_position } => *last_position,
        }
    }
}

struct Segment {
    path: PathBuf,
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
    /// The gap entries it holds: (first, last, tables), for `complete` without reading.
    gaps: Vec<(u64, u64, Option<Vec<u32>>)>,
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
}

pub struct History {
    dir: PathBuf,
    inner: Mutex<Inner>,
}

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
        };
        let mut xid_bound = 0;
        for (after, path) in names {
            let Some((segment, stop)) = scan(&path, after, &mut gaps, &mut xid_bound)? else {
                let _ = fs::remove_file(&path);
                continue;
            };
            recovered.last_position = recovered.last_position.max(segment.last);
            recovered.stopped_cleanly = stop;
            segments.push_back(segment);
        }
        let history = History {
            dir: dir.to_path_buf(),
            inner: Mutex::new(Inner {
                segments,
                file: None,
                limits,
                broken: false,
                gaps,
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

    /// Whether reading from `after` through `through` gives everything of table `relid`
    /// with no gap: nothing older than the history, no hole, no gap entry concerning it.
    pub fn complete(&self, after: u64, through: u64, relid: u32) -> bool {
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
        let gaps = inner.gaps.iter().any(|(first, last, tables)| {
            overlaps(*first, *last) && tables.as_ref().is_none_or(|t| t.contains(&relid))
        });
        first.after <= after && !holes && !gaps
    }

    /// The last position it accounts for.
    pub fn last(&self) -> u64 {
        self.inner().segments.back().map_or(0, |s| s.last)
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
            if let Entry::Change { xid, .. } = entry {
                bound = past(bound, xid);
            }
            frame(&mut bytes, &entry)
        };
        match batch {
            // Replays judge what they read by the rules in force then: nothing to keep.
            Batch::Reauthorize { .. } => return Ok(()),
            Batch::Changes(changes) => {
                for c in changes {
                    add(Entry::Change {
                        position: c.position,
                        xid: c.txn.xid,
                        commit_time: &c.txn.commit_time,
                        relid: c.relid,
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
                tables,
            } => add(Entry::Gap {
                reason: *reason as u8,
                first: *first_position,
                last: *last_position,
                tables: tables.clone(),
            })?,
            Batch::Ended {
                relid,
                reason,
                last_position,
            } => add(Entry::Ended {
                relid: *relid,
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
            tables,
            ..
        } = batch
        {
            let gap = (*first_position, *last_position, tables.clone());
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
        result
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
        file.write_all(MAGIC)?;
        file.write_all(&after.to_le_bytes())?;
        file.write_all(&inner.xid_bound.to_le_bytes())?;
        // A segment with this name (an empty one left by a failure) is replaced.
        inner.segments.retain(|s| s.path != path);
        inner.segments.push_back(Segment {
            path,
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
                (s.path.clone(), s.after, start, s.len)
            })
            .collect();
        Reader {
            segments,
            after,
            through,
            floor: inner.segments.front().map(|s| s.after),
            current: None,
            reported: after,
        }
    }
}

fn frame(out: &mut Vec<u8>, entry: &Entry) -> io::Result<()> {
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

/// Check a segment from the start, cutting it at the first torn or corrupt entry: the
/// segment, and whether it ends with a clean stop. `None` if it is not a segment.
fn scan(
    path: &Path,
    named_after: u64,
    gaps: &mut Vec<(u64, u64, Option<Vec<u32>>)>,
    xid_bound: &mut u32,
) -> io::Result<Option<(Segment, bool)>> {
    let mut file = OpenOptions::new().read(true).write(true).open(path)?;
    let mut header = [0u8; HEADER as usize];
    if file.read_exact(&mut header).is_err() || &header[..8] != MAGIC {
        return Ok(None);
    }
    let after = u64::from_le_bytes(header[8..16].try_into().expect("8 bytes"));
    if after != named_after {
        return Ok(None);
    }
    let xid_base = u32::from_le_bytes(header[16..].try_into().expect("4 bytes"));
    *xid_bound = later(*xid_bound, xid_base);
    let written_at = file.metadata()?.modified().unwrap_or(SystemTime::now());
    let mut reader = io::BufReader::new(&mut file);
    let mut segment = Segment {
        path: path.to_path_buf(),
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
        let Ok(entry) = postcard::from_bytes::<Entry>(&buf) else {
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
        if let Entry::Change { xid, .. } = entry {
            *xid_bound = past(*xid_bound, xid);
        }
        segment.last = segment.last.max(entry.position());
        stop = matches!(entry, Entry::Stop { .. });
        if let Entry::Gap {
            first,
            last,
            tables,
            ..
        } = entry
        {
            gaps.push((first, last, tables));
        }
        segment.len += size;
    }
    drop(reader);
    if file.metadata()?.len() != segment.len {
        file.set_len(segment.len)?;
    }
    Ok(Some((segment, stop)))
}

/// Reads entries after a position, across segments; see `History::read`.
pub struct Reader {
    /// (path, starts after, offset to start reading at, bytes to read up to).
    segments: VecDeque<(PathBuf, u64, u64, u64)>,
    after: u64,
    through: u64,
    floor: Option<u64>,
    current: Option<(io::BufReader<io::Take<File>>, u64)>,
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
                return Some(Batch::Gap {
                    reason: GapReason::HistoryExpired,
                    first_position: self.after + 1,
                    last_position: floor.min(self.through),
                    tables: None,
                });
            }
        }
        let mut buf = Vec::new();
        loop {
            if self.reported >= self.through {
                return None;
            }
            if self.current.is_none() {
                let (path, segment_after, start, len) = self.segments.pop_front()?;
                if segment_after > self.reported {
                    // Nothing accounts for the positions between the two.
                    let gap = Batch::Gap {
                        reason: GapReason::HistoryLost,
                        first_position: self.reported + 1,
                        last_position: segment_after.min(self.through),
                        tables: None,
                    };
                    self.reported = segment_after;
                    self.segments.push_front((path, segment_after, start, len));
                    return Some(gap);
                }
                let Ok(mut file) = File::open(&path) else {
                    continue;
                };
                if file.seek(SeekFrom::Start(start)).is_err() {
                    continue;
                }
                self.current = Some((io::BufReader::new(file.take(len - start)), start));
            }
            let (reader, _) = self.current.as_mut().expect("open");
            let Some(_) = read_frame(reader, &mut buf) else {
                self.current = None;
                continue;
            };
            let Ok(entry) = postcard::from_bytes::<Entry>(&buf) else {
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
            relid,
            schema,
            table,
            op,
            new,
            old,
        } => Batch::Changes(vec![Change::new(
            position,
            Arc::new(Txn {
                xid,
                commit_time: commit_time.to_string(),
            }),
            relid,
            Arc::new((schema.to_string(), table.to_string())),
            Op::from_u8(op)?,
            new.map(Into::into),
            old.map(Into::into),
        )]),
        Entry::Gap {
            reason,
            first,
            last,
            tables,
        } => Batch::Gap {
            reason: GapReason::from_u8(reason)?,
            first_position: first,
            last_position: last,
            tables,
        },
        Entry::Ended {
            relid,
            reason,
            last_position,
        } => Batch::Ended {
            relid,
            reason: EndReason::from_u8(reason)?,
            last_position,
        },
        Entry::Stop { .. } => return None,
    })
}

#[cfg(test)]
mod unit {
    use super::*;

    fn change(position: u64, relid: u32) -> Change {
        Change::new(
            position,
            Arc::new(Txn {
                xid: 7,
                commit_time: "2026-11-23T00:00:00Z".into(),
            }),
            relid,
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
            c.txn = Arc::new(Txn {
                xid: xid_of(p),
                commit_time: String::new(),
            });
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
    fn what_is_appended_is_read_back_after_any_position_and_survives_reopening() {
        let dir = dir("read");
        let (history, recovered) = History::open(&dir, ROOMY).unwrap();
        assert_eq!(recovered.last_position, 0);
        history
            .append(&Batch::Changes((101..=110).map(|p| change(p, 1)).collect()))
            .unwrap();
        history
            .append(&Batch::Ended {
                relid: 1,
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
        assert!(history.complete(100, 112, 1) && !history.complete(99, 112, 1));
        history
            .append(&Batch::Gap {
                reason: GapReason::QueueOverflow,
                first_position: 113,
                last_position: 113,
                tables: Some(vec![2]),
            })
            .unwrap();
        assert!(history.complete(100, 113, 1) && !history.complete(100, 113, 2));
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
                stopped_cleanly: true
            }
        );
        assert_eq!(
            positions(history.read(109, 113)),
            ["110", "end 110", "111", "112", "QueueOverflow 113-113"]
        );
        assert!(
            !history.complete(100, 113, 2),
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
                stopped_cleanly: false
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
        assert!(history.complete(0, 2, 1));
        assert!(!history.complete(0, 10, 1));
        assert!(history.complete(9, 10, 1));
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
}
