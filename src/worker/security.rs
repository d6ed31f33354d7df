//! Whose rights the worker's calls into PostgreSQL run with.
//!
//! The worker is a superuser process that takes input from the network, so any code a
//! non-superuser can define must never run as the worker's role. Every call the worker makes:
//!
//! | call | where | runs as |
//! |---|---|---|
//! | `parse_ident`, catalog lookups of a table, its triggers and columns (their names and type names for the Supabase endpoint's `columns`) | `catalog` | worker; built-in functions only, with `search_path = pg_catalog` so no user schema can capture a name |
//! | `CAST(value AS column type)` and `to_json` of a filter value: input functions, domain CHECKs, casts to json | `casts` | the subscriber, with its claims (`as_subscriber`), 250 ms; cached per type, value, role and claims until a type, constraint, cast, function or role changes |
//! | role lookups, `has_table_privilege`/`has_column_privilege`, `pg_policy`, `pg_class` row-security flags; the watched tables a role may read (`has_any_column_privilege`, for `tables`) | `catalog`, `policy` | worker; built-in functions only |
//! | compiling a subscriber's policies (`eval_const_expressions` inlines SQL functions and may run immutable ones) and evaluating their claim sides | `policy` | the subscriber, with its claims (`as_subscriber`), 250 ms |
//! | policies judged per batch (sub-selects, functions of the row) | `audiences` | the subscriber, with its claims (`as_subscriber`), 50 ms per audience and batch, 100 ms per batch in all; past it, or on an error, the audience is judged apart |
//! | policies of audiences judged apart | `apart`, the judge: a background worker of its own, started when first needed, reached over a Unix socket in `$PGDATA/pg_realtime` | the subscriber, with its claims (`as_subscriber`), 10 s per job; only that audience's sessions wait for it |
//! | rendering raw tuples of deferred shapes | `rows` | worker; only built-in output functions and enums (`render::prints_the_same_in_worker`), casts ignored |
//! | commit-log lookups of prepared and stuck transactions | `publisher` | worker; no user code |
//! | a snapshot's rows (`SELECT row_to_json(t) FROM (SELECT <readable columns> FROM table) t ORDER BY ...`), after the role is checked again | `snapshot`, a background worker of its own | the subscriber, with its claims (`as_subscriber`), REPEATABLE READ |
//! | history segments read back for subscribers that resume or fall behind | `realtime_core::net::backlog` on the network threads | no PostgreSQL call; at most one chunk (256 changes or 1 MiB) per subscriber, counted toward `realtime.client_memory` while it is stalled; a segment of an unknown format is refused, never parsed |
//! | finding where a resume from a commit time starts (Supabase's broadcast `replay`, a binding's `since`) | `realtime_core::history::History::after_time`, on tokio's blocking threads, two lookups at a time | no PostgreSQL call; halves over the segments' index points, then reads the entries after the time once at most; keeps at most 100,000 positions (`MAX_NEWEST`, 800 kB) for a `limit`; the replay itself is the history read-back above, authorized as the subscription is |
//! | `realtime_stats()`: the engine's numbers | `crate::stats`, in any backend | the caller; reads shared memory only, no SQL; `pg_monitor` only (`EXECUTE` revoked from `PUBLIC`) |
//! | `realtime_metrics`: the same numbers as a view | `crate::stats` | the caller; `SELECT` for `pg_monitor` only, and calls `realtime_stats()` |
//! | `GET /metrics` | `realtime_core::net::http::metrics`, on the network threads | no PostgreSQL call; off unless realtime.metrics_addresses or realtime.metrics_token is set, then only from those addresses and with that token (compared in constant time); reads shared-memory counters only; labels are fixed in the code, never a table, role or client; an ordinary request under realtime.max_handshakes and realtime.handshake_timeout |
//! | reading `realtime.relays`; LISTEN and UNLISTEN on the channels it names; reading the notifications that arrive (PostgreSQL's own queue reader, with protocol output captured in the worker's memory) | `relay`, `crate::pg::notify` | worker; no user code: a payload is text, checked as JSON by the network-free parser, never by SQL; channel names are passed to PostgreSQL as C strings, never into SQL text |
//! | who may receive a channel (`pg_has_role` against the relay's readers; `realtime.public_topics` for other topics) | `catalog` | worker; built-in functions only; an unknown channel and one the principal may not read are refused alike (`unknown_channel`) |
//! | `realtime_auth_helpers()`: makes schema `auth` with Supabase's `uid()`, `role()`, `jwt()` | `sql/supabase_auth.sql`, in the caller's backend | the caller; revoked from `PUBLIC`; refuses when a schema `auth` exists, so it never replaces functions someone else wrote; the functions read only the claims settings |
//! | `realtime_relay()`, `realtime_unrelay()`, `realtime_send()` | `crate::channels`, in the caller's backend | the caller; superusers only for the relays unless granted; `realtime_send` revoked from `PUBLIC`; topic and event at most 255 bytes, a relayed channel's name at most 63 (NOTIFY's); the payload is jsonb, its text sent as stored |
//! | who may send on a topic: an `INSERT` into `realtime.messages` as the principal (its policies' `WITH CHECK`), rolled back | `topics` | the principal, with its claims (`as_sender`: as `as_subscriber` but not read-only), inside a subtransaction always rolled back, 250 ms; at subscription only |
//! | client broadcasts | `realtime_core::net::rooms`, on the network threads | no PostgreSQL call; only on a channel the connection subscribed to with the right to send; `realtime.broadcast_rate` per connection, `realtime.max_broadcast_size` per payload, 256 waiting per receiver (then dropped for it alone) |
//! | presence (`track`, `presence_state`, `presence_diff`) | `realtime_core::net::rooms`, on the network threads | no PostgreSQL call; tracking needs the right to track (presence SELECT and INSERT policies), seeing it the right to see; one state per connection and channel of at most `realtime.max_broadcast_size`, counted toward `realtime.broadcast_rate`; at most `realtime.max_presence_per_channel` members a channel; each room logs at most max(1,024, 2 × members) changes, each seat only how far it has read; what a slow subscriber is owed is merged per member when taken (one far behind is told the whole state), never queued per subscriber |
//! | the Supabase endpoint (`GET /realtime/v1/websocket`): Phoenix frames, joins, heartbeats, `access_token` | `realtime_core::protocol::supabase`, on the network threads | no PostgreSQL call of its own: each `postgres_changes` binding becomes the subscription a native client would make (resolved, authorized, filtered and judged as above); `apikey` and `access_token` are checked as the native `token`; at most 100 bindings a join, all within realtime.max_subscriptions; a filter at most 10 conditions, a `like` pattern at most 256 characters (matching costs at most a row value's length times that, on the network threads); a channel's room (broadcast, presence, private channels) is the native channel of the same topic, authorized and bounded as above, a presence key at most 255 bytes; frames within realtime.max_message_size, every field and binary length checked, a malformed one answered with an error |
//! | Supabase's REST broadcast (`POST /realtime/v1/api/broadcast[/{topic}/events/{event}]`) | `realtime_core::net::http::broadcast`, on the network threads | no PostgreSQL call of its own: the token (`Authorization: Bearer`, `apikey`) checked as at an upgrade, each topic's right to send resolved as a subscription's; `Content-Length` required, at most realtime.max_message_size, read within realtime.handshake_timeout while counted among realtime.max_handshakes; at most 100 messages a request, each payload within realtime.max_broadcast_size; all checked before any is sent; CORS `*` (credentials are never cookies) |
//! | `realtime_webhook_create()`, `_alter`, `_pause`, `_resume`, `_replay`, `_drop`; the views `realtime_webhooks` and `realtime_webhook_deliveries` | `sql/webhooks.sql`, `crate::webhooks`, in the caller's backend | the caller; only roles a superuser granted `realtime.webhooks` to; row security there keeps each webhook, its secret included, to members of its owning role (the views are `security_invoker`); a webhook reads only as a role its owner is a member of, never a superuser or BYPASSRLS one; tables must exist and be watched, filters parse as a client's, at most 32 headers, each a name and a one-line value of at most 4 kB (the `webhook-*`, `host` and framing headers refused), a URL is http(s) of at most 2,048 characters, a secret 24 to 64 bytes |
//! | reading `realtime.webhooks` about once a second; writing back positions, state and the last 100 deliveries of each, five times a second at most | `webhooks` | worker; no user code: fixed statements on the extension's own tables, values bound as parameters, `synchronous_commit` off (a lost write-back only sends those changes again) |
//! | webhook deliveries: a headless subscriber per webhook and its HTTP requests | `realtime_core::net::webhooks`, on the network threads | no PostgreSQL call of its own: each table or topic is subscribed to as the webhook's role and claims, resolved, authorized, filtered and judged as a client's, its backlog read from the history within `realtime.client_memory`; one request in flight per webhook, `realtime.webhook_max_concurrency` in all; the webhook's timeout (at most 5 minutes) per request, 10 s to connect; only 512 bytes of a refusal's body read; no redirects, no proxies; receivers only at public addresses unless `realtime.webhook_allowed_hosts` names the range, checked on the addresses the client connects to (a name cannot be rebound in between); retries on `realtime.webhook_retry_schedule`, a `Retry-After` taken up to a day; at most 100,000 outcomes waiting for the write-back |
//! | publishing the history to NATS (`realtime.nats_url`) | `realtime_core::net::nats`, on the network threads | no PostgreSQL call; an outbound connection to the configured server only, its password never logged; reads history segments as resumes do, at most 4,096 entries or 16 MiB of rows at a time, off the runtime; at most 1,024 messages unacknowledged; a change larger than the server's `max_payload` is published as a `too_large` gap, never split or dropped silently; a stream that holds messages without a position, or positions beyond the history, is left alone and the reason logged |
//! | answering edge servers (`_REALTIME.<stream>.ask`: authorize, resolve, tables, judge, release, snapshot pipes) | `realtime_core::net::nats::answer`, on the network threads | no PostgreSQL call of its own: each question goes through the worker channel a local session's does, with its time limits (so privileged roles and roles not granted to realtime.authenticator are refused as ever); whoever may publish on the subject is answered as the principal it names, so NATS permissions must grant it to edges only (docs/scaling.md); 256 questions answered at once, more told to retry; at most 1,024 edges, each holding audiences only while it says hello (30 s lease), judged only for audiences it holds, at most 1,024 changes a question; snapshot readers under realtime.max_snapshot_workers, 512 KiB a read, stopped when unread for a minute |
//! | `realtime-edge` | `realtime_core::edge`, a process of its own | no PostgreSQL in it; clients are served by the same code and limits as on the database host (its settings by the same names); what it receives from NATS is decoded as data, never run; it keeps only a history directory it empties at start |
//! | `ProcessConfigFile`, interrupts, latch waits | `mod` | worker; no user code |
//!
//! "The subscriber" means the session PostgREST would give its request (`as_subscriber`):
//! session user the authenticator, current user the subscriber's role, `is_superuser` as that
//! role's, its claims in `request.jwt.claims`, read-only, security-restricted. No code a
//! subscriber can reach runs as the table's owner or the worker: a domain CHECK that SQL
//! would run as the subscriber runs as the subscriber here too.
//!
//! Each catalog question is also bounded in time (`with_time_limit`), so code a table owner
//! wrote cannot hold up delivery to everyone else.

