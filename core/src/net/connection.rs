//! The connection driver: one WebSocket connection, whatever protocol it speaks. It owns the
//! loop (client messages, batches, heartbeat, token expiry, catalog changes), subscribing and
//! authorizing, replay of resumed subscriptions, snapshots, and catching up; the protocol
//! (`protocol::Protocol`) only parses what the client sends and encodes what it is to say.
//!
//! A connection reads the batches the fan-out hands it (those its subscriptions may want); one
//! that falls behind what the fan-out keeps goes on from the history (`net::subscriber`), and
//! one stuck on a full socket is closed. Nobody else waits for it.

use crate::bridge::WorkerHandle;
use crate::change::{Batch, EndReason, GapReason, MAX_CHANNEL_BYTES};
use crate::net::clients::Client;
use crate::net::context::Context;
use crate::net::fanout::{Delivering, Dropped, Fanout, Kick};
use crate::net::identity::{Identity, NEVER};
use crate::net::rooms::{Allowance, Mailbox, Refused, Shout};
use crate::net::shared::Shared;
use crate::net::snapshots::{SnapshotError, Snapshots};
use crate::net::stream::Stream;
use crate::net::subscriber::{Incoming, Subscriber};
use crate::net::subscriptions::{Outgoing, Resume, Source};
use crate::net::woken::Woken;
use crate::protocol::{Ask, Protocol, Received, Refusal, Say, SnapshotWish};
use crate::snapshot::{self, Frame, Xids};
use crate::stats::{Stat, Timing};
use futures_util::{SinkExt, StreamExt};
use std::net::IpAddr;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_tungstenite::tungstenite::error::{CapacityError, Error as WsError, ProtocolError};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

/// Most batches written between two flushes when catching up.
const CATCH_UP_BATCHES: usize = 64;
/// Entries of the outgoing list a connection keeps allocated between batches.
const OUTGOING_KEPT: usize = 64;
/// How long a closing connection waits for its close frame to be written.
const CLOSE_WAIT: Duration = Duration::from_secs(1);
/// Longest a snapshot page may wait for the client to read before its reader is stopped.
pub const SNAPSHOT_STALL: Duration = Duration::from_secs(5);

type Sink<S> = futures_util::stream::SplitSink<WebSocketStream<S>, Message>;

/// What a `subscribe` leaves to do after its reply, outside the time limit on handling one
/// message: each write has its own.
enum FollowUp<Id> {
    /// Read back what the history holds for the resumed subscription `id`.
    Replay(Id, Resume),
    /// Send subscription `id` its snapshot: it starts after `position`.
    Snapshot {
        id: Id,
        position: u64,
        wish: SnapshotWish,
    },
}

struct Connection<P: Protocol, S> {
    protocol: P,
    sink: Sink<S>,
    /// Longest any write may wait for the client.
    write_limit: Duration,
    /// What the last client message left to do after its answers.
    follow_ups: Vec<FollowUp<P::Id>>,
    /// The protocol's frames for one thing said, kept allocated.
    frames: Vec<Message>,
    snapshots: Arc<Snapshots>,
    /// The fan-out, which a connection helps hand out after each delivery.
    batches: Arc<Fanout>,
    shared: Arc<Shared>,
    identity: Identity,
    /// Its entry in the connection report, and the subscriptions generation last put there.
    client: Arc<Client>,
    reported: Option<u64>,
    worker: WorkerHandle,
    subscriber: Subscriber<P::Id>,
    outgoing: Vec<Outgoing<P::Id>>,
    /// Its place in channel rooms (broadcast, presence), and how many more it may send now.
    mailbox: Mailbox,
    allowance: Allowance,
}

