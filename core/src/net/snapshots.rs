//! The network side of snapshot reads. A session that subscribes with `snapshot: true` takes a
//! ticket, asks the worker to start a snapshot reader (a dynamic background worker, which can
//! call Postgres, unlike these threads) for it, and waits here for that reader to connect to
//! the snapshot socket and name its ticket. The session then sends it the `Spec` and reads its
//! `Frame`s. At most `realtime.max_snapshot_workers` readers run at once, and one role holds
//! at most all but one of them (`per_role`), so that no role can keep every other waiting;
//! more sessions wait. A session reads one snapshot at a time.

use crate::bridge::WorkerHandle;
use crate::snapshot::{Frame, Spec, MAX_FRAME};
use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{oneshot, Notify};

/// The socket readers connect to, relative to the data directory (the worker's and the
/// readers' working directory).
pub const SOCKET: &str = "pg_realtime/snapshot.sock";
/// How long a started reader may take to connect.
const CONNECT_WAIT: Duration = Duration::from_secs(30);

#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error("the snapshot reader could not be started: {0}")]
    Start(String),
    #[error("the snapshot reader did not connect within {0:?}")]
    NoReader(Duration),
    #[error("the snapshot failed: {0}")]
    Failed(String),
    #[error("the snapshot reader stopped before the end")]
    Broken,
    #[error("the client did not read the snapshot for {0:?}, so its reader was stopped")]
    Stalled(Duration),
}

/// Readers one role may hold when `max` may run.
pub fn per_role(max: usize) -> usize {
    max.saturating_sub(1).max(1)
}

#[derive(Default)]
pub struct Snapshots {
    waiting: Mutex<HashMap<u64, oneshot::Sender<UnixStream>>>,
    running: AtomicUsize,
    /// Readers running per role (changed under its lock with `running`).
    roles: Mutex<HashMap<String, usize>>,
    freed: Notify,
    tickets: AtomicU64,
}

impl Snapshots {
    /// Accept readers on `path` (replacing a socket a previous worker left).
    pub fn listen(
        self: &Arc<Self>,
        path: &Path,
    ) -> std::io::Result<impl std::future::Future<Output = ()>> {
        let _ = std::fs::remove_file(path);
        let listener = UnixListener::bind(path)?;
        let me = self.clone();
        Ok(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let me = me.clone();
                tokio::spawn(async move { me.arrived(stream).await });
            }
        })
    }

    /// A reader connected: hand it to the session that holds its ticket.
    async fn arrived(&self, mut stream: UnixStream) {
        let Ok(Ok(ticket)) = tokio::time::timeout(CONNECT_WAIT, stream.read_u64_le()).await else {
            return;
        };
        let waiter = self
            .waiting
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&ticket);
        if let Some(waiter) = waiter {
            let _ = waiter.send(stream);
        }
    }

    /// Start a reader for `spec` (waiting while `max` already run) and return what it sends.
    pub async fn read(
        self: &Arc<Self>,
        worker: &WorkerHandle,
        spec: &Spec,
        max: usize,
    ) -> Result<Feed, SnapshotError> {
        let slot = self.slot(&spec.role, max).await;
        // Unique, and not guessable by another session (only this server's processes can
        // reach the socket in any case).
        let ticket = self.tickets.fetch_add(1, Relaxed) ^ random();
        let (tx, rx) = oneshot::channel();
        self.waiting
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(ticket, tx);
        let _forget = Forget(self.clone(), ticket);
        worker
            .start_snapshot(ticket)
            .await
            .map_err(|e| SnapshotError::Start(e.to_string()))?;
        let mut stream = tokio::time::timeout(CONNECT_WAIT, rx)
            .await
            .map_err(|_| SnapshotError::NoReader(CONNECT_WAIT))?
            .map_err(|_| SnapshotError::Broken)?;
        let spec = serde_json::to_vec(spec).expect("a spec serializes");
        stream
            .write_u32_le(spec.len() as u32)
            .await
            .map_err(|_| SnapshotError::Broken)?;
        stream
            .write_all(&spec)
            .await
            .map_err(|_| SnapshotError::Broken)?;
        Ok(Feed {
            stream,
            _slot: slot,
        })
    }

    async fn slot(self: &Arc<Self>, role: &str, max: usize) -> Slot {
        let max = max.max(1);
        loop {
            let freed = self.freed.notified();
            {
                let mut roles = self.roles.lock().unwrap_or_else(|e| e.into_inner());
                let held = roles.get(role).copied().unwrap_or(0);
                if self.running.load(Relaxed) < max && held < per_role(max) {
                    self.running.fetch_add(1, Relaxed);
                    roles.insert(role.to_string(), held + 1);
                    return Slot(self.clone(), role.to_string());
                }
            }
            freed.await;
        }
    }

    /// Readers running now.
    pub fn running(&self) -> usize {
        self.running.load(Relaxed)
    }
}

/// A reader's place among the `max` that may run, and its role's; given back when dropped.
struct Slot(Arc<Snapshots>, String);

impl Drop for Slot {
    fn drop(&mut self) {
        {
            let mut roles = self.0.roles.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(n) = roles.get_mut(&self.1) {
                *n -= 1;
                if *n == 0 {
                    roles.remove(&self.1);
                }
            }
            self.0.running.fetch_sub(1, Relaxed);
        }
        // Every waiter looks again: the first in line may be of a role still at its bound.
        self.0.freed.notify_waiters();
    }
}

/// Withdraws a ticket nobody came for.
struct Forget(Arc<Snapshots>, u64);

impl Drop for Forget {
    fn drop(&mut self) {
        self.0
            .waiting
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&self.1);
    }
}

fn random() -> u64 {
    use std::hash::{BuildHasher, RandomState};
    RandomState::new().hash_one(std::time::SystemTime::now())
}

/// What one reader sends. Dropping it closes the socket, which stops the reader.
pub struct Feed {
    stream: UnixStream,
    _slot: Slot,
}

impl Feed {
    /// The reader's bytes as they come, frames unread (to pass on elsewhere); 0: it stopped.
    pub async fn read_raw(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        self.stream.read(buf).await
    }

    pub async fn next(&mut self) -> Result<Frame, SnapshotError> {
        let kind = self
            .stream
            .read_u8()
            .await
            .map_err(|_| SnapshotError::Broken)?;
        let len = self
            .stream
            .read_u32_le()
            .await
            .map_err(|_| SnapshotError::Broken)?;
        if len > MAX_FRAME {
            return Err(SnapshotError::Broken);
        }
        let mut payload = vec![0; len as usize];
        self.stream
            .read_exact(&mut payload)
            .await
            .map_err(|_| SnapshotError::Broken)?;
        match Frame::decode(kind, payload) {
            Some(Frame::Failed(why)) => Err(SnapshotError::Failed(why)),
            Some(frame) => Ok(frame),
            None => Err(SnapshotError::Broken),
        }
    }
}
