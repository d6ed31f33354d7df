//! The worker, asked over NATS: what a local session would ask through the worker channel
//! (`bridge::Request`) goes as a question (`net::nats::ask`) to the database host's worker,
//! and its answer comes back the same way. Sessions cannot tell the difference, but in two
//! places:
//! - live changes come from the stream without the worker's verdicts: the feed asks for them,
//!   once per batch for each audience held here (`Held`), before it hands the batch out;
//! - a reply from another incarnation of the worker means the audiences held are gone: the
//!   feed then has every session authorize again (`restarted`).

use crate::bridge::{Request, RequestInbox, ResolveError, Resolved};
use crate::change::{AudienceId, Batch, Change, Topic, Verdict};
use crate::net::nats::ask::{self, Answer, Ask, Image, Question, Reply};
use crate::net::shared::Shared;
use crate::visibility::RowAccess;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;

/// How often the edge says hello: its lease on the worker, and how a restart is seen.
const HELLO_EVERY: Duration = Duration::from_secs(1);

pub struct Remote {
    client: async_nats::Client,
    subject: String,
    /// This edge, for the worker's leases; random per start.
    edge: u64,
    /// The worker's incarnation last seen (0: none yet).
    incarnation: AtomicU64,
    restarted: mpsc::UnboundedSender<()>,
    /// Tickets of snapshots to stand in a reader for.
    snapshots: mpsc::UnboundedSender<u64>,
    shared: Arc<Shared>,
    held: std::sync::Mutex<Held>,
}

/// The audiences this edge's subscriptions joined (`RowAccess::Checked`), each with its topic
/// and how many joined it, and the last position the feed took the list for.
#[derive(Default)]
struct Held {
    audiences: std::collections::HashMap<AudienceId, (Topic, usize)>,
    through: u64,
}

impl Remote {
    pub fn new(
        client: async_nats::Client,
        stream: &str,
        shared: Arc<Shared>,
        restarted: mpsc::UnboundedSender<()>,
        snapshots: mpsc::UnboundedSender<u64>,
    ) -> Remote {
        Remote {
            client,
            subject: ask::subject(stream),
            edge: uuid::Uuid::new_v4().as_u64_pair().0,
            incarnation: AtomicU64::new(0),
            restarted,
            snapshots,
            shared,
            held: Default::default(),
        }
    }

    fn held(&self) -> std::sync::MutexGuard<'_, Held> {
        self.held.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A subscription joined `audience`: from the next batch the feed takes on, it judges for
    /// it too. Returns the last position judged without it (the subscription's
    /// `judged_after`: its session asks for verdicts up to there itself).
    fn join(&self, audience: AudienceId, topic: &Topic) -> u64 {
        let mut held = self.held();
        held.audiences
            .entry(audience)
            .or_insert_with(|| (topic.clone(), 0))
            .1 += 1;
        held.through
    }

    fn leave(&self, audience: AudienceId) {
        let mut held = self.held();
        if let Some((_, n)) = held.audiences.get_mut(&audience) {
            *n -= 1;
            if *n == 0 {
                held.audiences.remove(&audience);
            }
        }
    }

    /// Attach to `batch`'s changes the verdicts of every audience held whose topic they are
    /// of, as the worker attaches them to the batches it publishes. A question that fails
    /// is a failed verdict: its subscribers are told they missed the change.
    pub async fn judge_batch(&self, batch: &mut Batch) {
        let Batch::Changes(changes) = batch else {
            return;
        };
        let wanted: Vec<(AudienceId, Topic)> = {
            let mut held = self.held();
            held.through = held.through.max(batch_last(changes));
            held.audiences
                .iter()
                .filter(|(_, (topic, _))| changes.iter().any(|c| c.topic == *topic))
                .map(|(id, (topic, _))| (*id, topic.clone()))
                .collect()
        };
        let asked = wanted.iter().map(|(audience, topic)| {
            let which: Vec<Change> = changes
                .iter()
                .filter(|c| c.topic == *topic)
                .map(Change::copy)
                .collect();
            self.judge(*audience, which)
        });
        let judged = futures_util::future::join_all(asked).await;
        for ((audience, topic), judged) in wanted.iter().zip(judged) {
            let mut verdicts = judged.ok().into_iter().flatten();
            for change in changes.iter_mut().filter(|c| c.topic == *topic) {
                let verdict = verdicts
                    .next()
                    .and_then(|judged| judged.verdict(*audience))
                    .unwrap_or(Verdict::FAILED);
                change.set_verdict(*audience, verdict);
            }
        }
    }

    /// Take the worker channel's requests off `inbox` (a thread of its own: the channel
    /// blocks) and answer each on `runtime`.
    pub fn serve(self: &Arc<Self>, inbox: RequestInbox, runtime: tokio::runtime::Handle) {
        let me = self.clone();
        std::thread::Builder::new()
            .name("realtime-edge-asks".into())
            .spawn(move || {
                // The wake-up socket has no reader here: nothing is waiting on it.
                drop(inbox.poke);
                while let Ok(request) = inbox.rx.recv() {
                    runtime.spawn(me.clone().forward(request));
                }
            })
            .expect("a thread starts");
    }

