//! Every `realtime.*` setting, with its getter. Listen address, port, database and queue size
//! are fixed at server start; the rest can change with a reload (SIGHUP).

use pgrx::guc::{GucContext, GucFlags, GucRegistry, GucSetting};
use std::ffi::CString;

/// Addresses the WebSocket server listens on: comma-separated host names or IPs, `*` for all.
static LISTEN_ADDRESSES: GucSetting<Option<CString>> =
    GucSetting::<Option<CString>>::new(Some(c"localhost"));
/// Origins a browser page may open a WebSocket from (empty: any).
static ALLOWED_ORIGINS: GucSetting<Option<CString>> = GucSetting::<Option<CString>>::new(None);
/// Host names requests may be addressed to (empty: any); against DNS rebinding.
static ALLOWED_HOSTS: GucSetting<Option<CString>> = GucSetting::<Option<CString>>::new(None);
/// Serve wss:// and https:// instead of ws:// and http://.
static SSL: GucSetting<bool> = GucSetting::<bool>::new(false);
/// PEM certificate chain and private key for realtime.ssl; empty: PostgreSQL's ssl_cert_file
/// and ssl_key_file.
static SSL_CERT_FILE: GucSetting<Option<CString>> = GucSetting::<Option<CString>>::new(None);
static SSL_KEY_FILE: GucSetting<Option<CString>> = GucSetting::<Option<CString>>::new(None);
/// How tokens are verified: an HMAC secret, a JWK or JWKS as JSON, or `@file` holding either.
static JWT_SECRET: GucSetting<Option<CString>> = GucSetting::<Option<CString>>::new(None);
static METRICS_ADDRESSES: GucSetting<Option<CString>> = GucSetting::<Option<CString>>::new(None);
static METRICS_TOKEN: GucSetting<Option<CString>> = GucSetting::<Option<CString>>::new(None);
static JWT_SECRET_IS_BASE64: GucSetting<bool> = GucSetting::<bool>::new(false);
/// The `aud` tokens must carry (empty: not checked).
static JWT_AUDIENCE: GucSetting<Option<CString>> = GucSetting::<Option<CString>>::new(None);
/// Where in the claims the role is, as PostgREST's jwt-role-claim-key.
static JWT_ROLE_CLAIM_KEY: GucSetting<Option<CString>> =
    GucSetting::<Option<CString>>::new(Some(c".role"));
/// The role connections without a token act as (empty: they must present one).
static ANON_ROLE: GucSetting<Option<CString>> = GucSetting::<Option<CString>>::new(None);
/// The role that must be a member of every role a token names.
static AUTHENTICATOR: GucSetting<Option<CString>> = GucSetting::<Option<CString>>::new(None);
/// Serve the inspector at / and the example pages; /realtime.js is served either way.
static SERVE_PAGES: GucSetting<bool> = GucSetting::<bool>::new(true);
/// Whether any principal may receive a topic that is not a relayed NOTIFY channel.
static PUBLIC_TOPICS: GucSetting<bool> = GucSetting::<bool>::new(false);
/// Whether tokens may name superusers and BYPASSRLS roles.
static ALLOW_PRIVILEGED_ROLES: GucSetting<bool> = GucSetting::<bool>::new(false);
/// Most connections one role may hold at once (0: no limit).
static MAX_CONNECTIONS_PER_ROLE: GucSetting<i32> = GucSetting::<i32>::new(0);
/// Anonymous connections one client address may hold; 0: no limit.
static MAX_ANONYMOUS_PER_ADDRESS: GucSetting<i32> = GucSetting::<i32>::new(1000);
/// TCP port of the WebSocket/HTTP server.
static PORT: GucSetting<i32> = GucSetting::<i32>::new(8080);
/// The one database whose watched tables the worker serves.
static DATABASE: GucSetting<Option<CString>> =
    GucSetting::<Option<CString>>::new(Some(c"postgres"));
