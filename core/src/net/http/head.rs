//! Reading a request head: bounded in size, header count and time, and in how many slow heads
//! one source address may keep open.

use crate::net::stream::Stream;
use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use tokio::io::AsyncReadExt;
use tokio::sync::Notify;
use tokio::time::Instant;

const MAX_HEAD: usize = 16 * 1024;
pub const MAX_HEADERS: usize = 64;

/// A parsed request head, and whatever the client sent after it.
pub struct Head {
    pub method: String,
    /// Without the query string.
    pub path: String,
    /// What follows `?` in the request target, if anything.
    pub query: String,
    headers: Vec<(String, String)>,
    pub rest: Vec<u8>,
}

impl Head {
    /// The first value of query parameter `name`, percent-decoded.
    pub fn param(&self, name: &str) -> Option<String> {
        form_urlencoded::parse(self.query.as_bytes())
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.into_owned())
    }

    /// The first value of header `name` (any case), or "".
    pub fn header(&self, name: &str) -> &str {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map_or("", |(_, v)| v.as_str())
    }
}

/// Why no head was read.
pub enum HeadError {
    /// The peer left, or was evicted to make room: nothing to answer.
    Gone,
    Timeout,
    Malformed,
    TooLarge,
    TooManyHeaders,
    /// A header that decides access or identity came twice (RFC 9112 requires 400 for two
    /// `Host`s): whichever copy a check read, another part could read the other.
    Repeated(&'static str),
}

/// Headers a request may carry at most once.
const SINGLE: [&str; 4] = ["host", "origin", "sec-websocket-key", "authorization"];

/// Read and parse the request head by `deadline`, unless the connection is evicted first.
pub async fn read<S: Stream>(
    stream: &mut S,
    handshaking: &Handshaking,
    deadline: Instant,
) -> Result<Head, HeadError> {
    let (buf, len) = tokio::select! {
        head = tokio::time::timeout_at(deadline, read_until_blank_line(stream)) => {
            head.map_err(|_| HeadError::Timeout)??
        }
        // Evicted to make room: it sent nothing useful for longer than anyone else there.
        _ = handshaking.evicted() => return Err(HeadError::Gone),
    };
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut request = httparse::Request::new(&mut headers);
    match request.parse(&buf[..len]) {
        Ok(httparse::Status::Complete(_)) => {}
        Err(httparse::Error::TooManyHeaders) => return Err(HeadError::TooManyHeaders),
        _ => return Err(HeadError::Malformed),
    }
    if let Some(name) = SINGLE.into_iter().find(|name| {
        request
            .headers
            .iter()
            .filter(|h| h.name.eq_ignore_ascii_case(name))
            .count()
            > 1
    }) {
        return Err(HeadError::Repeated(name));
    }
    let path = request.path.unwrap_or("/");
    Ok(Head {
        method: request.method.unwrap_or("").to_string(),
        path: path.split('?').next().unwrap_or("/").to_string(),
        query: path.split_once('?').map_or("", |(_, q)| q).to_string(),
        headers: request
            .headers
            .iter()
            .filter_map(|h| {
                Some((
                    h.name.to_string(),
                    std::str::from_utf8(h.value).ok()?.to_string(),
                ))
            })
            .collect(),
        rest: buf[len..].to_vec(),
    })
}

/// Read until the end of the request head; returns the bytes read and the head's length.
async fn read_until_blank_line<S: Stream>(stream: &mut S) -> Result<(Vec<u8>, usize), HeadError> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 2048];
    loop {
        let n = stream.read(&mut chunk).await.map_err(|_| HeadError::Gone)?;
        if n == 0 {
            return Err(if buf.is_empty() {
                HeadError::Gone
            } else {
                HeadError::Malformed
            });
        }
        let searched_from = buf.len().saturating_sub(3);
        buf.extend_from_slice(&chunk[..n]);
        if let Some(i) = buf[searched_from..]
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
        {
            return Ok((buf, searched_from + i + 4));
        }
        if buf.len() > MAX_HEAD {
            return Err(HeadError::TooLarge);
        }
    }
}

/// Connections still sending their request head, per source address. At
/// realtime.max_handshakes, a new connection evicts the oldest one of the address that has the
/// most: a flood of silent sockets from one place only ever evicts its own, and never locks
/// anyone else out. They do not count against realtime.max_connections.
#[derive(Default)]
pub struct Handshakes(Mutex<Pending>);

#[derive(Default)]
struct Pending {
    by_address: HashMap<IpAddr, VecDeque<(u64, Arc<Notify>)>>,
    total: usize,
    next_id: u64,
}

/// One connection counted in `Handshakes` until it is dropped; `evicted` fires if it must go.
pub struct Handshaking {
    handshakes: Arc<Handshakes>,
    ip: IpAddr,
    id: u64,
    evicted: Arc<Notify>,
}

impl Handshakes {
    /// Count a new connection from `ip` until its request head is read (TLS handshake
    /// included); at `max`, evict the oldest of the address with the most.
    pub fn begin(self: &Arc<Handshakes>, ip: IpAddr, max: usize) -> Handshaking {
        let mut p = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if p.total >= max.max(1) {
            let busiest = p
                .by_address
                .iter_mut()
                .max_by_key(|(_, q)| q.len())
                .and_then(|(_, q)| q.pop_front());
            if let Some((_, evicted)) = busiest {
                evicted.notify_one();
                p.total -= 1;
            }
        }
        p.next_id += 1;
        let (id, evicted) = (p.next_id, Arc::new(Notify::new()));
        p.by_address
            .entry(ip)
            .or_default()
            .push_back((id, evicted.clone()));
        p.total += 1;
        Handshaking {
            handshakes: self.clone(),
            ip,
            id,
            evicted,
        }
    }
}

impl Handshaking {
    /// Completes when this connection was evicted to make room for a newer one.
    pub async fn evicted(&self) {
        self.evicted.notified().await
    }
}

impl Drop for Handshaking {
    fn drop(&mut self) {
        let mut p = self.handshakes.0.lock().unwrap_or_else(|e| e.into_inner());
        let Some(q) = p.by_address.get_mut(&self.ip) else {
            return;
        };
        let before = q.len();
        q.retain(|(id, _)| *id != self.id);
        let removed = before - q.len();
        if q.is_empty() {
            p.by_address.remove(&self.ip);
        }
        p.total -= removed;
    }
}
