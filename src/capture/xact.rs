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
use crate::event::{record_header, RecordKind};
use crate::queue;
use pgrx::pg_sys;
use std::cell::RefCell;

/// This transaction's reserved record: its queue offset, the kind it becomes at commit, and
/// the spill file to delete if it aborts.
struct Reserved {
    offset: u64,
    kind: RecordKind,
    spill: Option<String>,
}

thread_local! {
    static RESERVED: RefCell<Option<Reserved>> = const { RefCell::new(None) };
}

pub fn register_callbacks() {
    unsafe {
        pg_sys::RegisterXactCallback(Some(on_xact), std::ptr::null_mut());
        pg_sys::RegisterSubXactCallback(Some(on_subxact), std::ptr::null_mut());
    }
}

#[pgrx::pg_guard]
unsafe extern "C-unwind" fn on_xact(event: pg_sys::XactEvent::Type, _arg: *mut std::ffi::c_void) {
    use pg_sys::XactEvent::*;
    match event {
        XACT_EVENT_PRE_COMMIT => reserve(false),
        XACT_EVENT_COMMIT => settle(true),
        // The preparing backend's memory is gone by COMMIT PREPARED: publish now, tagged with
        // the xid; the worker delivers once that xid is known to have committed.
        XACT_EVENT_PRE_PREPARE => reserve(true),
        XACT_EVENT_ABORT | XACT_EVENT_PARALLEL_ABORT => {
            settle(false);
            pending::discard();
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

fn reserve(prepared: bool) {
    let Some(captured) = pending::take() else {
        return;
    };
    let (kind, xid, count, body, spill) = match captured {
        Captured::Inline { xid, count, events } => {
            let kind = if prepared {
                RecordKind::Prepared
            } else {
                RecordKind::Pending
            };
            (kind, xid, count, events, None)
        }
        Captured::Spilled { xid, count, path } => {
            let kind = if prepared {
                RecordKind::PreparedSpilled
            } else {
                RecordKind::PendingSpilled
            };
            (kind, xid, count, path.clone().into_bytes(), Some(path))
        }
        Captured::Lost { count } => return queue::record_loss(count),
    };
    match queue::publish(&[&record_header(kind, xid, 0, count), &body], count) {
        Some(offset) if !prepared => RESERVED.with(|r| {
            *r.borrow_mut() = Some(Reserved {
                offset,
                kind,
                spill,
            })
        }),
        Some(_) => queue::wake_worker(),
        None => {
            if let Some(path) = spill {
                let _ = std::fs::remove_file(path);
            }
        }
    }
}

fn settle(committed: bool) {
    let Some(reserved) = RESERVED.with(|r| r.borrow_mut().take()) else {
        return;
    };
    if committed {
        let commit_time = unsafe { pg_sys::GetCurrentTransactionStopTimestamp() };
        queue::mark(reserved.offset, reserved.kind.committed(), commit_time);
    } else {
        queue::mark(reserved.offset, RecordKind::Aborted, 0);
        if let Some(path) = reserved.spill {
            let _ = std::fs::remove_file(path);
        }
    }
    queue::wake_worker();
}
