//! A connection on `/realtime`, speaking the native protocol: reads client messages, writes
//! what its `SubscriptionSet` says to send, encoded as native frames, and keeps the heartbeat.
//!
//! A session reads the batches the fan-out hands it (those its subscriptions may want); one
//! that falls behind what the fan-out keeps skips ahead and is sent a `gap` message saying
//! which positions it missed, and one stuck on a full socket is closed. Nobody else waits for
//! it.

use crate::bridge::WorkerHandle;
use crate::change::{AudienceId, Batch, Change, EndReason, GapReason, Topic, Verdict};
use crate::history::{History, Reader};
use crate::net::clients::Client;
use crate::net::fanout::{Dropped, Missed};
use crate::net::identity::{Identity, NEVER};
use crate::net::snapshots::{SnapshotError, Snapshots};
use crate::net::subscriptions::{Outgoing, Resume, SubscribeError, SubscriptionSet, Wish};
use crate::net::Context;
use crate::net::Stream;
use crate::ops::OpSet;
use crate::protocol::native::{self, ClientMessage, Coded, ErrorCode, ServerMessage};
use crate::snapshot::{self, Frame, OrderBy, Xids};
use futures_util::{SinkExt, StreamExt};
use serde_json::Value;
use std::collections::VecDeque;
use std::net::IpAddr;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_tungstenite::tungstenite::error::{CapacityError, Error as WsError};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

/// Changes read back from the history per batch handed to the session (and judged together
/// by the worker, when it judges the subscription), and the bytes of row images past which a
/// batch is cut short: what one replaying session holds at a time.
const REPLAY_CHUNK: usize = 256;
const REPLAY_BYTES: usize = 1 << 20;
/// Most batches written between two flushes when catching up.
const CATCH_UP_BATCHES: usize = 64;
/// Entries of the outgoing list a session keeps allocated between batches.
const OUTGOING_KEPT: usize = 64;
/// How long a closing session waits for its close frame to be written.
const CLOSE_WAIT: Duration = Duration::from_secs(1);

type Sink<S> = futures_util::stream::SplitSink<WebSocketStream<S>, Message>;

/// Longest a snapshot page may wait for the client to read before its reader is stopped.
pub const SNAPSHOT_STALL: Duration = Duration::from_secs(5);

/// What a `subscribe` leaves to do after its reply, outside the time limit on handling one
/// message: each write has its own.
enum FollowUp {
    /// Read back what the history holds for the resumed subscription `id`.
    Replay(Value, Resume),
    /// Send subscription `id` its snapshot: it starts after `position`.
    Snapshot {
        id: Value,
        position: u64,
        order: Vec<OrderBy>,
        limit: Option<u64>,
    },
}

struct Session<S> {
    sink: Sink<S>,
    /// Longest any write may wait for the client.
    write_limit: Duration,
    follow_up: Option<FollowUp>,
    snapshots: Arc<Snapshots>,
    judges: Arc<crate::net::apart::Judges>,
    shared: Arc<crate::net::shared::Shared>,
    identity: Identity,
    /// Its entry in the connection report, and the subscriptions generation last put there.
    client: Arc<Client>,
    reported: Option<u64>,
    worker: WorkerHandle,
    history: Option<Arc<History>>,
    subscriptions: SubscriptionSet<Value>,
    outgoing: Vec<Outgoing<Value>>,
}

