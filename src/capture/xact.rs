//! Transaction callbacks: reserve a queue record at pre-commit, settle it at commit or abort.
//!
//! Why two steps: a commit becomes visible (ProcArrayEndTransaction) before the COMMIT callback
//! runs, so a second transaction could update the same row and publish first if publishing
//! waited for COMMIT. At PRE_COMMIT the transaction is invisible and still holds its row locks,
//! so of two transactions touching one row, the second reserves its record after the first:
//! queue order is commit order. The worker delivers a record only once it is settled.
//! Nothing here may raise an ERROR: at COMMIT the transaction is past the point of no return,
//! so a full queue becomes a recorded gap.

use super::pending::{self, Captured};
use super::prepared::{self, Prepared};
use crate::event::{record_header, RecordKind};
use crate::queue;
use pgrx::pg_sys;
use std::cell::RefCell;

/// This transaction's reserved record: its queue offset (none if the queue was full), the
/// kind it becomes at commit, the spill file to delete if it aborts, and for COMMIT PREPARED,
/// the prepared transaction it publishes.
struct Reserved {
    offset: Option<u64>,
    kind: RecordKind,
    spill: Option<String>,
    prepared: Option<Prepared>,
}

thread_local! {
    static RESERVED: RefCell<Option<Reserved>> = const { RefCell::new(None) };
    /// The state file PREPARE TRANSACTION wrote, until it is known to have succeeded.
    static PREPARING_FILE: RefCell<Option<String>> = const { RefCell::new(None) };
}

pub fn register_callbacks() {
    // SAFETY: registered once per backend from _PG_init; the callbacks are plain functions that live forever.
    unsafe {
        pg_sys::RegisterXactCallback(Some(on_xact), std::ptr::null_mut());
        pg_sys::RegisterSubXactCallback(Some(on_subxact), std::ptr::null_mut());
    }
}

#[pgrx::pg_guard]
unsafe extern "C-unwind" fn on_xact(event: pg_sys::XactEvent::Type, _arg: *mut std::ffi::c_void) {
    use pg_sys::XactEvent::*;
    match event {
        XACT_EVENT_PRE_COMMIT => reserve(),
        XACT_EVENT_COMMIT => settle(true),
        XACT_EVENT_PRE_PREPARE => save_prepared(),
        XACT_EVENT_PREPARE => PREPARING_FILE
            .with(|f| f.borrow_mut().take())
            .map_or((), drop),
        XACT_EVENT_ABORT | XACT_EVENT_PARALLEL_ABORT => {
            settle(false);
            pending::discard();
            if let Some(path) = PREPARING_FILE.with(|f| f.borrow_mut().take()) {
                crate::spill::discard(path);
            }
        }
        _ => {}
    }
}

#[pgrx::pg_guard]
unsafe extern "C-unwind" fn on_subxact(
    event: pg_sys::SubXactEvent::Type,
    my_subid: pg_sys::SubTransactionId,
    _parent: pg_sys::SubTransactionId,
    _arg: *mut std::ffi::c_void,
) {
    if event == pg_sys::SubXactEvent::SUBXACT_EVENT_ABORT_SUB {
        pending::abort_subtransaction(my_subid);
    }
}

fn reserve() {
    let Some(captured) = pending::take() else {
        return;
    };
    let (kind, xid, count, body, spill) = match captured {
        Captured::Inline { xid, count, events } => (RecordKind::Pending, xid, count, events, None),
        Captured::Spilled { xid, count, path } => (
            RecordKind::PendingSpilled,
            xid,
            count,
            path.clone().into_bytes(),
            Some(path),
        ),
        Captured::Lost { count } => return queue::record_loss(count),
    };
    let offset = queue::publish(&[&record_header(kind, xid, wal_at(), count), &body], count);
    if offset.is_none() {
        if let Some(path) = spill {
            crate::spill::discard(path);
        }
        return;
    }
    RESERVED.with(|r| {
        *r.borrow_mut() = Some(Reserved {
            offset,
            kind,
            spill,
            prepared: None,
        })
    });
}

/// PRE_PREPARE: the changes wait in a state file for COMMIT PREPARED (see `prepared`). If
/// they cannot be kept, subscribers get a gap now rather than silence later.
fn save_prepared() {
    let gid = prepared::take_preparing_gid();
    let Some(captured) = pending::take() else {
        return;
    };
    let count = match &captured {
        Captured::Inline { count, .. }
        | Captured::Spilled { count, .. }
        | Captured::Lost { count } => *count,
    };
    let saved = gid
        .ok_or_else(|| std::io::Error::other("PREPARE TRANSACTION was not seen"))
        .and_then(|gid| prepared::save(&gid, captured));
    match saved {
        Ok(path) => PREPARING_FILE.with(|f| *f.borrow_mut() = Some(path)),
        Err(e) => {
            pgrx::warning!("realtime_ext: could not keep the changes of a prepared transaction ({e}); subscribers will receive a gap");
            queue::record_loss(count);
        }
    }
}

/// COMMIT PREPARED `gid` is about to run: reserve the prepared transaction's queue record
/// while it still holds its row locks. This session's commit (or abort) settles it.
pub fn reserve_prepared(gid: &str) {
    let Some(p) = prepared::find(gid) else {
        return;
    };
    let kind = if p.spilled {
        RecordKind::PendingSpilled
    } else {
        RecordKind::Pending
    };
    let offset = queue::publish(
        &[&record_header(kind, p.xid, wal_at(), p.count), &p.body],
        p.count,
    );
    RESERVED.with(|r| {
        *r.borrow_mut() = Some(Reserved {
            offset,
            kind,
            spill: None,
            prepared: Some(p),
        })
    });
}

/// Where the WAL is being inserted now, kept in a pending record until it settles (see
/// `event::COMMIT_TIME_AT`): this transaction's commit record will come after it.
fn wal_at() -> i64 {
    // SAFETY: reads the insert position under its spinlock; any backend may.
    unsafe { pg_sys::GetXLogInsertRecPtr() as i64 }
}

fn settle(mut committed: bool) {
    let Some(reserved) = RESERVED.with(|r| r.borrow_mut().take()) else {
        return;
    };
    if let Some(p) = &reserved.prepared {
        // This session's transaction failed, but the prepared one may have committed before
        // it did: the commit log decides. If not, it stays prepared, its state file kept.
        // SAFETY: a commit-log lookup, in a transaction callback.
        committed |= unsafe { pg_sys::TransactionIdDidCommit(p.xid.into()) };
        match (committed, reserved.offset) {
            // The spill file, if any, is now the queue record's: the worker removes it.
            (true, Some(_)) => {
                crate::spill::discard(&p.state_file);
            }
            // Published as a gap (the queue was full): nothing will read it.
            (true, None) => prepared::remove(p),
            (false, _) => {}
        }
    }
    if let Some(offset) = reserved.offset {
        if committed {
            // SAFETY: called from the commit callback, where the stop timestamp has been set.
            let commit_time = unsafe { pg_sys::GetCurrentTransactionStopTimestamp() };
            queue::mark(offset, reserved.kind.committed(), commit_time);
        } else {
            queue::mark(offset, RecordKind::Aborted, 0);
        }
    }
    if let (false, Some(path)) = (committed, reserved.spill) {
        crate::spill::discard(path);
    }
    queue::wake_worker();
}