pub async fn run<P: Protocol, S: Stream>(
    ws: WebSocketStream<S>,
    context: Context,
    identity: Identity,
    address: IpAddr,
    protocol: P,
) {
    let mut subscriber = Subscriber::new(&context);
    subscriber.subscriptions.count_as(P::COUNTERS.subscriptions);
    let (mailbox, mut shouts) = context.hub.mailbox();
    subscriber.subscriptions.receive_broadcasts(mailbox.clone());
    // Armed once, and again only after it fired: a wait made anew on every pass of the loop
    // would register and unregister a waiter for every batch delivered.
    let presence = mailbox.presence_waiting();
    let mut presence_told = std::pin::pin!(presence_turn(&presence, tokio::time::Instant::now()));
    let client = context.clients.join(address);
    client.set_batches(subscriber.cursor().registrar());
    let kicked = subscriber.cursor().kicked();
    tokio::pin!(kicked);
    let (sink, stream) = ws.split();
    let mut stream = Woken::new(stream);
    let interval = context.shared.limits().heartbeat_interval;
    // A client silent this long is gone; so is one whose socket accepted nothing for as long
    // (a connection blocked on a write cannot run its heartbeat, so every write is bounded).
    let timeout = 2 * interval;
    let mut conn = Connection {
        protocol,
        sink,
        write_limit: timeout,
        follow_ups: Vec::new(),
        frames: Vec::new(),
        snapshots: context.snapshots.clone(),
        batches: context.batches.clone(),
        shared: context.shared.clone(),
        identity,
        client,
        reported: None,
        worker: context.worker.clone(),
        subscriber,
        outgoing: Vec::new(),
        mailbox,
        allowance: Allowance::default(),
    };
    let mut heartbeat = tokio::time::interval_at(tokio::time::Instant::now() + interval, interval);
    let mut last_heard = Instant::now();
    let expiry = tokio::time::sleep(conn.identity.expires_in().unwrap_or(NEVER));
    tokio::pin!(expiry);

    let ending = loop {
        conn.report();
        tokio::select! {
            message = stream.next() => {
                last_heard = Instant::now();
                let received = match &message {
                    Some(Ok(Message::Text(text))) => Some(Received::Text(text)),
                    Some(Ok(Message::Binary(bytes))) => Some(Received::Binary(bytes)),
                    _ => None,
                };
                let handled = match message {
                    Some(Ok(Message::Text(_) | Message::Binary(_))) => {
                        let received = received.expect("a data message");
                        let handled = tokio::time::timeout(timeout, conn.on_message(received)).await;
                        let expires_in = conn.identity.expires_in().unwrap_or(NEVER);
                        expiry.as_mut().reset(tokio::time::Instant::now() + expires_in);
                        let follow_ups = std::mem::take(&mut conn.follow_ups);
                        match handled {
                            Ok(()) if !follow_ups.is_empty() => {
                                let mut done = Ok(());
                                for work in follow_ups {
                                    done = conn.follow(work).await;
                                    if done.is_err() {
                                        break;
                                    }
                                }
                                // Nothing was read meanwhile: the client is not to blame.
                                last_heard = Instant::now();
                                if done.is_err() {
                                    break Ending::Gone;
                                }
                                Ok(())
                            }
                            handled => handled,
                        }
                    }
                    // tungstenite answers pings itself; the pong goes out with the next flush.
                    Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => {
                        tokio::time::timeout(timeout, async { let _ = conn.sink.flush().await; }).await
                    }
                    Some(Ok(Message::Close(_))) | None => break Ending::Gone,
                    Some(Err(WsError::Capacity(CapacityError::MessageTooLong { size, max_size }))) => {
                        break Ending::Violation(CloseCode::Size, format!("message of {size} bytes exceeds realtime.max_message_size ({max_size})"))
                    }
                    Some(Err(WsError::Utf8(_))) => {
                        break Ending::Violation(CloseCode::Invalid, "text message is not valid UTF-8".into())
                    }
                    // A closed tab or a dropped network: the socket ended, nothing was violated.
                    Some(Err(WsError::Protocol(ProtocolError::ResetWithoutClosingHandshake))) => break Ending::Gone,
                    Some(Err(WsError::Protocol(e))) => break Ending::Violation(CloseCode::Protocol, e.to_string()),
                    Some(Err(_)) => break Ending::Gone,
                };
                if handled.is_err() {
                    break Ending::WriteTimedOut;
                }
            }
            incoming = conn.subscriber.wait() => match incoming {
                Incoming::Batch(batch, source) => {
                    // A connection that fell behind writes every batch already waiting, then
                    // flushes once: one write per catch-up instead of one per batch.
                    let pinned = conn.subscriber.delivering();
                    let taken = (source == Source::Live).then(|| conn.subscriber.cursor().taken_at());
                    let committed = batch.first_txn().and_then(|t| t.committed_at);
                    // Bounded by the janitor, which closes a connection whose delivery has not
                    // finished within the write limit (`kicked`): no timer per delivery.
                    let delivery = async {
                        conn.deliver(&pinned, batch, source).await?;
                        for _ in 0..CATCH_UP_BATCHES {
                            match conn.subscriber.try_next() {
                                Some(Incoming::Batch(batch, source)) => {
                                    conn.deliver(&pinned, batch, source).await?
                                }
                                Some(Incoming::Lagged(missed)) => conn.lagged(missed).await?,
                                Some(Incoming::Closed) | None => break,
                            }
                        }
                        // A catalog change (GRANT, REVOKE, a policy, a role) among them: what
                        // the principal may see is worked out again now, once for the lot.
                        if conn.subscriber.subscriptions.take_reauthorize() {
                            conn.reauthorize().await;
                        }
                        conn.sink.flush().await
                    };
                    let delivered = tokio::select! {
                        delivered = delivery => delivered,
                        kick = &mut kicked => break match kick {
                            Kick::OutOfMemory => Ending::OutOfMemory,
                            Kick::WriteTimedOut => Ending::WriteTimedOut,
                        },
                    };
                    match delivered {
                        Ok(()) => {
                            conn.batches.help_dispatch();
                            if let Some(taken) = taken {
                                conn.shared.stats.observe(Timing::TakeToSent, taken.elapsed());
                            }
                            if let Some(committed) = committed {
                                conn.shared.stats.observe(Timing::CommitToSent, committed.elapsed());
                            }
                        }
                        Err(_) => break Ending::Gone,
                    }
                }
                Incoming::Lagged(missed) => {
                    let told = tokio::time::timeout(timeout, conn.lagged(missed)).await;
                    if let Some(ending) = closing(told) {
                        break ending;
                    }
                }
                Incoming::Closed => break Ending::Restart,
            },
            Some(shout) = shouts.recv() => {
                // Everything already waiting goes out in one write.
                let written = tokio::time::timeout(timeout, async {
                    conn.feed(Say::Broadcast { shout: &shout }).await?;
                    for _ in 0..CATCH_UP_BATCHES {
                        let Ok(shout) = shouts.try_recv() else { break };
                        conn.feed(Say::Broadcast { shout: &shout }).await?;
                    }
                    conn.sink.flush().await
                })
                .await;
                if let Some(close) = closing(written) {
                    break close;
                }
            }
            () = &mut presence_told => {
                let (told, again) = conn.mailbox.take_presence(conn.subscriber.subscriptions.channels());
                let next = match again {
                    Some(at) => {
                        presence.notify_one();
                        tokio::time::Instant::from_std(at)
                    }
                    None => tokio::time::Instant::now(),
                };
                presence_told.set(presence_turn(&presence, next));
                let written = tokio::time::timeout(timeout, async {
                    for presence in &told {
                        conn.feed(Say::Presence(presence)).await?;
                    }
                    conn.sink.flush().await
                })
                .await;
                if let Some(close) = closing(written) {
                    break close;
                }
            }
            () = &mut expiry => {
                conn.identity.expire();
                conn.reported = None;
                let mut ended = Vec::new();
                conn.subscriber.subscriptions.end_all(EndReason::TokenExpired, &mut ended);
                if tokio::time::timeout(timeout, conn.send_outgoing(ended)).await.is_err() {
                    break Ending::WriteTimedOut;
                }
                expiry.as_mut().reset(tokio::time::Instant::now() + NEVER);
            }
            _ = heartbeat.tick() => {
                if last_heard.elapsed() > timeout {
                    break Ending::Silent;
                }
                match tokio::time::timeout(timeout, conn.sink.send(Message::Ping(Default::default()))).await {
                    Ok(Ok(())) => {}
                    Ok(Err(_)) => break Ending::Gone,
                    Err(_) => break Ending::WriteTimedOut,
                }
            }
        }
    };
    conn.shared.stats.add(ending.counter(), 1);
    if let Some((code, reason)) = ending.close_frame() {
        let frame = CloseFrame {
            code,
            reason: reason.into(),
        };
        // A client that stopped reading cannot take even this; do not wait on it for long.
        let _ = tokio::time::timeout(CLOSE_WAIT, async {
            let _ = conn.sink.send(Message::Close(Some(frame))).await;
            let _ = conn.sink.close().await;
        })
        .await;
    }
}

