//! The worker's side of the history (`realtime_core::history`): opening it at start, saying
//! what the previous worker may have lost, and marking a clean stop.
//!
//! What survives what: the queue keeps every record until the worker has written its changes
//! here (`queue::release`), in a file that outlives a crash of any process, so a new worker
//! (after `pg_terminate_backend`, an error, a crash, or a server restart of any kind) reads
//! again from the first record not released. The changes of those records already written
//! are recognised by their transaction id and left out, and positions continue from the last
//! one written: nothing is lost and resumes are complete. Only when the queue started empty
//! (the machine restarted, or its file could not be kept) does the next worker write a
//! `server_restart` gap from the last position the history holds to the first it will number,
//! so a client resuming from before it is told; after an OS crash the history's unsynced tail
//! may be cut too (at the first torn entry).

use crate::gucs;
use crate::queue;
use pgrx::prelude::*;
use realtime_core::change::{Batch, GapReason};
use realtime_core::history::History;
use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

/// Open the history (when `realtime.history_size` is not 0) and account for how the last
/// worker left it, moving the next position past everything it holds. Also returns, per
/// transaction, how many changes of the records the queue still holds are written already.
pub fn open() -> (Option<Arc<History>>, HashMap<u32, u64>) {
    let kept_position = queue::rewind();
    let mut written = HashMap::new();
    let Some(limits) = gucs::history_limits() else {
        return (None, written);
    };
    // Relative to the data directory, the worker's working directory (as spill files are).
    let dir = Path::new(crate::spill::DIR).join("history");
    let (history, recovered) = match History::open(&dir, limits) {
        Ok(opened) => opened,
        Err(e) => {
            warning!(
                "realtime_ext: could not open the history in {}: {e}; clients cannot resume",
                dir.display()
            );
            return (None, written);
        }
    };
    for refused in &recovered.refused {
        warning!("realtime_ext: history file left unread: {refused}");
    }
    // Whatever was published before now, written or lost, has an older transaction id.
    // SAFETY: reads the id counter in shared memory under its lock.
    history.published_before(unsafe { pg_sys::ReadNextFullTransactionId() }.value as u32);
    let last = recovered.last_position;
    let mut next = queue::next_position();
    if last == 0 {
        // A new history accounts for what comes after now, not for the past.
        if let Err(e) = history.begin(next - 1) {
            warning!("realtime_ext: could not write to the history: {e}");
        }
        return (Some(history), written);
    }
    // The queue carried on since the history's last entry: what follows is accounted for.
    let carried_on = kept_position > 0 && kept_position <= last;
    if carried_on {
        for batch in history.read(kept_position, last) {
            if let Batch::Changes(changes) = batch {
                for change in changes.iter().filter(|c| c.txn.xid != 0) {
                    *written.entry(change.txn.xid).or_default() += 1;
                }
            }
        }
        next = next.max(last + 1);
    }
    if !(next == last + 1 && (carried_on || recovered.stopped_cleanly)) {
        // Room for a gap of at least one position even if the clock or the queue lag behind.
        next = next.max(last + 2);
        let gap = Batch::Gap {
            reason: GapReason::ServerRestart,
            first_position: last + 1,
            last_position: next - 1,
            topics: None,
        };
        if let Err(e) = history.append(&gap) {
            warning!("realtime_ext: could not write to the history: {e}");
        }
        log!(
            "realtime_ext: the server restarted, or the previous worker stopped without accounting for every change: positions {} to {} are a server_restart gap for clients that resume",
            last + 1,
            next - 1
        );
    }
    queue::set_next_position(next);
    (Some(history), written)
}

/// Mark a clean stop after `last_position`.
pub fn stop(history: &History, last_position: u64) {
    if let Err(e) = history.stop(last_position) {
        warning!("realtime_ext: could not write to the history: {e}");
    }
}
