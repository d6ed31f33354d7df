//! The change queue: a byte ring guarded by one LWLock, in a file every process maps (`file`).
//!
//! Writers reserve one record per transaction at pre-commit and mark it committed (or aborted)
//! in place at commit; the background worker drains whole records, stopping at the first one
//! still pending, so records leave the queue in the order they were reserved. The lock is held
//! only while bytes are copied.
//! A record's space is given back only once the worker has written its changes to the history
//! (`release`), so after a crash, or when a new worker starts, reading resumes at the first
//! record not yet written (`rewind`): nothing committed is lost, and what was written twice is
//! recognised by its transaction id and left out.
//! A writer that finds no room in the ring never waits and never errors: its record goes to the
//! overflow file (`overflow`), and only if the disk refuses it too does its transaction become
//! part of a pending gap, written into the stream (in order) as soon as there is room again.

use crate::event::{
    gap_body, pending_header, record_header, spill_path, RecordKind, COMMIT_TIME_AT,
    RECORD_HEADER_LEN,
};
use pgrx::pg_sys;
use std::ptr;

mod file;
mod overflow;
mod ring;

/// Set in the offsets of records in the overflow file (ring offsets never reach it).
const OVERFLOW: u64 = 1 << 63;

const TRANCHE: &std::ffi::CStr = c"realtime_ext";

/// The first bytes of the queue file; a new layout of `Header` needs a new one.
const MAGIC: [u8; 8] = *b"rtqueue1";

#[repr(C)]
struct Header {
    magic: [u8; 8],
    /// The boot the file was written in (`file::boot_id`), and the file's inode.
    boot: [u8; 36],
    inode: u64,
    lock: *mut pg_sys::LWLock,
    capacity: u64,
    /// Bytes ever written / read by the worker / written to the history by it. Offsets are
    /// taken modulo capacity; `head - kept` is in use.
    head: u64,
    tail: u64,
    kept: u64,
    /// The overflow file's logical offsets, which only grow: written, read, kept (as in the
    /// ring), and the offset of its first byte. `overflow_head > overflow_kept`: writers
    /// append there.
    overflow_head: u64,
    overflow_tail: u64,
    overflow_kept: u64,
    overflow_base: u64,
    /// The last position written to the history from records before `kept`; 0 while nothing
    /// has been since the queue started empty.
    kept_position: u64,
    /// Where the ring and the overflow file ended when the server started: a record before
    /// these that is still pending lost its writer to the restart.
    started_at: u64,
    overflow_started_at: u64,
    pending_gap_txns: u64,
    pending_gap_events: u64,
    lost_txns_total: u64,
    /// Next event position; lives here so that it keeps increasing across worker restarts.
    next_position: u64,
    worker_latch: *mut pg_sys::Latch,
    /// Whether committing writers set the worker's latch. Off while no client is subscribed:
    /// then nobody waits for low latency and the worker drains on a timer instead, sparing
    /// every commit a cross-process wake-up (measured: 20% of single-writer throughput).
    wake_on_commit: bool,
}

impl Header {
    /// An empty queue of `capacity` bytes whose positions start at `next_position`.
    fn new(lock: *mut pg_sys::LWLock, capacity: u64, next_position: u64, inode: u64) -> Header {
        Header {
            magic: MAGIC,
            boot: file::boot_id(),
            inode,
            lock,
            capacity,
            head: 0,
            tail: 0,
            kept: 0,
            overflow_head: 0,
            overflow_tail: 0,
            overflow_kept: 0,
            overflow_base: 0,
            kept_position: 0,
            started_at: 0,
            overflow_started_at: 0,
            pending_gap_txns: 0,
            pending_gap_events: 0,
            lost_txns_total: 0,
            next_position,
            worker_latch: ptr::null_mut(),
            wake_on_commit: false,
        }
    }
}

/// The inode of the queue's file (0: anonymous memory), kept for the next `shmem_startup`.
static mut INODE: u64 = 0;