impl<P: Protocol, S: Stream> Connection<P, S> {
    /// Bring the connection report's entry up to date.
    fn report(&mut self) {
        let subscriptions = &self.subscriber.subscriptions;
        self.client.delivered.store(subscriptions.seen(), Relaxed);
        let generation = subscriptions.generation();
        if self.reported != Some(generation) {
            self.reported = Some(generation);
            let role = self.identity.principal().ok().map(|p| p.role.as_str());
            self.client.set_role(role);
            self.client
                .set_subscriptions(subscriptions.describe(|id| id.to_string()));
        }
    }

    /// Say `say` now.
    async fn say(&mut self, say: Say<'_, P::Id>) {
        if self.feed(say).await.is_ok() {
            let _ = self.sink.flush().await;
        }
    }

    /// Queue the frames for `say` without flushing.
    async fn feed(&mut self, say: Say<'_, P::Id>) -> Result<(), WsError> {
        self.protocol.encode(say, &mut self.frames);
        self.feed_frames().await.map(|_| ())
    }

    /// Queue the frames in `self.frames` without flushing; their bytes.
    async fn feed_frames(&mut self) -> Result<u64, WsError> {
        feed_frames(&mut self.sink, &mut self.frames).await
    }

    /// Whether this connection may broadcast this now: subscribed to the channel with the
    /// right to send on it, within its rate and the size limit.
    fn may_broadcast(&mut self, channel: &str, event: &str, payload: &str) -> Result<(), Refused> {
        match self.subscriber.subscriptions.rights(channel) {
            None => return Err(Refused::NotSubscribed),
            Some(rights) if !rights.send => return Err(Refused::Forbidden),
            Some(_) => {}
        }
        let limits = self.shared.limits();
        if event.is_empty() || event.len() > MAX_CHANNEL_BYTES {
            return Err(Refused::BadEvent);
        }
        if payload.len() > limits.max_broadcast_size {
            return Err(Refused::TooLarge(limits.max_broadcast_size));
        }
        if !self.allowance.take(limits.broadcast_rate) {
            return Err(Refused::RateLimited(limits.broadcast_rate));
        }
        Ok(())
    }

