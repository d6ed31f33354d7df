//! Webhook deliveries on the network threads: the worker hands over the webhooks to deliver
//! and the settings they obey (`Webhooks::set`); each webhook gets a task of its own
//! (`delivery`), restarted only when its row changes in a way that changes delivery. HTTP
//! runs here, never on the Postgres thread. Each acknowledgement is written to the webhook's
//! file at once (`acks`); outcomes go back to the worker over the request channel, which
//! keeps positions and the deliveries' log in the database.

pub mod acks;
mod delivery;
pub mod guard;
pub mod request;
pub mod retry;

use crate::net::context::Context;
use crate::webhook::{Settings, Webhook};
use delivery::Http;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{watch, Semaphore};
use tokio::task::JoinHandle;

/// Longest a connection to a receiver may take to open.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// What the worker last handed over.
type Wanted = Option<(Vec<Webhook>, Settings)>;

/// The worker's end: the webhooks to deliver, as the database says now.
pub struct Webhooks(watch::Sender<Wanted>);

impl Webhooks {
    /// Start delivering on `context`'s runtime; nothing is delivered until `set`.
    pub fn start(context: Context, runtime: &tokio::runtime::Runtime) -> Webhooks {
        let (tx, rx) = watch::channel(None);
        runtime.spawn(supervise(context, rx));
        Webhooks(tx)
    }

    /// Deliver `hooks` (and no others) under `settings`.
    pub fn set(&self, hooks: Vec<Webhook>, settings: Settings) {
        self.0.send_replace(Some((hooks, settings)));
    }
}

async fn supervise(context: Context, mut wanted: watch::Receiver<Wanted>) {
    let mut running: HashMap<i64, (Webhook, JoinHandle<()>)> = HashMap::new();
    let mut shared: Option<(Settings, Arc<Http>)> = None;
    while wanted.changed().await.is_ok() {
        let Some((hooks, settings)) = wanted.borrow_and_update().clone() else {
            continue;
        };
        // New settings: every delivery starts again under them, from its kept position.
        if shared.as_ref().is_none_or(|(s, _)| *s != settings) {
            for (_, (_, task)) in running.drain() {
                task.abort();
            }
            match http(&settings) {
                Ok(http) => shared = Some((settings, http)),
                Err(e) => {
                    eprintln!("realtime_ext: webhooks cannot be delivered: {e}");
                    shared = None;
                    continue;
                }
            }
        }
        let Some((_, http)) = &shared else { continue };
        running.retain(|id, (hook, task)| {
            let keep = hooks.iter().any(|h| h.id == *id && h.same_delivery(hook));
            if !keep {
                task.abort();
            }
            keep
        });
        for hook in hooks {
            if running.contains_key(&hook.id) {
                continue;
            }
            let task = tokio::spawn(delivery::run(context.clone(), hook.clone(), http.clone()));
            running.insert(hook.id, (hook, task));
        }
    }
    for (_, (_, task)) in running {
        task.abort();
    }
}

fn http(settings: &Settings) -> Result<Arc<Http>, String> {
    let guard = Arc::new(guard::Guard::new(settings.allowed.clone()));
    let client = reqwest::Client::builder()
        // A redirect could lead anywhere, a refused address included.
        .redirect(reqwest::redirect::Policy::none())
        // A proxy would resolve names where the guard cannot see.
        .no_proxy()
        .dns_resolver(Arc::new(guard::Resolver(guard.clone())))
        .connect_timeout(CONNECT_TIMEOUT)
        .user_agent("realtime_ext webhooks")
        .build()
        .map_err(|e| e.to_string())?;
    Ok(Arc::new(Http {
        client,
        guard,
        permits: Arc::new(Semaphore::new(settings.concurrency.max(1))),
        schedule: settings.schedule.clone(),
    }))
}