/// The queue every process maps, once `shmem_startup` has run.
static mut QUEUE: Option<Ring> = None;

/// A byte ring: its header and its data. The queue is the one every process maps; tests make
/// private ones.
#[derive(Clone, Copy)]
struct Ring {
    header: *mut Header,
    data: *mut u8,
    /// Whether records overflow to the file (the server's queue; not tests' private rings).
    spills: bool,
}

fn queue() -> Option<Ring> {
    // SAFETY: written once by shmem_startup in the postmaster (or a backend, on EXEC_BACKEND)
    // before anything here runs, never again.
    unsafe { QUEUE }
}
static mut PREV_REQUEST_HOOK: pg_sys::shmem_request_hook_type = None;
static mut PREV_STARTUP_HOOK: pg_sys::shmem_startup_hook_type = None;

pub fn init() {
    // SAFETY: _PG_init runs in the postmaster before any other process: nobody else touches the hooks.
    unsafe {
        PREV_REQUEST_HOOK = pg_sys::shmem_request_hook;
        pg_sys::shmem_request_hook = Some(shmem_request);
        PREV_STARTUP_HOOK = pg_sys::shmem_startup_hook;
        pg_sys::shmem_startup_hook = Some(shmem_startup);
    }
}

fn total_size() -> usize {
    std::mem::size_of::<Header>() + crate::gucs::queue_size_bytes()
}

#[pgrx::pg_guard]
unsafe extern "C-unwind" fn shmem_request() {
    if let Some(prev) = PREV_REQUEST_HOOK {
        prev();
    }
    pg_sys::RequestNamedLWLockTranche(TRANCHE.as_ptr(), 1);
}

/// Runs in the postmaster at start and again after every crash of a process, when shared
/// memory is made anew; the queue's mapping is made once and outlives those.
#[pgrx::pg_guard]
unsafe extern "C-unwind" fn shmem_startup() {
    if let Some(prev) = PREV_STARTUP_HOOK {
        prev();
    }
    let size = total_size();
    let (base, previous, inode) = match (QUEUE, INODE) {
        (Some(ring), inode) => (ring.header.cast::<u8>(), true, inode),
        (None, _) => {
            let mapped = file::map(size).or_else(|e| {
                pgrx::warning!("realtime_ext: could not map {} ({e}); a crash of the server will lose the changes not yet published", file::PATH);
                file::map_anonymous(size)
            });
            match mapped {
                Ok(m) => (m.base, m.previous, m.inode),
                Err(e) => pgrx::error!("realtime_ext: could not map the change queue: {e}"),
            }
        }
    };
    INODE = inode;
    let ring = Ring {
        header: base as *mut Header,
        data: base.add(std::mem::size_of::<Header>()),
        spills: true,
    };
    QUEUE = Some(ring);
    if pg_sys::IsUnderPostmaster {
        // A backend of a server that does not fork (EXEC_BACKEND) attaches, nothing more.
        return;
    }
    let lock = &raw mut (*pg_sys::GetNamedLWLockTranche(TRANCHE.as_ptr())).lock;
    let capacity = crate::gucs::queue_size_bytes() as u64;
    if previous && (*ring.header).carries_over(capacity, inode) {
        carry_over(ring, lock);
    } else {
        overflow::remove();
        crate::spill::clear_orphans(&[file::PATH.to_string()]);
        ptr::write(
            ring.header,
            Header::new(lock, capacity, initial_position(), inode),
        );
    }
}

impl Header {
    /// Whether this is a queue of `capacity` bytes, written in this boot to this very file,
    /// whose offsets agree.
    fn carries_over(&self, capacity: u64, inode: u64) -> bool {
        let boot = file::boot_id();
        self.magic == MAGIC
            && self.boot == boot
            && boot != [0; 36]
            && self.inode == inode
            && self.capacity == capacity
            && self.kept <= self.tail
            && self.tail <= self.head
            && self.head - self.kept <= capacity
            && self.overflow_base <= self.overflow_kept
            && self.overflow_kept <= self.overflow_tail
            && self.overflow_tail <= self.overflow_head
    }
}

