//! The background worker. Its main thread is the only one in this process that calls Postgres:
//! it drains the shared queue, numbers and serializes changes, answers the network threads'
//! catalog questions, keeps the webhooks' state, and handles signals. The network server runs
//! on threads of its own.

mod apart;
mod audiences;
mod casts;
mod catalog;
mod claims_column;
mod invalidation;
mod policy;
mod publisher;
mod relay;
mod retention;
mod roles;
mod rows;
mod security;
mod snapshot;
mod topics;
mod webhooks;

use crate::{gucs, queue};
use pgrx::bgworkers::{
    BackgroundWorker, BackgroundWorkerBuilder, BgWorkerStartTime, SignalWakeFlags,
};
use pgrx::prelude::*;
use publisher::Publisher;
use realtime_core::auth::AuthConfig;
use realtime_core::bridge::{self};
use realtime_core::net::shared::{Limits, MetricsAccess, Shared};
use realtime_core::net::tls::{self, TlsAcceptor};
use realtime_core::net::{self, fanout::Fanout};
use std::io::Read;
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::time::Duration;

pub fn register() {
    BackgroundWorkerBuilder::new("realtime_ext websocket server")
        .set_type("realtime_ext")
        .set_library("realtime_ext")
        .set_function("realtime_worker_main")
        .enable_spi_access()
        .set_start_time(BgWorkerStartTime::RecoveryFinished)
        .set_restart_time(Some(Duration::from_secs(1)))
        .load();
}

/// With no client subscribed, commits do not wake the worker; it drains the queue this often
/// so that the queue does not fill.
const UNSUBSCRIBED_DRAIN: Duration = Duration::from_millis(100);
const SETTLE_POLL: Duration = Duration::from_millis(10);
/// Under a stream of commits, passes start at most this often. Between passes the worker is
/// not asleep, so committing writers' SetLatch returns without a syscall; sleeping after every
/// commit instead cost each commit a kill(SIGURG) (measured: 4% of all CPU at 16k commits/s).
const MIN_PASS: Duration = Duration::from_millis(1);
/// A wait that ends sooner than this is short: commits arrive faster than about 4,000/s.
const BUSY_WAIT: Duration = Duration::from_micros(250);
/// Passes are paced only after this many short waits in a row. Slower streams are served as
/// they come: pacing after a single short wait held the next change of a 1,000/s stream for up
/// to MIN_PASS whenever two commits happened to land together (p99 commit->client 1.1 ms).
const BUSY_STREAK: u32 = 4;
/// Time per pass spent answering catalog questions before delivery gets its turn again.
const QUESTION_BUDGET: Duration = Duration::from_millis(5);