use crate::gucs;
use pgrx::pg_sys;
use std::ffi::CStr;
use std::time::Duration;

/// Run `f` in the session PostgREST would give `role`'s requests, as far as code can tell:
/// logged in as `realtime.authenticator` (or, when it is unset, as `realtime.anon_role`),
/// `SET ROLE role`, so that `session_user`, `current_user` and `is_superuser` answer what they
/// would there; `request.jwt.claims` set to `claims` when given; read-only, as PostgREST runs
/// reads; and inside a security-restricted operation, as VACUUM runs index expressions
/// (SET ROLE, temporary objects and the like are refused, and any `SET` is undone). The
/// search_path stays the worker's, `pg_catalog` alone: the statements the worker builds
/// (policies as deparsed text, casts) must mean what they meant when they were built, so a
/// function a policy calls finds other functions by qualified name, or by a `SET search_path`
/// of its own, as Supabase advises for policy functions.
///
/// Restored when `f` returns or unwinds (an ERROR inside also rolls back the subtransaction
/// the caller runs it in, which restores the current user but not the session user).
pub fn as_subscriber<T>(role: pg_sys::Oid, claims: Option<&str>, f: impl FnOnce() -> T) -> T {
    as_principal(role, claims, true, f)
}

/// `as_subscriber`, but allowed to write: for the INSERT a policy on `realtime.messages` is
/// asked about (`worker::topics`), inside a subtransaction that is always rolled back.
pub fn as_sender<T>(role: pg_sys::Oid, claims: Option<&str>, f: impl FnOnce() -> T) -> T {
    as_principal(role, claims, false, f)
}