/// The queue as the last server (or the crashed processes) left it: reading starts again at
/// the first record not written to the history, a record a dying writer left half copied is
/// cut off (its transaction had not committed: it was still in pre-commit), and the spill
/// files the remaining records name are kept.
///
/// # Safety
/// In the postmaster, before any other process uses the queue.
unsafe fn carry_over(ring: Ring, lock: *mut pg_sys::LWLock) {
    let h = &mut *ring.header;
    h.lock = lock;
    h.worker_latch = ptr::null_mut();
    h.wake_on_commit = false;
    h.tail = h.kept;
    h.overflow_tail = h.overflow_kept;
    let mut keep = vec![file::PATH.to_string(), overflow::PATH.to_string()];
    let mut record = Vec::new();
    let mut at = h.kept;
    while at < h.head {
        record.clear();
        copy_ring(h, ring.data, at, &mut record, 4);
        let len = u32::from_le_bytes(record[..4].try_into().expect("4 bytes")) as u64;
        if at + 4 + len > h.head {
            h.head = at;
            break;
        }
        record.clear();
        copy_ring(h, ring.data, at + 4, &mut record, len as usize);
        keep.extend(spill_path(&record).map(str::to_string));
        at += 4 + len;
    }
    let mut at = h.overflow_kept;
    while at < h.overflow_head {
        record.clear();
        let base = h.overflow_base;
        if overflow::read(at - base, 4, &mut record).is_err() {
            break;
        }
        let len = u32::from_le_bytes(record[..4].try_into().expect("4 bytes")) as u64;
        record.clear();
        if at + 4 + len > h.overflow_head
            || overflow::read(at + 4 - base, len as usize, &mut record).is_err()
        {
            break;
        }
        keep.extend(spill_path(&record).map(str::to_string));
        at += 4 + len;
    }
    h.started_at = h.head;
    h.overflow_started_at = h.overflow_head;
    crate::spill::clear_orphans(&keep);
}

/// Positions start at the server's start time in microseconds, so they keep increasing across
/// server restarts as long as fewer than a million events per second were delivered on average.
/// Stays below 2^53 (exact in JavaScript) until the year 2255.
fn initial_position() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(1)
}

