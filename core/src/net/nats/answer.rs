//! The worker's answers to edge servers (`ask`): each question goes through the same worker
//! channel a local session's does, with the same time limits, and the answer goes back.
//!
//! Whoever may publish on the ask subject is answered as the principal it names (the worker
//! still refuses privileged roles and roles not granted to realtime.authenticator): it must be
//! an edge, which verified the principal's token. NATS permissions say who may (docs/scaling.md).
//!
//! An edge holds audiences (the row-security judging a subscription joins, `RowAccess::Checked`)
//! as long as it keeps asking: one silent for `LEASE` has them all released, so an edge that
//! died costs the worker no judging. An edge is judged only for audiences it holds.

use super::ask::{self, Answer, Ask, Image, Question, Reply};
use super::settings::Settings;
use crate::bridge::{ResolveError, WorkerHandle};
use crate::change::{AudienceId, Change, Verdict};
use crate::net::apart::Judges;
use crate::net::shared::Shared;
use crate::net::snapshots::{Feed, Snapshots};
use crate::visibility::RowAccess;
use base64::Engine;
use futures_util::StreamExt;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How long an edge's audiences outlive its last question (it says hello every second).
pub const LEASE: Duration = Duration::from_secs(30);
/// Edges answered at once; more are told to retry.
const MAX_EDGES: usize = 1024;
/// Questions being answered at once; more are told the worker is busy.
const MAX_ASKING: usize = 256;
/// How long a snapshot reader no edge reads from is kept.
const PIPE_IDLE: Duration = Duration::from_secs(60);
/// How long a `Read` waits for the reader's next bytes.
const READ_WAIT: Duration = Duration::from_secs(5);
const RETRY_FIRST: Duration = Duration::from_millis(250);
const RETRY_MOST: Duration = Duration::from_secs(10);

/// What answering needs from the worker's network side.
pub struct Answerer {
    pub worker: WorkerHandle,
    pub judges: Arc<Judges>,
    pub shared: Arc<Shared>,
    pub snapshots: Arc<Snapshots>,
    /// Snapshot readers started for edges, by a random id.
    pipes: Mutex<HashMap<u64, Pipe>>,
    /// Random, chosen when the network side started.
    incarnation: u64,
    leases: Mutex<HashMap<u64, Lease>>,
    next_lease: std::sync::atomic::AtomicU64,
}

/// A snapshot reader an edge reads from.
struct Pipe {
    edge: u64,
    feed: Arc<tokio::sync::Mutex<Feed>>,
    used: Instant,
}

/// One edge's audiences, with how many of its subscriptions joined each.
struct Lease {
    seen: Instant,
    /// Told to the edge as part of the incarnation: a lease that lapsed and began again
    /// reads as a restarted worker, so the edge authorizes its sessions again.
    number: u64,
    audiences: HashMap<AudienceId, usize>,
}

impl Answerer {
    pub fn new(
        worker: WorkerHandle,
        judges: Arc<Judges>,
        shared: Arc<Shared>,
        snapshots: Arc<Snapshots>,
    ) -> Answerer {
        Answerer {
            worker,
            judges,
            shared,
            snapshots,
            pipes: Mutex::default(),
            incarnation: uuid::Uuid::new_v4().as_u64_pair().0 | 1,
            leases: Mutex::default(),
            next_lease: 2.into(),
        }
    }

