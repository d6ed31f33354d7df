//! Transaction callbacks: publish at commit, hold prepared transactions for the worker to
//! resolve, drop on abort.
//!
//! Publishing at XACT_EVENT_COMMIT means the commit record is written and the xid visible, and
//! the transaction still holds its row locks: of two transactions touching one row, the second
//! cannot commit (and so cannot publish) before the first has. Nothing here may raise an ERROR:
//! the transaction is past the point of no return, so a full queue becomes a recorded gap.

use super::pending::{self, Captured};
use crate::event::{record_header, RecordKind};
use crate::queue;
use pgrx::pg_sys;

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
        XACT_EVENT_COMMIT => publish(false),
        // The preparing backend's memory is gone by COMMIT PREPARED: publish now, tagged with
        // the xid; the worker delivers once that xid is known to have committed.
        XACT_EVENT_PRE_PREPARE => publish(true),
        XACT_EVENT_ABORT | XACT_EVENT_PARALLEL_ABORT => pending::discard(),
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

fn publish(prepared: bool) {
    let Some(captured) = pending::take() else { return };
    let commit_time = if prepared { 0 } else { unsafe { pg_sys::GetCurrentTransactionStopTimestamp() } };
    match &captured {
        Captured::Inline { xid, count, events } => {
            let kind = if prepared { RecordKind::Prepared } else { RecordKind::Txn };
            queue::publish(&[&record_header(kind, *xid, commit_time, *count), events], *count);
        }
        Captured::Spilled { xid, count, path } => {
            let kind = if prepared { RecordKind::PreparedSpilled } else { RecordKind::Spilled };
            if !queue::publish(&[&record_header(kind, *xid, commit_time, *count), path.as_bytes()], *count) {
                let _ = std::fs::remove_file(path);
            }
        }
        Captured::Lost { count } => queue::record_loss(*count),
    }
    queue::wake_worker();
}