#[pg_guard]
#[unsafe(no_mangle)]
pub extern "C-unwind" fn realtime_worker_main(_arg: pg_sys::Datum) {
    BackgroundWorker::attach_signal_handlers(SignalWakeFlags::SIGHUP | SignalWakeFlags::SIGTERM);
    BackgroundWorker::connect_worker_to_spi(Some(&gucs::database()), None);
    crate::pg::pin_session(c"realtime_ext worker");

    let shared = Arc::new(Shared::new(limits(), crate::stats::shared()));
    shared.set_tls(tls().unwrap_or_else(|e| {
        crate::error::raise(
            PgSqlErrorCode::ERRCODE_CONFIG_FILE_ERROR,
            format!("realtime_ext: realtime.ssl is on, but {e}"),
            "Point realtime.ssl_cert_file and realtime.ssl_key_file (or ssl_cert_file and ssl_key_file) at PEM files the server can read; the worker retries every second.",
        )
    }));
    shared.set_auth(auth().unwrap_or_else(|e| {
        warning!("realtime_ext: {e}; tokens are refused until it is fixed");
        AuthConfig::closed()
    }));
    invalidation::register();
    casts::register();
    let (handle, inbox) = bridge::request_channel()
        .unwrap_or_else(|e| fatal(format!("could not create channel: {e}")));
    let batches = Fanout::new(
        gucs::client_backlog(),
        gucs::client_memory_bytes(),
        crate::stats::shared(),
    );
    let address = net::Address {
        hosts: gucs::listen_addresses(),
        port: gucs::port(),
    };
    let (history, written) = retention::open();
    let _ = std::fs::create_dir_all(crate::spill::DIR);
    let server = net::start(
        &address,
        shared.clone(),
        handle,
        batches.clone(),
        history.clone(),
        std::path::PathBuf::from(realtime_core::net::clients::REPORT_FILE),
    )
    .unwrap_or_else(|e| fatal(e));
    log!(
        "realtime_ext: serving WebSocket clients on {}{} (database \"{}\")",
        server.description(),
        if gucs::ssl() { " over TLS" } else { "" },
        gucs::database()
    );

    let mut nats = None;
    publish_to_nats(&server, &mut nats);
    let mut publisher = Publisher::new(batches.clone(), shared.clone(), history.clone(), written);
    publisher.start_relaying();
    let waiter = Waiter::new(&inbox);
    // SAFETY: the worker's own latch, set at process start; it outlives the queue's reference (cleared before exit).
    queue::set_worker_latch(unsafe { pg_sys::MyLatch });
    let mut subscribed = false;
    let mut short_waits = 0;
    let mut questions = std::collections::VecDeque::new();
    let mut webhooks = webhooks::Webhooks::default();
    loop {
        let wait = match (publisher.needs_poll(), subscribed) {
            _ if !questions.is_empty() => Duration::ZERO,
            (true, _) => SETTLE_POLL,
            (false, true) => invalidation::CHECK_INTERVAL,
            (false, false) => UNSUBSCRIBED_DRAIN,
        };
        let wait_started = std::time::Instant::now();
        if !waiter.wait(&inbox, wait) {
            break;
        }
        let pass_started = std::time::Instant::now();
        short_waits = if pass_started - wait_started < BUSY_WAIT {
            short_waits + 1
        } else {
            0
        };
        process_interrupts();
        if BackgroundWorker::sighup_received() {
            // SAFETY: the worker's Postgres thread, between transactions, as a SIGHUP handler would.
            unsafe { pg_sys::ProcessConfigFile(pg_sys::GucContext::PGC_SIGHUP) };
            shared.set_limits(limits());
            match tls() {
                Ok(tls) => shared.set_tls(tls),
                Err(e) => warning!("realtime_ext: keeping the previous TLS certificate: {e}"),
            }
            match auth() {
                Ok(auth) => shared.set_auth(auth),
                Err(e) => warning!("realtime_ext: keeping the previous token settings: {e}"),
            }
            // realtime.anon_role, realtime.authenticator and the like change who may see what.
            invalidation::changed();
            batches.set_max_bytes(gucs::client_memory_bytes());
            if let (Some(history), Some(limits)) = (&history, gucs::history_limits()) {
                history.set_limits(limits);
            }
            publish_to_nats(&server, &mut nats);
        }
        // Questions are taken before the queue is drained and answered after, so that the
        // changes committed before a subscription was asked for are numbered at or below the
        // position it starts after. (Answering questions that arrived during the drain let
        // such a change through to a new subscription.)
        for request in inbox.rx.try_iter() {
            match request {
                bridge::Request::Webhook(attempt) => webhooks.record(attempt),
                question => questions.push_back(question),
            }
        }
        // A session counts its subscription before asking to resolve it, so wake-ups are on
        // before the answer goes out. A NATS stream is followed by sessions elsewhere (edge
        // servers): it is kept as current as a local session would be.
        subscribed = shared.stats.subscriptions() > 0
            || shared.stats.get(realtime_core::stats::Stat::NatsConnected) == 1;
        queue::set_wake_on_commit(subscribed);
        let mut moved = false;
        while publisher.pump() {
            moved = true;
            process_interrupts();
        }
        // Questions take turns with delivery: at most QUESTION_BUDGET of them per pass, the
        // rest after the next drain.
        let answering = std::time::Instant::now();
        while answering.elapsed() < QUESTION_BUDGET {
            let Some(request) = questions.pop_front() else {
                break;
            };
            let published = publisher.published();
            catalog::answer(request, &mut publisher.audiences, published);
        }
        publisher.persist_position();
        webhooks.tick(&server);
        if subscribed && invalidation::poll(&shared) {
            publisher.reauthorize();
        }
        if moved && short_waits >= BUSY_STREAK {
            std::thread::sleep(MIN_PASS.saturating_sub(pass_started.elapsed()));
        }
    }
    queue::set_worker_latch(std::ptr::null_mut());
    // What is already committed goes into the history before the stop entry: the queue does
    // not survive a server restart.
    while publisher.pump() {}
    publisher.persist_position();
    if let Some(history) = &history {
        retention::stop(history, publisher.published());
    }
    server.shutdown();
    log!("realtime_ext: worker shutting down");
    // Exit code 1 so that the postmaster restarts the worker after pg_terminate_backend();
    // at server shutdown it is not restarted either way.
    // SAFETY: the worker's Postgres thread; proc_exit does not return.
    unsafe { pg_sys::proc_exit(1) };
}

/// What the worker sleeps on: its latch (set by committing writers and signals), the socket
/// the network threads poke, and postmaster death. Built once: WaitLatchOrSocket would create
/// and close an epoll set on every call, which at thousands of commits per second shows.
struct Waiter(*mut pg_sys::WaitEventSet);

impl Waiter {
    fn new(inbox: &bridge::RequestInbox) -> Waiter {
        // SAFETY: made once in TopMemoryContext on the worker's Postgres thread; the socket outlives the set (both live until exit).
        unsafe {
            let set = crate::pg::versions::long_lived_wait_event_set(3);
            pg_sys::AddWaitEventToSet(
                set,
                pg_sys::WL_LATCH_SET,
                pg_sys::PGINVALID_SOCKET,
                pg_sys::MyLatch,
                std::ptr::null_mut(),
            );
            pg_sys::AddWaitEventToSet(
                set,
                pg_sys::WL_EXIT_ON_PM_DEATH,
                pg_sys::PGINVALID_SOCKET,
                std::ptr::null_mut(),
                std::ptr::null_mut(),
            );
            pg_sys::AddWaitEventToSet(
                set,
                pg_sys::WL_SOCKET_READABLE,
                inbox.poke.as_raw_fd(),
                std::ptr::null_mut(),
                std::ptr::null_mut(),
            );
            Waiter(set)
        }
    }

