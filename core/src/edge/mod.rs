//! `realtime-edge`: the network side of realtime_ext on a machine of its own. It serves the
//! same protocols, pages and limits as the server inside the database, fed by the NATS stream
//! the worker publishes its history to (`feed`), and asks the worker, over NATS, what only the
//! database can answer (`remote`). Nothing here touches PostgreSQL.

pub mod config;
mod feed;
mod pipe;
mod remote;

use crate::auth::AuthConfig;
use crate::bridge;
use crate::history::History;
use crate::net::fanout::Fanout;
use crate::net::shared::Shared;
use crate::net::{self, Address};
use crate::stats::Stats;
pub use config::Config;
use nix::sys::signal::{SigSet, Signal};
use std::sync::Arc;

/// Serve as `config` says until SIGTERM or SIGINT, then close every client's connection
/// (code 1012) and return.
pub fn run(config: Config) -> Result<(), String> {
    // Taken by `wait` below, never by a handler: blocked before any thread starts.
    let mut stop = SigSet::empty();
    stop.add(Signal::SIGTERM);
    stop.add(Signal::SIGINT);
    stop.thread_block()
        .map_err(|e| format!("cannot block signals: {e}"))?;

    let dir = config.dir()?;
    // What an earlier run read is read again from the stream: an edge keeps nothing.
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("pg_realtime"))
        .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    // The sockets' paths are relative, as in a data directory.
    std::env::set_current_dir(&dir).map_err(|e| format!("cannot enter {}: {e}", dir.display()))?;

    let stats: &'static Stats = Box::leak(Box::default());
    let shared = Arc::new(Shared::new(config.limits()?, stats));
    shared.set_auth(AuthConfig::new(&config.auth()?)?);
    if let Some((cert, key)) = config.tls()? {
        shared.set_tls(Some(net::tls::acceptor(&cert, &key)?));
    }
    shared.set_unready("stream", Some("reading the stream up to its end".into()));
    let (history, _) = History::open(&dir.join("history"), config.history()?)
        .map_err(|e| format!("cannot open the history in {}: {e}", dir.display()))?;
    let (backlog, memory) = config.fanout()?;
    let fanout = Fanout::new(backlog, memory, stats);
    let (worker, inbox) =
        bridge::request_channel().map_err(|e| format!("cannot make the request channel: {e}"))?;
    let address = Address {
        hosts: config.hosts(),
        port: config.port()?,
    };
    let server = net::start(
        &address,
        shared.clone(),
        worker,
        fanout.clone(),
        Some(history.clone()),
        dir.join("clients.json"),
    )?;
    let nats = config.nats()?;
    let runtime = server.handle();
    let client = runtime
        .block_on(
            async_nats::ConnectOptions::new()
                .name("realtime-edge")
                .retry_on_initial_connect()
                .connect(nats.url.as_str()),
        )
        .map_err(|e| format!("cannot connect to NATS at {}: {e}", nats.shown_url()))?;
    let (restarted, restarts) = tokio::sync::mpsc::unbounded_channel();
    let (snapshots, mut tickets) = tokio::sync::mpsc::unbounded_channel();
    let remote = Arc::new(remote::Remote::new(
        client,
        &nats.stream,
        shared.clone(),
        restarted,
        snapshots,
    ));
    remote.serve(inbox, runtime.clone());
    let piping = remote.clone();
    runtime.spawn(async move {
        while let Some(ticket) = tickets.recv().await {
            tokio::spawn(pipe::run(piping.clone(), ticket));
        }
    });
    runtime.spawn(remote.clone().greet());
    runtime.spawn(feed::run(
        nats.clone(),
        history,
        fanout,
        shared,
        remote,
        restarts,
    ));
    eprintln!(
        "realtime-edge: serving on {} from stream \"{}\" at {}",
        server.description(),
        nats.stream,
        nats.shown_url()
    );
    let signal = stop
        .wait()
        .map_err(|e| format!("waiting for a signal: {e}"))?;
    eprintln!("realtime-edge: {signal:?}: stopping");
    server.shutdown();
    Ok(())
}
