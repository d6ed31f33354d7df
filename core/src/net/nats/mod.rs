//! Publishing the history to a NATS JetStream stream, so that servers elsewhere can follow
//! what the database commits without connecting to it: the worker hands over where and what
//! (`Nats::set`), and one task (`publish`) follows the history into the stream, in position
//! order, resuming from what the stream holds. `wire` is the stream's message format.

mod answer;
pub mod ask;
pub mod follow;
mod publish;
mod settings;
pub mod wire;

pub use answer::Answerer;

pub use settings::Settings;

use crate::history::History;
use crate::stats::Stats;
use std::sync::Arc;
use tokio::sync::watch;

/// The worker's end: where to publish now (`None`: nowhere).
pub struct Nats(watch::Sender<Option<Settings>>);

impl Nats {
    /// Publish `history` as the settings say, on `runtime`; nothing until `set`.
    /// Edge servers' questions are answered by `answerer` meanwhile (`None`: not at all).
    pub fn start(
        history: Arc<History>,
        answerer: Option<Answerer>,
        stats: &'static Stats,
        runtime: &tokio::runtime::Runtime,
    ) -> Nats {
        let (tx, rx) = watch::channel(None);
        runtime.spawn(supervise(history, answerer.map(Arc::new), stats, rx));
        Nats(tx)
    }

    pub fn set(&self, settings: Option<Settings>) {
        self.0.send_if_modified(|now| {
            let changed = *now != settings;
            *now = settings;
            changed
        });
    }
}

/// One publisher and one answerer at a time, started again under new settings.
async fn supervise(
    history: Arc<History>,
    answerer: Option<Arc<Answerer>>,
    stats: &'static Stats,
    mut wanted: watch::Receiver<Option<Settings>>,
) {
    let mut running: Vec<tokio::task::JoinHandle<()>> = Vec::new();
    while wanted.changed().await.is_ok() {
        for task in running.drain(..) {
            task.abort();
            stats.set(crate::stats::Stat::NatsConnected, 0);
        }
        if let Some(settings) = wanted.borrow_and_update().clone() {
            running.push(tokio::spawn(publish::run(
                settings.clone(),
                history.clone(),
                stats,
            )));
            if let Some(answerer) = &answerer {
                running.push(tokio::spawn(answer::run(settings, answerer.clone())));
            }
        }
    }
}