/// Size of the shared-memory change queue, in kB.
static QUEUE_SIZE_KB: GucSetting<i32> = GucSetting::<i32>::new(16 * 1024);
/// Broadcast ring length in batches: how far a client may fall behind before it gets a gap.
static CLIENT_BACKLOG: GucSetting<i32> = GucSetting::<i32>::new(1024);
/// Bytes of recent changes kept for clients that fall behind, across all clients, in kB.
static CLIENT_MEMORY_KB: GucSetting<i32> = GucSetting::<i32>::new(128 * 1024);
/// Disk kept for the history of published changes (clients resume from it), in MB; 0: none.
static HISTORY_SIZE_MB: GucSetting<i32> = GucSetting::<i32>::new(256);
/// How long the history keeps changes, in seconds.
static HISTORY_AGE_S: GucSetting<i32> = GucSetting::<i32>::new(24 * 3600);
/// Most WebSocket connections served at once; further ones get HTTP 503.
static MAX_CONNECTIONS: GucSetting<i32> = GucSetting::<i32>::new(10_000);
/// Most connections still sending their HTTP request; past it the oldest of the busiest
/// source address is dropped.
static MAX_HANDSHAKES: GucSetting<i32> = GucSetting::<i32>::new(4096);
static MAX_SNAPSHOT_WORKERS: GucSetting<i32> = GucSetting::<i32>::new(2);
/// Most subscriptions one connection may hold.
static MAX_SUBSCRIPTIONS: GucSetting<i32> = GucSetting::<i32>::new(100);
/// Largest message a client may send, in bytes.
static MAX_MESSAGE_SIZE: GucSetting<i32> = GucSetting::<i32>::new(64 * 1024);
/// Client broadcasts one connection may send a second.
static BROADCAST_RATE: GucSetting<i32> = GucSetting::<i32>::new(100);
/// Largest payload of a client broadcast, in bytes.
static MAX_BROADCAST_SIZE: GucSetting<i32> = GucSetting::<i32>::new(16 * 1024);
/// Most members tracked in one channel's presence.
static MAX_PRESENCE_PER_CHANNEL: GucSetting<i32> = GucSetting::<i32>::new(10_000);
/// Seconds between WebSocket pings; a client silent for two intervals is closed.
static HEARTBEAT_INTERVAL_S: GucSetting<i32> = GucSetting::<i32>::new(30);
/// Milliseconds a client has to send a complete HTTP request head.
static HANDSHAKE_TIMEOUT_MS: GucSetting<i32> = GucSetting::<i32>::new(10_000);
/// Address ranges webhook receivers may be at although not public (loopback, private, ...).
static WEBHOOK_ALLOWED_HOSTS: GucSetting<Option<CString>> =
    GucSetting::<Option<CString>>::new(None);
/// Waits between attempts of a webhook request; the webhook is disabled after the last.
static WEBHOOK_RETRY_SCHEDULE: GucSetting<Option<CString>> =
    GucSetting::<Option<CString>>::new(Some(c"5s, 5min, 30min, 2h, 5h, 10h, 10h"));
/// Webhook requests in flight at once, over all webhooks.
static WEBHOOK_MAX_CONCURRENCY: GucSetting<i32> = GucSetting::<i32>::new(16);
/// The NATS server the history is published to (empty: none), and the stream's name.
static NATS_URL: GucSetting<Option<CString>> = GucSetting::<Option<CString>>::new(None);
static NATS_STREAM: GucSetting<Option<CString>> =
    GucSetting::<Option<CString>>::new(Some(c"realtime"));
/// A transaction whose captured changes exceed this many kB spills them to a file.
static SPILL_THRESHOLD_KB: GucSetting<i32> = GucSetting::<i32>::new(1024);

