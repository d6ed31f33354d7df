//! The publisher: follows the history into the stream. Each message asserts the stream
//! sequence it expects to follow (`Nats-Expected-Last-Sequence`), so nothing lands out of
//! order or after a hole; any failure (a refused message, a lost connection, a restarted
//! server) ends the session, and the next one starts from what the stream then holds. The
//! history says what it cannot give (an expired stretch, a hole) as gaps, which are published
//! like changes: a consumer of the stream is never left to guess.

use super::settings::Settings;
use super::wire::{self, Message, MSG_ID, POSITION};
use crate::change::Batch;
use crate::history::History;
use crate::stats::{Stat, Stats};
use async_nats::jetstream::{self, message::PublishMessage, stream};
use std::collections::{HashSet, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Entries, and bytes of row images, read from the history at a time (and past either, the
/// entries at the same position as the last).
const CHUNK: usize = 4096;
const CHUNK_BYTES: usize = 16 << 20;
/// Messages sent and not yet acknowledged by the stream.
const IN_FLIGHT: usize = 1024;
/// How long a session that failed waits before the next, at first and at most.
const RETRY_FIRST: Duration = Duration::from_millis(250);
const RETRY_MOST: Duration = Duration::from_secs(10);
/// Room left under the server's max_payload for the headers.
const HEADER_ROOM: usize = 256;
/// Messages at the stream's last position looked at when resuming: the entries that share
/// one position (a change and the end after it) are few.
const TAIL_MAX: usize = 64;

/// Publish until aborted, one session after another.
pub async fn run(settings: Settings, history: Arc<History>, stats: &'static Stats) {
    let mut wait = RETRY_FIRST;
    let mut told: Option<String> = None;
    loop {
        let started = Instant::now();
        let error = session(&settings, &history, stats).await;
        stats.set(Stat::NatsConnected, 0);
        // The same failure again and again is logged once.
        if told.as_deref() != Some(error.as_str()) {
            eprintln!(
                "realtime_ext: publishing to NATS at {} (stream \"{}\") stopped: {error}; trying again",
                settings.shown_url(),
                settings.stream
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

/// Where the stream ends: its last sequence, the position its last message accounts for, and
/// the ids of the messages at that position.
struct Tail {
    sequence: u64,
    position: u64,
    ids: HashSet<String>,
}

/// Connect, find where the stream ends, and publish from there on; returns why it stopped.
async fn session(settings: &Settings, history: &History, stats: &Stats) -> String {
    let client = match async_nats::ConnectOptions::new()
        .name("realtime_ext")
        .connection_timeout(CONNECT_TIMEOUT)
        .connect(settings.url.as_str())
        .await
    {
        Ok(client) => client,
        Err(e) => return format!("cannot connect: {e}"),
    };
    let max_payload = client.server_info().max_payload;
    let js = jetstream::new(client);
    let mut stream = match js.get_or_create_stream(config(settings)).await {
        Ok(stream) => stream,
        Err(e) => return format!("cannot open the stream: {e}"),
    };
    let tail = match tail(&mut stream).await {
        Ok(tail) => tail,
        Err(e) => return e,
    };
    if tail.position > history.last() {
        return format!(
            "the stream holds positions up to {} and the history only up to {}: this data directory is not the one the stream was published from (purge the stream to publish this one)",
            tail.position,
            history.last()
        );
    }
    stats.set(Stat::NatsConnected, 1);
    stats.set(Stat::NatsPosition, tail.position);
    // A new stream starts where the history does.
    let mut edge = match tail.position {
        0 => Tail {
            position: history.floor(),
            ..tail
        },
        _ => tail,
    };
    let mut appended = history.appended();
    let mut pending = VecDeque::new();
    // Markers before the tail's position went out before it; those at it may not have (their
    // ids say).
    let mut markers_through = history
        .markers_after(0)
        .into_iter()
        .filter(|&(_, position)| position < edge.position)
        .map(|(number, _)| number)
        .max()
        .unwrap_or(0);
    loop {
        // Entries at the edge's position may still come (an end follows the change it
        // comes after at the same position): read them again, and skip those published.
        let from = if edge.ids.is_empty() || edge.position <= history.floor() {
            edge.position
        } else {
            edge.position - 1
        };
        let batches = match read(history, from, history.last()).await {
            Ok(batches) => batches,
            Err(e) => return e,
        };
        // Read after the entries: a marker comes after the entries it follows and before
        // the next, so every marker before the last entry read is in this list.
        let mut markers = history
            .markers_after(markers_through)
            .into_iter()
            .peekable();
        let messages = batches.iter().flat_map(|batch| {
            wire::encode(&settings.stream, batch)
                .into_iter()
                .map(|message| fitted(message, batch, max_payload, &settings.stream))
        });
        let mut sent = 0;
        for message in messages.map(Some).chain([None]) {
            // Each marker goes out after the entries at its position, before the next.
            let before = message.as_ref().map_or(edge.position + 1, |m| m.position);
            let due: Vec<Message> = std::iter::from_fn(|| {
                let (number, position) = markers.next_if(|&(_, p)| p < before)?;
                markers_through = number;
                Some(wire::reauthorize(&settings.stream, position, number))
            })
            .collect();
            for message in due.into_iter().chain(message) {
                if message.position == edge.position && edge.ids.contains(&message.id) {
                    continue;
                }
                let publish = PublishMessage::build()
                    .payload(message.body.into())
                    .message_id(&message.id)
                    .header(POSITION, message.position.to_string().as_str())
                    .expected_last_sequence(edge.sequence);
                match js.send_publish(message.subject, publish).await {
                    Ok(ack) => pending.push_back((ack, message.position)),
                    Err(e) => return format!("publishing position {}: {e}", message.position),
                }
                edge.sequence += 1;
                if message.position > edge.position {
                    edge.position = message.position;
                    edge.ids.clear();
                }
                edge.ids.insert(message.id);
                sent += 1;
                if let Err(e) = settle(&mut pending, IN_FLIGHT, stats).await {
                    return e;
                }
            }
        }
        if sent == 0 {
            if let Err(e) = settle(&mut pending, 0, stats).await {
                return e;
            }
            // Woken by the next append; the timeout covers an append that failed.
            let _ = tokio::time::timeout(Duration::from_secs(1), appended.changed()).await;
        }
    }
}

/// `message`, or in its place a gap when it is too large for the server.
fn fitted(message: Message, batch: &Batch, max_payload: usize, prefix: &str) -> Message {
    match batch {
        Batch::Changes(changes) if message.body.len() + HEADER_ROOM > max_payload => {
            match changes.iter().find(|c| c.position == message.position) {
                Some(change) => wire::too_large(prefix, change),
                None => message,
            }
        }
        _ => message,
    }
}

/// Wait for acknowledgements until at most `most` are outstanding.
async fn settle(
    pending: &mut VecDeque<(jetstream::context::PublishAckFuture, u64)>,
    most: usize,
    stats: &Stats,
) -> Result<(), String> {
    while pending.len() > most {
        let (ack, position) = pending.pop_front().expect("not empty");
        match ack.await {
            Ok(_) => {
                stats.set(Stat::NatsPosition, position);
                stats.add(Stat::NatsMessages, 1);
            }
            Err(e) => return Err(format!("the stream did not take position {position}: {e}")),
        }
    }
    Ok(())
}

/// The history's entries after `after` through `through`, up to `CHUNK` of them or
/// `CHUNK_BYTES`, never stopping between two at one position (file reads, off the runtime).
async fn read(history: &History, after: u64, through: u64) -> Result<Vec<Batch>, String> {
    // The reader takes its own copy of the segment list.
    let mut reader = history.read(after, through).peekable();
    tokio::task::spawn_blocking(move || {
        let mut batches: Vec<Batch> = Vec::new();
        let mut bytes = 0;
        while let Some(batch) = reader.next_if(|next| {
            (batches.len() < CHUNK && bytes < CHUNK_BYTES)
                || batches
                    .last()
                    .is_some_and(|last| last.last_position() == next.last_position())
        }) {
            if let Batch::Changes(changes) = &batch {
                bytes += changes.iter().map(|c| c.image_bytes()).sum::<usize>();
            }
            batches.push(batch);
        }
        batches
    })
    .await
    .map_err(|e| format!("reading the history: {e}"))
}

fn config(settings: &Settings) -> stream::Config {
    stream::Config {
        name: settings.stream.clone(),
        subjects: vec![format!("{}.>", settings.stream)],
        storage: stream::StorageType::File,
        max_bytes: settings.max_bytes.min(i64::MAX as u64) as i64,
        max_age: settings.max_age,
        duplicate_window: Duration::from_secs(120),
        ..Default::default()
    }
}

async fn tail(stream: &mut stream::Stream) -> Result<Tail, String> {
    let info = stream
        .info()
        .await
        .map_err(|e| format!("cannot read the stream's state: {e}"))?;
    let (first, last) = (info.state.first_sequence, info.state.last_sequence);
    let mut tail = Tail {
        sequence: last,
        position: 0,
        ids: HashSet::new(),
    };
    // An empty stream (new, or purged) keeps its last sequence; the next message follows it.
    if info.state.messages == 0 {
        return Ok(tail);
    }
    let mut sequence = last;
    while sequence >= first.max(1) && tail.ids.len() < TAIL_MAX {
        let message = match stream.get_raw_message(sequence).await {
            Ok(message) => message,
            Err(e) => return Err(format!("cannot read message {sequence} of the stream: {e}")),
        };
        let header = |name| message.headers.get(name).map(|v| v.as_str().to_string());
        let position = header(POSITION)
            .and_then(|p| p.parse::<u64>().ok())
            .ok_or_else(|| {
                format!("message {sequence} of the stream has no {POSITION} header: the stream holds messages realtime_ext did not publish")
            })?;
        if tail.position == 0 {
            tail.position = position;
        } else if position != tail.position {
            break;
        }
        tail.ids.extend(header(MSG_ID));
        sequence -= 1;
    }
    Ok(tail)
}