pub async fn run<S: Stream>(
    ws: WebSocketStream<S>,
    context: Context,
    identity: Identity,
    address: IpAddr,
) {
    let mut batches = context.batches.cursor();
    let client = context.clients.join(address);
    client.set_batches(batches.registrar());
    let kicked = batches.kicked();
    tokio::pin!(kicked);
    let (sink, mut stream) = ws.split();
    let interval = context.shared.limits().heartbeat_interval;
    // A client silent this long is gone; so is one whose socket accepted nothing for as long
    // (a session blocked on a write cannot run its heartbeat, so every write is bounded too).
    let timeout = 2 * interval;
    let mut session = Session {
        sink,
        write_limit: timeout,
        follow_up: None,
        snapshots: context.snapshots.clone(),
        judges: context.judges.clone(),
        shared: context.shared.clone(),
        identity,
        client,
        reported: None,
        worker: context.worker.clone(),
        history: context.history.clone(),
        subscriptions: SubscriptionSet::new(
            context.shared.clone(),
            context.worker.clone(),
            batches.registrar(),
            context.history.clone(),
        ),
        outgoing: Vec::new(),
    };
    let timed_out = || Some((CloseCode::Away, "heartbeat timed out".to_string()));
    let mut heartbeat = tokio::time::interval_at(tokio::time::Instant::now() + interval, interval);
    let mut last_heard = Instant::now();
    let expiry = tokio::time::sleep(session.identity.expires_in().unwrap_or(NEVER));
    tokio::pin!(expiry);
    let mut catalog = context.shared.catalog_epoch.subscribe();

    let close = loop {
        session.report();
        tokio::select! {
            message = stream.next() => {
                last_heard = Instant::now();
                let handled = match message {
                    Some(Ok(Message::Text(text))) => {
                        let handled = tokio::time::timeout(timeout, session.on_text(&text)).await;
                        let expires_in = session.identity.expires_in().unwrap_or(NEVER);
                        expiry.as_mut().reset(tokio::time::Instant::now() + expires_in);
                        match (handled, session.follow_up.take()) {
                            (Ok(()), Some(work)) => {
                                let done = session.follow(work).await;
                                // Nothing was read meanwhile: the client is not to blame.
                                last_heard = Instant::now();
                                if done.is_err() {
                                    break None;
                                }
                                Ok(())
                            }
                            (handled, _) => handled,
                        }
                    }
                    Some(Ok(Message::Binary(_))) => {
                        tokio::time::timeout(timeout, session.error(ErrorCode::BinaryNotSupported, "send JSON text messages", None)).await
                    }
                    // tungstenite answers pings itself; the pong goes out with the next flush.
                    Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => {
                        tokio::time::timeout(timeout, async { let _ = session.sink.flush().await; }).await
                    }
                    Some(Ok(Message::Close(_))) | None => break None,
                    Some(Err(WsError::Capacity(CapacityError::MessageTooLong { size, max_size }))) => {
                        break Some((CloseCode::Size, format!("message of {size} bytes exceeds realtime.max_message_size ({max_size})")))
                    }
                    Some(Err(WsError::Utf8(_))) => {
                        break Some((CloseCode::Invalid, "text message is not valid UTF-8".into()))
                    }
                    Some(Err(WsError::Protocol(e))) => break Some((CloseCode::Protocol, e.to_string())),
                    Some(Err(_)) => break None,
                };
                if handled.is_err() {
                    break timed_out();
                }
            }
            batch = batches.recv() => match batch {
                Ok(batch) => {
                    // A session that fell behind writes every batch already waiting, then
                    // flushes once: one write per catch-up instead of one per batch.
                    let pinned = batches.delivering();
                    let delivery = tokio::time::timeout(timeout, async {
                        pinned.add(batches.last_seq(), &batch);
                        session.deliver(&batch).await?;
                        drop(batch);
                        for _ in 0..CATCH_UP_BATCHES {
                            match batches.try_recv() {
                                Some(Ok(batch)) => {
                                    pinned.add(batches.last_seq(), &batch);
                                    session.deliver(&batch).await?
                                }
                                Some(Err(Missed::Lagged(missed))) => session.lagged(missed).await?,
                                Some(Err(Missed::Closed)) | None => break,
                            }
                        }
                        session.sink.flush().await
                    });
                    let delivered = tokio::select! {
                        delivered = delivery => delivered,
                        _ = &mut kicked => break Some((CloseCode::Again, "slow client: realtime.client_memory is exhausted".into())),
                    };
                    match delivered {
                        Ok(Ok(())) => {}
                        Ok(Err(_)) => break None,
                        Err(_) => break timed_out(),
                    }
                }
                Err(Missed::Lagged(missed)) => {
                    let told = tokio::time::timeout(timeout, session.lagged(missed)).await;
                    if !matches!(told, Ok(Ok(()))) {
                        break timed_out();
                    }
                }
                Err(Missed::Closed) => break Some((CloseCode::Restart, "server is restarting".into())),
            },
            () = &mut expiry => {
                session.identity.expire();
                session.reported = None;
                let mut ended = Vec::new();
                session.subscriptions.end_all(EndReason::TokenExpired, &mut ended);
                if tokio::time::timeout(timeout, session.send_ended(ended)).await.is_err() {
                    break timed_out();
                }
                expiry.as_mut().reset(tokio::time::Instant::now() + NEVER);
            }
            Ok(()) = catalog.changed() => {
                // What the principal may see may have changed: GRANT, REVOKE, a policy, a role.
                if tokio::time::timeout(timeout, session.reauthorize()).await.is_err() {
                    break timed_out();
                }
            }
            _ = heartbeat.tick() => {
                if last_heard.elapsed() > timeout {
                    break Some((CloseCode::Away, "no pong received; heartbeat timed out".into()));
                }
                match tokio::time::timeout(timeout, session.sink.send(Message::Ping(Default::default()))).await {
                    Ok(Ok(())) => {}
                    Ok(Err(_)) => break None,
                    Err(_) => break timed_out(),
                }
            }
        }
    };
    if let Some((code, reason)) = close {
        let frame = CloseFrame {
            code,
            reason: reason.into(),
        };
        // A client that stopped reading cannot take even this; do not wait on it for long.
        let _ = tokio::time::timeout(CLOSE_WAIT, async {
            let _ = session.sink.send(Message::Close(Some(frame))).await;
            let _ = session.sink.close().await;
        })
        .await;
    }
}

