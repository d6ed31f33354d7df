//! The SQL surface of webhooks: `realtime_webhook_create()` and its siblings, the tables they
//! write and the views over them are plain SQL (sql/webhooks.sql); the checks only the
//! network-free parser can make, and where a new webhook starts, are here. The worker
//! delivers them (`worker::webhooks`).

use crate::error::raise;
use pgrx::prelude::*;
use pgrx::PgSqlErrorCode::*;
use realtime_core::stats::Stat;

/// The last position published: a new webhook receives what comes after it.
#[pg_extern(sql = r#"
CREATE FUNCTION realtime.webhook_position() RETURNS bigint
VOLATILE PARALLEL SAFE LANGUAGE c AS 'MODULE_PATHNAME', '@FUNCTION_NAME@';
"#)]
fn webhook_position() -> i64 {
    crate::stats::shared().get(Stat::Position) as i64
}

/// Refuse a filter the worker could not subscribe with, as a client would be refused.
#[pg_extern(sql = r#"
CREATE FUNCTION realtime.webhook_check_filter(filter text) RETURNS void
IMMUTABLE PARALLEL SAFE LANGUAGE c AS 'MODULE_PATHNAME', '@FUNCTION_NAME@';
"#)]
fn webhook_check_filter(filter: Option<&str>) {
    let Some(filter) = filter.filter(|f| !f.is_empty()) else {
        return;
    };
    if let Err(e) = realtime_core::filter::parse_all(filter) {
        raise(
            ERRCODE_INVALID_PARAMETER_VALUE,
            format!("invalid filter \"{filter}\": {e}"),
            "Write column=op.value (eq, neq, lt, lte, gt, gte, in, like, ilike, is, ...), several joined by commas, as a client's filter.",
        );
    }
}

extension_sql_file!(
    "../sql/webhooks.sql",
    name = "webhooks",
    requires = [webhook_position, webhook_check_filter]
);