/// Exclusive access to a ring for the life of the guard.
struct Locked(&'static mut Header, *mut u8);

impl Locked {
    fn acquire() -> Option<Locked> {
        Some(queue()?.lock())
    }
    fn free(&self) -> u64 {
        ring::free(self.0.capacity, self.0.head, self.0.kept)
    }
    fn write_at(&mut self, offset: u64, bytes: &[u8]) {
        let s = ring::span(self.0.capacity, offset, bytes.len());
        // SAFETY: `s.at + s.first` and `s.rest` are within the ring's capacity (`ring::span`),
        // and `s.first + s.rest` is `bytes.len()`.
        unsafe {
            ptr::copy_nonoverlapping(bytes.as_ptr(), self.1.add(s.at), s.first);
            ptr::copy_nonoverlapping(bytes.as_ptr().add(s.first), self.1, s.rest);
        }
    }
    fn copy_in(&mut self, bytes: &[u8]) {
        self.write_at(self.0.head, bytes);
        self.0.head += bytes.len() as u64;
    }
    fn copy_out(&self, from: u64, out: &mut Vec<u8>, len: usize) {
        // SAFETY: the lock is held; the bytes lie within the ring.
        unsafe { copy_ring(self.0, self.1, from, out, len) }
    }
    /// Returns the offset of the record (after its length prefix).
    fn write_record(&mut self, parts: &[&[u8]]) -> u64 {
        let len: usize = parts.iter().map(|p| p.len()).sum();
        self.copy_in(&(len as u32).to_le_bytes());
        let at = self.0.head;
        for p in parts {
            self.copy_in(p);
        }
        at
    }
    fn is_pending(&self, offset: u64) -> bool {
        let mut header = Vec::with_capacity(RECORD_HEADER_LEN);
        self.copy_out(offset, &mut header, RECORD_HEADER_LEN);
        pending_header(&header).is_some()
    }
    /// Append a record (after the pending gap, if any) to the overflow file; its offset.
    fn overflow_record(&mut self, parts: &[&[u8]]) -> Option<u64> {
        let base = self.0.overflow_base;
        let mut at = self.0.overflow_head - base;
        if self.0.pending_gap_txns > 0 {
            let (h, b) = gap_record(self.0.pending_gap_txns, self.0.pending_gap_events);
            at += overflow::write_record(at, &[&h, &b]).ok()?;
        }
        let record = base + at + 4;
        at += overflow::write_record(at, parts).ok()?;
        self.0.pending_gap_txns = 0;
        self.0.pending_gap_events = 0;
        self.0.overflow_head = base + at;
        Some(OVERFLOW | record)
    }
    /// Once the worker has written what the overflow file held to the history, its space is
    /// given back and writers return to the ring.
    fn reset_overflow(&mut self) {
        if self.0.overflow_kept == self.0.overflow_head
            && self.0.overflow_base != self.0.overflow_head
        {
            if let Err(e) = overflow::empty() {
                pgrx::warning!("realtime_ext: could not empty {}: {e}", overflow::PATH);
            }
            self.0.overflow_base = self.0.overflow_head;
        }
    }
    fn count_loss(&mut self, events: u32) {
        self.0.pending_gap_txns += 1;
        self.0.pending_gap_events += events as u64;
        self.0.lost_txns_total += 1;
    }
}

impl Ring {
    fn lock(self) -> Locked {
        // SAFETY: `header` points to an initialized Header whose lock lives as long as it.
        unsafe {
            let h = &mut *self.header;
            pg_sys::LWLockAcquire(h.lock, pg_sys::LWLockMode::LW_EXCLUSIVE);
            Locked(h, self.data)
        }
    }
}

impl Drop for Locked {
    fn drop(&mut self) {
        // SAFETY: `Locked` is only made by taking this lock, and releases it once.
        unsafe { pg_sys::LWLockRelease(self.0.lock) }
    }
}

const GAP_RECORD_LEN: u64 = 4 + RECORD_HEADER_LEN as u64 + 16;

fn gap_record(txns: u64, events: u64) -> ([u8; RECORD_HEADER_LEN], [u8; 16]) {
    (
        record_header(RecordKind::Gap, 0, 0, 0),
        gap_body(txns, events),
    )
}

/// Largest record a writer should try to publish inline; bigger transactions spill to a file.
pub fn max_inline_record() -> usize {
    // SAFETY: capacity never changes after startup.
    queue().map_or(0, |q| unsafe { (*q.header).capacity as usize / 4 })
}

/// Append one record made of `parts`; returns its offset, for `mark`. Never blocks on the worker
/// and never errors: with no room in the ring the record goes to the overflow file, and if that
/// fails too the transaction's `events` are counted into the pending gap and `None` is returned.
pub fn publish(parts: &[&[u8]], events: u32) -> Option<u64> {
    publish_to(queue()?, parts, events)
}

fn publish_to(ring: Ring, parts: &[&[u8]], events: u32) -> Option<u64> {
    let mut q = ring.lock();
    let need = 4 + parts.iter().map(|p| p.len() as u64).sum::<u64>();
    let gap_pending = q.0.pending_gap_txns > 0;
    let gap_need = if gap_pending { GAP_RECORD_LEN } else { 0 };
    // Once records overflow, later ones follow them until the worker has written them all
    // (so that a worker that starts over reads them again before any later record).
    let overflowing = q.0.overflow_head > q.0.overflow_kept;
    if !overflowing && q.free() >= need + gap_need {
        if gap_pending {
            let (h, b) = gap_record(q.0.pending_gap_txns, q.0.pending_gap_events);
            q.write_record(&[&h, &b]);
            q.0.pending_gap_txns = 0;
            q.0.pending_gap_events = 0;
        }
        return Some(q.write_record(parts));
    }
    if ring.spills {
        if let Some(offset) = q.overflow_record(parts) {
            return Some(offset);
        }
    }
    q.count_loss(events);
    None
}

/// Settle a pending record: set its kind (committed or aborted) and commit time. A no-op if it
/// was settled already (the worker settles a stuck record from the commit log) or consumed.
pub fn mark(offset: u64, kind: RecordKind, commit_time: i64) {
    if let Some(ring) = queue() {
        mark_in(ring, offset, kind, commit_time)
    }
}

fn mark_in(ring: Ring, offset: u64, kind: RecordKind, commit_time: i64) {
    let mut q = ring.lock();
    if offset & OVERFLOW != 0 {
        let logical = offset & !OVERFLOW;
        if logical >= q.0.overflow_tail && logical < q.0.overflow_head {
            let at = logical - q.0.overflow_base;
            let mut header = Vec::with_capacity(RECORD_HEADER_LEN);
            if overflow::read(at, RECORD_HEADER_LEN, &mut header).is_ok()
                && pending_header(&header).is_some()
            {
                // A failed write leaves the record pending: the worker settles it from the
                // commit log.
                let _ = overflow::write_at(at, &[kind as u8]).and_then(|()| {
                    overflow::write_at(at + COMMIT_TIME_AT as u64, &commit_time.to_le_bytes())
                });
            }
        }
    } else if offset >= q.0.tail && q.is_pending(offset) {
        q.write_at(offset, &[kind as u8]);
        q.write_at(offset + COMMIT_TIME_AT as u64, &commit_time.to_le_bytes());
    }
}

/// Wake the worker (once per commit, not per row).
pub fn wake_worker() {
    // SAFETY: the header is mapped for the life of the server; the latch pointer is read once (volatile) and SetLatch tolerates a latch whose owner has exited.
    unsafe {
        if let Some(h) = queue().map(|q| &*q.header) {
            let latch = ptr::read_volatile(&h.worker_latch);
            if !latch.is_null() && ptr::read_volatile(&h.wake_on_commit) {
                pg_sys::SetLatch(latch);
            }
        }
    }
}

/// Worker side: whether commits should wake the worker (see `Header::wake_on_commit`).
/// A plain store: a writer that reads a stale value only changes when the worker hears of it.
pub fn set_wake_on_commit(on: bool) {
    // SAFETY: the header is mapped for the life of the server; a torn bool cannot happen.
    unsafe {
        if let Some(h) = queue().map(|q| &mut *q.header) {
            ptr::write_volatile(&mut h.wake_on_commit, on);
        }
    }
}

/// Worker side: register `latch` as the one writers wake (null to unregister).
pub fn set_worker_latch(latch: *mut pg_sys::Latch) {
    if let Some(q) = Locked::acquire() {
        q.0.worker_latch = latch;
    }
}

/// The record at the head of the queue whose transaction is not yet settled.
#[derive(Clone, Copy, Debug)]
pub struct Unsettled {
    pub offset: u64,
    pub xid: u32,
    pub kind: RecordKind,
    /// The WAL insert position when it was reserved (0: not known).
    pub wal_at: u64,
}

/// Records whose headers the worker reads per hold of the lock: its critical section has a
/// fixed size, like a writer's copy of its own record.
const MAX_SCAN: usize = 256;

/// Worker side: move whole records, each prefixed by its u32 length, into `out` (up to about
/// `max_bytes` or `MAX_SCAN` records), stopping at the first record still pending, which is returned. A pending gap
/// is appended once the queue is empty, so it keeps its place in the stream.
///
/// The lock is held only to read record headers and, later, to move the tail: the bodies are
/// copied without it. That is safe because writers only write past the head, and `mark` only
/// touches records still pending, while everything copied here is settled.
pub fn drain(out: &mut Vec<u8>, max_bytes: usize) -> Option<Unsettled> {
    drain_from(queue()?, out, max_bytes, || {})
}

/// `drain` of any ring; `while_copying` runs when the bodies are about to be copied, without
/// the lock (tests check that it is free then).
fn drain_from(
    ring: Ring,
    out: &mut Vec<u8>,
    max_bytes: usize,
    while_copying: impl FnOnce(),
) -> Option<Unsettled> {
    let (from, to, unsettled, empty) = {
        let q = ring.lock();
        let mut at = q.0.tail;
        let mut header = Vec::with_capacity(4 + RECORD_HEADER_LEN);
        let mut unsettled = None;
        let mut scanned = 0;
        while at < q.0.head && (at - q.0.tail) < max_bytes as u64 && scanned < MAX_SCAN {
            scanned += 1;
            header.clear();
            q.copy_out(at, &mut header, 4 + RECORD_HEADER_LEN);
            if let Some(pending) = pending_header(&header[4..]) {
                unsettled = Some(Unsettled {
                    offset: at + 4,
                    xid: pending.xid,
                    kind: pending.kind,
                    wal_at: pending.wal_at,
                });
                break;
            }
            let len = u32::from_le_bytes(header[..4].try_into().unwrap()) as u64;
            at += 4 + len;
        }
        (q.0.tail, at, unsettled, q.0.tail == q.0.head)
    };
    if to > from {
        while_copying();
        // SAFETY: [from, to) lies between tail and head, holds settled records only, and
        // nothing writes there until the tail moves past it below.
        unsafe { copy_ring(&*ring.header, ring.data, from, out, (to - from) as usize) };
        let mut q = ring.lock();
        q.0.tail = to;
        take_pending_gap(&mut q, out);
    } else if empty && ring.spills {
        return drain_overflow(ring, out, max_bytes);
    } else if unsettled.is_none() {
        take_pending_gap(&mut ring.lock(), out);
    }
    unsettled
}

/// `drain` of the overflow file, once the ring is empty. Headers are read under the lock,
/// bodies without it, as in the ring.
fn drain_overflow(ring: Ring, out: &mut Vec<u8>, max_bytes: usize) -> Option<Unsettled> {
    let (from, to, base, unsettled) = {
        let mut q = ring.lock();
        let (tail, head, base) = (q.0.overflow_tail, q.0.overflow_head, q.0.overflow_base);
        let mut at = tail;
        let mut header = Vec::with_capacity(4 + RECORD_HEADER_LEN);
        let mut unsettled = None;
        let mut scanned = 0;
        while at < head && (at - tail) < max_bytes as u64 && scanned < MAX_SCAN {
            scanned += 1;
            header.clear();
            if let Err(e) = overflow::read(at - base, 4 + RECORD_HEADER_LEN, &mut header) {
                pgrx::warning!("realtime_ext: could not read {}: {e}", overflow::PATH);
                // What the file held is lost: a gap, not a stall.
                q.0.overflow_tail = head;
                q.0.overflow_kept = head;
                q.count_loss(0);
                q.reset_overflow();
                return None;
            }
            if let Some(pending) = pending_header(&header[4..]) {
                unsettled = Some(Unsettled {
                    offset: OVERFLOW | (at + 4),
                    xid: pending.xid,
                    kind: pending.kind,
                    wal_at: pending.wal_at,
                });
                break;
            }
            let len = u32::from_le_bytes(header[..4].try_into().unwrap()) as u64;
            at += 4 + len;
        }
        if at == tail && unsettled.is_none() {
            take_pending_gap(&mut q, out);
        }
        (tail, at, base, unsettled)
    };
    if to > from {
        // [from, to) holds settled records only, and nothing writes there; the base moves
        // only below, here.
        if let Err(e) = overflow::read(from - base, (to - from) as usize, out) {
            pgrx::warning!("realtime_ext: could not read {}: {e}", overflow::PATH);
            ring.lock().count_loss(0);
        }
        let mut q = ring.lock();
        q.0.overflow_tail = to;
        q.reset_overflow();
        take_pending_gap(&mut q, out);
    }
    unsettled
}

/// With the queue empty, the pending gap (transactions lost to a full queue) becomes a record.
fn take_pending_gap(q: &mut Locked, out: &mut Vec<u8>) {
    if q.0.tail == q.0.head && q.0.overflow_tail == q.0.overflow_head && q.0.pending_gap_txns > 0 {
        let (h, b) = gap_record(q.0.pending_gap_txns, q.0.pending_gap_events);
        out.extend_from_slice(&((h.len() + b.len()) as u32).to_le_bytes());
        out.extend_from_slice(&h);
        out.extend_from_slice(&b);
        q.0.pending_gap_txns = 0;
        q.0.pending_gap_events = 0;
    }
}

/// Copy `len` bytes of the ring starting at `from` into `out`.
///
/// # Safety
/// `data` holds `header.capacity` bytes, and nobody writes those `len` bytes meanwhile: the
/// caller holds the lock, or knows (see `drain`).
unsafe fn copy_ring(header: &Header, data: *mut u8, from: u64, out: &mut Vec<u8>, len: usize) {
    let s = ring::span(header.capacity, from, len);
    out.extend_from_slice(std::slice::from_raw_parts(data.add(s.at), s.first));
    out.extend_from_slice(std::slice::from_raw_parts(data, s.rest));
}

/// Split the output of `drain` into records.
pub fn records(mut buf: &[u8]) -> impl Iterator<Item = &[u8]> {
    std::iter::from_fn(move || {
        let len = u32::from_le_bytes(buf.get(..4)?.try_into().ok()?) as usize;
        let rec = buf.get(4..4 + len)?;
        buf = &buf[4 + len..];
        Some(rec)
    })
}

/// How far the worker has read: the ring's and the overflow file's offsets.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Cursor {
    ring: u64,
    overflow: u64,
}

