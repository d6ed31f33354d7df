//! User-facing errors: every one carries a SQLSTATE and a hint.

use pgrx::pg_sys::panic::ErrorReport;
use pgrx::{PgLogLevel, PgSqlErrorCode};

/// Raise an ERROR with a hint. Only for the Postgres thread of a backend or the worker.
pub fn raise(code: PgSqlErrorCode, message: impl Into<String>, hint: impl Into<String>) -> ! {
    ErrorReport::new(code, message.into(), "realtime_ext")
        .set_hint(hint)
        .report(PgLogLevel::ERROR);
    unreachable!("ERROR does not return")
}

/// The message of an error caught with `PgTryBuilder`.
pub fn message(e: &pgrx::pg_sys::panic::CaughtError) -> String {
    use pgrx::pg_sys::panic::CaughtError::*;
    match e {
        PostgresError(r) | ErrorReport(r) => r.message().to_string(),
        RustPanic { ereport, .. } => ereport.message().to_string(),
    }
}
