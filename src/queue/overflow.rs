//! Where the change queue continues when its ring is full: one file, `pg_realtime/queue.overflow`,
//! holding records in the ring's own framing (u32 length, then the record). A writer that finds
//! no room in the ring appends its record here instead, under the queue's lock, and so does
//! every writer after it until the worker has read the file to its end: records still leave in
//! the order they were reserved, and a committed transaction is lost only if the disk refuses
//! it. The worker then empties the file and writers return to the ring.
//!
//! Offsets here are the file's; the queue keeps the logical offsets (which only grow) and the
//! logical offset of the file's first byte. Every process opens the file once and keeps it.

use std::cell::RefCell;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;

/// Relative to the data directory, every backend's working directory.
pub const PATH: &str = "pg_realtime/queue.overflow";

thread_local! {
    static FILE: RefCell<Option<File>> = const { RefCell::new(None) };
}

fn with_file<T>(f: impl FnOnce(&File) -> io::Result<T>) -> io::Result<T> {
    FILE.with(|file| {
        let mut file = file.borrow_mut();
        if file.is_none() {
            std::fs::create_dir_all(crate::spill::DIR)?;
            *file = Some(
                OpenOptions::new()
                    .read(true)
                    .write(true)
                    .create(true)
                    .truncate(false)
                    .open(PATH)?,
            );
        }
        f(file.as_ref().expect("opened above"))
    })
}

/// Append the record made of `parts`, length first, at file offset `at`; its framed length.
pub fn write_record(at: u64, parts: &[&[u8]]) -> io::Result<u64> {
    let len: usize = parts.iter().map(|p| p.len()).sum();
    let mut framed = Vec::with_capacity(4 + len);
    framed.extend_from_slice(&(len as u32).to_le_bytes());
    for p in parts {
        framed.extend_from_slice(p);
    }
    with_file(|f| f.write_all_at(&framed, at))?;
    Ok(framed.len() as u64)
}

pub fn write_at(at: u64, bytes: &[u8]) -> io::Result<()> {
    with_file(|f| f.write_all_at(bytes, at))
}

/// Append `len` bytes from file offset `at` to `out`.
pub fn read(at: u64, len: usize, out: &mut Vec<u8>) -> io::Result<()> {
    let start = out.len();
    out.resize(start + len, 0);
    let read = with_file(|f| f.read_exact_at(&mut out[start..], at));
    if read.is_err() {
        out.truncate(start);
    }
    read
}

/// Everything in the file was read: give its space back.
pub fn empty() -> io::Result<()> {
    with_file(|f| f.set_len(0))
}

/// When the queue starts empty: whatever an earlier queue left here will not be read.
pub fn remove() {
    FILE.with(|file| file.borrow_mut().take());
    let _ = std::fs::remove_file(PATH);
}