/// Worker side: how far `drain` has read.
pub fn cursor() -> Option<Cursor> {
    Locked::acquire().map(|q| Cursor {
        ring: q.0.tail,
        overflow: q.0.overflow_tail,
    })
}

/// Worker side: the records before `to` are in the history, through `position`; their space
/// can be given back.
pub fn release(to: Cursor, position: u64) {
    if let Some(mut q) = Locked::acquire() {
        q.0.kept = q.0.kept.max(to.ring);
        q.0.overflow_kept = q.0.overflow_kept.max(to.overflow);
        q.0.kept_position = q.0.kept_position.max(position);
        q.reset_overflow();
    }
}

/// Worker side, at its start: read again from the first record not released, and return the
/// last position released (0 if nothing was since the queue started empty), after which the
/// history may already hold some of those records' changes.
pub fn rewind() -> u64 {
    Locked::acquire().map_or(0, |q| {
        q.0.tail = q.0.kept;
        q.0.overflow_tail = q.0.overflow_kept;
        q.0.kept_position
    })
}

/// Whether the record at `offset` was in the queue before the server started: if it is still
/// pending, its writer is gone, and only the commit log knows how it ended.
pub fn from_before_start(offset: u64) -> bool {
    // SAFETY: `started_at` and `overflow_started_at` are written once, in the postmaster
    // before any other process runs; no lock is needed to read them.
    queue().is_some_and(|q| unsafe {
        let h = &*q.header;
        if offset & OVERFLOW != 0 {
            offset & !OVERFLOW < h.overflow_started_at
        } else {
            offset < h.started_at
        }
    })
}

