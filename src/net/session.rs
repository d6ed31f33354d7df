//! One WebSocket connection: its subscriptions, the changes it is sent, heartbeats.
//!
//! Every session reads the same fan-out of batches (`fanout`); a session that falls behind
//! what it keeps skips ahead and is sent a `gap` message saying which positions it missed, and
//! one stuck on a full socket is closed. Nobody else waits for it.

use super::filter;
use super::Context;
use crate::bridge::{Batch, Change, EndReason, ResolvedTable, Shared};
use crate::event::{Op, ALL_OPS};
use crate::fanout::{Missed, Summary};
use crate::protocol::{self, ClientMessage, ErrorCode, ServerMessage};
use futures_util::{SinkExt, StreamExt};
use serde_json::Value;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::error::{CapacityError, Error as WsError};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

/// Most batches written between two flushes when catching up.
const CATCH_UP_BATCHES: usize = 64;
/// How long a closing session waits for its close frame to be written.
const CLOSE_WAIT: Duration = Duration::from_secs(1);

type Sink = futures_util::stream::SplitSink<WebSocketStream<TcpStream>, Message>;

struct Subscription {
    id: Value,
    table: ResolvedTable,
    filter: Option<filter::Compiled>,
    ops: u8,
    /// Changes at or before this position predate the subscription.
    after: u64,
    _counted: Counted,
}

/// Keeps `Shared::subscriptions` counting a subscription for as long as it exists, from the
/// moment it is requested: the worker wakes on commits only while that count is above zero.
struct Counted(Arc<Shared>);

impl Counted {
    fn new(shared: &Arc<Shared>) -> Counted {
        shared.subscriptions.fetch_add(1, Relaxed);
        Counted(shared.clone())
    }
}

impl Drop for Counted {
    fn drop(&mut self) {
        self.0.subscriptions.fetch_sub(1, Relaxed);
    }
}

/// What a subscription makes of a change.
#[derive(PartialEq, Eq, PartialOrd, Ord)]
enum Wanted {
    No,
    /// An UPDATE moved the row out of the filter: the subscriber is told it left.
    Leave,
    Change,
}

impl Subscription {
    fn wants(&self, change: &Change) -> Wanted {
        if change.relid != self.table.relid
            || self.ops & change.op.bit() == 0
            || change.position <= self.after
        {
            return Wanted::No;
        }
        match &self.filter {
            // TRUNCATE affects every row, so it reaches filtered subscriptions too.
            Some(f) if change.op != Op::Truncate => {
                if f.matches(change.row()) {
                    Wanted::Change
                } else if change.op == Op::Update && f.matches(change.old_row()) {
                    Wanted::Leave
                } else {
                    Wanted::No
                }
            }
            _ => Wanted::Change,
        }
    }

    /// The change is of this subscription's table under another name: it was renamed (or
    /// moved to another schema) since the subscription was made.
    fn renamed(&self, change: &Change) -> bool {
        change.relid == self.table.relid
            && (change.names.0 != self.table.schema || change.names.1 != self.table.table)
    }
}

struct Session {
    context: Context,
    sink: Sink,
    subscriptions: Vec<Subscription>,
    /// Last position this session has looked at.
    seen: u64,
    /// The broadcast skipped batches this session was too slow for.
    lagged: bool,
    /// Subscription ends in batches this session skipped, to send with the next delivery.
    pending_ends: Vec<(u32, EndReason)>,
}

