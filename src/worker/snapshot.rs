//! Snapshot reads, on the Postgres side: `realtime_snapshot_token()`, and the snapshot reader,
//! a dynamic background worker that the worker starts for each `subscribe` with
//! `"snapshot": true` (so that reading a large table never holds up the worker's loop).
//!
//! A reader connects to the worker's snapshot socket (`realtime_core::net::snapshots`), names
//! its ticket, receives the `Spec`, and in one REPEATABLE READ transaction, as the subscriber's
//! role with its claims (security-restricted, as the worker judges policies), sends the
//! snapshot it reads in and then the rows, a page at a time. Backpressure is the socket's: a
//! slow client slows its reader and nobody else.

use super::roles::usable_role;
use super::security::as_subscriber;
use crate::gucs;
use crate::pg::xact::in_transaction;
use pgrx::bgworkers::BackgroundWorker;
use pgrx::prelude::*;
use pgrx::spi::quote_identifier;
use realtime_core::auth::Principal;
use realtime_core::net::snapshots::SOCKET;
use realtime_core::snapshot::{push_row, Frame, Spec};
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::time::Duration;

/// Rows per page, and the bytes past which a page is sent early.
const PAGE_ROWS: i64 = 500;
const PAGE_BYTES: usize = 1 << 20;
/// A client that takes nothing for this long has its reader stop (the session closes it sooner).
const WRITE_WAIT: Duration = Duration::from_secs(120);
const MAX_SPEC: u32 = 1 << 20;

/// The snapshot of the running statement (in REPEATABLE READ, of the transaction) as
/// `pg_snapshot` text, `xmin:xmax:xip,...` with full transaction ids: what
/// `pg_current_snapshot()` returns, computed here rather than through SPI so that no new
/// snapshot is taken for it.
fn active_snapshot() -> String {
    // SAFETY: inside a statement (a function call or the reader's transaction): an active
    // snapshot is set, and its xip array holds xcnt ids.
    unsafe {
        let snapshot = pg_sys::GetActiveSnapshot();
        if snapshot.is_null() {
            crate::error::raise(
                PgSqlErrorCode::ERRCODE_INVALID_TRANSACTION_STATE,
                "realtime_snapshot_token() needs an active snapshot",
                "Call it in a query, in the transaction whose reads it is to name.",
            );
        }
        let next = pg_sys::ReadNextFullTransactionId().value;
        let full =
            |xid: pg_sys::TransactionId| next - (next as u32).wrapping_sub(xid.into_inner()) as u64;
        let s = &*snapshot;
        let mut xip: Vec<u64> = (0..s.xcnt as usize).map(|i| full(*s.xip.add(i))).collect();
        xip.sort_unstable();
        let xip: Vec<String> = xip.iter().map(u64::to_string).collect();
        format!("{}:{}:{}", full(s.xmin), full(s.xmax), xip.join(","))
    }
}

/// A token for the snapshot the calling query reads in. A client that read rows in the same
/// snapshot subscribes with `"after_snapshot": token` and receives exactly the changes those
/// rows did not contain. In READ COMMITTED each statement has its own snapshot: call it in the
/// same statement as the read, or use REPEATABLE READ.
#[pg_extern(sql = r#"
CREATE FUNCTION realtime_snapshot_token() RETURNS text STABLE PARALLEL SAFE LANGUAGE c AS 'MODULE_PATHNAME', '@FUNCTION_NAME@';
COMMENT ON FUNCTION realtime_snapshot_token() IS 'A token for the snapshot this query reads in: subscribe with after_snapshot to receive exactly the changes it does not contain';
"#)]
fn realtime_snapshot_token() -> String {
    active_snapshot()
}

/// Start a reader for `ticket`; it connects to the snapshot socket on its own.
pub fn launch(ticket: u64) -> Result<(), String> {
    crate::pg::launch_worker(
        "realtime_ext snapshot reader",
        "realtime_ext snapshot",
        "realtime_snapshot_main",
        ticket as usize,
    )
}

#[pg_guard]
#[unsafe(no_mangle)]
pub extern "C-unwind" fn realtime_snapshot_main(arg: pg_sys::Datum) {
    // PostgreSQL's own handlers: SIGTERM ends a reader at once, pg_cancel_backend() cancels
    // its read.
    // SAFETY: at the start of a background worker, as bgworker.c expects.
    unsafe { pg_sys::BackgroundWorkerUnblockSignals() };
    BackgroundWorker::connect_worker_to_spi(Some(&gucs::database()), None);
    crate::pg::pin_session(c"realtime_ext snapshot");
    // SAFETY: this process's Postgres thread, before its transaction: the settings apply to
    // the transaction it starts next.
    unsafe {
        pg_sys::DefaultXactIsoLevel = pg_sys::XACT_REPEATABLE_READ as i32;
        pg_sys::DefaultXactReadOnly = true;
    }
    let ticket = arg.value() as u64;
    let Some((mut socket, spec)) = connect(ticket) else {
        return;
    };
    let read = in_transaction(
        std::panic::AssertUnwindSafe(|| read(&spec, &mut socket)),
        Failure::Raised,
    );
    let last = match read {
        Ok(rows) => Frame::End(rows),
        Err(Failure::Raised(why)) => Frame::Failed(why),
        // The session went away: nobody to tell.
        Err(Failure::Gone) => return,
    };
    let _ = socket.write_all(&last.encode());
}

