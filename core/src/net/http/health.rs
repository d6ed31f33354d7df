//! `GET /health`: liveness and the numbers an operator looks at first.

use super::response::Response;
use crate::net::context::Context;
use crate::stats::Stat;

pub fn health(context: &Context) -> Response {
    let s = context.shared.stats;
    let (unacknowledged, backlogged) = context.clients.behind();
    let unready = context.shared.unready();
    let body = serde_json::json!({
        "status": if unready.is_empty() { "ok" } else { "unavailable" },
        "unavailable_because": unready,
        "position": s.get(Stat::Position),
        "connections": s.connections(),
        "subscriptions": s.subscriptions(),
        "backlog_bytes": s.get(Stat::BacklogBytes),
        "batches_handed": s.get(Stat::BatchesHanded),
        "catching_up": s.get(Stat::CatchingUp),
        "clients_unacknowledged": unacknowledged,
        "clients_backlogged": backlogged,
        "queue": {
            "used_bytes": s.get(Stat::QueueUsedBytes),
            "capacity_bytes": s.get(Stat::QueueCapacityBytes),
            "overflow_bytes": s.get(Stat::QueueOverflowBytes),
            "lost_transactions": s.get(Stat::LostTransactions),
        },
    });
    let status = match unready.is_empty() {
        true => "200 OK",
        false => "503 Service Unavailable",
    };
    Response::json(status, body.to_string())
}