pub async fn run(ws: WebSocketStream<TcpStream>, context: Context) {
    let mut batches = context.batches.cursor();
    let kicked = batches.kicked();
    tokio::pin!(kicked);
    let (sink, mut stream) = ws.split();
    let seen = context.shared.position();
    let mut session = Session {
        context,
        sink,
        subscriptions: Vec::new(),
        seen,
        lagged: false,
        pending_ends: Vec::new(),
    };
    let interval = Duration::from_secs(session.context.shared.heartbeat_interval_s.load(Relaxed));
    // A client silent this long is gone; so is one whose socket accepted nothing for as long
    // (a session blocked on a write cannot run its heartbeat, so every write is bounded too).
    let timeout = 2 * interval;
    let timed_out = || Some((CloseCode::Away, "heartbeat timed out".to_string()));
    let mut heartbeat = tokio::time::interval_at(tokio::time::Instant::now() + interval, interval);
    let mut last_heard = Instant::now();

    let close = loop {
        tokio::select! {
            message = stream.next() => {
                last_heard = Instant::now();
                let handled = match message {
                    Some(Ok(Message::Text(text))) => tokio::time::timeout(timeout, session.on_text(&text)).await,
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
                                Some(Err(Missed::Lagged(missed))) => session.missed(missed),
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
                Err(Missed::Lagged(missed)) => session.missed(missed),
                Err(Missed::Closed) => break Some((CloseCode::Restart, "server is restarting".into())),
            },
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

impl Session {
    async fn send(&mut self, message: ServerMessage<'_>) {
        let _ = self.sink.send(Message::text(message.to_text())).await;
    }

    async fn error(&mut self, code: ErrorCode, message: &str, id: Option<&Value>) {
        self.send(ServerMessage::Error { code, message, id }).await
    }

    async fn on_text(&mut self, text: &str) {
        match protocol::parse(text) {
            Err((code, message)) => self.error(code, &message, None).await,
            Ok(ClientMessage::Ping { reference }) => {
                let position = self.context.shared.position().max(self.seen);
                self.send(ServerMessage::Pong {
                    reference: reference.as_ref(),
                    position,
                })
                .await
            }
            Ok(ClientMessage::Unsubscribe { id }) => {
                let before = self.subscriptions.len();
                self.subscriptions
                    .retain(|s| !protocol::same_id(&s.id, &id));
                if self.subscriptions.len() == before {
                    self.error(
                        ErrorCode::UnknownSubscription,
                        "no subscription with this id",
                        Some(&id),
                    )
                    .await
                } else {
                    self.send(ServerMessage::Unsubscribed {
                        id: &id,
                        reason: None,
                    })
                    .await
                }
            }
            Ok(ClientMessage::Subscribe {
                id,
                table,
                events,
                filter,
            }) => {
                if let Err((code, message)) =
                    self.subscribe(id.clone(), table, events, filter).await
                {
                    self.error(code, &message, Some(&id)).await
                }
            }
        }
    }

    async fn subscribe(
        &mut self,
        id: Value,
        table: String,
        events: Option<Vec<String>>,
        filter: Option<String>,
    ) -> Result<(), (ErrorCode, String)> {
        if self
            .subscriptions
            .iter()
            .any(|s| protocol::same_id(&s.id, &id))
        {
            return Err((
                ErrorCode::DuplicateSubscription,
                "a subscription with this id already exists".into(),
            ));
        }
        let max = self.context.shared.max_subscriptions.load(Relaxed);
        if self.subscriptions.len() >= max {
            return Err((
                ErrorCode::TooManySubscriptions,
                format!("a connection may hold at most {max} subscriptions (realtime.max_subscriptions)"),
            ));
        }
        let filter = filter
            .as_deref()
            .map(filter::parse)
            .transpose()
            .map_err(|m| (ErrorCode::InvalidFilter, m))?;
        let requested = match &events {
            None => ALL_OPS,
            Some(names) if names.is_empty() => {
                return Err((
                    ErrorCode::InvalidEvents,
                    "events must name at least one of INSERT, UPDATE, DELETE, TRUNCATE".into(),
                ))
            }
            Some(names) => names
                .iter()
                .try_fold(0, |ops, name| match Op::from_name(name) {
                    Some(op) => Ok(ops | op.bit()),
                    None => Err((
                        ErrorCode::InvalidEvents,
                        format!("unknown event \"{name}\""),
                    )),
                })?,
        };
        // Counted before the worker is asked, so that by the time it answers, commits already
        // wake it (see queue::set_wake_on_commit); a failed subscribe drops the count.
        let counted = Counted::new(&self.context.shared);
        let mut resolved = self.context.worker.resolve(table, filter).await?;
        let filter = resolved
            .filter
            .take()
            .map(filter::Compiled::new)
            .transpose()
            .map_err(|m| (ErrorCode::Internal, m))?;
        let ops = requested & resolved.watched_ops;
        if events.is_some() && ops != requested {
            return Err((
                ErrorCode::InvalidEvents,
                "some requested events are not watched on this table".into(),
            ));
        }
        let after = self.context.shared.position().max(self.seen);
        let names = [Op::Insert, Op::Update, Op::Delete, Op::Truncate]
            .into_iter()
            .filter(|op| ops & op.bit() != 0)
            .map(Op::name)
            .collect();
        self.send(ServerMessage::Subscribed {
            id: &id,
            schema: &resolved.schema,
            table: &resolved.table,
            events: names,
            position: after,
        })
        .await;
        self.subscriptions.push(Subscription {
            id,
            table: resolved,
            filter,
            ops,
            after,
            _counted: counted,
        });
        Ok(())
    }

    /// Batches went by that this session never read: a gap if any could have concerned it.
    /// Ended subscriptions are still ended (by the next delivery, which sends the messages).
    fn missed(&mut self, missed: Option<Vec<Summary>>) {
        let Some(missed) = missed else {
            self.lagged = true;
            return;
        };
        let subscribed = |relid: &u32| self.subscriptions.iter().any(|s| s.table.relid == *relid);
        for summary in missed {
            match summary {
                Summary::Changes(tables) => self.lagged |= tables.iter().any(subscribed),
                Summary::Gap(None) => self.lagged = true,
                Summary::Gap(Some(tables)) => self.lagged |= tables.iter().any(subscribed),
                Summary::Ended(relid, reason) => self.pending_ends.push((relid, reason)),
            }
        }
    }

    /// End the subscriptions `which` selects, telling the client why.
    async fn end(
        &mut self,
        reason: EndReason,
        which: impl Fn(&Subscription) -> bool,
    ) -> Result<(), WsError> {
        let (ended, kept) = std::mem::take(&mut self.subscriptions)
            .into_iter()
            .partition::<Vec<_>, _>(|s| which(s));
        self.subscriptions = kept;
        for s in ended {
            let text = ServerMessage::Unsubscribed {
                id: &s.id,
                reason: Some(reason.name()),
            }
            .to_text();
            self.sink.feed(Message::text(text)).await?;
        }
        Ok(())
    }

    async fn deliver(&mut self, batch: &Batch) -> Result<(), WsError> {
        for (relid, reason) in std::mem::take(&mut self.pending_ends) {
            self.end(reason, |s| s.table.relid == relid).await?;
        }
        if std::mem::take(&mut self.lagged) {
            let from = self.seen + 1;
            let to = batch.first_position().saturating_sub(1).max(from);
            self.send(ServerMessage::Gap {
                reason: "slow_client",
                from_position: from,
                to_position: to,
            })
            .await;
        }
        match batch {
            Batch::Gap { frame, tables, .. } => {
                let concerned = tables.as_ref().is_none_or(|relids| {
                    self.subscriptions
                        .iter()
                        .any(|s| relids.contains(&s.table.relid))
                });
                if concerned {
                    self.sink.feed(Message::Text(frame.clone())).await?
                }
            }
            Batch::Changes(changes) => {
                let seen = self.seen;
                for change in changes.iter().filter(|c| c.position > seen) {
                    if self.subscriptions.iter().any(|s| s.renamed(change)) {
                        self.end(EndReason::Renamed, |s| s.renamed(change)).await?;
                    }
                    let wanted = self.subscriptions.iter().map(|s| s.wants(change)).max();
                    match wanted {
                        Some(Wanted::Change) => {
                            self.sink.feed(Message::Text(change.frame.clone())).await?
                        }
                        Some(Wanted::Leave) => {
                            self.sink.feed(Message::Text(change.leave_frame())).await?
                        }
                        _ => {}
                    }
                }
            }
            Batch::Ended { relid, reason, .. } => {
                self.end(*reason, |s| s.table.relid == *relid).await?
            }
        }
        self.seen = self.seen.max(batch.last_position());
        Ok(())
    }
}
