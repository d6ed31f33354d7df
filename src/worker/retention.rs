//! The worker's side of the history (`realtime_core::history`): opening it at start, saying
//! what the previous worker may have lost, and marking a clean stop.
//!
//! What survives what:
//! - the worker stopped by `pg_terminate_backend` or restarted after an error: its last
//!   entry is a clean stop, the queue (shared memory) still holds what it had not read, and
//!   positions continue where they were: nothing is lost and resumes are complete;
//! - the worker dying without its stop entry (a crash of its process, with shared memory
//!   kept), a server restart of any kind (fast, smart or immediate shutdown, or a crash: the
//!   queue is in shared memory, and commits can race a shutdown), or an OS crash (the
//!   history's unsynced tail is cut at the first torn entry): the next worker writes a
//!   `server_restart` gap from the last position the history holds to the first it will
//!   number, so a client resuming from before it is told.

use crate::gucs;
use crate::queue;
use pgrx::prelude::*;
use realtime_core::change::{Batch, GapReason};
use realtime_core::history::History;
use std::path::Path;
use std::sync::Arc;

/// Open the history (when `realtime.history_size` is not 0) and account for how the last
/// worker left it, moving the next position past everything it holds.
pub fn open() -> Option<Arc<History>> {
    let limits = gucs::history_limits()?;
    // Relative to the data directory, the worker's working directory (as spill files are).
    let dir = Path::new(crate::spill::DIR).join("history");
    let (history, recovered) = match History::open(&dir, limits) {
        Ok(opened) => opened,
        Err(e) => {
            warning!(
                "realtime_ext: could not open the history in {}: {e}; clients cannot resume",
                dir.display()
            );
            return None;
        }
    };
    for refused in &recovered.refused {
        warning!("realtime_ext: history file left unread: {refused}");
    }
    // Whatever was published before now, written or lost, has an older transaction id.
    // SAFETY: reads the id counter in shared memory under its lock.
    history.published_before(unsafe { pg_sys::ReadNextFullTransactionId() }.value as u32);
    let last = recovered.last_position;
    let next = queue::next_position();
    if last == 0 {
        // A new history accounts for what comes after now, not for the past.
        if let Err(e) = history.begin(next - 1) {
            warning!("realtime_ext: could not write to the history: {e}");
        }
    } else if !(recovered.stopped_cleanly && next == last + 1) {
        // Room for a gap of at least one position even if the clock or the queue lag behind.
        let next = next.max(last + 2);
        queue::set_next_position(next);
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
    Some(history)
}

/// Mark a clean stop after `last_position`.
pub fn stop(history: &History, last_position: u64) {
    if let Err(e) = history.stop(last_position) {
        warning!("realtime_ext: could not write to the history: {e}");
    }
}
