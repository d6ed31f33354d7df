//! realtime_ext: stream committed row changes to WebSocket clients from inside PostgreSQL.
//!
//! Map of the crate (the arrow is the path of one change):
//!
//! writer backend: `capture` (statement trigger reads the transition tables -> `pending` buffer
//! -> commit callback) -> `queue` (shared memory) -> `worker` (the background worker's Postgres
//! thread: drains the queue, renders raw rows, numbers events, answers catalog questions) ->
//! `bridge` (the only types that cross threads) -> `net` (tokio threads: HTTP, WebSocket
//! sessions, filters) -> browser, speaking `protocol`. `render` turns rows into JSON (in the
//! writer, or in the worker for rows recorded with their `shape`); `event` is the byte layout
//! the writer, the queue and the worker share.
//!
//! `net` and `protocol` never touch pgrx: everything they need from Postgres arrives through
//! `bridge` channels, so a network thread cannot call into Postgres by accident.

use pgrx::prelude::*;

mod api;
mod capture;
mod error;
mod event;
mod gucs;
mod pg;
mod queue;
mod render;
mod shape;
mod spill;
mod worker;

::pgrx::pg_module_magic!();

extension_sql_file!("../sql/bootstrap.sql", bootstrap);

#[allow(non_snake_case)]
#[pg_guard]
pub extern "C-unwind" fn _PG_init() {
    // SAFETY: a global PostgreSQL sets before loading preloaded libraries; read-only here.
    if !unsafe { pg_sys::process_shared_preload_libraries_in_progress } {
        error::raise(
            PgSqlErrorCode::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
            "realtime_ext must be loaded via shared_preload_libraries",
            "Add realtime_ext to shared_preload_libraries in postgresql.conf and restart the server.",
        );
    }
    gucs::init();
    queue::init();
    capture::init();
    // SAFETY: a global set at postmaster start; read-only here.
    if !unsafe { pg_sys::IsBinaryUpgrade } {
        worker::register();
    }
}

#[cfg(any(test, feature = "pg_test"))]
mod sql_tests;

/// Required by `cargo pgrx test`.
#[cfg(test)]
pub mod pg_test {
    pub fn setup(_options: Vec<&str>) {}

    #[must_use]
    pub fn postgresql_conf_options() -> Vec<&'static str> {
        vec![
            "shared_preload_libraries = 'realtime_ext'",
            "realtime.database = 'pgrx_tests'",
            "realtime.port = 58931",
            "max_prepared_transactions = 10",
        ]
    }
}