fn as_principal<T>(
    role: pg_sys::Oid,
    claims: Option<&str>,
    read_only: bool,
    f: impl FnOnce() -> T,
) -> T {
    struct Restore {
        session: pg_sys::Oid,
        session_is_superuser: bool,
        user: pg_sys::Oid,
        context: i32,
        nest: i32,
    }
    impl Drop for Restore {
        fn drop(&mut self) {
            // SAFETY: called on a Postgres thread, inside the transaction that `as_subscriber`
            // began in; restores what it saved, settings first (their nest level), then the
            // session user (which also resets the role), then the current user and context.
            unsafe {
                pg_sys::AtEOXact_GUC(false, self.nest);
                pg_sys::SetSessionAuthorization(self.session, self.session_is_superuser);
                pg_sys::SetUserIdAndSecContext(self.user, self.context);
            }
        }
    }
    let login = login_role().unwrap_or(role);
    let mut user = pg_sys::InvalidOid;
    let mut context = 0;
    // SAFETY: reads and writes of the backend's user ids, role and GUC nest level, on a
    // Postgres thread inside a transaction; the process authenticated as a superuser, so
    // SetSessionAuthorization may name any role. `Restore` undoes all of it.
    let _restore = unsafe {
        pg_sys::GetUserIdAndSecContext(&mut user, &mut context);
        let session = pg_sys::GetSessionUserId();
        let restore = Restore {
            session,
            session_is_superuser: pg_sys::superuser_arg(session),
            user,
            context,
            nest: pg_sys::NewGUCNestLevel(),
        };
        pg_sys::SetSessionAuthorization(login, pg_sys::superuser_arg(login));
        // Sets is_superuser to the role's own, as SET ROLE does.
        pg_sys::SetCurrentRoleId(role, pg_sys::superuser_arg(role));
        if read_only {
            set_setting(c"transaction_read_only", c"on");
        }
        if let Some(claims) = claims {
            set_claims(claims);
        }
        pg_sys::SetUserIdAndSecContext(
            role,
            context
                | pg_sys::SECURITY_LOCAL_USERID_CHANGE as i32
                | pg_sys::SECURITY_RESTRICTED_OPERATION as i32,
        );
        restore
    };
    f()
}

