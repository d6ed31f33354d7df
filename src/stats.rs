//! The engine's numbers (`realtime_core::stats::Stats`) in shared memory, so that every
//! backend reads what the worker and its network threads write: `realtime_stats()`.

use pgrx::pg_sys;
use pgrx::prelude::*;
use realtime_core::stats::{Kind, Size, Stats, Timing, BUCKETS_COUNT, BUCKETS_US};
use std::ffi::CStr;

const SHMEM_NAME: &CStr = c"realtime_ext stats";

/// The numbers in shared memory, once `shmem_startup` has run.
static mut STATS: Option<&'static Stats> = None;

static mut PREV_REQUEST_HOOK: pg_sys::shmem_request_hook_type = None;
static mut PREV_STARTUP_HOOK: pg_sys::shmem_startup_hook_type = None;

pub fn init() {
    // SAFETY: _PG_init runs in the postmaster before any other process: nobody else touches the hooks.
    unsafe {
        PREV_REQUEST_HOOK = pg_sys::shmem_request_hook;
        pg_sys::shmem_request_hook = Some(shmem_request);
        PREV_STARTUP_HOOK = pg_sys::shmem_startup_hook;
        pg_sys::shmem_startup_hook = Some(shmem_startup);
    }
}

/// The numbers every process shares.
pub fn shared() -> &'static Stats {
    // SAFETY: written once by shmem_startup in the postmaster (or a backend, on EXEC_BACKEND)
    // before anything here runs, never again.
    unsafe { STATS }.expect("realtime_ext's shared memory is set up at startup")
}

#[pgrx::pg_guard]
unsafe extern "C-unwind" fn shmem_request() {
    if let Some(prev) = PREV_REQUEST_HOOK {
        prev();
    }
    pg_sys::RequestAddinShmemSpace(std::mem::size_of::<Stats>());
}

#[pgrx::pg_guard]
unsafe extern "C-unwind" fn shmem_startup() {
    if let Some(prev) = PREV_STARTUP_HOOK {
        prev();
    }
    let size = std::mem::size_of::<Stats>();
    let place = crate::pg::shmem_struct(SHMEM_NAME, size, |place| {
        std::ptr::write(place as *mut Stats, Stats::new());
    });
    // SAFETY: shared memory lives as long as the server, and only atomics are in it.
    STATS = Some(&*(place as *const Stats));
}

#[pg_extern(sql = r#"
CREATE FUNCTION realtime.stats_report() RETURNS TABLE (name text, value bigint, kind text, description text)
STRICT VOLATILE PARALLEL SAFE LANGUAGE c AS 'MODULE_PATHNAME', '@FUNCTION_NAME@';
REVOKE ALL ON FUNCTION realtime.stats_report() FROM PUBLIC;

CREATE FUNCTION realtime_stats() RETURNS TABLE (name text, value bigint, kind text, description text)
LANGUAGE sql VOLATILE SECURITY DEFINER SET search_path = pg_catalog AS $$
    SELECT name, value, kind, description FROM realtime.stats_report()
$$;
COMMENT ON FUNCTION realtime_stats() IS 'realtime_ext''s numbers: positions, queue, connections, subscriptions, fan-out and history (counters end in _total)';
REVOKE ALL ON FUNCTION realtime_stats() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION realtime_stats() TO pg_monitor;
-- The same numbers as /metrics names them, the label apart: for postgres_exporter's custom
-- queries (docs/postgres_exporter.yaml), which take labels from columns.
CREATE VIEW realtime_metrics AS
SELECT 'realtime_' || split_part(name, '{', 1) AS metric,
       coalesce(substring(name FROM '\{(.*)\}'), '') AS labels,
       value, kind, description
  FROM realtime_stats();
COMMENT ON VIEW realtime_metrics IS 'realtime_stats() named as /metrics names them: metric, its labels, value';
REVOKE ALL ON realtime_metrics FROM PUBLIC;
GRANT SELECT ON realtime_metrics TO pg_monitor;
"#)]
fn stats_report() -> TableIterator<
    'static,
    (
        name!(name, String),
        name!(value, i64),
        name!(kind, String),
        name!(description, String),
    ),
> {
    let stats = shared();
    let row = |name: String, value: u64, kind: &str, help: String| {
        (
            name,
            value.min(i64::MAX as u64) as i64,
            kind.to_string(),
            help,
        )
    };
    let mut rows: Vec<_> = stats
        .all()
        .map(|(stat, value)| {
            let kind = match stat.kind() {
                Kind::Counter => "counter",
                Kind::Gauge => "gauge",
            };
            let name = match stat.label() {
                Some((key, value)) => format!("{}{{{key}=\"{value}\"}}", stat.name()),
                None => stat.name().to_string(),
            };
            row(name, value, kind, stat.help().into())
        })
        .collect();
    // Each histogram: how many were observed, and the bucket bounds half and 99% of them
    // fell within.
    let histograms = Timing::ALL
        .iter()
        .map(|&t| {
            (
                t.name(),
                stats.timing(t),
                &BUCKETS_US,
                "_us",
                "microseconds",
            )
        })
        .chain(
            Size::ALL
                .iter()
                .map(|&s| (s.name(), stats.size(s), &BUCKETS_COUNT, "", "count")),
        );
    for (name, h, bounds, unit, unit_name) in histograms {
        let what = name.replace('_', " ");
        rows.push(row(
            format!("{name}_total"),
            h.count(),
            "counter",
            format!("observations of {what}"),
        ));
        for (q, label) in [(0.5, "p50"), (0.99, "p99")] {
            let help = format!("{label} of {what}, {unit_name} (a bucket bound)");
            rows.push(row(
                format!("{name}_{label}{unit}"),
                h.quantile(q, bounds),
                "gauge",
                help,
            ));
        }
    }
    TableIterator::new(rows)
}