impl<S: Stream> Session<S> {
    /// Bring the connection report's entry up to date.
    fn report(&mut self) {
        self.client
            .delivered
            .store(self.subscriptions.seen(), Relaxed);
        let generation = self.subscriptions.generation();
        if self.reported != Some(generation) {
            self.reported = Some(generation);
            let role = self.identity.principal().ok().map(|p| p.role.as_str());
            self.client.set_role(role);
            self.client
                .set_subscriptions(self.subscriptions.describe(|id| id.to_string()));
        }
    }

    async fn send(&mut self, message: ServerMessage<'_>) {
        let _ = self.sink.send(Message::text(message.to_text())).await;
    }

    async fn error(&mut self, code: ErrorCode, message: &str, id: Option<&Value>) {
        self.send(ServerMessage::Error { code, message, id }).await
    }

    /// Tell the client why its message was refused: the error's code and text.
    async fn refuse(&mut self, refusal: impl Coded, id: Option<&Value>) {
        let message = refusal.to_string();
        self.error(refusal.code(), &message, id).await
    }

    /// Send the subscription ends in `ended`.
    async fn send_ended(&mut self, mut ended: Vec<Outgoing<Value>>) {
        let _ = self.send_all(&Batch::Changes(Vec::new()), &mut ended).await;
        let _ = self.sink.flush().await;
    }

    async fn reauthorize(&mut self) {
        let Ok(principal) = self.identity.principal().cloned() else {
            return;
        };
        let mut ended = Vec::new();
        self.subscriptions.reauthorize(&principal, &mut ended).await;
        self.send_ended(ended).await
    }

