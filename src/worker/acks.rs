//! How far each webhook's receiver has acknowledged, as soon as it has: one small file per
//! webhook under `pg_realtime/webhooks/`, rewritten in place at every acknowledgement.
//!
//! Why beside `realtime.webhooks.position`: that column is written back a few times a second,
//! without waiting for its WAL flush, so a crash forgets the last acknowledgements and the
//! receiver would get those changes again although it had said yes to them. A write to a file
//! outlives a crash of any process (the kernel holds the page), so after one only a request
//! whose answer never came is sent again. After a crash of the machine a file may hold an
//! older position than the column: the further of the two counts.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;

const DIR: &str = "pg_realtime/webhooks";

#[derive(Default)]
pub struct Acks {
    /// Per webhook: its file, and the furthest (generation, position) written to it.
    files: HashMap<i64, (File, (i64, u64))>,
}

impl Acks {
    /// Webhook `id`'s receiver acknowledged through `position` in `generation`; an older
    /// report (of an earlier generation, or overtaken) changes nothing.
    pub fn acknowledged(&mut self, id: i64, generation: i64, position: u64) {
        if let Some((_, furthest)) = self.files.get(&id) {
            if (generation, position) <= *furthest {
                return;
            }
        }
        let file = match self.files.remove(&id) {
            Some((file, _)) => file,
            None => match open(id) {
                Ok(file) => file,
                // The column still records it, a moment later.
                Err(_) => return,
            },
        };
        let mut bytes = [0u8; 16];
        bytes[..8].copy_from_slice(&generation.to_le_bytes());
        bytes[8..].copy_from_slice(&position.to_le_bytes());
        let _ = file.write_all_at(&bytes, 0);
        self.files.insert(id, (file, (generation, position)));
    }

    /// Forget the files of webhooks that no longer exist (`ids` are those that do).
    pub fn retain(&mut self, ids: &[i64]) {
        self.files.retain(|id, _| ids.contains(id));
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
}

/// The furthest position webhook `id` acknowledged in `replayed_generation` or later, as its
/// file says.
pub fn read(id: i64, replayed_generation: i64) -> Option<u64> {
    let mut bytes = [0u8; 16];
    File::open(format!("{DIR}/{id}"))
        .and_then(|f| f.read_exact_at(&mut bytes, 0))
        .ok()?;
    let generation = i64::from_le_bytes(bytes[..8].try_into().ok()?);
    let position = u64::from_le_bytes(bytes[8..].try_into().ok()?);
    (generation >= replayed_generation).then_some(position)
}

fn open(id: i64) -> std::io::Result<File> {
    std::fs::create_dir_all(DIR)?;
    OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(format!("{DIR}/{id}"))
}
