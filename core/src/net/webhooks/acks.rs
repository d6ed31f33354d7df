//! How far each webhook's receiver has acknowledged, written the moment it answers: one
//! 16-byte file per webhook under `pg_realtime/webhooks/` (generation, position), rewritten in
//! place by the webhook's delivery task.
//!
//! Why beside `realtime.webhooks.position`: the worker writes that column back a few times a
//! second, without waiting for its WAL flush, and hears of each acknowledgement only when it
//! next reads its reports; a crash forgets what it had not yet written, and the receiver
//! would get those changes again although it had said yes to them. A write to a file
//! outlives a crash of any process (the kernel holds the page), so after one only a request
//! whose answer never came is sent again. After a crash of the machine a file may hold an
//! older position than the column: the worker counts the further of the two.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;

pub const DIR: &str = "pg_realtime/webhooks";

/// One webhook's file, kept open by its delivery task.
pub struct Ack {
    /// `None`: it could not be opened; the column still records the position, a moment later.
    file: Option<File>,
    generation: i64,
}

impl Ack {
    pub fn open(id: i64, generation: i64) -> Ack {
        let file = std::fs::create_dir_all(DIR).and_then(|()| {
            OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .open(format!("{DIR}/{id}"))
        });
        Ack {
            file: file.ok(),
            generation,
        }
    }

    /// The receiver acknowledged (or the webhook skipped) through `position`.
    pub fn through(&self, position: u64) {
        let Some(file) = &self.file else { return };
        let mut bytes = [0u8; 16];
        bytes[..8].copy_from_slice(&self.generation.to_le_bytes());
        bytes[8..].copy_from_slice(&position.to_le_bytes());
        // Best effort, as above: a failed write leaves the column to count.
        let _ = file.write_all_at(&bytes, 0);
    }
}

/// The furthest position webhook `id` acknowledged in `replayed_generation` or later, as its
/// file says (a replay starts a generation, and what came before it no longer counts).
pub fn read(id: i64, replayed_generation: i64) -> Option<u64> {
    let mut bytes = [0u8; 16];
    File::open(format!("{DIR}/{id}"))
        .and_then(|f| f.read_exact_at(&mut bytes, 0))
        .ok()?;
    let generation = i64::from_le_bytes(bytes[..8].try_into().ok()?);
    let position = u64::from_le_bytes(bytes[8..].try_into().ok()?);
    (generation >= replayed_generation).then_some(position)
}

/// Remove the files of webhooks that no longer exist (`ids` are those that do).
pub fn retain(ids: &[i64]) {
    let Ok(entries) = std::fs::read_dir(DIR) else {
        return;
    };
    for entry in entries.flatten() {
        let id = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<i64>().ok());
        if id.is_none_or(|id| !ids.contains(&id)) {
            let _ = std::fs::remove_file(entry.path());
        }
    }
}
