//! An answer to a request that is not upgraded, and how it is sent.

use crate::net::stream::Stream;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Before closing, unread input is drained for at most this long (or this many bytes), so that
/// the kernel does not answer it with a reset that destroys the response.
const LINGER: Duration = Duration::from_secs(1);
const LINGER_BYTES: usize = 8 * 1024 * 1024;

/// A complete answer to a request that is not upgraded; the connection closes after it.
pub struct Response {
    status: &'static str,
    content_type: &'static str,
    body: std::borrow::Cow<'static, str>,
    headers: String,
    /// The code of an error response.
    error: Option<String>,
    /// Answering HEAD: the same head, no body.
    pub head_only: bool,
}

impl Response {
    pub fn json(status: &'static str, body: String) -> Response {
        Response::text(status, "application/json", body)
    }

    pub fn text(
        status: &'static str,
        content_type: &'static str,
        body: impl Into<std::borrow::Cow<'static, str>>,
    ) -> Response {
        Response {
            status,
            content_type,
            body: body.into(),
            headers: String::new(),
            error: None,
            head_only: false,
        }
    }

    pub fn error(status: &'static str, code: &str, message: &str) -> Response {
        let body = serde_json::json!({ "error": code, "message": message }).to_string();
        Response {
            error: Some(code.to_string()),
            ..Response::json(status, body)
        }
    }

    /// The code of an error response (`None`: not an error).
    pub fn error_code(&self) -> Option<&str> {
        self.error.as_deref()
    }

    pub fn header(mut self, line: &str) -> Response {
        self.headers.push_str(line);
        self.headers.push_str("\r\n");
        self
    }

    pub async fn send<S: Stream>(self, mut stream: S) {
        let mut text = format!(
            "HTTP/1.1 {}\r\nContent-Type: {}\r\nContent-Length: {}\r\nConnection: close\r\n{}\r\n",
            self.status,
            self.content_type,
            self.body.len(),
            self.headers
        );
        if self.head_only {
            let _ = stream.write_all(text.as_bytes()).await;
            return;
        }
        text.push_str(&self.body);
        let _ = stream.write_all(text.as_bytes()).await;
        let _ = stream.shutdown().await;
        // Lingering close: closing with unread input makes the kernel send a reset, which can
        // destroy the response before the client reads it. Drain a little first, bounded.
        let mut sink = [0u8; 4096];
        let _ = tokio::time::timeout(LINGER, async {
            let mut drained = 0;
            while drained < LINGER_BYTES {
                match stream.read(&mut sink).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => drained += n,
                }
            }
        })
        .await;
    }
}