    /// Sleep until a commit sets the latch, a network thread pokes, a signal, or `timeout`.
    /// Returns false when the worker must stop.
    fn wait(&self, inbox: &bridge::RequestInbox, timeout: Duration) -> bool {
        // SAFETY: the set was made by `new`; `event` is a live local.
        unsafe {
            let mut event: pg_sys::WaitEvent = std::mem::zeroed();
            pg_sys::WaitEventSetWait(
                self.0,
                timeout.as_millis() as std::ffi::c_long,
                &mut event,
                1,
                pg_sys::PG_WAIT_EXTENSION,
            );
            pg_sys::ResetLatch(pg_sys::MyLatch);
        }
        let mut sink = [0u8; 256];
        while matches!((&inbox.poke).read(&mut sink), Ok(n) if n > 0) {}
        !BackgroundWorker::sigterm_received()
    }
}

/// Answer what other backends expect every process to answer promptly: ProcSignalBarriers
/// (DROP DATABASE, DROP TABLESPACE, ALTER DATABASE SET TABLESPACE wait for them), catchup
/// and log-memory requests. A cancel request has nothing to cancel out here.
fn process_interrupts() {
    // SAFETY: the worker's Postgres thread, outside any transaction; ProcessInterrupts is what
    // CHECK_FOR_INTERRUPTS calls.
    unsafe {
        pg_sys::QueryCancelPending = 0;
        if pg_sys::InterruptPending != 0 {
            pg_sys::ProcessInterrupts();
        }
    }
}

/// Publish the history to NATS as the settings now say; settings in error leave it as it was.
fn publish_to_nats(server: &net::Server, now: &mut Option<realtime_core::net::nats::Settings>) {
    let wanted = match gucs::nats() {
        Ok(wanted) => wanted,
        Err(e) => return warning!("realtime_ext: publishing to NATS as before: {e}"),
    };
    if wanted == *now {
        return;
    }
    match server.set_nats(wanted.clone()) {
        Ok(()) => {
            match &wanted {
                Some(s) => log!(
                    "realtime_ext: publishing the history to NATS at {} (stream \"{}\")",
                    s.shown_url(),
                    s.stream
                ),
                None if now.is_some() => log!("realtime_ext: no longer publishing to NATS"),
                None => {}
            }
            *now = wanted;
        }
        Err(e) => warning!("realtime_ext: not publishing to NATS: {e}"),
    }
}

/// How the network threads accept connections over TLS, if realtime.ssl is on.
fn tls() -> Result<Option<TlsAcceptor>, String> {
    if !gucs::ssl() {
        return Ok(None);
    }
    let (cert, key) = gucs::ssl_files();
    tls::acceptor(&cert, &key).map(Some)
}

/// How tokens are checked, from the settings as they are now.
fn auth() -> Result<AuthConfig, String> {
    AuthConfig::new(&gucs::auth_settings())
}

/// The settings the network threads obey, as they are now.
fn limits() -> Limits {
    let (addresses, token) = gucs::metrics_access();
    let (metrics, bad) = MetricsAccess::parse(&addresses, &token);
    for entry in bad {
        pgrx::warning!("realtime_ext: realtime.metrics_addresses: \"{entry}\" is neither an IP address nor a CIDR range; left out");
    }
    Limits {
        max_connections: gucs::max_connections(),
        max_connections_per_role: gucs::max_connections_per_role(),
        max_anonymous_per_address: gucs::max_anonymous_per_address(),
        max_message_size: gucs::max_message_size(),
        broadcast_rate: gucs::broadcast_rate(),
        max_broadcast_size: gucs::max_broadcast_size(),
        max_presence_per_channel: gucs::max_presence_per_channel(),
        max_subscriptions: gucs::max_subscriptions(),
        max_handshakes: gucs::max_handshakes(),
        max_snapshot_workers: gucs::max_snapshot_workers(),
        heartbeat_interval: Duration::from_secs(gucs::heartbeat_interval_s()),
        handshake_timeout: Duration::from_millis(gucs::handshake_timeout_ms()),
        allowed_origins: gucs::allowed_origins(),
        allowed_hosts: gucs::allowed_hosts(),
        serve_pages: gucs::serve_pages(),
        metrics,
    }
}

fn fatal(message: String) -> ! {
    crate::error::raise(
        PgSqlErrorCode::ERRCODE_CONFIG_FILE_ERROR,
        format!("realtime_ext: {message}"),
        "Check realtime.listen_addresses and realtime.port; the worker retries every second.",
    )
}
