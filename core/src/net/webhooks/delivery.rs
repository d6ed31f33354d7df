//! One webhook's deliveries: a headless subscriber acting as its principal, read in commit
//! order, one request at a time, each tried until the receiver acknowledges it or the
//! webhook is disabled. Nothing later is sent before an earlier request has succeeded, and
//! the position reported back moves only past what was acknowledged (or skipped as a gap),
//! so a restart resumes with at most the request in flight sent again.

use super::acks::Ack;
use super::guard::Guard;
use super::request::{self, Answer};
use super::retry;
use crate::bridge::{Target, WorkerHandle};
use crate::net::context::Context;
use crate::net::headless::{Event, Headless, Next};
use crate::net::subscriptions::Wish;
use crate::webhook::{Attempt, Outcome, Webhook};
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use tokio::sync::Semaphore;

/// How long a webhook with nothing to send waits before reporting how far it has read: a
/// webhook whose rows are rare still moves its position on, so a restart does not ask the
/// history for a stretch it may no longer keep.
const IDLE: Duration = Duration::from_secs(1);

/// How long a batched webhook waits for more changes to fill a request once it has one: a
/// stream of single-row transactions would otherwise go out one change per request.
const LINGER: Duration = Duration::from_millis(5);

/// What every webhook's deliveries share.
pub struct Http {
    pub client: reqwest::Client,
    pub guard: Arc<Guard>,
    /// Requests in flight, over all webhooks.
    pub permits: Arc<Semaphore>,
    pub schedule: Vec<Duration>,
}

/// Deliver `hook` until it is disabled or the server stops.
pub async fn run(context: Context, hook: Webhook, http: Arc<Http>) {
    let mut delivery = Delivery {
        worker: context.worker.clone(),
        position: hook.position,
        ack: Ack::open(hook.id, hook.generation),
        hook,
        http,
        failures: 0,
    };
    loop {
        let flow = match delivery.subscribe(&context).await {
            Ok(mut headless) => delivery.stream(&mut headless).await,
            Err(error) => delivery.failed(None, Duration::ZERO, error, None).await,
        };
        if let Flow::Stop = flow {
            return;
        }
    }
}

enum Flow {
    /// Subscribe again (after a failure to, or the end of a subscription).
    Again,
    Stop,
}

struct Delivery {
    hook: Webhook,
    http: Arc<Http>,
    worker: WorkerHandle,
    /// Acknowledged (or skipped) up to here.
    position: u64,
    /// Where `position` is kept the moment it moves.
    ack: Ack,
    /// Failed attempts in a row.
    failures: u32,
}

impl Delivery {
    async fn subscribe(&self, context: &Context) -> Result<Headless, String> {
        let mut headless = Headless::new(context, Arc::new(self.hook.principal.clone()));
        headless.count_as(crate::stats::Stat::WebhookSubscriptions);
        for (id, target) in targets(&self.hook).iter().enumerate() {
            let wish = Wish {
                target: target.clone(),
                // A channel carries messages, which no event list names.
                events: self
                    .hook
                    .events
                    .filter(|_| matches!(target, Target::Table(_))),
                filter: self.hook.filter.clone(),
                since: None,
                after_snapshot: None,
                presence: false,
                select: None,
            };
            headless
                .subscribe(id as u64, wish)
                .await
                .map_err(|e| format!("cannot subscribe to {}: {e}", named(target)))?;
        }
        // All at once from the same position: in commit order across its tables and topics.
        headless.start_from(self.position);
        Ok(headless)
    }

    async fn stream(&mut self, headless: &mut Headless) -> Flow {
        let mut held = None;
        loop {
            let event = match held.take() {
                Some(event) => event,
                None => match headless.next_within(IDLE).await {
                    Next::Event(event) => event,
                    Next::Idle => {
                        let seen = headless.position();
                        if seen > self.position {
                            self.position = seen;
                            self.ack.through(seen);
                            self.report(seen, seen, None, Duration::ZERO, Outcome::Idle);
                        }
                        continue;
                    }
                    Next::Stopped => return Flow::Stop,
                },
            };
            match event {
                Event::Change { .. } => {
                    let mut changes = vec![event];
                    let until = tokio::time::Instant::now() + LINGER;
                    while changes.len() < self.hook.batch_size {
                        let next = match headless.next_at_hand().await {
                            Some(event) => Some(event),
                            None => match headless
                                .next_within(
                                    until.saturating_duration_since(tokio::time::Instant::now()),
                                )
                                .await
                            {
                                Next::Event(event) => Some(event),
                                Next::Idle | Next::Stopped => None,
                            },
                        };
                        match next {
                            Some(change @ Event::Change { .. }) => changes.push(change),
                            Some(Event::Leave { .. }) => {}
                            Some(other) => {
                                held = Some(other);
                                break;
                            }
                            None => break,
                        }
                    }
                    if let Flow::Stop = self.send(&changes).await {
                        return Flow::Stop;
                    }
                }
                // A row that left what the principal may see: nothing to send.
                Event::Leave { .. } => {}
                Event::Gap { reason, from, to } => {
                    self.report(from, to, None, Duration::ZERO, Outcome::Gap { reason });
                    self.position = self.position.max(to);
                }
                Event::Ended { id, reason } => {
                    let target = targets(&self.hook).get(id as usize).map(named);
                    let error = format!(
                        "the subscription to {} ended: {}",
                        target.unwrap_or_default(),
                        crate::webhook::reason_name(&reason)
                    );
                    return self.failed(None, Duration::ZERO, error, None).await;
                }
            }
        }
    }