    /// Whether this connection may be tracked with `state` on `channel` now; the most members
    /// the channel may have.
    fn may_track(&mut self, channel: &str, state: &str) -> Result<usize, Refused> {
        match self.subscriber.subscriptions.rights(channel) {
            None => return Err(Refused::NotSubscribed),
            Some(rights) if !rights.track => return Err(Refused::TrackForbidden),
            Some(_) => {}
        }
        let limits = self.shared.limits();
        if state.len() > limits.max_broadcast_size {
            return Err(Refused::StateTooLarge(limits.max_broadcast_size));
        }
        if !self.allowance.take(limits.broadcast_rate) {
            return Err(Refused::RateLimited(limits.broadcast_rate));
        }
        Ok(limits.max_presence_per_channel)
    }

    async fn refuse(&mut self, refusal: Refusal<'_>, id: Option<&P::Id>) {
        self.say(Say::Refused { id, refusal }).await
    }

    /// Send `outgoing` (ends and gaps only) now.
    async fn send_outgoing(&mut self, mut outgoing: Vec<Outgoing<P::Id>>) {
        let _ = self.send_all(&Batch::empty(), &mut outgoing, None).await;
        let _ = self.sink.flush().await;
    }

    async fn reauthorize(&mut self) {
        let Ok(principal) = self.identity.principal().cloned() else {
            return;
        };
        let mut ended = Vec::new();
        self.subscriber.reauthorize(&principal, &mut ended).await;
        self.send_outgoing(ended).await
    }

