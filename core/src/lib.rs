//! realtime-core: the half of realtime_ext that never touches Postgres. It has no pgrx
//! dependency, so nothing here can call into the server from a network thread.
//!
//! - `ops`: the four kinds of change and sets of them.
//! - `auth`: verifying JWTs into the principal (role and claims) a connection acts as.
//! - `change`: the data everything passes around: `Change`, `Batch`, `Topic`, `Verdict`.
//! - `bridge`: the worker channel: `Request`s the network threads send the worker.
//! - `filter`: `column=op.value` filters: parsing, and matching rows the way SQL compares.
//! - `history`: published changes kept on disk, read back for clients that resume.
//! - `snapshot`: which transactions a snapshot contains, and what its reader is asked and sends.
//! - `protocol`: the wire protocols; `native` is realtime_ext's own JSON messages.
//! - `stats`: the engine's numbers (`Stats`), readable by every process.
//! - `visibility`: the columns and rows (row-level security) a subscriber may see.
//! - `webhook`: webhooks as the worker hands them over, and what became of each request.
//! - `net`: tokio threads: listeners, the HTTP front door, the fan-out ring, the subscription
//!   set, one session loop per protocol, webhook deliveries, and the NATS stream.
//! - `edge`: the `realtime-edge` server: `net` on a machine of its own, fed through NATS.

pub mod auth;
pub mod bridge;
pub mod change;
pub mod edge;
pub mod filter;
pub mod history;
pub mod net;
pub mod ops;
pub mod protocol;
pub mod snapshot;
pub mod stats;
pub mod visibility;
pub mod webhook;