    async fn on_text(&mut self, text: &str) {
        match native::parse(text) {
            Err(e) => self.refuse(e, None).await,
            Ok(ClientMessage::Ack { position }) => {
                // Only what was sent can be acknowledged.
                let position = position.min(self.subscriptions.seen());
                self.client.acknowledged.fetch_max(position, Relaxed);
            }
            Ok(ClientMessage::Auth { token }) => match self.identity.sign_in(Some(&token)).await {
                Ok(principal) => {
                    self.reported = None;
                    let mut ended = Vec::new();
                    self.subscriptions.reauthorize(&principal, &mut ended).await;
                    self.send(ServerMessage::Authenticated {
                        role: &principal.role,
                        expires_at: principal.expires,
                    })
                    .await;
                    self.send_ended(ended).await
                }
                Err(e) => self.refuse(e, None).await,
            },
            Ok(ClientMessage::Ping { reference }) => {
                let position = self.subscriptions.position();
                self.send(ServerMessage::Pong {
                    reference: reference.as_ref(),
                    position,
                })
                .await
            }
            Ok(ClientMessage::Tables { reference }) => {
                let principal = match self.identity.principal() {
                    Ok(principal) => principal.clone(),
                    Err(e) => return self.refuse(e, None).await,
                };
                match self.worker.tables(principal).await {
                    Ok(tables) => {
                        self.send(ServerMessage::Tables {
                            reference: reference.as_ref(),
                            tables: &tables,
                        })
                        .await
                    }
                    Err(e) => self.refuse(e, None).await,
                }
            }
            Ok(ClientMessage::Unsubscribe { id }) => {
                if self
                    .subscriptions
                    .unsubscribe(|key| native::same_id(key, &id))
                {
                    self.send(ServerMessage::Unsubscribed {
                        id: &id,
                        reason: None,
                    })
                    .await
                } else {
                    self.error(
                        ErrorCode::UnknownSubscription,
                        "no subscription with this id",
                        Some(&id),
                    )
                    .await
                }
            }
            Ok(ClientMessage::Subscribe {
                id,
                table,
                events,
                filter,
                since,
                snapshot,
                limit,
                order,
                after_snapshot,
            }) => {
                let events = match events.as_deref().map(OpSet::parse).transpose() {
                    Ok(events) => events,
                    Err(name) => {
                        return self
                            .refuse(SubscribeError::UnknownEvent(name), Some(&id))
                            .await;
                    }
                };
                let snapshot = snapshot == Some(true);
                let (order, after_snapshot) =
                    match stitching(snapshot, since, after_snapshot, order, limit) {
                        Ok(parsed) => parsed,
                        Err(why) => {
                            return self
                                .error(ErrorCode::InvalidSnapshot, &why, Some(&id))
                                .await
                        }
                    };
                let wish = Wish {
                    table,
                    events,
                    filter,
                    since,
                    after_snapshot,
                };
                let principal = match self.identity.principal() {
                    Ok(principal) => principal.clone(),
                    Err(e) => return self.refuse(e, Some(&id)).await,
                };
                let (text, resume, position) = match self
                    .subscriptions
                    .subscribe(id.clone(), wish, &principal, native::same_id)
                    .await
                {
                    Ok(made) => (
                        ServerMessage::Subscribed {
                            id: &id,
                            schema: made.schema,
                            table: made.table,
                            events: made.events.iter().map(|op| op.name()).collect(),
                            position: made.position,
                            resume: made.resume.map(|r| {
                                if r.complete {
                                    "complete"
                                } else {
                                    "partial"
                                }
                            }),
                        }
                        .to_text(),
                        made.resume,
                        made.position,
                    ),
                    Err(e) => return self.refuse(e, Some(&id)).await,
                };
                let _ = self.sink.send(Message::text(text)).await;
                self.follow_up = match resume {
                    Some(resume) => Some(FollowUp::Replay(id, resume)),
                    None if snapshot => Some(FollowUp::Snapshot {
                        id,
                        position,
                        order,
                        limit,
                    }),
                    None => None,
                };
            }
        }
    }

    async fn follow(&mut self, work: FollowUp) -> Result<(), WsError> {
        match work {
            FollowUp::Replay(id, resume) => self.replay(&id, resume).await,
            FollowUp::Snapshot {
                id,
                position,
                order,
                limit,
            } => match self.snapshot(&id, position, order, limit).await {
                Err(Failure::Client(e)) => Err(e),
                Err(Failure::Snapshot(e)) => {
                    // The client cannot know which rows it lacks: the subscription goes.
                    self.subscriptions
                        .unsubscribe(|key| native::same_id(key, &id));
                    let message = format!("{e}; the subscription was removed");
                    let limit = self.write_limit;
                    timed(limit, async {
                        self.error(ErrorCode::SnapshotFailed, &message, Some(&id))
                            .await;
                        Ok(())
                    })
                    .await
                }
                Ok(()) => Ok(()),
            },
        }
    }

