//! Catalog changes that may alter what a connected principal may see: GRANT and REVOKE on a
//! subscribed table or its columns, its policies, ALTER TABLE ... ROW LEVEL SECURITY, roles
//! and their memberships, and functions (a policy may call one). PostgreSQL announces them
//! as cache invalidations; the worker takes those in at least every `CHECK_INTERVAL` while
//! anyone is subscribed and then has every session authorize its subscriptions again.
//!
//! A subscribed table's own invalidations come far more often for reasons that change nobody's
//! rights (VACUUM and ANALYZE update its statistics, TRUNCATE and CLUSTER its storage, an index
//! is built): those are told apart by a fingerprint of what authorizing reads about the table,
//! so that they cost one catalog query instead of every session authorizing again.

use crate::pg::xact::in_transaction;
use pgrx::pg_sys;
use pgrx::prelude::*;
use realtime_core::net::shared::Shared;
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::Mutex;
use std::time::Duration;

/// How often invalidations are taken in: the bound on how late a REVOKE takes effect.
pub const CHECK_INTERVAL: Duration = Duration::from_millis(250);

static CHANGED: AtomicBool = AtomicBool::new(false);
/// Tables a subscription was resolved for, with their fingerprint as first resolved; other
/// tables' invalidations do not matter.
static TABLES: Mutex<Option<HashMap<u32, Option<String>>>> = Mutex::new(None);
/// Tracked tables invalidated since the last poll, to fingerprint again.
static TOUCHED: Mutex<Option<HashSet<u32>>> = Mutex::new(None);
/// Every relation was invalidated (the worker fell behind the invalidation queue).
static ALL_TOUCHED: AtomicBool = AtomicBool::new(false);
/// Touched tables a catalog change in the stream already had the sessions authorize again
/// for: their fingerprints are brought up to date without telling the sessions again.
static SETTLED: Mutex<Option<HashSet<u32>>> = Mutex::new(None);
static ALL_SETTLED: AtomicBool = AtomicBool::new(false);

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

