//! Following the stream from a position: what a server elsewhere reads instead of the
//! history. The first message after the position is found by halving the stream's sequences
//! (positions only grow along them); from there an ordered consumer delivers each message
//! once, in order, and after a failure the follower goes on from the last sequence it
//! delivered, so entries that share a position are neither lost nor repeated.

use super::wire::{self, POSITION};
use crate::change::{Batch, GapReason};
use async_nats::jetstream::{self, consumer, stream};
use futures_util::StreamExt;
use std::time::Duration;
use tokio::sync::mpsc;

const RETRY_FIRST: Duration = Duration::from_millis(250);
const RETRY_MOST: Duration = Duration::from_secs(5);

/// Send every batch of stream `name` at `url` after `position` to `tx`, in order, until `tx`
/// is closed. What the stream no longer holds is sent first as a `history_expired` gap.
/// Failures are retried; each is reported to `told` (`Err`), and so is having caught up
/// again with what the stream held (`Ok`).
pub async fn follow(
    url: String,
    name: String,
    position: u64,
    tx: mpsc::Sender<Batch>,
    told: impl Fn(Result<(), String>) + Send + Sync,
) {
    let mut next: Option<u64> = None;
    let mut wait = RETRY_FIRST;
    loop {
        let error = match session(&url, &name, position, &mut next, &tx, &told).await {
            Ok(()) => return,
            Err(e) => e,
        };
        if tx.is_closed() {
            return;
        }
        told(Err(error));
        tokio::time::sleep(wait).await;
        wait = (wait * 2).min(RETRY_MOST);
    }
}

/// One connection's worth; `next` is the stream sequence to deliver next, once known.
async fn session(
    url: &str,
    name: &str,
    position: u64,
    next: &mut Option<u64>,
    tx: &mpsc::Sender<Batch>,
    told: &(impl Fn(Result<(), String>) + Sync),
) -> Result<(), String> {
    let client = async_nats::connect(url)
        .await
        .map_err(|e| format!("cannot connect: {e}"))?;
    let js = jetstream::new(client);
    let mut stream = js
        .get_stream(name)
        .await
        .map_err(|e| format!("cannot open stream \"{name}\": {e}"))?;
    let start = match *next {
        Some(sequence) => sequence,
        None => {
            let (sequence, gap) = seek(&mut stream, position).await?;
            if let Some(gap) = gap {
                if tx.send(gap).await.is_err() {
                    return Ok(());
                }
            }
            *next = Some(sequence);
            sequence
        }
    };
    let consumer = stream
        .create_consumer(consumer::pull::OrderedConfig {
            deliver_policy: consumer::DeliverPolicy::ByStartSequence {
                start_sequence: start,
            },
            ..Default::default()
        })
        .await
        .map_err(|e| format!("cannot follow stream \"{name}\": {e}"))?;
    let mut messages = consumer
        .messages()
        .await
        .map_err(|e| format!("cannot follow stream \"{name}\": {e}"))?;
    let last = stream
        .info()
        .await
        .map_err(|e| format!("cannot read the stream's state: {e}"))?
        .state
        .last_sequence;
    let mut caught_up = start > last;
    if caught_up {
        told(Ok(()));
    }
    while let Some(message) = messages.next().await {
        let message = message.map_err(|e| format!("following stream \"{name}\": {e}"))?;
        let info = message
            .info()
            .map_err(|e| format!("a message of stream \"{name}\" without its sequence: {e}"))?;
        let (sequence, pending) = (info.stream_sequence, info.pending);
        let batch = wire::decode(&message.payload)
            .map_err(|e| format!("message {sequence} of stream \"{name}\": {e}"))?;
        if tx.send(batch).await.is_err() {
            return Ok(());
        }
        *next = Some(sequence + 1);
        if !caught_up && pending == 0 {
            caught_up = true;
            told(Ok(()));
        }
    }
    Err(format!("stream \"{name}\" stopped delivering"))
}

/// The first sequence whose message is after `position`, and the gap to tell first when the
/// stream begins later than just after it.
async fn seek(stream: &mut stream::Stream, position: u64) -> Result<(u64, Option<Batch>), String> {
    let state = stream
        .info()
        .await
        .map_err(|e| format!("cannot read the stream's state: {e}"))?
        .state
        .clone();
    if state.messages == 0 {
        return Ok((state.last_sequence + 1, None));
    }
    let (mut low, mut high) = (state.first_sequence, state.last_sequence + 1);
    while low < high {
        let middle = low + (high - low) / 2;
        if position_of(stream, middle).await? > position {
            high = middle;
        } else {
            low = middle + 1;
        }
    }
    // The first message the follower gets: if it begins after the position's successor,
    // the stream has dropped what lies between.
    let mut gap = None;
    if low == state.first_sequence {
        let first = stream
            .get_raw_message(low)
            .await
            .map_err(|e| format!("cannot read message {low} of the stream: {e}"))?;
        let begins = wire::decode(&first.payload)
            .map_err(|e| format!("message {low} of the stream: {e}"))?
            .first_position();
        if begins > position + 1 {
            gap = Some(Batch::Gap {
                reason: GapReason::HistoryExpired,
                first_position: position + 1,
                last_position: begins - 1,
                topics: None,
            });
        }
    }
    Ok((low, gap))
}

async fn position_of(stream: &stream::Stream, sequence: u64) -> Result<u64, String> {
    let message = stream
        .get_raw_message(sequence)
        .await
        .map_err(|e| format!("cannot read message {sequence} of the stream: {e}"))?;
    message
        .headers
        .get(POSITION)
        .and_then(|v| v.as_str().parse().ok())
        .ok_or_else(|| format!("message {sequence} of the stream has no {POSITION} header"))
}