    /// Send subscription `id` the rows of its table it may see and that pass its filter, read
    /// in one snapshot by a snapshot reader, then `snapshot_end`; from then on it is not sent
    /// changes that snapshot contains. Its live changes wait in the fan-out meanwhile.
    async fn snapshot(
        &mut self,
        id: &Value,
        position: u64,
        order: Vec<OrderBy>,
        limit: Option<u64>,
    ) -> Result<(), Failure> {
        let same = |key: &Value| native::same_id(key, id);
        let Ok(principal) = self.identity.principal().cloned() else {
            return Ok(());
        };
        let Some(spec) = self
            .subscriptions
            .snapshot_spec(same, &principal, order, limit)
        else {
            return Ok(());
        };
        let max = self.shared.limits().max_snapshot_workers;
        let mut feed = self.snapshots.read(&self.worker, &spec, max).await?;
        let Frame::Snapshot(text) = feed.next().await? else {
            return Err(SnapshotError::Broken.into());
        };
        let seen_by = Xids::parse(&text).map_err(|e| SnapshotError::Failed(e.to_string()))?;
        let token = seen_by.token();
        self.subscriptions.set_seen_by(same, Arc::new(seen_by));
        let mut sent = 0u64;
        let write_limit = self.write_limit;
        while limit.is_none_or(|limit| sent < limit) {
            let page = match feed.next().await? {
                Frame::Rows(page) => page,
                Frame::End(_) => break,
                Frame::Snapshot(_) | Frame::Failed(_) => return Err(SnapshotError::Broken.into()),
            };
            let filter = self.subscriptions.filter(same);
            let rows: Vec<&str> = snapshot::rows(&page)
                .filter_map(|row| std::str::from_utf8(row).ok())
                .filter(|row| {
                    filter.is_none_or(|f| {
                        serde_json::from_str(row).is_ok_and(|row| f.matches(Some(&row)))
                    })
                })
                .take(limit.map_or(usize::MAX, |l| (l - sent) as usize))
                .collect();
            if rows.is_empty() {
                continue;
            }
            sent += rows.len() as u64;
            let text = native::snapshot_frame(id, rows);
            // A client that stops reading would hold its reader (and its place among
            // realtime.max_snapshot_workers) until the connection times out.
            tokio::time::timeout(SNAPSHOT_STALL, self.sink.send(Message::text(text)))
                .await
                .map_err(|_| SnapshotError::Stalled(SNAPSHOT_STALL))??;
        }
        drop(feed);
        let end = ServerMessage::SnapshotEnd {
            id,
            rows: sent,
            position,
            token,
        };
        timed(write_limit, self.sink.send(Message::text(end.to_text()))).await?;
        Ok(())
    }

    /// Send the subscription `id` what the history holds of the stretch `resume` covers,
    /// before any of its live changes: read in a blocking thread, judged by the worker where
    /// it judges the subscription's rows.
    async fn replay(&mut self, id: &Value, resume: Resume) -> Result<(), WsError> {
        let same = |key: &Value| native::same_id(key, id);
        if resume.after >= resume.through {
            return Ok(());
        }
        let Some(history) = self.history.clone() else {
            let mut gap = vec![Outgoing::Gap {
                reason: GapReason::HistoryExpired,
                from: resume.after + 1,
                to: resume.through,
            }];
            self.send_all(&Batch::Changes(Vec::new()), &mut gap).await?;
            return self.sink.flush().await;
        };
        let mut reader = Some(history.read(resume.after, resume.through));
        let audience = self.subscriptions.audience(same);
        let mut outgoing = Vec::new();
        let mut next: VecDeque<Batch> = VecDeque::new();
        loop {
            if next.is_empty() {
                // A chunk at a time on a blocking thread, which is given back between chunks:
                // thousands of clients resuming at once must not each hold one.
                let Some(mut r) = reader.take() else { break };
                let (r, chunk) = tokio::task::spawn_blocking(move || {
                    let chunk = read_chunk(&mut r);
                    (r, chunk)
                })
                .await
                .map_err(|e| WsError::Io(std::io::Error::other(e)))?;
                if chunk.is_empty() {
                    break;
                }
                reader = Some(r);
                next.extend(chunk);
            }
            let Some(mut batch) = next.pop_front() else {
                break;
            };
            if let (Some(audience), Batch::Changes(changes)) = (audience, &mut batch) {
                if let (Some(first), Some(last)) = (changes.first(), changes.last()) {
                    let (from, to) = (first.position, last.position);
                    match self.worker.judge(audience, std::mem::take(changes)).await {
                        Ok(judged) => {
                            *changes = judged;
                            let topics: std::collections::BTreeSet<Topic> =
                                changes.iter().map(|c| c.topic.clone()).collect();
                            for topic in topics {
                                self.judge_apart(audience, &topic, changes).await;
                            }
                        }
                        // The worker is restarting: these could not be judged.
                        Err(_) => outgoing.push(Outgoing::Gap {
                            reason: GapReason::PolicyFailed,
                            from,
                            to,
                        }),
                    }
                }
            }
            self.subscriptions.replay(same, &batch, &mut outgoing);
            let limit = self.write_limit;
            timed(limit, self.send_all(&batch, &mut outgoing)).await?;
        }
        let limit = self.write_limit;
        timed(limit, self.sink.flush()).await
    }

