//! Judging apart. An audience whose policies ran past their share of the worker's time, or
//! failed, is judged apart from then on, by the judge: a background worker of its own (on the
//! Postgres side, `worker::apart`), so that it never again holds up the worker that judges
//! everyone else's changes. Only that audience's sessions wait for it.
//!
//! The worker starts the judge when a session first needs it; the judge connects to `SOCKET`
//! and then answers one job at a time: a `Job` (length-prefixed JSON), then an `Answer`.

use crate::bridge::WorkerHandle;
use crate::change::Change;
use crate::visibility::ApartSpec;
use serde::{Deserialize, Serialize};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::oneshot;

/// Relative to the data directory, as the snapshot socket.
pub const SOCKET: &str = "pg_realtime/judge.sock";
/// Longest the judge may spend on one job: it cancels its statement past it.
pub const JOB_TIME_LIMIT: Duration = Duration::from_secs(10);
/// How long a started judge may take to connect.
const CONNECT_WAIT: Duration = Duration::from_secs(30);
/// Largest answer read back (two booleans per change).
const MAX_ANSWER: u32 = 64 << 20;

/// What the judge is asked: which of these row images (new then old per change, `None` where
/// a change has none) the audience `spec` describes may see.
#[derive(Serialize, Deserialize)]
pub struct Job {
    pub spec: ApartSpec,
    pub images: Vec<[Option<String>; 2]>,
}

/// The judge's answer: for each change, whether its new and its old image are visible; or
/// why the policies failed.
#[derive(Serialize, Deserialize)]
pub enum Answer {
    Visible(Vec<[bool; 2]>),
    Failed(String),
}

#[derive(Default)]
pub struct Judges {
    /// The judge's connection; jobs take turns on it.
    judge: tokio::sync::Mutex<Option<UnixStream>>,
    /// Where the next judge to connect is handed over.
    arriving: Mutex<Option<oneshot::Sender<UnixStream>>>,
}

impl Judges {
    /// Accept judges on `path` (replacing a socket a previous worker left).
    pub fn listen(
        self: &Arc<Self>,
        path: &Path,
    ) -> std::io::Result<impl std::future::Future<Output = ()>> {
        let _ = std::fs::remove_file(path);
        let listener = UnixListener::bind(path)?;
        let me = self.clone();
        Ok(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let waiting = me.arriving.lock().unwrap_or_else(|e| e.into_inner()).take();
                if let Some(waiting) = waiting {
                    let _ = waiting.send(stream);
                }
            }
        })
    }

    /// What the audience `spec` describes may see of `changes` (new and old image of each).
    pub async fn judge(
        &self,
        worker: &WorkerHandle,
        spec: &ApartSpec,
        changes: &[&Change],
    ) -> Result<Vec<[bool; 2]>, String> {
        let job = Job {
            spec: spec.clone(),
            images: changes
                .iter()
                .map(|c| {
                    [
                        c.new.as_deref().map(str::to_string),
                        c.old.as_deref().map(str::to_string),
                    ]
                })
                .collect(),
        };
        let job = serde_json::to_vec(&job).map_err(|e| e.to_string())?;
        let mut judge = self.judge.lock().await;
        if judge.is_none() {
            *judge = Some(self.start(worker).await?);
        }
        let stream = judge.as_mut().expect("connected above");
        // A little past the judge's own limit: it answers `Failed` first.
        let limit = JOB_TIME_LIMIT + Duration::from_secs(2);
        match tokio::time::timeout(limit, exchange(stream, &job)).await {
            Ok(Ok(Answer::Visible(visible))) if visible.len() == changes.len() => Ok(visible),
            Ok(Ok(Answer::Failed(why))) => Err(why),
            answer => {
                // Broken, late or nonsense: the next job starts another judge.
                *judge = None;
                Err(match answer {
                    Err(_) => "the judge did not answer in time".to_string(),
                    Ok(Err(e)) => format!("the judge stopped: {e}"),
                    Ok(Ok(_)) => "the judge answered for other changes".to_string(),
                })
            }
        }
    }

    /// Have the worker start a judge and wait for it to connect.
    async fn start(&self, worker: &WorkerHandle) -> Result<UnixStream, String> {
        let (tx, rx) = oneshot::channel();
        *self.arriving.lock().unwrap_or_else(|e| e.into_inner()) = Some(tx);
        worker
            .start_judge()
            .await
            .map_err(|e| format!("the judge could not be started: {e}"))?;
        tokio::time::timeout(CONNECT_WAIT, rx)
            .await
            .map_err(|_| format!("the judge did not connect within {CONNECT_WAIT:?}"))?
            .map_err(|_| "the judge did not connect".to_string())
    }
}

async fn exchange(stream: &mut UnixStream, job: &[u8]) -> std::io::Result<Answer> {
    stream.write_u32_le(job.len() as u32).await?;
    stream.write_all(job).await?;
    let len = stream.read_u32_le().await?;
    if len > MAX_ANSWER {
        return Err(std::io::Error::other("answer too large"));
    }
    let mut answer = vec![0; len as usize];
    stream.read_exact(&mut answer).await?;
    serde_json::from_slice(&answer).map_err(std::io::Error::other)
}
