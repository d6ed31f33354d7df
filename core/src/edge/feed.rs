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
        move |why| {
            eprintln!("realtime-edge: following stream \"{stream}\": {why}; trying again");
            failing.set_unready("stream", Some(format!("cannot follow the stream: {why}")));
        },
    ));
    let stats = shared.stats;
    loop {
        let mut batch = tokio::select! {
            batch = batches.recv() => match batch {
                Some(batch) => batch,
                None => return,
            },
            Some(()) = restarted.recv() => {
                eprintln!("realtime-edge: the database's worker restarted; every session authorizes again");
                Batch::Reauthorize { last_position: stats.get(Stat::Position) }
            }
        };
        shared.set_unready("stream", None);
        if let Batch::Reauthorize { .. } = batch {
            shared.catalog_epoch.send_modify(|epoch| *epoch += 1);
        } else {
            // Written first, as on the database host: whatever a session is handed, a client
            // can resume from.
            if let Err(e) = tokio::task::block_in_place(|| history.append(&batch)) {
                eprintln!("realtime-edge: could not write to the history: {e}");
            }
            stats.set(Stat::Position, batch.last_position());
            remote.judge_batch(&mut batch).await;
        }
        fanout.hand_out(batch);
    }
}