    /// Batches were lost to this session: tell the client now (nothing may follow soon).
    async fn lagged(&mut self, missed: Option<Vec<Dropped>>) -> Result<(), WsError> {
        self.subscriptions.missed(missed);
        let mut gap = Vec::new();
        self.subscriptions.lag_gap(None, &mut gap);
        self.send_all(&Batch::Changes(Vec::new()), &mut gap).await?;
        self.sink.flush().await
    }

    async fn deliver(&mut self, batch: &Batch) -> Result<(), WsError> {
        // Whatever was committed after a change to who may see what is delivered under the
        // rules it made.
        // Authorized again before the next delivery, not at each marker: a run of catalog
        // changes costs one pass.
        if let Batch::Reauthorize { .. } = batch {
            self.subscriptions.reauthorize_later();
        } else if self.subscriptions.take_reauthorize() {
            self.reauthorize().await;
        }
        let completed = self.complete_verdicts(batch).await;
        let batch = completed.as_ref().unwrap_or(batch);
        let mut outgoing = std::mem::take(&mut self.outgoing);
        self.subscriptions.deliver(batch, &mut outgoing);
        let result = self.send_all(batch, &mut outgoing).await;
        outgoing.clear();
        // Kept small: a big batch's worth for each of thousands of idle sessions adds up.
        outgoing.shrink_to(OUTGOING_KEPT);
        self.outgoing = outgoing;
        result
    }

    /// `batch` with the verdicts still missing for this connection's subscriptions, or `None`
    /// if none are: those the worker did not attach before it was published (a subscription
    /// it began judging since, at a catalog change), and those of audiences it judges apart,
    /// which the judge gives. Without them the changes would count as not visible.
    async fn complete_verdicts(&self, batch: &Batch) -> Option<Batch> {
        let Batch::Changes(changes) = batch else {
            return None;
        };
        let late = self.subscriptions.judged_late(changes);
        if late.is_empty() && self.subscriptions.judged_apart(changes).is_empty() {
            return None;
        }
        let mut copies: Vec<Change> = changes.iter().map(Change::copy).collect();
        for (audience, topic, from, through) in late {
            let which: Vec<usize> = (0..copies.len())
                .filter(|&i| {
                    let c = &copies[i];
                    c.topic == topic && c.position > from && c.position <= through
                })
                .collect();
            let judged = self
                .worker
                .judge(audience, which.iter().map(|&i| copies[i].copy()).collect())
                .await;
            for (n, &i) in which.iter().enumerate() {
                // The worker is restarting: a missed change, not an invisible one.
                let verdict = judged
                    .as_ref()
                    .ok()
                    .and_then(|j| j.get(n)?.verdict(audience))
                    .unwrap_or(Verdict::FAILED);
                copies[i].set_verdict(audience, verdict);
            }
        }
        // After the late ones: the worker may have left those to the judge too.
        for (audience, topic) in self.subscriptions.judged_apart(&copies) {
            self.judge_apart(audience, &topic, &mut copies).await;
        }
        Some(Batch::Changes(copies))
    }

    /// Have the judge decide what `audience`, judged apart, may see of the changes of `relid`
    /// among `changes` that wait for it; a failure is a missed change, as it is in the worker.
    async fn judge_apart(&self, audience: AudienceId, topic: &Topic, changes: &mut [Change]) {
        let which: Vec<usize> = (0..changes.len())
            .filter(|&i| {
                changes[i].topic == *topic && changes[i].verdict(audience).is_some_and(|v| v.apart)
            })
            .collect();
        if which.is_empty() {
            return;
        }
        let visible = match self.shared.apart(audience) {
            Some(spec) => {
                let waiting: Vec<&Change> = which.iter().map(|&i| &changes[i]).collect();
                self.judges.judge(&self.worker, &spec, &waiting).await
            }
            None => Err("the audience is no longer judged apart".to_string()),
        };
        for (n, &i) in which.iter().enumerate() {
            let verdict = match &visible {
                Ok(v) => Verdict {
                    new_visible: v[n][0],
                    old_visible: v[n][1],
                    failed: false,
                    apart: false,
                },
                Err(_) => Verdict::FAILED,
            };
            changes[i].set_verdict(audience, verdict);
        }
    }