    async fn on_message(&mut self, message: Received<'_>) {
        let mut asks = Vec::new();
        self.protocol.parse(message, &mut asks, &mut self.frames);
        if !self.frames.is_empty() && self.feed_frames().await.is_ok() {
            let _ = self.sink.flush().await;
        }
        for ask in asks {
            self.handle(ask).await;
        }
    }

    async fn handle(&mut self, ask: Ask<P::Id>) {
        match ask {
            Ask::Ack { position } => {
                // Only what was sent can be acknowledged.
                let position = position.min(self.subscriber.subscriptions.seen());
                self.client.acknowledged.fetch_max(position, Relaxed);
            }
            Ask::Auth { token } => match self.identity.sign_in(Some(&token)).await {
                Ok(principal) => {
                    self.reported = None;
                    let mut ended = Vec::new();
                    self.subscriber.reauthorize(&principal, &mut ended).await;
                    self.say(Say::Authenticated {
                        role: &principal.role,
                        expires_at: principal.expires,
                    })
                    .await;
                    self.send_outgoing(ended).await
                }
                Err(e) => self.refuse(Refusal::Identity(&e), None).await,
            },
            Ask::Broadcast {
                channel,
                event,
                payload,
                include_self,
                reference,
            } => {
                if let Err(refused) = self.may_broadcast(&channel, &event, &payload) {
                    let reference = reference.as_ref();
                    let refusal = Refusal::Room {
                        refused: &refused,
                        reference,
                    };
                    return self.refuse(refusal, None).await;
                }
                let shout = Shout::new(channel.into(), event.into(), payload.into());
                let receivers = self.mailbox.send(shout, include_self);
                if let Some(reference) = &reference {
                    let sent = Say::BroadcastSent {
                        reference,
                        receivers,
                    };
                    self.say(sent).await
                }
            }
            Ask::Track {
                channel,
                key,
                state,
                reference,
            } => {
                let key = key.map(String::into_boxed_str);
                let tracked = self
                    .may_track(&channel, &state)
                    .and_then(|max| self.mailbox.track(&channel, key, state.into(), max));
                let reference = reference.as_ref();
                match (tracked, reference) {
                    (Err(refused), _) => {
                        let refusal = Refusal::Room {
                            refused: &refused,
                            reference,
                        };
                        self.refuse(refusal, None).await
                    }
                    (Ok(()), Some(reference)) => {
                        let key = Some(self.mailbox.member());
                        let channel = &channel;
                        self.say(Say::Tracked {
                            reference,
                            channel,
                            key,
                        })
                        .await
                    }
                    (Ok(()), None) => {}
                }
            }
            Ask::Untrack { channel, reference } => {
                self.mailbox.untrack(&channel);
                if let Some(reference) = &reference {
                    let channel = &channel;
                    self.say(Say::Tracked {
                        reference,
                        channel,
                        key: None,
                    })
                    .await
                }
            }
            Ask::Ping { reference } => {
                let position = self.subscriber.subscriptions.position();
                self.say(Say::Pong {
                    reference: reference.as_ref(),
                    position,
                })
                .await
            }
            Ask::Tables { reference } => {
                let principal = match self.identity.principal() {
                    Ok(principal) => principal.clone(),
                    Err(e) => return self.refuse(Refusal::Token(&e), None).await,
                };
                match self.worker.tables(principal).await {
                    Ok(tables) => {
                        self.say(Say::Tables {
                            reference: reference.as_ref(),
                            tables: &tables,
                        })
                        .await
                    }
                    Err(e) => self.refuse(Refusal::Worker(&e), None).await,
                }
            }
            Ask::Unsubscribe { id } => {
                let subscriptions = &mut self.subscriber.subscriptions;
                if subscriptions.unsubscribe(|key| P::same(key, &id)) {
                    self.say(Say::Unsubscribed { id: &id }).await
                } else {
                    self.refuse(Refusal::UnknownSubscription, Some(&id)).await
                }
            }
            Ask::Subscribe { id, wish, snapshot } => {
                let principal = match self.identity.principal() {
                    Ok(principal) => principal.clone(),
                    Err(e) => return self.refuse(Refusal::Token(&e), Some(&id)).await,
                };
                let made = self
                    .subscriber
                    .subscriptions
                    .subscribe(id.clone(), wish, &principal, P::same)
                    .await;
                let (resume, position) = match made {
                    Ok(made) => {
                        let subscribed = Say::Subscribed {
                            id: &id,
                            made: &made,
                        };
                        self.protocol.encode(subscribed, &mut self.frames);
                        (made.resume, made.position)
                    }
                    Err(e) => return self.refuse(Refusal::Subscribe(&e), Some(&id)).await,
                };
                if self.feed_frames().await.is_ok() {
                    let _ = self.sink.flush().await;
                }
                match (resume, snapshot) {
                    (Some(resume), _) => self.follow_ups.push(FollowUp::Replay(id, resume)),
                    (None, Some(wish)) => {
                        self.follow_ups
                            .push(FollowUp::Snapshot { id, position, wish })
                    }
                    (None, None) => {}
                }
            }
        }
    }

