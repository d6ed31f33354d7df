//! `realtime_clients()`: each WebSocket connection's role, subscriptions, last delivered and
//! acknowledged position and backlog, for operators (pg_monitor). The worker's network side
//! rewrites the report every second (`realtime_core::net::clients`); this reads it.

use crate::error::raise;
use pgrx::prelude::*;
use pgrx::PgSqlErrorCode::*;
use realtime_core::net::clients::{Report, REPORT_FILE};

type Row = (
    i64,
    String,
    Option<String>,
    Vec<String>,
    i64,
    Option<i64>,
    i64,
    i64,
    i64,
);

#[pg_extern(sql = r#"
CREATE FUNCTION realtime.clients_report() RETURNS TABLE (
    connection bigint, address text, role text, subscriptions text[],
    delivered_position bigint, acknowledged_position bigint, backlog_batches bigint,
    connected_at_us bigint, as_of_us bigint)
STRICT VOLATILE PARALLEL UNSAFE LANGUAGE c AS 'MODULE_PATHNAME', '@FUNCTION_NAME@';
REVOKE ALL ON FUNCTION realtime.clients_report() FROM PUBLIC;

CREATE FUNCTION realtime_clients() RETURNS TABLE (
    connection bigint, address text, role text, subscriptions text[],
    delivered_position bigint, acknowledged_position bigint, backlog_batches bigint,
    connected_at timestamptz, as_of timestamptz)
LANGUAGE sql VOLATILE SECURITY DEFINER SET search_path = pg_catalog AS $$
    SELECT connection, address, role, subscriptions, delivered_position, acknowledged_position,
           backlog_batches, to_timestamp(connected_at_us / 1e6), to_timestamp(as_of_us / 1e6)
      FROM realtime.clients_report()
$$;
COMMENT ON FUNCTION realtime_clients() IS 'Each WebSocket connection: role, subscriptions, last delivered and acknowledged position, backlog (updated every second)';
REVOKE ALL ON FUNCTION realtime_clients() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION realtime_clients() TO pg_monitor;
"#)]
#[allow(clippy::type_complexity)]
fn clients_report() -> TableIterator<
    'static,
    (
        name!(connection, i64),
        name!(address, String),
        name!(role, Option<String>),
        name!(subscriptions, Vec<String>),
        name!(delivered_position, i64),
        name!(acknowledged_position, Option<i64>),
        name!(backlog_batches, i64),
        name!(connected_at_us, i64),
        name!(as_of_us, i64),
    ),
> {
    // The backend runs in the data directory, as the worker does.
    let text = match std::fs::read(REPORT_FILE) {
        Ok(text) => text,
        // No worker running (it removes the file when it stops).
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return TableIterator::new(vec![]),
        Err(e) => raise(
            ERRCODE_IO_ERROR,
            format!("could not read {REPORT_FILE}: {e}"),
            "The realtime worker writes it every second; check the data directory's permissions.",
        ),
    };
    let report: Report = serde_json::from_slice(&text).unwrap_or_else(|e| {
        raise(
            ERRCODE_DATA_CORRUPTED,
            format!("{REPORT_FILE} is not a connection report: {e}"),
            "The realtime worker rewrites it within a second; try again.",
        )
    });
    let as_of = report.as_of as i64;
    let rows: Vec<Row> = report
        .clients
        .into_iter()
        .map(|c| {
            (
                c.connection as i64,
                c.address,
                c.role,
                c.subscriptions,
                c.delivered_position as i64,
                (c.acknowledged_position > 0).then_some(c.acknowledged_position as i64),
                c.backlog_batches as i64,
                c.connected_at as i64,
                as_of,
            )
        })
        .collect();
    TableIterator::new(rows)
}