    async fn send_all(
        &mut self,
        batch: &Batch,
        outgoing: &mut Vec<Outgoing<Value>>,
    ) -> Result<(), WsError> {
        let changes = match batch {
            Batch::Changes(changes) => changes.as_slice(),
            _ => &[],
        };
        for item in outgoing.drain(..) {
            let text = match item {
                Outgoing::Change {
                    index,
                    old,
                    columns: None,
                } => {
                    let change = &changes[index];
                    if old {
                        change.encoded(native::CHANGE, native::change_frame)
                    } else {
                        change.encoded(native::CHANGE_NO_OLD, native::change_frame_without_old)
                    }
                }
                Outgoing::Leave {
                    index,
                    columns: None,
                } => changes[index].encoded(native::LEAVE, native::leave_frame),
                Outgoing::Change {
                    index,
                    old,
                    columns: Some(columns),
                } => native::projected_frame(&changes[index], false, old, &columns).into(),
                Outgoing::Leave {
                    index,
                    columns: Some(columns),
                } => native::projected_frame(&changes[index], true, true, &columns).into(),
                Outgoing::Ended(id, reason) => ServerMessage::Unsubscribed {
                    id: &id,
                    reason: Some(reason),
                }
                .to_text()
                .into(),
                Outgoing::Gap { reason, from, to } => ServerMessage::Gap {
                    reason,
                    from_position: from,
                    to_position: to,
                    // What a slow client missed is still in the history.
                    resume_from: (reason == GapReason::SlowClient && self.history.is_some())
                        .then(|| from - 1),
                }
                .to_text()
                .into(),
            };
            self.sink.feed(Message::Text(text)).await?;
        }
        Ok(())
    }
}

/// A subscribe's snapshot options, checked: its `order` and the snapshot it resumes after.
fn stitching(
    snapshot: bool,
    since: Option<u64>,
    after_snapshot: Option<String>,
    order: Option<String>,
    limit: Option<u64>,
) -> Result<(Vec<OrderBy>, Option<Arc<Xids>>), String> {
    if !snapshot && (limit.is_some() || order.is_some()) {
        return Err("limit and order apply to \"snapshot\": true".into());
    }
    if snapshot && (since.is_some() || after_snapshot.is_some()) {
        return Err("a snapshot subscription starts from its own snapshot; to resume one, subscribe with since and after_snapshot (snapshot_end's token)".into());
    }
    let order = order.as_deref().map(snapshot::parse_order).transpose();
    let after = after_snapshot.as_deref().map(Xids::parse).transpose();
    Ok((
        order.map_err(|e| e.to_string())?.unwrap_or_default(),
        after.map_err(|e| e.to_string())?.map(Arc::new),
    ))
}

/// Why a snapshot did not reach its end.
enum Failure {
    /// Writing to the client failed: the connection is done.
    Client(WsError),
    /// The snapshot could not be read: the client is told.
    Snapshot(SnapshotError),
}

impl From<WsError> for Failure {
    fn from(e: WsError) -> Failure {
        Failure::Client(e)
    }
}

impl From<SnapshotError> for Failure {
    fn from(e: SnapshotError) -> Failure {
        Failure::Snapshot(e)
    }
}

/// `write`, failing as a timed-out write past `limit`.
async fn timed<T>(
    limit: Duration,
    write: impl std::future::Future<Output = Result<T, WsError>>,
) -> Result<T, WsError> {
    tokio::time::timeout(limit, write)
        .await
        .unwrap_or_else(|_| Err(WsError::Io(std::io::ErrorKind::TimedOut.into())))
}

/// The next stretch of a replay: a batch of up to `REPLAY_CHUNK` changes or `REPLAY_BYTES`
/// of images (at least one change), a gap or end on its own; empty at the end.
fn read_chunk(reader: &mut Reader) -> Vec<Batch> {
    let mut out = Vec::new();
    let mut changes: Vec<Change> = Vec::new();
    let mut bytes = 0;
    for batch in reader.by_ref() {
        match batch {
            Batch::Changes(mut more) => {
                bytes += more.iter().map(Change::image_bytes).sum::<usize>();
                changes.append(&mut more);
                if changes.len() >= REPLAY_CHUNK || bytes >= REPLAY_BYTES {
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