    async fn follow(&mut self, work: FollowUp<P::Id>) -> Result<(), WsError> {
        match work {
            FollowUp::Replay(id, resume) => self.replay(&id, resume).await,
            FollowUp::Snapshot { id, position, wish } => {
                match self.snapshot(&id, position, wish).await {
                    Err(Failure::Client(e)) => Err(e),
                    Err(Failure::Snapshot(e)) => {
                        // The client cannot know which rows it lacks: the subscription goes.
                        self.subscriber
                            .subscriptions
                            .unsubscribe(|key| P::same(key, &id));
                        let message = format!("{e}; the subscription was removed");
                        let limit = self.write_limit;
                        let refusal = Refusal::SnapshotFailed(&message);
                        timed(limit, async {
                            self.refuse(refusal, Some(&id)).await;
                            Ok(())
                        })
                        .await
                    }
                    Ok(()) => Ok(()),
                }
            }
        }
    }

    /// Send subscription `id` the rows of its table it may see and that pass its filter, read
    /// in one snapshot by a snapshot reader, then the snapshot's end; from then on it is not
    /// sent changes that snapshot contains. Its live changes wait in the fan-out meanwhile.
    async fn snapshot(
        &mut self,
        id: &P::Id,
        position: u64,
        wish: SnapshotWish,
    ) -> Result<(), Failure> {
        let same = |key: &P::Id| P::same(key, id);
        let Ok(principal) = self.identity.principal().cloned() else {
            return Ok(());
        };
        let limit = wish.limit;
        let Some(spec) = self
            .subscriber
            .subscriptions
            .snapshot_spec(same, &principal, wish.order, limit)
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
        self.subscriber
            .subscriptions
            .set_seen_by(same, Arc::new(seen_by));
        self.shared.stats.increment(Stat::Snapshots);
        let mut sent = 0u64;
        while limit.is_none_or(|limit| sent < limit) {
            let page = match feed.next().await? {
                Frame::Rows(page) => page,
                Frame::End(_) => break,
                Frame::Snapshot(_) | Frame::Failed(_) => return Err(SnapshotError::Broken.into()),
            };
            let filter = self.subscriber.subscriptions.filter(same);
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
            self.shared.stats.add(Stat::SnapshotRows, rows.len() as u64);
            self.protocol
                .encode(Say::SnapshotRows { id, rows }, &mut self.frames);
            // A client that stops reading would hold its reader (and its place among
            // realtime.max_snapshot_workers) until the connection times out.
            let page = async {
                self.feed_frames().await?;
                self.sink.flush().await
            };
            tokio::time::timeout(SNAPSHOT_STALL, page)
                .await
                .map_err(|_| SnapshotError::Stalled(SNAPSHOT_STALL))??;
        }
        drop(feed);
        let end = Say::SnapshotEnd {
            id,
            rows: sent,
            position,
            token,
        };
        self.protocol.encode(end, &mut self.frames);
        let limit = self.write_limit;
        timed(limit, async {
            self.feed_frames().await?;
            self.sink.flush().await
        })
        .await?;
        Ok(())
    }

