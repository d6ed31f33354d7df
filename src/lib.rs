//! realtime_ext: stream committed row changes to WebSocket clients from inside PostgreSQL.
//!
//! This crate is the PostgreSQL side; the network side is the `realtime_core` crate, which has
//! no pgrx and so cannot call into Postgres. The path of one change:
//!
//! writer backend: `capture` (statement trigger reads the transition tables -> `pending` buffer
//! -> transaction callbacks) -> `queue` (shared memory; `spill` files for large transactions)
//! -> `worker` (the background worker's Postgres thread: drains the queue, renders raw rows,
//! numbers changes, answers catalog questions) -> `realtime_core::bridge` -> network threads
//! -> browser. `render` turns rows into JSON as row_to_json does (in the writer, or in the
//! worker for rows recorded with their `shape`); `event` is the byte layout the writer, the
//! queue and the worker share; `pg` declares the PostgreSQL symbols pgrx lacks; `stats` puts the engine's numbers in shared memory; `api`, `channels` and `webhooks` are the SQL surface, `gucs` the settings, `error` how errors reach SQL callers.

use pgrx::prelude::*;

mod api;
mod capture;
mod channels;
mod clients;
mod error;
mod event;
mod gucs;
mod pg;
mod queue;
mod render;
mod shape;
mod spill;
mod stats;
mod webhooks;
mod worker;

::pgrx::pg_module_magic!();

extension_sql_file!("../sql/bootstrap.sql", bootstrap);

#[allow(non_snake_case)]
#[pg_guard]
pub extern "C-unwind" fn _PG_init() {
    if !pg::loading_preloaded_libraries() {
        error::raise(
            PgSqlErrorCode::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
            "realtime_ext must be loaded via shared_preload_libraries",
            "Add realtime_ext to shared_preload_libraries in postgresql.conf and restart the server.",
        );
    }
    gucs::init();
    queue::init();
    stats::init();
    capture::init();
    if !pg::binary_upgrade() {
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
