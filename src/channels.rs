//! The SQL surface of channels: `realtime_relay()` and `realtime_unrelay()` name the NOTIFY
//! channels the worker relays (`worker::relay` listens), `realtime_send()` sends a message to a
//! topic as part of the calling transaction. `realtime_relayed()` and the `realtime.relays`
//! table are plain SQL (sql/channels.sql), as are Supabase's names for sending,
//! `realtime.send` and `realtime.broadcast_changes` (sql/supabase_send.sql).

use crate::capture;
use crate::error::raise;
use pgrx::prelude::*;
use pgrx::PgSqlErrorCode::*;
use realtime_core::change::MAX_CHANNEL_BYTES;
use std::ffi::CStr;

/// PostgreSQL's limit on a NOTIFY channel's name (NAMEDATALEN - 1).
const MAX_NOTIFY_CHANNEL_BYTES: usize = 63;

extension_sql_file!("../sql/channels.sql", name = "channels");

/// Relay NOTIFY `channel` to realtime clients subscribed to it, from the moment this
/// transaction commits. Calling it again changes how it is relayed and to whom.
#[pg_extern(sql = r#"
CREATE FUNCTION realtime_relay(channel text, as_json boolean DEFAULT false, readers regrole[] DEFAULT '{}')
RETURNS void VOLATILE PARALLEL UNSAFE LANGUAGE c AS 'MODULE_PATHNAME', '@FUNCTION_NAME@';
COMMENT ON FUNCTION realtime_relay(text, boolean, regrole[]) IS 'Relay a NOTIFY channel to realtime clients: payloads as JSON (as_json) or text, to members of readers';
"#, requires = ["channels"])]
fn realtime_relay(
    channel: Option<&str>,
    as_json: Option<bool>,
    readers: Option<Vec<Option<pg_sys::Oid>>>,
) {
    let channel = notify_channel(channel);
    let readers: Vec<pg_sys::Oid> = readers.unwrap_or_default().into_iter().flatten().collect();
    Spi::run_with_args(
        "INSERT INTO realtime.relays (channel, as_json, readers) VALUES ($1, $2, $3)
         ON CONFLICT (channel) DO UPDATE SET as_json = EXCLUDED.as_json, readers = EXCLUDED.readers",
        &[
            channel.into(),
            as_json.unwrap_or(false).into(),
            readers.clone().into(),
        ],
    )
    .unwrap_or_else(|e| spi_failed(e));
    if readers.is_empty() {
        notice!(
            "realtime_ext: channel \"{channel}\" is relayed, but no role may receive it yet; name them with readers => '{{role}}'"
        );
    }
    // The worker listens, and subscribers are authorized again, once this commits.
    capture::catalog_changed();
}

/// Stop relaying NOTIFY `channel`; its subscriptions end. Whether it was relayed.
#[pg_extern(sql = r#"
CREATE FUNCTION realtime_unrelay(channel text)
RETURNS boolean STRICT VOLATILE PARALLEL UNSAFE LANGUAGE c AS 'MODULE_PATHNAME', '@FUNCTION_NAME@';
COMMENT ON FUNCTION realtime_unrelay(text) IS 'Stop relaying a NOTIFY channel to realtime clients';
"#, requires = ["channels"])]
fn realtime_unrelay(channel: &str) -> bool {
    let removed = Spi::get_one_with_args::<bool>(
        "WITH gone AS (DELETE FROM realtime.relays WHERE channel = $1 RETURNING 1)
         SELECT count(*) > 0 FROM gone",
        &[channel.into()],
    )
    .unwrap_or_else(|e| spi_failed(e))
    .unwrap_or(false);
    if removed {
        capture::catalog_changed();
    }
    removed
}

/// Send `payload` to the subscribers of `topic` as event `event`, when this transaction
/// commits: in order with its row changes, never if it rolls back, kept in the history.
#[pg_extern(sql = r#"
CREATE FUNCTION realtime_send(topic text, event text, payload jsonb)
RETURNS void VOLATILE PARALLEL UNSAFE LANGUAGE c AS 'MODULE_PATHNAME', '@FUNCTION_NAME@';
COMMENT ON FUNCTION realtime_send(text, text, jsonb) IS 'Send a message to the realtime subscribers of a topic when this transaction commits';
REVOKE ALL ON FUNCTION realtime_send(text, text, jsonb) FROM PUBLIC;
"#, requires = ["channels"])]
fn realtime_send(topic: Option<&str>, event: Option<&str>, payload: Option<pgrx::AnyElement>) {
    let topic = topic.unwrap_or_default();
    if topic.is_empty() || topic.len() > MAX_CHANNEL_BYTES {
        raise(
            ERRCODE_INVALID_PARAMETER_VALUE,
            format!("realtime_send: a topic is 1 to {MAX_CHANNEL_BYTES} bytes"),
            "Name the topic subscribers subscribe to, e.g. realtime_send('orders', 'shipped', '{\"id\": 1}').",
        );
    }
    let event = event.unwrap_or_default();
    if event.is_empty() || event.len() > MAX_CHANNEL_BYTES {
        raise(
            ERRCODE_INVALID_PARAMETER_VALUE,
            format!("realtime_send: an event is 1 to {MAX_CHANNEL_BYTES} bytes"),
            "Name what happened, e.g. realtime_send('orders', 'shipped', '{\"id\": 1}').",
        );
    }
    let payload = payload.map_or_else(|| "null".to_string(), |p| jsonb_text(p.datum()));
    // A message belongs to the transaction as its row changes do: it needs an id to be told
    // apart in snapshots and to settle at commit (pg_notify takes one too).
    // SAFETY: inside the caller's transaction.
    unsafe { pg_sys::GetTopTransactionId() };
    // SAFETY: MyProcPid is set once at backend start and only read here.
    let sender = unsafe { pg_sys::MyProcPid } as u32;
    capture::send_message(topic, event, sender, payload.as_bytes());
}

extension_sql_file!(
    "../sql/supabase_send.sql",
    name = "supabase_send",
    requires = [realtime_send]
);

extension_sql_file!("../sql/supabase_auth.sql", name = "supabase_auth");

/// jsonb's text, as `payload::text` writes it.
fn jsonb_text(datum: pg_sys::Datum) -> String {
    let (mut output, mut varlena) = (pg_sys::InvalidOid, false);
    // SAFETY: a jsonb datum of the current call; the output function returns a palloc'd
    // C string, copied out at once.
    unsafe {
        pg_sys::getTypeOutputInfo(pg_sys::JSONBOID, &mut output, &mut varlena);
        let text = pg_sys::OidOutputFunctionCall(output, datum);
        CStr::from_ptr(text).to_string_lossy().into_owned()
    }
}

/// A NOTIFY channel's name, checked as pg_notify checks it.
fn notify_channel(channel: Option<&str>) -> &str {
    match channel {
        Some(c) if !c.is_empty() && c.len() <= MAX_NOTIFY_CHANNEL_BYTES => c,
        _ => raise(
            ERRCODE_INVALID_PARAMETER_VALUE,
            format!("realtime_relay: a NOTIFY channel's name is 1 to {MAX_NOTIFY_CHANNEL_BYTES} bytes"),
            "Name the channel the application's pg_notify() calls use, e.g. realtime_relay('orders').",
        ),
    }
}

fn spi_failed(e: pgrx::spi::Error) -> ! {
    raise(
        ERRCODE_INTERNAL_ERROR,
        format!("realtime_ext: {e}"),
        "This is a bug in realtime_ext; please report it.",
    )
}