    /// Send the subscription `id` what the history holds of the stretch `resume` covers,
    /// before any of its live changes, judged where the worker judges its rows.
    async fn replay(&mut self, id: &P::Id, resume: Resume) -> Result<(), WsError> {
        let same = |key: &P::Id| P::same(key, id);
        if resume.after >= resume.through {
            return Ok(());
        }
        let mut outgoing = Vec::new();
        let Some(mut backlog) = self.subscriber.replay(resume) else {
            outgoing.push(Outgoing::Gap {
                reason: GapReason::HistoryExpired,
                from: resume.after + 1,
                to: resume.through,
            });
            self.send_all(&Batch::empty(), &mut outgoing, None).await?;
            return self.sink.flush().await;
        };
        while let Some(batch) = backlog.next().await {
            let batch = self.subscriber.replayed(same, batch, &mut outgoing).await;
            let limit = self.write_limit;
            timed(limit, self.send_all(&batch, &mut outgoing, Some(id))).await?;
        }
        let limit = self.write_limit;
        timed(limit, self.sink.flush()).await
    }

    /// Batches were lost to this connection: tell the client now (nothing may follow soon).
    async fn lagged(&mut self, missed: Option<Vec<Dropped>>) -> Result<(), WsError> {
        let mut gap = Vec::new();
        self.subscriber.lagged(missed, &mut gap);
        self.send_all(&Batch::empty(), &mut gap, None).await?;
        self.sink.flush().await
    }

    async fn deliver(
        &mut self,
        pinned: &Delivering,
        batch: Arc<Batch>,
        source: Source,
    ) -> Result<(), WsError> {
        let seq = (source == Source::Live).then(|| self.subscriber.cursor().last_seq());
        pinned.add(seq, &batch);
        let principal = self.identity.principal().ok().cloned();
        let mut outgoing = std::mem::take(&mut self.outgoing);
        let batch = self
            .subscriber
            .deliver(batch, source, principal.as_ref(), &mut outgoing)
            .await;
        let result = self.send_all(&batch, &mut outgoing, None).await;
        outgoing.clear();
        // Kept small: a big batch's worth for each of thousands of idle connections adds up.
        outgoing.shrink_to(OUTGOING_KEPT);
        self.outgoing = outgoing;
        result
    }