    /// Say hello every second until aborted; whether the worker answers is the edge's health.
    pub async fn greet(self: Arc<Self>) {
        let mut every = tokio::time::interval(HELLO_EVERY);
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            every.tick().await;
            let answered = self.ask(Question::Hello).await;
            self.shared.set_unready(
                "worker",
                answered
                    .err()
                    .map(|e| format!("the database's worker does not answer: {e}")),
            );
        }
    }

    pub(super) async fn ask(&self, question: Question) -> Result<Answer, ResolveError> {
        let body = serde_json::to_vec(&Ask {
            edge: self.edge,
            question,
        })
        .map_err(|e| ResolveError::Internal(e.to_string()))?;
        let asked = self.client.request(self.subject.clone(), body.into());
        let message = match tokio::time::timeout(ask::WAIT, asked).await {
            Ok(Ok(message)) => message,
            // No worker listening, NATS unreachable, or no answer in time.
            Ok(Err(_)) | Err(_) => return Err(ResolveError::Unavailable),
        };
        let reply: Reply = serde_json::from_slice(&message.payload)
            .map_err(|e| ResolveError::Internal(format!("unreadable answer: {e}")))?;
        self.saw(reply.incarnation);
        reply.answer
    }

    fn saw(&self, incarnation: u64) {
        if incarnation == 0 {
            return;
        }
        let before = self.incarnation.swap(incarnation, Relaxed);
        if before != 0 && before != incarnation {
            let _ = self.restarted.send(());
        }
    }

    async fn forward(self: Arc<Self>, request: Request) {
        match request {
            Request::Authorize { principal, reply } => {
                let question = Question::Authorize {
                    principal: (*principal).clone(),
                };
                let _ = reply.send(self.ask(question).await.and_then(done));
            }
            Request::Resolve {
                target,
                filter,
                principal,
                reply,
            } => {
                let question = Question::Resolve {
                    target,
                    filter,
                    principal: (*principal).clone(),
                };
                let resolved = self.ask(question).await.and_then(|answer| match answer {
                    Answer::Resolved(mut resolved) => {
                        if let RowAccess::Checked(audience) = resolved.rows {
                            resolved.judged_after = self.join(audience, &resolved.topic);
                        }
                        Ok(resolved)
                    }
                    other => Err(unexpected(other)),
                });
                // A session that left before the answer will not release its audience.
                if let Err(Ok(Resolved {
                    rows: RowAccess::Checked(audience),
                    ..
                })) = reply.send(resolved)
                {
                    self.leave(audience);
                    let _ = self.ask(Question::Release { audience }).await;
                }
            }
            Request::Tables { principal, reply } => {
                let question = Question::Tables {
                    principal: (*principal).clone(),
                };
                let tables = self.ask(question).await.and_then(|answer| match answer {
                    Answer::Tables(tables) => Ok(tables),
                    other => Err(unexpected(other)),
                });
                let _ = reply.send(tables);
            }
            Request::Release { audience } => {
                self.leave(audience);
                let _ = self.ask(Question::Release { audience }).await;
            }
            Request::Judge {
                audience,
                changes,
                reply,
            } => {
                let _ = reply.send(self.judge(audience, changes).await);
            }
            // The reader runs on the database host; a pipe (`edge::pipe`) stands in for it.
            Request::StartSnapshot { ticket, reply } => {
                let started = self
                    .snapshots
                    .send(ticket)
                    .map_err(|_| ResolveError::Unavailable);
                let _ = reply.send(started);
            }
            // Verdicts come back judged: the database host asks its own judge.
            Request::StartJudge { reply } => {
                let _ = reply.send(Err(ResolveError::Internal(
                    "an edge server has no judge of its own".into(),
                )));
            }
            // Webhooks are delivered by the database host.
            Request::Webhook(_) => {}
        }
    }

    /// `changes` with `audience`'s verdicts attached, asked in questions of at most
    /// `MOST_JUDGED` changes.
    async fn judge(
        &self,
        audience: u64,
        mut changes: Vec<Change>,
    ) -> Result<Vec<Change>, ResolveError> {
        for part in changes.chunks_mut(ask::MOST_JUDGED) {
            let question = Question::Judge {
                audience,
                changes: part.iter().map(Image::of).collect(),
            };
            let verdicts = match self.ask(question).await? {
                Answer::Verdicts(verdicts) if verdicts.len() == part.len() => verdicts,
                other => return Err(unexpected(other)),
            };
            for (change, verdict) in part.iter_mut().zip(verdicts) {
                change.set_verdict(audience, verdict);
            }
        }
        Ok(changes)
    }
}

fn batch_last(changes: &[Change]) -> u64 {
    changes.last().map_or(0, |c| c.position)
}

fn done(answer: Answer) -> Result<(), ResolveError> {
    match answer {
        Answer::Done => Ok(()),
        other => Err(unexpected(other)),
    }
}

fn unexpected(answer: Answer) -> ResolveError {
    let kind = match answer {
        Answer::Done => "done",
        Answer::Resolved(_) => "a subscription",
        Answer::Tables(_) => "tables",
        Answer::Verdicts(_) => "verdicts",
        Answer::Pipe(_) | Answer::Bytes { .. } => "a snapshot",
    };
    ResolveError::Internal(format!(
        "the worker answered with {kind}, not what was asked"
    ))
}