    fn leases(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Lease>> {
        self.leases.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The reply to a question's body.
    async fn reply(&self, body: &[u8]) -> Vec<u8> {
        // Incarnation 0: not answered by any worker (the edge keeps what it knew).
        let (incarnation, answer) = match serde_json::from_slice::<Ask>(body) {
            Ok(ask) => match self.renew(ask.edge) {
                Some(lease) => (self.incarnation ^ lease, self.answer(ask).await),
                None => (0, Err(ResolveError::Unavailable)),
            },
            Err(e) => (
                0,
                Err(ResolveError::Internal(format!("unreadable question: {e}"))),
            ),
        };
        serde_json::to_vec(&Reply {
            incarnation,
            answer,
        })
        .expect("replies serialize")
    }

    /// Note that `edge` asked; its lease's number, or `None` when too many edges hold one.
    fn renew(&self, edge: u64) -> Option<u64> {
        let mut leases = self.leases();
        if !leases.contains_key(&edge) && leases.len() >= MAX_EDGES {
            return None;
        }
        // Even, so that with the odd incarnation no reply says 0.
        let number = self
            .next_lease
            .fetch_add(2, std::sync::atomic::Ordering::Relaxed);
        let lease = leases.entry(edge).or_insert_with(|| Lease {
            seen: Instant::now(),
            number,
            audiences: HashMap::new(),
        });
        lease.seen = Instant::now();
        Some(lease.number)
    }

    async fn answer(&self, ask: Ask) -> Result<Answer, ResolveError> {
        let edge = ask.edge;
        match ask.question {
            Question::Hello => Ok(Answer::Done),
            Question::Authorize { principal } => {
                self.worker.authorize(Arc::new(principal)).await?;
                Ok(Answer::Done)
            }
            Question::Resolve {
                target,
                filter,
                principal,
            } => {
                let resolved = self
                    .worker
                    .resolve(target, filter, Arc::new(principal))
                    .await?;
                if let RowAccess::Checked(audience) = resolved.rows {
                    let held = self.leases().get_mut(&edge).map(|lease| {
                        *lease.audiences.entry(audience).or_default() += 1;
                    });
                    // The lease lapsed while the worker answered: nobody will release it.
                    if held.is_none() {
                        self.worker.release(audience);
                        return Err(ResolveError::Unavailable);
                    }
                }
                Ok(Answer::Resolved(resolved))
            }
            Question::Tables { principal } => Ok(Answer::Tables(
                self.worker.tables(Arc::new(principal)).await?,
            )),
            Question::Release { audience } => {
                let mut leases = self.leases();
                let held = leases
                    .get_mut(&edge)
                    .and_then(|lease| lease.audiences.get_mut(&audience));
                if let Some(n) = held {
                    *n -= 1;
                    if *n == 0 {
                        leases.get_mut(&edge).map(|l| l.audiences.remove(&audience));
                    }
                    drop(leases);
                    self.worker.release(audience);
                }
                Ok(Answer::Done)
            }
            Question::Snapshot { spec } => {
                let most = self.shared.limits().max_snapshot_workers;
                let feed = self
                    .snapshots
                    .read(&self.worker, &spec, most)
                    .await
                    .map_err(|e| ResolveError::Internal(e.to_string()))?;
                let pipe = uuid::Uuid::new_v4().as_u64_pair().0;
                let feed = Arc::new(tokio::sync::Mutex::new(feed));
                let used = Instant::now();
                self.pipes().insert(pipe, Pipe { edge, feed, used });
                Ok(Answer::Pipe(pipe))
            }
            Question::Read { pipe } => {
                let feed = match self.pipes().get_mut(&pipe) {
                    Some(p) if p.edge == edge => {
                        p.used = Instant::now();
                        p.feed.clone()
                    }
                    _ => return Err(ResolveError::Internal("no such snapshot reader".into())),
                };
                let mut buf = vec![0; ask::PIPE_CHUNK];
                let mut feed = feed.lock().await;
                let read = tokio::time::timeout(READ_WAIT, feed.read_raw(&mut buf)).await;
                let n = match read {
                    Ok(Ok(n)) => n,
                    Ok(Err(_)) => 0,
                    // Nothing yet: an empty answer, and the edge asks again.
                    Err(_) => return Ok(bytes(&[], false)),
                };
                if n == 0 {
                    self.pipes().remove(&pipe);
                }
                Ok(bytes(&buf[..n], n == 0))
            }
            Question::Close { pipe } => {
                let mut pipes = self.pipes();
                if pipes.get(&pipe).is_some_and(|p| p.edge == edge) {
                    pipes.remove(&pipe);
                }
                Ok(Answer::Done)
            }
            Question::Judge { audience, changes } => {
                let held = self
                    .leases()
                    .get(&edge)
                    .is_some_and(|lease| lease.audiences.contains_key(&audience));
                if !held || changes.len() > ask::MOST_JUDGED {
                    return Ok(Answer::Verdicts(vec![Verdict::FAILED; changes.len()]));
                }
                let changes = changes.into_iter().map(Image::change).collect();
                let judged = self.worker.judge(audience, changes).await?;
                Ok(Answer::Verdicts(self.verdicts(audience, judged).await))
            }
        }
    }

    /// The verdicts the worker attached for `audience`, with those it left to the judge
    /// (an audience judged apart) asked of the judge here: an edge has none.
    async fn verdicts(&self, audience: AudienceId, changes: Vec<Change>) -> Vec<Verdict> {
        let mut verdicts: Vec<Verdict> = changes
            .iter()
            .map(|c| c.verdict(audience).unwrap_or(Verdict::FAILED))
            .collect();
        let apart: Vec<usize> = (0..verdicts.len()).filter(|&i| verdicts[i].apart).collect();
        if apart.is_empty() {
            return verdicts;
        }
        let visible = match self.shared.apart(audience) {
            Some(spec) => {
                let waiting: Vec<&Change> = apart.iter().map(|&i| &changes[i]).collect();
                self.judges.judge(&self.worker, &spec, &waiting).await.ok()
            }
            None => None,
        };
        for (n, &i) in apart.iter().enumerate() {
            verdicts[i] = match &visible {
                Some(v) => Verdict {
                    new_visible: v[n][0],
                    old_visible: v[n][1],
                    failed: false,
                    apart: false,
                },
                None => Verdict::FAILED,
            };
        }
        verdicts
    }

    fn pipes(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Pipe>> {
        self.pipes.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Release the audiences of edges silent for longer than `LEASE`, and stop the snapshot
    /// readers nobody reads from.
    fn sweep(&self) {
        {
            let leases = self.leases();
            self.pipes()
                .retain(|_, p| p.used.elapsed() < PIPE_IDLE && leases.contains_key(&p.edge));
        }
        let lapsed: Vec<Lease> = {
            let mut leases = self.leases();
            let gone: Vec<u64> = leases
                .iter()
                .filter(|(_, lease)| lease.seen.elapsed() > LEASE)
                .map(|(edge, _)| *edge)
                .collect();
            gone.iter().filter_map(|edge| leases.remove(edge)).collect()
        };
        for lease in lapsed {
            for (audience, n) in lease.audiences {
                for _ in 0..n {
                    self.worker.release(audience);
                }
            }
        }
    }
}

/// Answer edges until aborted, reconnecting after failures.
pub async fn run(settings: Settings, answerer: Arc<Answerer>) {
    let sweeper = answerer.clone();
    let _sweeping = AbortOnDrop(tokio::spawn(async move {
        let mut every = tokio::time::interval(Duration::from_secs(1));
        loop {
            every.tick().await;
            sweeper.sweep();
        }
    }));
    let mut wait = RETRY_FIRST;
    let mut told: Option<String> = None;
    loop {
        let started = Instant::now();
        let error = serve(&settings, &answerer).await;
        if told.as_deref() != Some(error.as_str()) {
            eprintln!(
                "realtime_ext: answering edge servers through NATS at {} stopped: {error}; trying again",
                settings.shown_url()
            );
            told = Some(error);
        }
        if started.elapsed() > RETRY_MOST * 3 {
            wait = RETRY_FIRST;
        }
        tokio::time::sleep(wait).await;
        wait = (wait * 2).min(RETRY_MOST);
    }
}

fn bytes(data: &[u8], end: bool) -> Answer {
    Answer::Bytes {
        data: base64::engine::general_purpose::STANDARD.encode(data),
        end,
    }
}

struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

async fn serve(settings: &Settings, answerer: &Arc<Answerer>) -> String {
    let client = match async_nats::ConnectOptions::new()
        .name("realtime_ext answers")
        .connect(settings.url.as_str())
        .await
    {
        Ok(client) => client,
        Err(e) => return format!("cannot connect: {e}"),
    };
    // A queue group: were two workers ever answering one stream, each question gets one answer.
    let subject = ask::subject(&settings.stream);
    let mut questions = match client.queue_subscribe(subject, "realtime".into()).await {
        Ok(questions) => questions,
        Err(e) => return format!("cannot subscribe: {e}"),
    };
    let asking = Arc::new(tokio::sync::Semaphore::new(MAX_ASKING));
    while let Some(question) = questions.next().await {
        let Some(reply_to) = question.reply else {
            continue;
        };
        let (client, answerer) = (client.clone(), answerer.clone());
        let Ok(permit) = asking.clone().try_acquire_owned() else {
            let busy = Reply {
                incarnation: 0,
                answer: Err(ResolveError::Unavailable),
            };
            let busy = serde_json::to_vec(&busy).expect("replies serialize");
            let _ = client.publish(reply_to, busy.into()).await;
            continue;
        };
        tokio::spawn(async move {
            let body = answerer.reply(&question.payload).await;
            let _ = client.publish(reply_to, body.into()).await;
            drop(permit);
        });
    }
    "the connection closed".to_string()
}
