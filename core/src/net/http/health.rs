//! `GET /health`: liveness and the numbers an operator looks at first.

use super::Response;
use crate::net::Context;
use std::sync::atomic::Ordering::Relaxed;

pub fn health(context: &Context) -> Response {
    let s = &context.shared;
    let (unacknowledged, backlogged) = context.clients.behind();
    let body = serde_json::json!({
        "status": "ok",
        "position": s.position(),
        "connections": s.connections.load(Relaxed),
        "subscriptions": s.subscriptions.load(Relaxed),
        "backlog_bytes": context.batches.ring_bytes(),
        "batches_handed": context.batches.batches_handed(),
        "clients_unacknowledged": unacknowledged,
        "clients_backlogged": backlogged,
        "queue": {
            "used_bytes": s.queue_used.load(Relaxed),
            "capacity_bytes": s.queue_capacity.load(Relaxed),
            "overflow_bytes": s.queue_overflow.load(Relaxed),
            "lost_transactions": s.lost_txns.load(Relaxed),
        },
    });
    Response::json("200 OK", body.to_string())
}