    /// Send `changes` until the receiver acknowledges them.
    async fn send(&mut self, changes: &[Event]) -> Flow {
        let position = |e: &Event| match e {
            Event::Change { position, .. } => *position,
            _ => 0,
        };
        let (first, last) = (position(&changes[0]), position(&changes[changes.len() - 1]));
        let id = request::message_id(&self.hook, first, last);
        let body = request::body(changes, self.hook.batch_size > 1);
        loop {
            let (answer, took) = {
                let _permit = self.http.permits.acquire().await;
                match reqwest::Url::parse(&self.hook.url)
                    .map_err(|e| format!("the URL is not valid: {e}"))
                    .and_then(|url| self.http.guard.check_url(&url))
                {
                    Ok(()) => request::send(&self.http.client, &self.hook, &id, body.clone()).await,
                    Err(refused) => (Answer::Failed(refused), Duration::ZERO),
                }
            };
            let flow = match answer {
                Answer::Acknowledged(status) => {
                    self.ack.through(last);
                    self.report(first, last, Some(status), took, Outcome::Delivered);
                    self.failures = 0;
                    self.position = last;
                    return Flow::Again;
                }
                Answer::Gone(status) => {
                    let error = "the receiver answered 410 Gone".to_string();
                    self.report(first, last, Some(status), took, Outcome::Disabled { error });
                    return Flow::Stop;
                }
                Answer::Refused {
                    status,
                    error,
                    retry_after,
                } => self.failed_at(first, last, Some(status), took, error, retry_after),
                Answer::Failed(error) => self.failed_at(first, last, None, took, error, None),
            };
            match flow {
                Some(wait) => tokio::time::sleep(wait).await,
                None => return Flow::Stop,
            }
        }
    }

    /// A failure with no changes at stake (subscribing): wait for the next attempt, or stop.
    async fn failed(
        &mut self,
        status: Option<u16>,
        took: Duration,
        error: String,
        retry_after: Option<Duration>,
    ) -> Flow {
        let at = self.position;
        match self.failed_at(at, at, status, took, error, retry_after) {
            Some(wait) => {
                tokio::time::sleep(wait).await;
                Flow::Again
            }
            None => Flow::Stop,
        }
    }

    /// Report a failed attempt; how long to wait before the next, or `None` once the
    /// schedule is used up (the webhook is disabled).
    fn failed_at(
        &mut self,
        first: u64,
        last: u64,
        status: Option<u16>,
        took: Duration,
        error: String,
        retry_after: Option<Duration>,
    ) -> Option<Duration> {
        let Some(wait) = self.http.schedule.get(self.failures as usize) else {
            let error = format!(
                "{error} (attempt {}, the last the retry schedule allows)",
                self.failures + 1
            );
            self.report(first, last, status, took, Outcome::Disabled { error });
            return None;
        };
        let retry_in = retry_after.unwrap_or_else(|| retry::jittered(*wait));
        self.report(
            first,
            last,
            status,
            took,
            Outcome::Failed { error, retry_in },
        );
        self.failures += 1;
        Some(retry_in)
    }

    fn report(&self, first: u64, last: u64, status: Option<u16>, took: Duration, outcome: Outcome) {
        self.worker.webhook(Attempt {
            webhook: self.hook.id,
            generation: self.hook.generation,
            first,
            last,
            number: self.failures + 1,
            status,
            took,
            at: SystemTime::now(),
            outcome,
        });
    }
}

/// What it subscribes to: its tables, then its topics (a subscription's id is its index).
fn targets(hook: &Webhook) -> Vec<Target> {
    let tables = hook.tables.iter().cloned().map(Target::Table);
    let topics = hook.topics.iter().cloned().map(Target::Channel);
    tables.chain(topics).collect()
}

fn named(target: &Target) -> String {
    match target {
        Target::Table(table) => format!("table {table}"),
        Target::Channel(topic) => format!("topic {topic}"),
    }
}
