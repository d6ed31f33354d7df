//! What every connection is given: the shared parts of the server.

use crate::bridge::WorkerHandle;
use crate::history::History;
use crate::net::backlog::ReadBack;
use crate::net::http::head::Handshakes;
use crate::net::{apart, clients, fanout::Fanout, rooms::Hub, shared::Shared, snapshots};
use std::sync::Arc;

/// What every connection needs.
#[derive(Clone)]
pub struct Context {
    pub shared: Arc<Shared>,
    pub worker: WorkerHandle,
    pub batches: Arc<Fanout>,
    pub handshakes: Arc<Handshakes>,
    /// Published changes kept on disk, for clients that resume (`None`: no history).
    pub history: Option<Arc<History>>,
    /// The history as subscribers read it back (`None`: no history).
    pub read_back: Option<Arc<ReadBack>>,
    /// What each connection is doing (`realtime_clients()`, /health).
    pub clients: Arc<clients::Clients>,
    /// Snapshot readers waited for and running.
    pub snapshots: Arc<snapshots::Snapshots>,
    /// The judge of audiences judged apart.
    pub judges: Arc<apart::Judges>,
    /// Who receives client broadcasts on each channel.
    pub hub: Arc<Hub>,
}
