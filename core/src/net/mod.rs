//! The network side: a tokio runtime on threads of its own serving HTTP and WebSocket.
//! Nothing here can call Postgres (this crate has no pgrx); it talks to the worker through
//! `bridge`.

pub mod apart;
pub mod backlog;
pub mod clients;
mod connection;
mod context;
pub mod fanout;
pub mod headless;
mod http;
pub mod identity;
pub mod interest;
pub mod nats;
pub mod rooms;
pub mod shared;
pub mod snapshots;
mod stream;
pub mod subscriber;
pub mod subscriptions;
#[cfg(test)]
pub mod testing;
pub mod tls;
pub mod webhooks;
mod woken;

use crate::bridge::WorkerHandle;
use crate::history::History;
use crate::net::fanout::Fanout;
use crate::net::shared::Shared;
use context::Context;
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;

/// How long a stopping worker waits for its clients to receive their close frames.
const SHUTDOWN_GRACE: Duration = Duration::from_millis(1500);

/// Where to listen: `hosts` as in realtime.listen_addresses.
pub struct Address {
    pub hosts: String,
    pub port: u16,
}

pub struct Server {
    runtime: tokio::runtime::Runtime,
    bound: Vec<SocketAddr>,
    shared: Arc<Shared>,
    batches: Arc<Fanout>,
    webhooks: webhooks::Webhooks,
    /// Publishing the history to NATS (`None`: no history to publish).
    nats: Option<nats::Nats>,
    /// The connection report's file, removed when the server stops.
    report: PathBuf,
}

impl Server {
    /// The network threads' runtime, for tasks of an embedding server (an edge's feed).
    pub fn handle(&self) -> tokio::runtime::Handle {
        self.runtime.handle().clone()
    }

    pub fn description(&self) -> String {
        self.bound
            .iter()
            .map(|a| a.to_string())
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// Deliver these webhooks (and stop delivering any other) under `settings`.
    pub fn set_webhooks(
        &self,
        hooks: Vec<crate::webhook::Webhook>,
        settings: crate::webhook::Settings,
    ) {
        self.webhooks.set(hooks, settings);
    }

    /// Publish the history to NATS as `settings` say (`None`: not at all).
    pub fn set_nats(&self, settings: Option<nats::Settings>) -> Result<(), String> {
        match (&self.nats, settings) {
            (Some(nats), settings) => nats.set(settings),
            (None, Some(_)) => {
                return Err("there is no history to publish (realtime.history_size is 0)".into())
            }
            (None, None) => {}
        }
        Ok(())
    }

    /// Tell every client the server is restarting (close code 1012), give them a moment to
    /// receive it, then stop the threads.
    pub fn shutdown(self) {
        self.batches.close();
        let deadline = std::time::Instant::now() + SHUTDOWN_GRACE;
        while self.shared.stats.connections() > 0 && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        self.runtime.shutdown_timeout(Duration::from_millis(100));
        let _ = std::fs::remove_file(&self.report);
    }
}

pub fn start(
    address: &Address,
    shared: Arc<Shared>,
    worker: WorkerHandle,
    batches: Arc<Fanout>,
    history: Option<Arc<History>>,
    report: PathBuf,
) -> Result<Server, String> {
    let addrs = resolve(address)?;
    raise_fd_limit();
    let runtime = with_signals_blocked(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("realtime-net")
            .enable_all()
            .build()
    })
    .map_err(|e| format!("could not start network threads: {e}"))?;
    let context = Context {
        shared: shared.clone(),
        worker,
        batches,
        handshakes: Arc::new(http::Handshakes::default()),
        read_back: history.clone().map(backlog::ReadBack::new),
        history,
        clients: Arc::default(),
        snapshots: Arc::default(),
        judges: Arc::default(),
        hub: rooms::Hub::new(shared.stats),
    };
    let readers = context.snapshots.clone();
    match runtime.block_on(async { readers.listen(std::path::Path::new(snapshots::SOCKET)) }) {
        Ok(accept) => drop(runtime.spawn(accept)),
        Err(e) => return Err(format!("could not listen on {}: {e}", snapshots::SOCKET)),
    }
    let judges = context.judges.clone();
    match runtime.block_on(async { judges.listen(std::path::Path::new(apart::SOCKET)) }) {
        Ok(accept) => drop(runtime.spawn(accept)),
        Err(e) => return Err(format!("could not listen on {}: {e}", apart::SOCKET)),
    }
    let mut bound = Vec::new();
    let mut errors = Vec::new();
    for addr in addrs {
        match runtime.block_on(async { listen(addr) }) {
            Ok(listener) => {
                bound.push(addr);
                runtime.spawn(accept_loop(listener, context.clone()));
            }
            Err(e) => errors.push(format!("{addr}: {e}")),
        }
    }
    if bound.is_empty() {
        return Err(format!(
            "could not listen on any address ({})",
            errors.join("; ")
        ));
    }
    runtime.spawn(context.batches.clone().dispatch());
    let janitor = context.batches.clone();
    let janitor_shared = context.shared.clone();
    runtime.spawn(async move {
        let mut every = tokio::time::interval(fanout::JANITOR_EVERY);
        loop {
            every.tick().await;
            janitor.sweep(2 * janitor_shared.limits().heartbeat_interval);
        }
    });
    let webhooks = webhooks::Webhooks::start(context.clone(), &runtime);
    let nats = context.history.clone().map(|history| {
        let answerer = nats::Answerer::new(
            context.worker.clone(),
            context.judges.clone(),
            context.shared.clone(),
            context.snapshots.clone(),
        );
        nats::Nats::start(history, Some(answerer), context.shared.stats, &runtime)
    });
    let (clients, path) = (context.clients.clone(), report.clone());
    runtime.spawn(async move {
        let mut every = tokio::time::interval(clients::REPORT_EVERY);
        loop {
            every.tick().await;
            // Monitoring only: a failed write is retried next time.
            let _ = clients::write(&path, &clients.report());
        }
    });
    Ok(Server {
        runtime,
        batches: context.batches.clone(),
        webhooks,
        nats,
        bound,
        shared,
        report,
    })
}