/// The worker's next event position, kept here across worker restarts.
pub fn next_position() -> u64 {
    Locked::acquire().map_or(1, |q| q.0.next_position)
}

pub fn set_next_position(position: u64) {
    if let Some(q) = Locked::acquire() {
        q.0.next_position = position;
    }
}

#[derive(Clone, Copy, Debug, Default)]
pub struct Stats {
    pub capacity: u64,
    pub used: u64,
    /// Bytes in the overflow file not yet read.
    pub overflow: u64,
    pub lost_txns: u64,
}

pub fn stats() -> Stats {
    Locked::acquire().map_or(Stats::default(), |q| Stats {
        capacity: q.0.capacity,
        used: q.0.head - q.0.kept,
        overflow: q.0.overflow_head - q.0.overflow_tail,
        lost_txns: q.0.lost_txns_total,
    })
}

/// A committed transaction whose changes could not be kept: report it as a gap.
pub fn record_loss(events: u32) {
    if let Some(mut q) = Locked::acquire() {
        q.count_loss(events);
    }
}

#[cfg(any(test, feature = "pg_test"))]
#[pgrx::pg_schema]
mod tests {
    use super::*;
    use pgrx::prelude::*;

    /// A ring in this backend's memory with a lock of its own, so the worker's queue is not
    /// touched.
    fn private_ring(capacity: u64) -> Ring {
        // SAFETY: palloc'd memory that lives until the test's transaction ends; the lock is
        // initialized before use and only this backend sees it.
        unsafe {
            let lock = pg_sys::palloc0(std::mem::size_of::<pg_sys::LWLock>()).cast();
            pg_sys::LWLockInitialize(lock, pg_sys::LWLockNewTrancheId());
            let header: *mut Header = pg_sys::palloc0(std::mem::size_of::<Header>()).cast();
            ptr::write(header, Header::new(lock, capacity, 1, 0));
            Ring {
                header,
                data: pg_sys::palloc0(capacity as usize).cast(),
                spills: false,
            }
        }
    }

