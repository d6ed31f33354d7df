//! What an edge's sessions receive: the stream, followed from its first message, written to
//! the edge's own history (so that resumes, and sessions that fall behind, read back from it
//! as they would on the database host) and handed to the fan-out in order. Catalog markers
//! from the stream, and a restart of the worker, have every session authorize again.

use super::remote::Remote;
use crate::change::Batch;
use crate::history::History;
use crate::net::fanout::Fanout;
use crate::net::nats::{follow, Settings};
use crate::net::shared::Shared;
use crate::stats::Stat;
use std::sync::Arc;
use tokio::sync::mpsc;

/// Batches read ahead of the fan-out.
const READ_AHEAD: usize = 1024;
/// Changes handed out as one batch at most. The stream holds one message per change; the
/// fan-out's cost is per batch and session, so consecutive changes already read are handed
/// out together, as the worker batches them.
const MOST_BATCHED: usize = 1024;

/// Follow the stream into `history` and `fanout` until aborted.
pub async fn run(
    settings: Settings,
    history: Arc<History>,
    fanout: Arc<Fanout>,
    shared: Arc<Shared>,
    remote: Arc<Remote>,
    mut restarted: mpsc::UnboundedReceiver<()>,
) {
    let (tx, mut batches) = mpsc::channel(READ_AHEAD);
    let failing = shared.clone();
    let stream = settings.stream.clone();
    tokio::spawn(follow::follow(
        settings.url.clone(),
        settings.stream.clone(),
        history.last(),
        tx,
        move |told| match told {
            Ok(()) => failing.set_unready("stream", None),
            Err(why) => {
                eprintln!("realtime-edge: following stream \"{stream}\": {why}; trying again");
                failing.set_unready("stream", Some(format!("cannot follow the stream: {why}")));
            }
        },
    ));
    let stats = shared.stats;
    let mut held: Option<Batch> = None;
    loop {
        let mut batch = tokio::select! {
            batch = next(&mut held, &mut batches) => match batch {
                Some(batch) => batch,
                None => return,
            },
            Some(()) = restarted.recv() => {
                eprintln!("realtime-edge: the database's worker restarted; every session authorizes again");
                Batch::Reauthorize { last_position: stats.get(Stat::Position) }
            }
        };
        if let Batch::Reauthorize { .. } = batch {
            shared.catalog_epoch.send_modify(|epoch| *epoch += 1);
        } else {
            // Written first, as on the database host: whatever a session is handed, a client
            // can resume from.
            if let Err(e) = tokio::task::block_in_place(|| history.append(&batch)) {
                eprintln!("realtime-edge: could not write to the history: {e}");
            }
            remote.judge_batch(&mut batch).await;
        }
        // The last position read from the stream (a marker's too), for /health and /metrics.
        let read = stats.get(Stat::Position).max(batch.last_position());
        stats.set(Stat::Position, read);
        fanout.hand_out(batch);
    }
}

/// The next batch: the one held back, or the next read, with the changes read after it
/// joined to it (a batch of another kind is held back for the next call).
async fn next(held: &mut Option<Batch>, batches: &mut mpsc::Receiver<Batch>) -> Option<Batch> {
    let mut batch = match held.take() {
        Some(batch) => batch,
        None => batches.recv().await?,
    };
    if let Batch::Changes(changes) = &mut batch {
        while changes.len() < MOST_BATCHED {
            match batches.try_recv() {
                Ok(Batch::Changes(more)) => changes.extend(more),
                Ok(other) => {
                    *held = Some(other);
                    break;
                }
                Err(_) => break,
            }
        }
    }
    Some(batch)
}