fn connect(ticket: u64) -> Option<(UnixStream, Spec)> {
    let mut socket = UnixStream::connect(SOCKET)
        .map_err(|e| warning!("realtime_ext: snapshot reader could not connect to {SOCKET}: {e}"))
        .ok()?;
    socket.set_write_timeout(Some(WRITE_WAIT)).ok()?;
    socket.set_read_timeout(Some(WRITE_WAIT)).ok()?;
    socket.write_all(&ticket.to_le_bytes()).ok()?;
    let mut len = [0u8; 4];
    socket.read_exact(&mut len).ok()?;
    let len = u32::from_le_bytes(len);
    if len > MAX_SPEC {
        return None;
    }
    let mut spec = vec![0; len as usize];
    socket.read_exact(&mut spec).ok()?;
    Some((socket, serde_json::from_slice(&spec).ok()?))
}

enum Failure {
    /// An ERROR, with its message: the session is told.
    Raised(String),
    /// The socket broke.
    Gone,
}

/// Send the snapshot and every row of `spec`; how many rows.
fn read(spec: &Spec, socket: &mut UnixStream) -> Result<u64, Failure> {
    let mut send = |frame: Frame| socket.write_all(&frame.encode()).map_err(|_| Failure::Gone);
    let principal = Principal {
        role: spec.role.clone(),
        claims: spec.claims.clone(),
        expires: None,
        anonymous: false,
    };
    // Checked again: the role may have changed since the subscription was resolved.
    let role = usable_role(&principal).map_err(|e| Failure::Raised(e.to_string()))?;
    let query = query(spec)?;
    as_subscriber(role, Some(&spec.claims), || {
        send(Frame::Snapshot(active_snapshot()))?;
        Spi::connect(|client| {
            let mut cursor = client
                .try_open_cursor(query.as_str(), &[])
                .map_err(|e| Failure::Raised(e.to_string()))?;
            let mut rows = 0;
            loop {
                let mut page = Vec::new();
                let mut fetched = 0;
                {
                    let table = cursor
                        .fetch(PAGE_ROWS)
                        .map_err(|e| Failure::Raised(e.to_string()))?;
                    for row in table {
                        fetched += 1;
                        let text: Option<&str> =
                            row.get(1).map_err(|e| Failure::Raised(e.to_string()))?;
                        push_row(&mut page, text.unwrap_or("null").as_bytes());
                        if page.len() >= PAGE_BYTES {
                            send(Frame::Rows(std::mem::take(&mut page)))?;
                        }
                    }
                }
                // SAFETY: the table just read is SPI's current one and nothing refers to it
                // any more; pgrx frees tables only when SPI disconnects, and a large snapshot
                // would otherwise hold every page until the end.
                unsafe { pg_sys::SPI_freetuptable(pg_sys::SPI_tuptable) };
                if fetched == 0 {
                    return Ok(rows);
                }
                rows += fetched;
                if !page.is_empty() {
                    send(Frame::Rows(page))?;
                }
                pg_sys::check_for_interrupts!();
            }
        })
    })
}

/// The statement reading `spec`'s rows: only the columns the role may read (in table order,
/// as live changes have them), by the table's current name.
fn query(spec: &Spec) -> Result<String, Failure> {
    let failed = |e: pgrx::spi::Error| Failure::Raised(e.to_string());
    let names = Spi::get_two_with_args::<String, String>(
        "SELECT n.nspname::text, c.relname::text FROM pg_class c
           JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.oid = $1",
        &[pg_sys::Oid::from(spec.relid).into()],
    )
    .map_err(failed)?;
    let (Some(schema), Some(table)) = names else {
        return Err(Failure::Raised(format!(
            "table \"{}.{}\" no longer exists",
            spec.schema, spec.table
        )));
    };
    let columns = match &spec.columns {
        None => "*".to_string(),
        Some(allowed) => {
            let all: Vec<String> = Spi::connect(|client| {
                client
                    .select(
                        "SELECT attname::text FROM pg_attribute
                          WHERE attrelid = $1 AND attnum > 0 AND NOT attisdropped ORDER BY attnum",
                        None,
                        &[pg_sys::Oid::from(spec.relid).into()],
                    )?
                    .map(|row| row.get::<String>(1).map(Option::unwrap_or_default))
                    .collect::<Result<Vec<_>, _>>()
            })
            .map_err(failed)?;
            let kept: Vec<String> = all
                .iter()
                .filter(|c| allowed.contains(c))
                .map(quote_identifier)
                .collect();
            if kept.is_empty() {
                return Err(Failure::Raised("no column of the table may be read".into()));
            }
            kept.join(", ")
        }
    };
    let mut sql = format!(
        "SELECT pg_catalog.row_to_json(t)::text FROM (SELECT {columns} FROM {}.{}) t",
        quote_identifier(&schema),
        quote_identifier(&table)
    );
    if !spec.order.is_empty() {
        let keys: Vec<String> = spec
            .order
            .iter()
            .map(|o| {
                format!(
                    "t.{}{}{}",
                    quote_identifier(&o.column),
                    if o.descending { " DESC" } else { "" },
                    match o.nulls_first {
                        Some(true) => " NULLS FIRST",
                        Some(false) => " NULLS LAST",
                        None => "",
                    }
                )
            })
            .collect();
        sql += &format!(" ORDER BY {}", keys.join(", "));
    }
    if let Some(limit) = spec.limit {
        sql += &format!(" LIMIT {limit}");
    }
    Ok(sql)
}
