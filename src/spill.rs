//! Files under `$PGDATA/pg_realtime/`: a transaction's changes spill to `<pid>-<xid>.spill`
//! once they outgrow realtime.spill_threshold, and prepared transactions keep their changes in
//! `prepared/` until COMMIT PREPARED. (`history/` beside them is the history's.) Every path, creation and removal of them is here.

use std::fs::File;
use std::path::Path;

/// Relative to the data directory, which is every backend's working directory.
pub const DIR: &str = "pg_realtime";
/// Prepared transactions' state files, and spill files moved next to them.
pub const PREPARED_DIR: &str = "pg_realtime/prepared";
const EXTENSION: &str = "spill";

/// A new spill file for transaction `xid` of backend `pid`, and its path.
pub fn create(pid: i32, xid: u32) -> std::io::Result<(File, String)> {
    std::fs::create_dir_all(DIR)?;
    let path = format!("{DIR}/{pid}-{xid}.{EXTENSION}");
    Ok((File::create(&path)?, path))
}

/// Where a prepared transaction's spill file lives: next to its state file `state`.
pub fn beside(state: &str) -> String {
    format!("{state}.{EXTENSION}")
}

pub fn is_spill(name: &str) -> bool {
    Path::new(name).extension().is_some_and(|e| e == EXTENSION)
}

/// Remove a file nobody will read again; one already gone is fine.
pub fn discard(path: impl AsRef<Path>) {
    let _ = std::fs::remove_file(path);
}

/// At server start (or after a crash): spill files whose records did not carry over in the
/// queue will not be read. `keep` names the files that stay: those records', the queue's.
/// Prepared transactions' files outlive restarts, as those transactions do, except a spill
/// file whose state file is gone: its transaction committed and its record was read.
pub fn clear_orphans(keep: &[String]) {
    if let Ok(entries) = std::fs::read_dir(DIR) {
        for entry in entries.flatten() {
            let path = entry.path();
            let kept = path.to_str().is_some_and(|p| keep.iter().any(|k| k == p));
            if entry.file_type().is_ok_and(|t| t.is_file()) && !kept {
                discard(path);
            }
        }
    }
    if let Ok(entries) = std::fs::read_dir(PREPARED_DIR) {
        for path in entries.flatten().map(|e| e.path()) {
            let orphan = path.extension().is_some_and(|e| e == EXTENSION)
                && !path.with_extension("").exists();
            if orphan {
                discard(path);
            }
        }
    }
}
