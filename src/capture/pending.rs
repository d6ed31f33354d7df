//! The current transaction's captured changes, kept in backend memory until commit. Past the
//! spill threshold they go to a file instead, so a huge transaction does not hold huge memory.
//! Savepoint rollbacks cut the buffer back to where that subtransaction started.

use super::target::Target;
use crate::event::{
    encode_catalog, encode_end, encode_event, encode_message, encode_shape, encode_tuple, Op,
};
use pgrx::pg_sys;
use std::cell::RefCell;
use std::fs::File;
use std::io::Write;

/// Spilled bytes are written in chunks of this size.
const SPILL_CHUNK: usize = 256 * 1024;

#[derive(Default)]
struct Pending {
    /// Encoded events not yet written to the spill file.
    buf: Vec<u8>,
    count: u32,
    xid: u32,
    spill: Option<Spill>,
    /// Where each run of events of one subtransaction starts: (subxact id, offset, count).
    marks: Vec<(pg_sys::SubTransactionId, u64, u32)>,
    /// Spilling failed (disk full...): the transaction will be reported as a gap.
    broken: bool,
}

struct Spill {
    file: File,
    path: String,
    written: u64,
}

thread_local! {
    static PENDING: RefCell<Pending> = RefCell::new(Pending::default());
}

impl Pending {
    fn len(&self) -> u64 {
        self.spill.as_ref().map_or(0, |s| s.written) + self.buf.len() as u64
    }

    fn flush_to_spill(&mut self) {
        if self.broken {
            self.buf.clear();
            return;
        }
        if self.spill.is_none() {
            match open_spill(self.xid) {
                Ok(s) => self.spill = Some(s),
                Err(e) => return self.fail(&e),
            }
        }
        let spill = self.spill.as_mut().unwrap();
        match spill.file.write_all(&self.buf) {
            Ok(()) => {
                spill.written += self.buf.len() as u64;
                self.buf.clear();
            }
            Err(e) => self.fail(&e),
        }
    }

    fn fail(&mut self, e: &std::io::Error) {
        pgrx::warning!(
            "realtime_ext: could not spill captured changes ({e}); subscribers will receive a gap"
        );
        self.broken = true;
        self.buf.clear();
    }

    fn truncate(&mut self, offset: u64) {
        let spilled = self.spill.as_ref().map_or(0, |s| s.written);
        if offset >= spilled {
            self.buf.truncate((offset - spilled) as usize);
        } else if let Some(s) = self.spill.as_mut() {
            self.buf.clear();
            if s.file.set_len(offset).is_err() {
                self.broken = true;
            }
            s.written = offset;
            // set_len does not move the cursor; later writes must continue at `offset`.
            use std::io::Seek;
            let _ = s.file.seek(std::io::SeekFrom::Start(offset));
        }
    }
}

fn open_spill(xid: u32) -> std::io::Result<Spill> {
    // SAFETY: MyProcPid is set once at backend start and only read here.
    let (file, path) = crate::spill::create(unsafe { pg_sys::MyProcPid }, xid)?;
    Ok(Spill {
        file,
        path,
        written: 0,
    })
}

/// A change rendered by the writer.
pub fn push(op: Op, target: &Target, new: Option<&[u8]>, old: Option<&[u8]>) {
    append(true, |buf| {
        encode_event(
            buf,
            op,
            target.relid,
            &target.schema,
            &target.table,
            new,
            old,
        )
    })
}

/// How the raw tuples pushed after it are to be rendered (`shape::encode`).
pub fn push_shape(target: &Target, shape: &[u8]) {
    append(false, |buf| {
        encode_shape(buf, target.relid, &target.schema, &target.table, shape)
    })
}

/// A change whose raw tuples the worker renders.
pub fn push_tuple(op: Op, new: Option<&[u8]>, old: Option<&[u8]>) {
    append(true, |buf| encode_tuple(buf, op, new, old))
}

/// A message to a topic's subscribers, JSON `payload`, sent by backend `sender`.
pub fn push_message(topic: &str, event: &str, sender: u32, payload: &[u8]) {
    append(true, |buf| {
        encode_message(buf, topic, event, sender, payload)
    })
}

/// The table's subscriptions end once this transaction commits (it drops or unwatches it).
pub fn push_end(relid: u32, reason: realtime_core::change::EndReason) {
    append(false, |buf| encode_end(buf, relid, reason as u8))
}

fn append(is_change: bool, encode: impl FnOnce(&mut Vec<u8>)) {
    PENDING.with(|p| {
        let mut p = p.borrow_mut();
        if p.count == 0 && p.len() == 0 {
            // SAFETY: inside the writer's transaction (a trigger is running).
            p.xid = unsafe { pg_sys::GetTopTransactionIdIfAny() }.into_inner();
        }
        // SAFETY: inside the writer's transaction (a trigger is running).
        let subid = unsafe { pg_sys::GetCurrentSubTransactionId() };
        if p.marks.last().map(|m| m.0) != Some(subid) {
            let (len, count) = (p.len(), p.count);
            p.marks.push((subid, len, count));
        }
        encode(&mut p.buf);
        p.count += u32::from(is_change);
        let threshold = crate::gucs::spill_threshold_bytes().min(crate::queue::max_inline_record());
        if (p.spill.is_none() && p.buf.len() > threshold)
            || (p.spill.is_some() && p.buf.len() > SPILL_CHUNK)
        {
            p.flush_to_spill();
        }
    })
}

/// The transaction changed who may see what: subscribers are authorized again once it
/// commits, before any change committed after it reaches them.
pub fn push_catalog_change() {
    append(false, encode_catalog)
}

/// A savepoint was rolled back: forget everything it (and its children) captured.
pub fn abort_subtransaction(subid: pg_sys::SubTransactionId) {
    PENDING.with(|p| {
        let mut p = p.borrow_mut();
        if let Some(i) = p.marks.iter().position(|m| m.0 >= subid) {
            let (_, offset, count) = p.marks[i];
            p.marks.truncate(i);
            p.truncate(offset);
            p.count = count;
        }
    })
}

/// What a finished transaction hands to the queue.
pub enum Captured {
    Inline {
        xid: u32,
        count: u32,
        events: Vec<u8>,
    },
    Spilled {
        xid: u32,
        count: u32,
        path: String,
    },
    /// Captured, but could not be kept (spill failed): publish as a gap.
    Lost {
        count: u32,
    },
}

/// Take the transaction's captured changes, leaving the buffer empty. `None` if nothing.
pub fn take() -> Option<Captured> {
    PENDING.with(|p| {
        let mut p = std::mem::take(&mut *p.borrow_mut());
        if p.count == 0 && p.len() == 0 {
            discard_spill(p.spill.take());
            return None;
        }
        if p.broken {
            discard_spill(p.spill.take());
            return Some(Captured::Lost { count: p.count });
        }
        if p.spill.is_some() {
            p.flush_to_spill();
            if p.broken {
                discard_spill(p.spill.take());
                return Some(Captured::Lost { count: p.count });
            }
            let spill = p.spill.take().unwrap();
            return Some(Captured::Spilled {
                xid: p.xid,
                count: p.count,
                path: spill.path,
            });
        }
        Some(Captured::Inline {
            xid: p.xid,
            count: p.count,
            events: p.buf,
        })
    })
}

fn discard_spill(spill: Option<Spill>) {
    if let Some(s) = spill {
        crate::spill::discard(&s.path);
    }
}

/// Transaction aborted: drop everything.
pub fn discard() {
    PENDING.with(|p| discard_spill(std::mem::take(&mut *p.borrow_mut()).spill))
}