/// The role PostgREST's connections log in as: `realtime.authenticator`, or the anonymous
/// role when no authenticator is set (then no other role may subscribe).
fn login_role() -> Option<pg_sys::Oid> {
    [gucs::authenticator(), gucs::anon_role()]
        .into_iter()
        .filter(|name| !name.is_empty())
        .find_map(|name| {
            let name = std::ffi::CString::new(name).ok()?;
            // SAFETY: a syscache lookup on a Postgres thread inside a transaction; missing_ok.
            let oid = unsafe { pg_sys::get_role_oid(name.as_ptr(), true) };
            (oid != pg_sys::InvalidOid).then_some(oid)
        })
}

/// Make the principal's claims what `current_setting('request.jwt.claims', true)` returns,
/// until the caller's GUC nest level is left (`as_subscriber` restores it).
pub fn set_claims(claims: &str) {
    let value = std::ffi::CString::new(claims).unwrap_or_default();
    set_setting(c"request.jwt.claims", &value)
}

/// Set a user-settable setting until the caller's GUC nest level is left (`as_subscriber`).
pub fn set_setting(name: &CStr, value: &CStr) {
    // SAFETY: on a Postgres thread inside a transaction and `as_subscriber`'s GUC nest level,
    // which AtEOXact_GUC unwinds; a custom (dotted) name is created as a placeholder.
    unsafe {
        pg_sys::SetConfigOption(
            name.as_ptr(),
            value.as_ptr(),
            pg_sys::GucContext::PGC_USERSET,
            pg_sys::GucSource::PGC_S_SESSION,
        )
    }
}

/// Run `f` with a statement timeout of `limit`: past it, the next CHECK_FOR_INTERRUPTS in
/// whatever `f` runs raises "canceling statement due to statement timeout". The caller runs
/// `f` where an ERROR is caught (a subtransaction or `in_transaction`).
pub fn with_time_limit<T>(limit: Duration, f: impl FnOnce() -> T) -> T {
    struct Disarm;
    impl Drop for Disarm {
        fn drop(&mut self) {
            // SAFETY: the timeout module is set up for every backend by InitPostgres; a cancel
            // that fired after `f` finished must not surface later in the main loop.
            unsafe {
                crate::pg::disable_timeout(crate::pg::STATEMENT_TIMEOUT, false);
                pg_sys::QueryCancelPending = 0;
            }
        }
    }
    // SAFETY: as above; STATEMENT_TIMEOUT is registered by InitPostgres for database workers.
    unsafe {
        crate::pg::enable_timeout_after(
            crate::pg::STATEMENT_TIMEOUT,
            limit.as_millis().min(i32::MAX as u128) as i32,
        )
    };
    let _disarm = Disarm;
    f()
}