    /// A writer that lands while the worker drains must not wait for it: the worker holds the
    /// lock only to read a bounded number of record headers, never while copying bodies.
    #[pg_test]
    fn the_worker_copies_records_without_holding_the_queue_lock() {
        let ring = private_ring(4 << 20);
        let body = [7u8; 1000];
        for xid in 0..1000 {
            let header = record_header(RecordKind::Pending, xid, 0, 1);
            let offset = publish_to(ring, &[&header, &body], 1).expect("room");
            mark_in(ring, offset, RecordKind::Txn, 1);
        }
        // SAFETY: the ring's header lives in shared memory for the life of the server.
        let lock = unsafe { (*ring.header).lock };
        let mut out = Vec::new();
        let mut free = false;
        // SAFETY: the ring's header lives in shared memory for the life of the server.
        drain_from(ring, &mut out, 4 << 20, || unsafe {
            free = pg_sys::LWLockConditionalAcquire(lock, pg_sys::LWLockMode::LW_EXCLUSIVE);
            if free {
                pg_sys::LWLockRelease(lock);
            }
        });
        assert!(free, "a writer would have waited for the worker's copy");
        let drained: Vec<&[u8]> = records(&out).collect();
        assert_eq!(drained.len(), MAX_SCAN, "headers read per hold of the lock");
        assert!(drained
            .iter()
            .all(|r| r.len() == RECORD_HEADER_LEN + body.len()));
        // The rest follows on the next passes.
        let mut rest = Vec::new();
        for _ in 0..1000 / MAX_SCAN {
            drain_from(ring, &mut rest, 4 << 20, || {});
        }
        assert_eq!(records(&rest).count(), 1000 - MAX_SCAN);
    }
}
