//! Reading the history back for one subscriber, a bounded chunk at a time: a subscription
//! that resumes (`since`), and a subscriber that fell out of the in-memory fan-out and goes
//! on from where it left off.
//!
//! Files are read on tokio's blocking threads, one chunk per trip, so thousands of
//! subscribers catching up at once never hold a thread each; a subscriber holds at most one
//! chunk (`CHUNK` changes or `CHUNK_BYTES` of row images) at a time.

use crate::change::{Batch, Change, GapReason};
use crate::history::{History, Reader};
use std::collections::VecDeque;
use std::sync::Arc;
use tokio::task::JoinHandle;

/// Changes per batch read back, and the bytes of row images past which one is cut short.
const CHUNK: usize = 256;
const CHUNK_BYTES: usize = 1 << 20;

/// What the history holds after a position, read in order.
pub struct Backlog {
    history: Arc<History>,
    /// The last position read so far.
    after: u64,
    /// Read through this position; `None`: through whatever the history holds when it is
    /// reached, following it as it grows (a subscriber catching up).
    through: Option<u64>,
    reader: Option<Reader>,
    /// Where the current reader stops.
    reader_end: u64,
    /// A chunk being read (kept here, so that a caller that stops waiting loses nothing).
    reading: Option<JoinHandle<(Reader, Vec<Batch>)>>,
    ready: VecDeque<Batch>,
}

impl Backlog {
    pub fn new(history: Arc<History>, after: u64, through: Option<u64>) -> Backlog {
        Backlog {
            history,
            after,
            through,
            reader: None,
            reader_end: after,
            reading: None,
            ready: VecDeque::new(),
        }
    }

    /// The next batch, or `None` once everything up to `through` (or everything the history
    /// holds) was read. Cancel-safe: a read in flight is resumed by the next call.
    pub async fn next(&mut self) -> Option<Batch> {
        loop {
            if let Some(batch) = self.ready.pop_front() {
                self.after = self.after.max(batch.last_position());
                return Some(batch);
            }
            if self.reading.is_none() {
                let reader = match self.reader.take() {
                    Some(reader) => reader,
                    None => {
                        let end = self.through.unwrap_or_else(|| self.history.last());
                        if end <= self.after {
                            return None;
                        }
                        self.reader_end = end;
                        self.history.read(self.after, end)
                    }
                };
                self.reading = Some(tokio::task::spawn_blocking(move || {
                    let mut reader = reader;
                    let chunk = read_chunk(&mut reader);
                    (reader, chunk)
                }));
            }
            let reading = self.reading.as_mut().expect("a read is in flight");
            let read = reading.await;
            self.reading = None;
            match read {
                Ok((reader, chunk)) if !chunk.is_empty() => {
                    self.reader = Some(reader);
                    self.ready.extend(chunk);
                }
                // That reader is done (what it did not return was not for clients); a
                // catching-up subscriber looks again for more.
                Ok(_) if self.through.is_none() => self.after = self.after.max(self.reader_end),
                Ok(_) => return None,
                // The blocking pool is shutting down with the server.
                Err(_) => {
                    let (from, to) = (self.after + 1, self.through.unwrap_or(self.after + 1));
                    self.after = to;
                    return Some(Batch::Gap {
                        reason: GapReason::HistoryLost,
                        first_position: from,
                        last_position: to,
                        topics: None,
                    });
                }
            }
        }
    }
}

/// The next stretch: a batch of up to `CHUNK` changes or `CHUNK_BYTES` of images (at least
/// one change), a gap or end on its own; empty at the end.
fn read_chunk(reader: &mut Reader) -> Vec<Batch> {
    let mut out = Vec::new();
    let mut changes: Vec<Change> = Vec::new();
    let mut bytes = 0;
    for batch in reader.by_ref() {
        match batch {
            Batch::Changes(mut more) => {
                bytes += more.iter().map(Change::image_bytes).sum::<usize>();
                changes.append(&mut more);
                if changes.len() >= CHUNK || bytes >= CHUNK_BYTES {
                    break;
                }
            }
            other => {
                if !changes.is_empty() {
                    out.push(Batch::Changes(std::mem::take(&mut changes)));
                }
                out.push(other);
                return out;
            }
        }
    }
    if !changes.is_empty() {
        out.push(Batch::Changes(changes));
    }
    out
}
