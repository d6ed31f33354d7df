//! Which route answers a request: by method and path only.

/// Where WebSocket clients of the native protocol connect.
pub const WEBSOCKET_PATH: &str = "/realtime";

pub enum Route {
    /// `GET` or `HEAD /health`.
    Health {
        head_only: bool,
    },
    /// `GET /realtime`: the native protocol's WebSocket.
    Native,
    NotFound,
    MethodNotAllowed,
}

pub fn route(method: &str, path: &str) -> Route {
    match (method, path) {
        ("GET" | "HEAD", "/health") => Route::Health {
            head_only: method == "HEAD",
        },
        ("GET", WEBSOCKET_PATH | "/realtime/") => Route::Native,
        ("GET" | "HEAD", _) => Route::NotFound,
        _ => Route::MethodNotAllowed,
    }
}