pub fn register() {
    unsafe extern "C-unwind" fn relation(_: pg_sys::Datum, relid: pg_sys::Oid) {
        let relid = u32::from(relid);
        // InvalidOid: every relation.
        if relid == 0 {
            ALL_TOUCHED.store(true, Relaxed);
        } else if lock(&TABLES)
            .as_ref()
            .is_some_and(|t| t.contains_key(&relid))
        {
            lock(&TOUCHED)
                .get_or_insert_with(HashSet::new)
                .insert(relid);
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

/// A subscription to `relid` was resolved, seeing the table as `fingerprint` says: its
/// table's invalidations now matter. The first fingerprint stays until a poll compares it:
/// one taken since is not what the sessions resolved before it saw.
pub fn track(relid: u32, fingerprint: Option<String>) {
    lock(&TABLES)
        .get_or_insert_with(HashMap::new)
        .entry(relid)
        .or_insert(fingerprint);
}

/// Whether a subscription to `relid` was resolved before: only the first one's fingerprint
/// is kept, so later ones need not take it.
pub fn tracked(relid: u32) -> bool {
    lock(&TABLES)
        .as_ref()
        .is_some_and(|tables| tables.contains_key(&relid))
}

/// What authorizing a subscription to `relid` reads about the table itself, in one value:
/// its name, owner, grants, row security and policies, its columns with their types and
/// grants, and its triggers (which events are captured). `None` once it is gone. Roles and
/// functions have invalidations of their own.
pub fn fingerprint(relid: u32) -> Result<Option<String>, pgrx::spi::Error> {
    Spi::get_one_with_args::<String>(
        "SELECT md5(concat_ws('|', c.relname, c.relnamespace, c.relkind, c.relowner,
                    c.relacl::text, c.relrowsecurity, c.relforcerowsecurity,
                    (SELECT string_agg(concat_ws(',', a.attnum, a.attname, a.atttypid,
                                                 a.atttypmod, a.attcollation, a.attacl::text),
                                       ';' ORDER BY a.attnum)
                       FROM pg_attribute a
                      WHERE a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped),
                    (SELECT string_agg(concat_ws(',', p.polname, p.polcmd, p.polpermissive,
                                                 p.polroles::text,
                                                 pg_get_expr(p.polqual, p.polrelid)),
                                       ';' ORDER BY p.polname)
                       FROM pg_policy p WHERE p.polrelid = c.oid),
                    (SELECT string_agg(concat_ws(',', t.tgname, t.tgtype, t.tgenabled,
                                                 t.tgfoid),
                                       ';' ORDER BY t.tgname)
                       FROM pg_trigger t WHERE t.tgrelid = c.oid)))
           FROM pg_class c WHERE c.oid = $1::oid",
        &[(relid as i64).into()],
    )
}

/// Whether a tracked table invalidated since the last poll now reads differently (each one's
/// fingerprint is brought up to date). Inside the poll's transaction, whose start took the
/// invalidations in.
fn tables_moved() -> bool {
    let all = ALL_TOUCHED.swap(false, Relaxed);
    let touched = lock(&TOUCHED).take().unwrap_or_default();
    let all_settled = ALL_SETTLED.swap(false, Relaxed);
    let settled = lock(&SETTLED).take().unwrap_or_default();
    let relids: Vec<u32> = match lock(&TABLES).as_ref() {
        None => return false,
        Some(tables) if all || all_settled => tables.keys().copied().collect(),
        Some(_) => touched.union(&settled).copied().collect(),
    };
    let mut moved = false;
    for relid in relids {
        // Unreadable counts as moved: authorizing again is the safe answer.
        let now = fingerprint(relid).unwrap_or_default();
        if let Some(seen) = lock(&TABLES).as_mut().and_then(|t| t.get_mut(&relid)) {
            // Touched again since a settled change: compared with before it, which at worst
            // tells the sessions once more.
            if all || touched.contains(&relid) {
                moved |= now.is_none() || *seen != now;
            }
            *seen = now;
        }
    }
    moved
}

/// Something outside the catalogs (a reload) changed who may see what.
pub fn changed() {
    CHANGED.store(true, Relaxed);
}

/// A catalog change in the stream has every session authorize again at its place: the
/// invalidations taken in so far (by the caller, in its transaction) are covered by it, and
/// the next poll need not tell the sessions a second time. Roles are asked about again.
/// Reads no catalog: the caller's transaction may have no snapshot.
pub fn settle(shared: &Shared) {
    let touched = lock(&TOUCHED).take().unwrap_or_default();
    lock(&SETTLED)
        .get_or_insert_with(HashSet::new)
        .extend(touched);
    if ALL_TOUCHED.swap(false, Relaxed) {
        ALL_SETTLED.store(true, Relaxed);
    }
    CHANGED.store(false, Relaxed);
    shared.catalog_epoch.send_modify(|epoch| *epoch += 1);
}

/// Take in pending invalidations (starting a transaction does) at most every
/// `CHECK_INTERVAL`, and tell the sessions if any mattered: a new catalog epoch (roles
/// authorized before it are asked about again); returns whether to place a `Reauthorize`
/// marker in the stream (`Publisher::reauthorize`).
pub fn poll(shared: &Shared) -> bool {
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
    if !due {
        return false;
    }
    let moved = in_transaction(|| Ok::<bool, String>(tables_moved()), |e| e).unwrap_or(true);
    let changed = CHANGED.swap(false, Relaxed) | moved;
    if changed {
        shared.catalog_epoch.send_modify(|epoch| *epoch += 1);
    }
    changed
}

#[cfg(any(test, feature = "pg_test"))]
#[pgrx::pg_schema]
mod tests {
    use pgrx::prelude::*;

    #[pg_test]
    fn maintenance_keeps_a_table_s_fingerprint_and_rights_change_it() {
        Spi::run(
            "CREATE ROLE fp_reader; CREATE ROLE fp_owner;
             CREATE TABLE fp_t (id int PRIMARY KEY, owner text, note text);
             INSERT INTO fp_t SELECT g, 'a', 'n' FROM generate_series(1, 100) g;
             SELECT realtime_watch('fp_t');",
        )
        .unwrap();
        let relid = Spi::get_one::<pg_sys::Oid>("SELECT 'fp_t'::regclass::oid")
            .unwrap()
            .unwrap()
            .to_u32();
        let seen = || super::fingerprint(relid).unwrap_or_default();
        let mut before = seen();
        assert!(before.is_some());
        for maintenance in [
            "ANALYZE fp_t",
            "CREATE INDEX fp_note ON fp_t (note)",
            "REINDEX TABLE fp_t",
            "CLUSTER fp_t USING fp_t_pkey",
            "TRUNCATE fp_t",
            "INSERT INTO fp_t VALUES (1, 'a', 'n')",
            "COMMENT ON TABLE fp_t IS 'kept'",
        ] {
            Spi::run(maintenance).unwrap();
            assert_eq!(seen(), before, "{maintenance} changed the fingerprint");
        }
        for change in [
            "GRANT SELECT ON fp_t TO fp_reader",
            "GRANT SELECT (note) ON fp_t TO fp_reader",
            "REVOKE SELECT ON fp_t FROM fp_reader",
            "ALTER TABLE fp_t ENABLE ROW LEVEL SECURITY",
            "ALTER TABLE fp_t FORCE ROW LEVEL SECURITY",
            "CREATE POLICY p ON fp_t USING (owner = current_user)",
            "ALTER POLICY p ON fp_t USING (owner = 'a')",
            "ALTER POLICY p ON fp_t TO fp_reader",
            "CREATE POLICY q ON fp_t AS RESTRICTIVE USING (true)",
            "DROP POLICY q ON fp_t",
            "ALTER TABLE fp_t OWNER TO fp_owner",
            "ALTER TABLE fp_t RENAME COLUMN note TO remark",
            "ALTER TABLE fp_t ADD COLUMN extra int",
            "ALTER TABLE fp_t ALTER COLUMN extra TYPE bigint",
            "ALTER TABLE fp_t DROP COLUMN extra",
            "ALTER TABLE fp_t RENAME TO fp_t2",
            "ALTER TABLE fp_t2 RENAME TO fp_t",
            "SELECT realtime_unwatch('fp_t')",
            "SELECT realtime_watch('fp_t', events => '{INSERT}')",
        ] {
            Spi::run(change).unwrap();
            let after = seen();
            assert_ne!(after, before, "{change} kept the fingerprint");
            before = after;
        }
        Spi::run("DROP TABLE fp_t").unwrap();
        assert_eq!(seen(), None, "a table gone has no fingerprint");
    }
}