pub fn init() {
    use GucContext::*;
    let none = GucFlags::default();
    GucRegistry::define_string_guc(
        c"realtime.listen_addresses",
        c"Addresses the realtime WebSocket server listens on.",
        c"Comma-separated host names or IP addresses; * means all interfaces.",
        &LISTEN_ADDRESSES,
        Postmaster,
        none,
    );
    GucRegistry::define_int_guc(
        c"realtime.port",
        c"TCP port of the realtime WebSocket server.",
        c"",
        &PORT,
        1,
        65535,
        Postmaster,
        none,
    );
    GucRegistry::define_string_guc(
        c"realtime.database",
        c"Database whose watched tables the realtime worker serves.",
        c"realtime_watch() can only be used in this database.",
        &DATABASE,
        Postmaster,
        none,
    );
    GucRegistry::define_int_guc(
        c"realtime.queue_size",
        c"Size of the change queue, a file in pg_realtime mapped into every server process.",
        c"When the worker falls this far behind, further transactions become a gap message.",
        &QUEUE_SIZE_KB,
        1024,
        1024 * 1024,
        Postmaster,
        GucFlags::UNIT_KB,
    );
    GucRegistry::define_int_guc(
        c"realtime.client_backlog",
        c"How many batches of changes a client may fall behind before it is sent a gap.",
        c"",
        &CLIENT_BACKLOG,
        16,
        1 << 20,
        Postmaster,
        none,
    );
    GucRegistry::define_int_guc(
        c"realtime.client_memory",
        c"Memory for changes not yet sent to clients that fall behind, across all clients.",
        c"Clients further behind get a gap; clients stuck on a full socket are closed.",
        &CLIENT_MEMORY_KB,
        1024,
        i32::MAX,
        Sighup,
        GucFlags::UNIT_KB,
    );
    GucRegistry::define_int_guc(
        c"realtime.history_size",
        c"Disk kept under $PGDATA/pg_realtime/history for clients that resume from a position.",
        c"The oldest changes are dropped past it; a client resuming from before them gets a history_expired gap. 0 keeps no history.",
        &HISTORY_SIZE_MB,
        0,
        i32::MAX,
        Sighup,
        GucFlags::UNIT_MB,
    );
    GucRegistry::define_int_guc(
        c"realtime.history_age",
        c"How long the history keeps published changes.",
        c"Older changes are dropped (a segment at a time); a client resuming from before them gets a history_expired gap.",
        &HISTORY_AGE_S,
        1,
        i32::MAX,
        Sighup,
        GucFlags::UNIT_S,
    );
    GucRegistry::define_int_guc(
        c"realtime.max_connections",
        c"Maximum concurrent WebSocket connections.",
        c"",
        &MAX_CONNECTIONS,
        1,
        1_000_000,
        Sighup,
        none,
    );
    GucRegistry::define_int_guc(
        c"realtime.max_handshakes",
        c"Maximum connections still sending their HTTP request.",
        c"Beyond it, the oldest such connection of the source address with the most is dropped.",
        &MAX_HANDSHAKES,
        1,
        1_000_000,
        Sighup,
        none,
    );
    GucRegistry::define_int_guc(
        c"realtime.max_snapshot_workers",
        c"Maximum snapshot reads (subscribe with snapshot: true) running at once.",
        c"Each runs in a background worker of its own, counted against max_worker_processes; further snapshots wait for one to finish.",
        &MAX_SNAPSHOT_WORKERS,
        1,
        64,
        Sighup,
        none,
    );
    GucRegistry::define_int_guc(
        c"realtime.max_subscriptions",
        c"Maximum subscriptions on one WebSocket connection.",
        c"Further subscribe requests get the error too_many_subscriptions.",
        &MAX_SUBSCRIPTIONS,
        1,
        100_000,
        Sighup,
        none,
    );
    GucRegistry::define_bool_guc(
        c"realtime.ssl",
        c"Serve the realtime WebSocket and HTTP endpoints over TLS (wss://, https://).",
        c"The certificate and key are realtime.ssl_cert_file and realtime.ssl_key_file, or PostgreSQL's ssl_cert_file and ssl_key_file when those are empty; they are read again on reload.",
        &SSL,
        Postmaster,
        none,
    );
    GucRegistry::define_string_guc(
        c"realtime.ssl_cert_file",
        c"PEM certificate chain for realtime.ssl; empty means PostgreSQL's ssl_cert_file.",
        c"",
        &SSL_CERT_FILE,
        Sighup,
        none,
    );
    GucRegistry::define_string_guc(
        c"realtime.ssl_key_file",
        c"PEM private key for realtime.ssl; empty means PostgreSQL's ssl_key_file.",
        c"",
        &SSL_KEY_FILE,
        Sighup,
        none,
    );
    GucRegistry::define_string_guc(
        c"realtime.allowed_origins",
        c"Origins whose pages may open a WebSocket to the realtime server.",
        c"Comma-separated, as browsers send them (https://app.example.com); empty allows any. Requests without an Origin header (not from a browser) are not affected.",
        &ALLOWED_ORIGINS,
        Sighup,
        none,
    );
    GucRegistry::define_string_guc(
        c"realtime.allowed_hosts",
        c"Host names requests to the realtime server may be addressed to.",
        c"Comma-separated host names or IP addresses, without port; empty allows any. Set it to stop DNS rebinding.",
        &ALLOWED_HOSTS,
        Sighup,
        none,
    );
    GucRegistry::define_string_guc(
        c"realtime.metrics_addresses",
        c"Client addresses that may read /metrics: comma-separated IP addresses or CIDR ranges.",
        c"Empty (the default) with no realtime.metrics_token: /metrics is off. Entries that are not addresses are logged and left out.",
        &METRICS_ADDRESSES,
        Sighup,
        none,
    );
    GucRegistry::define_string_guc(
        c"realtime.webhook_allowed_hosts",
        c"Address ranges webhook receivers may be at although they are loopback, private or link-local: comma-separated IP addresses or CIDR ranges.",
        c"Checked on the addresses a receiver's name resolves to, when connecting. Empty (the default): public addresses only. Entries that are not addresses are logged and left out.",
        &WEBHOOK_ALLOWED_HOSTS,
        Sighup,
        none,
    );
    GucRegistry::define_string_guc(
        c"realtime.webhook_retry_schedule",
        c"Waits before each retry of a failed webhook request, comma-separated (ms, s, min, h, d); after the last retry fails the webhook is disabled.",
        c"Each wait is spread by up to a fifth either way; a receiver's Retry-After replaces it. The default, Standard Webhooks' schedule, keeps trying for about 28 hours.",
        &WEBHOOK_RETRY_SCHEDULE,
        Sighup,
        none,
    );
    GucRegistry::define_int_guc(
        c"realtime.webhook_max_concurrency",
        c"Most webhook requests in flight at once, over all webhooks.",
        c"Each webhook sends one request at a time, in order.",
        &WEBHOOK_MAX_CONCURRENCY,
        1,
        1000,
        Sighup,
        none,
    );
    GucRegistry::define_string_guc(
        c"realtime.nats_url",
        c"NATS server the history of published changes is copied to, as a JetStream stream: nats://[user:password@]host:port, or tls://.",
        c"Only superusers can see it (it may hold a password). Empty (the default): nothing is published.",
        &NATS_URL,
        Sighup,
        GucFlags::SUPERUSER_ONLY | GucFlags::NO_SHOW_ALL,
    );
    GucRegistry::define_string_guc(
        c"realtime.nats_stream",
        c"Name of the JetStream stream the history is copied to, and the prefix of its subjects.",
        c"Created when missing, keeping what the history keeps (realtime.history_size and realtime.history_age).",
        &NATS_STREAM,
        Sighup,
        none,
    );
    GucRegistry::define_string_guc(
        c"realtime.metrics_token",
        c"Bearer token /metrics requires (Authorization: Bearer ...), besides realtime.metrics_addresses.",
        c"Only superusers can see it. Empty: no token is asked for.",
        &METRICS_TOKEN,
        Sighup,
        GucFlags::SUPERUSER_ONLY | GucFlags::NO_SHOW_ALL,
    );
    GucRegistry::define_string_guc(
        c"realtime.jwt_secret",
        c"Key that verifies client tokens: an HMAC secret (32 characters or more), a JWK or JWKS as JSON, or @path of a file holding one.",
        c"Only superusers can see it. Empty: tokens are refused, and only realtime.anon_role can be used.",
        &JWT_SECRET,
        Sighup,
        GucFlags::SUPERUSER_ONLY | GucFlags::NO_SHOW_ALL,
    );
    GucRegistry::define_bool_guc(
        c"realtime.jwt_secret_is_base64",
        c"realtime.jwt_secret is an HMAC secret in base64.",
        c"",
        &JWT_SECRET_IS_BASE64,
        Sighup,
        none,
    );
    GucRegistry::define_string_guc(
        c"realtime.jwt_audience",
        c"The aud claim tokens must carry; empty: not checked.",
        c"",
        &JWT_AUDIENCE,
        Sighup,
        none,
    );
    GucRegistry::define_string_guc(
        c"realtime.jwt_role_claim_key",
        c"Where the role is in a token's claims, as PostgREST's jwt-role-claim-key (.role, .app_metadata.role, .roles[0]).",
        c"",
        &JWT_ROLE_CLAIM_KEY,
        Sighup,
        none,
    );
    GucRegistry::define_string_guc(
        c"realtime.anon_role",
        c"Role that connections without a token act as; empty: a token is required.",
        c"Also the role of a token without a role claim.",
        &ANON_ROLE,
        Sighup,
        none,
    );
    GucRegistry::define_string_guc(
        c"realtime.authenticator",
        c"Role that must be a member of every role a token names (as PostgREST's authenticator).",
        c"Empty: tokens may name no role but realtime.anon_role.",
        &AUTHENTICATOR,
        Sighup,
        none,
    );
    GucRegistry::define_bool_guc(
        c"realtime.serve_pages",
        c"Serve the inspector page at / and the example pages under /examples/.",
        c"The pages only show what the token (or realtime.anon_role) a visitor connects with may see; /realtime.js is served whatever this says.",
        &SERVE_PAGES,
        Sighup,
        none,
    );
    GucRegistry::define_bool_guc(
        c"realtime.public_topics",
        c"Let every principal receive the messages realtime_send() sends to topics that are not relayed NOTIFY channels.",
        c"Relayed channels are received by their readers only (realtime_relay(..., readers => ...)), whatever this says.",
        &PUBLIC_TOPICS,
        Sighup,
        none,
    );
    GucRegistry::define_bool_guc(
        c"realtime.allow_privileged_roles",
        c"Let tokens and realtime.anon_role name superusers and roles with BYPASSRLS.",
        c"",
        &ALLOW_PRIVILEGED_ROLES,
        Sighup,
        none,
    );
    GucRegistry::define_int_guc(
        c"realtime.max_connections_per_role",
        c"Most WebSocket connections one role may hold at once; 0 means no limit.",
        c"",
        &MAX_CONNECTIONS_PER_ROLE,
        0,
        1_000_000,
        Sighup,
        none,
    );
    GucRegistry::define_int_guc(
        c"realtime.max_anonymous_per_address",
        c"Most anonymous connections (no token) one client address may hold; 0: no limit.",
        c"Keeps one address from taking the anonymous role's whole realtime.max_connections_per_role.",
        &MAX_ANONYMOUS_PER_ADDRESS,
        0,
        1_000_000,
        Sighup,
        none,
    );
    GucRegistry::define_int_guc(
        c"realtime.max_message_size",
        c"Largest message a WebSocket client may send.",
        c"",
        &MAX_MESSAGE_SIZE,
        1024,
        64 * 1024 * 1024,
        Sighup,
        GucFlags::UNIT_BYTE,
    );
    GucRegistry::define_int_guc(
        c"realtime.broadcast_rate",
        c"Client broadcasts one connection may send a second.",
        c"Bursts of up to a second's worth pass; beyond it a broadcast is refused with rate_limited.",
        &BROADCAST_RATE,
        1,
        100_000,
        Sighup,
        none,
    );
    GucRegistry::define_int_guc(
        c"realtime.max_broadcast_size",
        c"Largest payload of a client broadcast, and largest presence state.",
        c"A larger one is refused with payload_too_large; it must also fit in realtime.max_message_size.",
        &MAX_BROADCAST_SIZE,
        0,
        64 * 1024 * 1024,
        Sighup,
        GucFlags::UNIT_BYTE,
    );
    GucRegistry::define_int_guc(
        c"realtime.max_presence_per_channel",
        c"Most connections tracked in one channel's presence at once.",
        c"Beyond it, track is refused with presence_full.",
        &MAX_PRESENCE_PER_CHANNEL,
        1,
        1_000_000,
        Sighup,
        none,
    );
    GucRegistry::define_int_guc(
        c"realtime.heartbeat_interval",
        c"Interval between WebSocket pings to each client.",
        c"A client that sends nothing (not even a pong) for two intervals is disconnected.",
        &HEARTBEAT_INTERVAL_S,
        1,
        3600,
        Sighup,
        GucFlags::UNIT_S,
    );
    GucRegistry::define_int_guc(
        c"realtime.handshake_timeout",
        c"Time a new connection has to send its HTTP request.",
        c"",
        &HANDSHAKE_TIMEOUT_MS,
        100,
        600_000,
        Sighup,
        GucFlags::UNIT_MS,
    );
    GucRegistry::define_int_guc(
        c"realtime.spill_threshold",
        c"Captured changes per transaction kept in memory before spilling to a file.",
        c"",
        &SPILL_THRESHOLD_KB,
        64,
        1024 * 1024,
        Suset,
        GucFlags::UNIT_KB,
    );
}