fn resolve(address: &Address) -> Result<Vec<SocketAddr>, String> {
    let mut addrs = Vec::new();
    for host in address
        .hosts
        .split(',')
        .map(str::trim)
        .filter(|h| !h.is_empty())
    {
        let host = if host == "*" { "0.0.0.0" } else { host };
        let found = (host, address.port)
            .to_socket_addrs()
            .map_err(|e| format!("could not resolve listen address \"{host}\": {e}"))?;
        for addr in found {
            if !addrs.contains(&addr) {
                addrs.push(addr);
            }
        }
    }
    if addrs.is_empty() {
        return Err("realtime.listen_addresses is empty".into());
    }
    Ok(addrs)
}

/// Each client is a file descriptor; the soft limit a postmaster inherits (often 1024) would
/// cap connections far below realtime.max_connections. Raise it to the hard limit.
fn raise_fd_limit() {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    if let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE) {
        if soft < hard {
            let _ = setrlimit(Resource::RLIMIT_NOFILE, hard, hard);
        }
    }
}

/// Bytes the kernel may hold for one client that is not reading (Linux doubles the value set).
/// Left to autotuning, a loopback socket took megabytes of frames from a client that never
/// read, and writing them cost every other client the network threads' time.
const SEND_BUFFER: usize = 64 * 1024;

/// Postgres delivers signals to whichever thread has them unblocked; network threads must
/// never run Postgres's signal handlers, so they start with every signal blocked.
fn with_signals_blocked<T>(f: impl FnOnce() -> T) -> T {
    use nix::sys::signal::{pthread_sigmask, SigSet, SigmaskHow};
    let mut old = SigSet::empty();
    let _ = pthread_sigmask(SigmaskHow::SIG_BLOCK, Some(&SigSet::all()), Some(&mut old));
    let result = f();
    let _ = pthread_sigmask(SigmaskHow::SIG_SETMASK, Some(&old), None);
    result
}

/// Connections the kernel queues for `accept` (capped by net.core.somaxconn). tokio's default
/// of 1,024 overflows when thousands of clients reconnect at once (after a restart, say):
/// the kernel then drops their SYNs, and each dropped one retries after 1, 3, 7, 15 and 31 s,
/// a health check or a scrape among them.
const LISTEN_BACKLOG: u32 = 8192;

fn listen(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = match addr {
        SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4()?,
        SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6()?,
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(LISTEN_BACKLOG)
}

async fn accept_loop(listener: TcpListener, context: Context) {
    loop {
        match listener.accept().await {
            Ok((stream, peer)) => {
                let _ = stream.set_nodelay(true);
                let _ = socket2::SockRef::from(&stream).set_send_buffer_size(SEND_BUFFER);
                tokio::spawn(http::serve(stream, peer.ip(), context.clone()));
            }
            // Out of file descriptors and the like: back off instead of spinning.
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
}
