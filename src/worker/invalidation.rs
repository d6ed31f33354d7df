//! Catalog changes that may alter what a connected principal may see: GRANT and REVOKE on a
//! subscribed table or its columns, its policies, ALTER TABLE ... ROW LEVEL SECURITY, roles
//! and their memberships, and functions (a policy may call one). PostgreSQL announces them
//! as cache invalidations; the worker takes those in at least every `CHECK_INTERVAL` while
//! anyone is subscribed and then has every session authorize its subscriptions again.

use crate::pg::xact::in_transaction;
use pgrx::pg_sys;
use realtime_core::change::Batch;
use realtime_core::net::fanout::Fanout;
use realtime_core::net::shared::Shared;
use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::Mutex;
use std::time::Duration;

/// How often invalidations are taken in: the bound on how late a REVOKE takes effect.
pub const CHECK_INTERVAL: Duration = Duration::from_millis(250);

static CHANGED: AtomicBool = AtomicBool::new(false);
/// Tables a subscription was resolved for; other tables' invalidations do not matter.
static TABLES: Mutex<Option<HashSet<u32>>> = Mutex::new(None);

pub fn register() {
    unsafe extern "C-unwind" fn relation(_: pg_sys::Datum, relid: pg_sys::Oid) {
        let relid = u32::from(relid);
        let tables = TABLES.lock().unwrap_or_else(|e| e.into_inner());
        // InvalidOid: every relation.
        if relid == 0 || tables.as_ref().is_some_and(|t| t.contains(&relid)) {
            CHANGED.store(true, Relaxed);
        }
    }
    unsafe extern "C-unwind" fn catalog(_: pg_sys::Datum, _: i32, _: u32) {
        CHANGED.store(true, Relaxed);
    }
    // SAFETY: the worker's Postgres thread at start; the callbacks live as long as the process.
    unsafe {
        pg_sys::CacheRegisterRelcacheCallback(Some(relation), pg_sys::Datum::from(0));
        for cache in [
            pg_sys::SysCacheIdentifier::AUTHOID,
            pg_sys::SysCacheIdentifier::AUTHMEMMEMROLE,
            pg_sys::SysCacheIdentifier::PROCOID,
        ] {
            pg_sys::CacheRegisterSyscacheCallback(
                cache as i32,
                Some(catalog),
                pg_sys::Datum::from(0),
            );
        }
    }
}

/// A subscription to `relid` was resolved: its table's invalidations now matter.
pub fn track(relid: u32) {
    TABLES
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .get_or_insert_with(HashSet::new)
        .insert(relid);
}

/// Something outside the catalogs (a reload) changed who may see what.
pub fn changed() {
    CHANGED.store(true, Relaxed);
}

/// Take in pending invalidations (starting a transaction does) at most every
/// `CHECK_INTERVAL`, and tell the sessions if any mattered: a new catalog epoch (roles
/// authorized before it are asked about again) and a `Reauthorize` marker in the stream.
pub fn poll(shared: &Shared, fanout: &Fanout) {
    thread_local! {
        static LAST: std::cell::Cell<Option<std::time::Instant>> = const { std::cell::Cell::new(None) };
    }
    let due = LAST.with(|last| {
        let due = last.get().is_none_or(|t| t.elapsed() >= CHECK_INTERVAL);
        if due {
            last.set(Some(std::time::Instant::now()));
        }
        due
    });
    // Sessions are told at most once per interval, however many invalidations came in: no
    // catalog change that authorizing itself might cause can keep the worker busy.
    if due {
        let _ = in_transaction(|| Ok::<(), String>(()), |e| e);
        if CHANGED.swap(false, Relaxed) {
            shared.catalog_epoch.send_modify(|epoch| *epoch += 1);
            fanout.publish(Batch::Reauthorize {
                last_position: shared.position(),
            });
        }
    }
}
