//! Which route answers a request: by method and path only.

use super::pages::{self, Asset};

/// Where WebSocket clients of the native protocol connect.
pub const WEBSOCKET_PATH: &str = "/realtime";
/// Where the Supabase Realtime clients connect (their URL ends in `/realtime/v1`).
pub const SUPABASE_PATH: &str = "/realtime/v1/websocket";

pub enum Route {
    /// `GET` or `HEAD /health`.
    Health {
        head_only: bool,
    },
    /// `GET` or `HEAD /metrics`.
    Metrics {
        head_only: bool,
    },
    /// `GET /realtime`: the native protocol's WebSocket.
    Native,
    /// `GET /realtime/v1/websocket`: the Supabase Realtime protocol's.
    Supabase,
    /// `POST /realtime/v1/api/broadcast[/{topic}/events/{event}]`: Supabase's REST broadcast,
    /// and (`OPTIONS`) its CORS preflight.
    RestBroadcast,
    Preflight,
    /// `GET` or `HEAD` of an embedded file (`pages`).
    Asset(&'static Asset),
    NotFound,
    MethodNotAllowed,
}

pub fn route(method: &str, path: &str, serve_pages: bool) -> Route {
    match (method, path) {
        ("GET" | "HEAD", "/health") => Route::Health {
            head_only: method == "HEAD",
        },
        ("GET" | "HEAD", "/metrics") => Route::Metrics {
            head_only: method == "HEAD",
        },
        ("GET", WEBSOCKET_PATH | "/realtime/") => Route::Native,
        ("GET", SUPABASE_PATH | "/realtime/v1/websocket/") => Route::Supabase,
        ("POST" | "OPTIONS", _) if is_broadcast(path) => match method {
            "POST" => Route::RestBroadcast,
            _ => Route::Preflight,
        },
        ("GET" | "HEAD", _) => match pages::find(path, serve_pages) {
            Some(asset) => Route::Asset(asset),
            None => Route::NotFound,
        },
        _ => Route::MethodNotAllowed,
    }
}

fn is_broadcast(path: &str) -> bool {
    path.strip_prefix(super::broadcast::PATH)
        .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
}