    /// Write out `outgoing`, the items for `batch` (read back for subscription `only`, when
    /// replaying), in the protocol's frames.
    async fn send_all(
        &mut self,
        batch: &Batch,
        outgoing: &mut Vec<Outgoing<P::Id>>,
        only: Option<&P::Id>,
    ) -> Result<(), WsError> {
        let changes = match batch {
            Batch::Changes(changes) => changes.as_slice(),
            _ => &[],
        };
        let subscriptions = &self.subscriber.subscriptions;
        let (mut messages, mut bytes, mut written) = (0, 0, Ok(()));
        for item in outgoing.drain(..) {
            let say = match &item {
                Outgoing::Change {
                    index,
                    old,
                    columns,
                } => Say::Change {
                    change: &changes[*index],
                    old: *old,
                    columns,
                    matched: subscriptions.matched(&changes[*index], only),
                },
                Outgoing::Leave { index, columns } => Say::Leave {
                    change: &changes[*index],
                    columns,
                    matched: subscriptions.matched(&changes[*index], only),
                },
                Outgoing::Ended(id, reason) => Say::Ended {
                    id,
                    reason: *reason,
                },
                Outgoing::Gap { reason, from, to } => Say::Gap {
                    reason: *reason,
                    from: *from,
                    to: *to,
                },
            };
            self.protocol.encode(say, &mut self.frames);
            if let Outgoing::Gap { reason, .. } = &item {
                self.shared.stats.increment(Stat::gaps(*reason));
            }
            messages += self.frames.len() as u64;
            match feed_frames(&mut self.sink, &mut self.frames).await {
                Ok(len) => bytes += len,
                Err(e) => {
                    written = Err(e);
                    break;
                }
            }
        }
        // Counted once per call, not per message: every network thread shares the counters.
        if messages > 0 {
            self.shared.stats.add(P::COUNTERS.messages, messages);
            self.shared.stats.add(P::COUNTERS.bytes, bytes);
        }
        written
    }
}

/// Queue `frames` (leaving it empty) without flushing; their bytes.
async fn feed_frames<S: Stream>(
    sink: &mut Sink<S>,
    frames: &mut Vec<Message>,
) -> Result<u64, WsError> {
    let mut bytes = 0;
    let mut written = Ok(());
    for frame in frames.drain(..) {
        bytes += frame.len() as u64;
        if written.is_ok() {
            written = sink.feed(frame).await;
        }
    }
    written.map(|()| bytes)
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

/// When a connection next takes presence: once there is some, and not before `not_before` (when
/// the room it is owed more in may be cut again).
async fn presence_turn(waiting: &tokio::sync::Notify, not_before: tokio::time::Instant) {
    waiting.notified().await;
    tokio::time::sleep_until(not_before).await;
}

/// What a bounded write means for the connection:
/// `None` to carry on, else why the connection ends.
fn closing(written: Result<Result<(), WsError>, tokio::time::error::Elapsed>) -> Option<Ending> {
    match written {
        Ok(Ok(())) => None,
        Ok(Err(_)) => Some(Ending::Gone),
        Err(_) => Some(Ending::WriteTimedOut),
    }
}

/// Why a connection ended: what to tell the client, and which counter says so.
enum Ending {
    /// The client closed, or its socket failed: nothing to tell.
    Gone,
    /// It broke the WebSocket protocol or a size limit.
    Violation(CloseCode, String),
    /// Nothing received for two heartbeat intervals.
    Silent,
    /// A write waited for the client for as long.
    WriteTimedOut,
    /// Closed to free `realtime.client_memory` while it accepted no data.
    OutOfMemory,
    /// The worker is stopping.
    Restart,
}

impl Ending {
    fn close_frame(self) -> Option<(CloseCode, String)> {
        let (code, reason) = match self {
            Ending::Gone => return None,
            Ending::Violation(code, reason) => return Some((code, reason)),
            Ending::Silent => (CloseCode::Away, "no pong received; heartbeat timed out"),
            Ending::WriteTimedOut => (
                CloseCode::Away,
                "heartbeat timed out: the client accepted no data",
            ),
            Ending::OutOfMemory => (
                CloseCode::Again,
                "slow client: realtime.client_memory is exhausted",
            ),
            Ending::Restart => (CloseCode::Restart, "server is restarting"),
        };
        Some((code, reason.to_string()))
    }

    fn counter(&self) -> Stat {
        match self {
            Ending::Gone => Stat::ClosedByClient,
            Ending::Violation(..) => Stat::ClosedProtocol,
            Ending::Silent => Stat::ClosedSilent,
            Ending::WriteTimedOut => Stat::ClosedWriteTimeout,
            Ending::OutOfMemory => Stat::ClosedSlowClient,
            Ending::Restart => Stat::ClosedRestart,
        }
    }
}