fn string(setting: &GucSetting<Option<CString>>) -> String {
    setting
        .get()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// A comma-separated list setting, trimmed, lower-cased, empty entries dropped.
fn list(setting: &GucSetting<Option<CString>>) -> Vec<String> {
    string(setting)
        .split(',')
        .map(|s| s.trim().to_ascii_lowercase())
        .filter(|s| !s.is_empty())
        .collect()
}
pub fn ssl() -> bool {
    SSL.get()
}
/// The certificate and key files realtime.ssl uses: realtime's own, else PostgreSQL's.
pub fn ssl_files() -> (String, String) {
    let or_postgres = |own: String, name: &std::ffi::CStr| {
        if own.is_empty() {
            crate::pg::setting(name)
        } else {
            own
        }
    };
    (
        or_postgres(string(&SSL_CERT_FILE), c"ssl_cert_file"),
        or_postgres(string(&SSL_KEY_FILE), c"ssl_key_file"),
    )
}
pub fn allowed_origins() -> Vec<String> {
    list(&ALLOWED_ORIGINS)
}
pub fn allowed_hosts() -> Vec<String> {
    list(&ALLOWED_HOSTS)
}
pub fn listen_addresses() -> String {
    string(&LISTEN_ADDRESSES)
}
pub fn port() -> u16 {
    PORT.get() as u16
}
pub fn database() -> String {
    string(&DATABASE)
}
pub fn queue_size_bytes() -> usize {
    QUEUE_SIZE_KB.get() as usize * 1024
}
pub fn client_backlog() -> usize {
    CLIENT_BACKLOG.get() as usize
}
pub fn client_memory_bytes() -> usize {
    CLIENT_MEMORY_KB.get() as usize * 1024
}
/// The history's limits; `None`: keep no history.
pub fn history_limits() -> Option<realtime_core::history::Limits> {
    (HISTORY_SIZE_MB.get() > 0).then(|| realtime_core::history::Limits {
        bytes: HISTORY_SIZE_MB.get() as u64 * 1024 * 1024,
        age: std::time::Duration::from_secs(HISTORY_AGE_S.get() as u64),
    })
}
pub fn max_connections() -> usize {
    MAX_CONNECTIONS.get() as usize
}
pub fn max_handshakes() -> usize {
    MAX_HANDSHAKES.get() as usize
}
pub fn max_snapshot_workers() -> usize {
    MAX_SNAPSHOT_WORKERS.get() as usize
}
pub fn max_subscriptions() -> usize {
    MAX_SUBSCRIPTIONS.get() as usize
}
pub fn max_message_size() -> usize {
    MAX_MESSAGE_SIZE.get() as usize
}
pub fn broadcast_rate() -> u32 {
    BROADCAST_RATE.get() as u32
}
pub fn max_broadcast_size() -> usize {
    MAX_BROADCAST_SIZE.get() as usize
}
pub fn max_presence_per_channel() -> usize {
    MAX_PRESENCE_PER_CHANNEL.get() as usize
}
pub fn heartbeat_interval_s() -> u64 {
    HEARTBEAT_INTERVAL_S.get() as u64
}
pub fn handshake_timeout_ms() -> u64 {
    HANDSHAKE_TIMEOUT_MS.get() as u64
}
pub fn spill_threshold_bytes() -> usize {
    SPILL_THRESHOLD_KB.get() as usize * 1024
}
pub fn auth_settings() -> realtime_core::auth::AuthSettings {
    realtime_core::auth::AuthSettings {
        secret: string(&JWT_SECRET),
        secret_is_base64: JWT_SECRET_IS_BASE64.get(),
        audience: string(&JWT_AUDIENCE),
        role_claim_key: string(&JWT_ROLE_CLAIM_KEY),
        anon_role: anon_role(),
    }
}
pub fn anon_role() -> String {
    string(&ANON_ROLE).trim().to_string()
}
pub fn authenticator() -> String {
    string(&AUTHENTICATOR).trim().to_string()
}
/// realtime.metrics_addresses and realtime.metrics_token, as they are now.
pub fn metrics_access() -> (String, String) {
    (string(&METRICS_ADDRESSES), string(&METRICS_TOKEN))
}
/// realtime.webhook_allowed_hosts, realtime.webhook_retry_schedule and
/// realtime.webhook_max_concurrency, as they are now.
pub fn webhook_settings() -> (String, String, usize) {
    (
        string(&WEBHOOK_ALLOWED_HOSTS),
        string(&WEBHOOK_RETRY_SCHEDULE),
        WEBHOOK_MAX_CONCURRENCY.get() as usize,
    )
}
/// Where to publish the history (`None`: realtime.nats_url is empty), or what is wrong.
pub fn nats() -> Result<Option<realtime_core::net::nats::Settings>, String> {
    let url = string(&NATS_URL);
    if url.is_empty() {
        return Ok(None);
    }
    let stream = string(&NATS_STREAM);
    realtime_core::net::nats::Settings::check_stream(&stream)
        .map_err(|e| format!("realtime.nats_stream: {e}"))?;
    let limits =
        history_limits().ok_or("there is no history to publish (realtime.history_size is 0)")?;
    Ok(Some(realtime_core::net::nats::Settings {
        url,
        stream,
        max_bytes: limits.bytes,
        max_age: limits.age,
    }))
}
pub fn serve_pages() -> bool {
    SERVE_PAGES.get()
}
pub fn public_topics() -> bool {
    PUBLIC_TOPICS.get()
}
pub fn allow_privileged_roles() -> bool {
    ALLOW_PRIVILEGED_ROLES.get()
}
pub fn max_connections_per_role() -> usize {
    MAX_CONNECTIONS_PER_ROLE.get() as usize
}
pub fn max_anonymous_per_address() -> usize {
    MAX_ANONYMOUS_PER_ADDRESS.get() as usize
}
