//! Two-phase commit. A prepared transaction's changes take their place in commit order when
//! COMMIT PREPARED runs, like any other commit:
//!
//! - PREPARE TRANSACTION: the captured changes go to a state file in `pg_realtime/prepared/`
//!   (fsynced, as the prepared transaction itself survives a crash), not to the queue.
//! - COMMIT PREPARED: before the prepared transaction commits, while it still holds its row
//!   locks, its queue record is reserved (the same argument as PRE_COMMIT in `xact`: a second
//!   writer of one of its rows waits for those locks, so reserves later). The committing
//!   session's own transaction callbacks settle it, and the state file is removed.
//! - ROLLBACK PREPARED: the state file is removed.
//!
//! State file `<fnv64(gid)>-<xid>`: xid u32 | count u32 | spilled u8 | gid len u16 + bytes |
//! body (the events, or the path of a spill file moved next to it).

use super::pending::Captured;
use crate::event::{put_name, Reader};
use pgrx::pg_sys;
use std::cell::RefCell;
use std::io::Write;

use crate::spill::{self, PREPARED_DIR as DIR};

thread_local! {
    /// The gid of the PREPARE TRANSACTION being run: the PRE_PREPARE callback cannot see it.
    static PREPARING: RefCell<Option<String>> = const { RefCell::new(None) };
}

/// A prepared transaction's captured changes, as read back from its state file.
pub struct Prepared {
    pub xid: u32,
    pub count: u32,
    /// Events, or the path of the spill file holding them.
    pub body: Vec<u8>,
    pub spilled: bool,
    pub state_file: String,
}

/// PREPARE TRANSACTION `gid` is about to run.
pub fn preparing(gid: &str) {
    PREPARING.with(|p| *p.borrow_mut() = Some(gid.to_string()))
}

/// The gid of the transaction being prepared (taken once, at PRE_PREPARE).
pub fn take_preparing_gid() -> Option<String> {
    PREPARING.with(|p| p.borrow_mut().take())
}

fn fnv64(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
    })
}

fn prefix(gid: &str) -> String {
    format!("{:016x}-", fnv64(gid.as_bytes()))
}

/// At PRE_PREPARE: write the state file. Returns its path, to remove if PREPARE fails.
pub fn save(gid: &str, captured: Captured) -> std::io::Result<String> {
    std::fs::create_dir_all(DIR)?;
    let (xid, count, spilled, body) = match captured {
        Captured::Inline { xid, count, events } => (xid, count, false, events),
        Captured::Spilled { xid, count, path } => {
            // Moved next to the state file: spill files elsewhere do not survive a restart.
            let kept = spill::beside(&format!("{DIR}/{}{xid}", prefix(gid)));
            std::fs::rename(&path, &kept)?;
            std::fs::File::open(&kept)?.sync_all()?;
            (xid, count, true, kept.into_bytes())
        }
        Captured::Lost { .. } => return Err(std::io::Error::other("changes were lost")),
    };
    let path = format!("{DIR}/{}{xid}", prefix(gid));
    let mut buf = Vec::with_capacity(16 + gid.len() + body.len());
    buf.extend_from_slice(&xid.to_le_bytes());
    buf.extend_from_slice(&count.to_le_bytes());
    buf.push(u8::from(spilled));
    put_name(&mut buf, gid.as_bytes());
    buf.extend_from_slice(&body);
    let mut file = std::fs::File::create(&path)?;
    file.write_all(&buf)?;
    file.sync_all()?;
    std::fs::File::open(DIR)?.sync_all()?;
    Ok(path)
}

fn read(path: &str, gid: &str) -> Option<Prepared> {
    let bytes = std::fs::read(path).ok()?;
    let mut r = Reader::new(&bytes);
    let xid = r.u32()?;
    let count = r.u32()?;
    let spilled = r.take(1)?[0] == 1;
    if r.name()? != gid {
        return None;
    }
    let used = 4 + 4 + 1 + 2 + gid.len();
    Some(Prepared {
        xid,
        count,
        body: bytes[used..].to_vec(),
        spilled,
        state_file: path.to_string(),
    })
}

/// The state files written for `gid`, whichever transactions they were for.
fn files_of(gid: &str) -> Vec<Prepared> {
    let prefix = prefix(gid);
    let Ok(entries) = std::fs::read_dir(DIR) else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|name| name.starts_with(&prefix) && !spill::is_spill(name))
        .filter_map(|name| read(&format!("{DIR}/{name}"), gid))
        .collect()
}

/// The changes of the prepared transaction named `gid`. A gid is prepared by one transaction
/// at a time, so of the files for it only that transaction's is still in progress; files of
/// ended transactions (left by a crash) are removed.
pub fn find(gid: &str) -> Option<Prepared> {
    let mut found = None;
    for p in files_of(gid) {
        // SAFETY: a procarray lookup, from a backend inside a transaction.
        let live = unsafe { pg_sys::TransactionIdIsInProgress(p.xid.into()) };
        if live && found.is_none() {
            found = Some(p);
        } else if !live {
            remove(&p);
        }
    }
    found
}

/// Remove a state file, and the spill file it names.
pub fn remove(p: &Prepared) {
    if p.spilled {
        if let Ok(path) = std::str::from_utf8(&p.body) {
            spill::discard(path);
        }
    }
    spill::discard(&p.state_file);
}

/// ROLLBACK PREPARED succeeded: nothing of that transaction will ever be delivered.
pub fn forget_gid(gid: &str) {
    for p in files_of(gid) {
        // SAFETY: as in `find`.
        if !unsafe { pg_sys::TransactionIdIsInProgress(p.xid.into()) } {
            remove(&p);
        }
    }
}
