//! The FFI layer: every PostgreSQL symbol pgrx's bindings lack, and the raw helpers built on
//! them. Everything here runs on a Postgres backend's (or the worker's Postgres) thread.
//! `xact` holds the worker's transaction brackets, `memory` the memory contexts it creates,
//! `versions` what differs between the PostgreSQL majors supported.

pub mod memory;
pub mod notify;
pub mod versions;
pub mod xact;

use pgrx::pg_sys;
use std::ffi::{c_char, c_int, CStr};

/// utils/timeout.h: `TimeoutId`'s STATEMENT_TIMEOUT (the fourth predefined reason).
pub const STATEMENT_TIMEOUT: c_int = 3;

unsafe extern "C-unwind" {
    /// utils/timeout.h
    pub fn enable_timeout_after(id: c_int, delay_ms: c_int);
    /// utils/timeout.h
    pub fn disable_timeout(id: c_int, keep_indicator: bool);
    /// catalog/partition.h
    fn get_partition_ancestors(relid: pg_sys::Oid) -> *mut pg_sys::List;
    /// access/heaptoast.h
    pub fn toast_flatten_tuple(
        tuple: pg_sys::HeapTuple,
        desc: pg_sys::TupleDesc,
    ) -> pg_sys::HeapTuple;
    /// The fmgr entry points themselves (pg_sys only exposes guarded wrappers).
    pub fn row_to_json(fcinfo: pg_sys::FunctionCallInfo) -> pg_sys::Datum;
    pub fn array_to_json(fcinfo: pg_sys::FunctionCallInfo) -> pg_sys::Datum;
}

unsafe extern "C" {
    /// utils/bytea.h: the session's bytea_output setting.
    pub static mut bytea_output: c_int;
}

/// Name this background worker in `pg_stat_activity` and make every name in the SQL it runs
/// resolve in pg_catalog only: no schema a user can create objects in may capture a function
/// or operator (see `worker::security`). Once, right after connecting.
pub fn pin_session(appname: &CStr) {
    // SAFETY: a background worker's Postgres thread, connected, outside a transaction.
    unsafe {
        pg_sys::pgstat_report_appname(appname.as_ptr());
        pg_sys::SetConfigOption(
            c"search_path".as_ptr(),
            c"pg_catalog".as_ptr(),
            pg_sys::GucContext::PGC_SUSET,
            pg_sys::GucSource::PGC_S_OVERRIDE,
        );
    }
}

/// The topmost partitioned table above `relid`, or `relid` itself if it is not a partition.
///
/// # Safety
/// Inside a transaction (it reads the catalogs); raises an ERROR as PostgreSQL does.
pub unsafe fn topmost_ancestor(relid: pg_sys::Oid) -> pg_sys::Oid {
    // SAFETY: the caller is in a transaction; the list is palloc'd and read before it is freed.
    unsafe {
        let list = get_partition_ancestors(relid);
        let n = if list.is_null() { 0 } else { (*list).length };
        if n == 0 {
            return relid;
        }
        (*(*list).elements.add(n as usize - 1)).oid_value
    }
}

/// A C string PostgreSQL returned, copied out ("" for NULL).
///
/// # Safety
/// `p` is NULL or points to a NUL-terminated string that lives for the call.
pub unsafe fn string_from(p: *const c_char) -> String {
    if p.is_null() {
        String::new()
    } else {
        // SAFETY: non-NULL and NUL-terminated, as the caller promises.
        unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned()
    }
}

/// Whether PostgreSQL is loading shared_preload_libraries (in the postmaster) right now.
pub fn loading_preloaded_libraries() -> bool {
    // SAFETY: a global PostgreSQL sets before loading preloaded libraries; read-only here.
    unsafe { pg_sys::process_shared_preload_libraries_in_progress }
}

/// Whether the server runs for pg_upgrade.
pub fn binary_upgrade() -> bool {
    // SAFETY: a global set at postmaster start; read-only here.
    unsafe { pg_sys::IsBinaryUpgrade }
}

/// The OID of extension `name`, if it is installed in this database. Needs a transaction.
pub fn extension_oid(name: &CStr) -> Option<pg_sys::Oid> {
    // SAFETY: a catalog lookup by a NUL-terminated name; callers are SQL functions, inside a
    // transaction.
    let oid = unsafe { pg_sys::get_extension_oid(name.as_ptr(), true) };
    (oid != pg_sys::InvalidOid).then_some(oid)
}

/// Make trigger `trigger` part of extension `extension` (DEPENDENCY_AUTO), so that DROP
/// EXTENSION removes it. Needs a transaction.
pub fn depend_on_extension(trigger: pg_sys::Oid, extension: pg_sys::Oid) {
    let trigger = pg_sys::ObjectAddress {
        classId: pg_sys::TriggerRelationId,
        objectId: trigger,
        objectSubId: 0,
    };
    let extension = pg_sys::ObjectAddress {
        classId: pg_sys::ExtensionRelationId,
        objectId: extension,
        objectSubId: 0,
    };
    // SAFETY: both addresses are live locals; callers are SQL functions, inside a transaction.
    unsafe {
        pg_sys::recordDependencyOn(
            &trigger,
            &extension,
            pg_sys::DependencyType::DEPENDENCY_AUTO,
        )
    };
}

/// The current value of setting `name` as text ("" if it has none).
pub fn setting(name: &CStr) -> String {
    // SAFETY: a GUC lookup by a NUL-terminated name on a Postgres thread; the value is copied
    // out before any other GUC call.
    unsafe { string_from(pg_sys::GetConfigOption(name.as_ptr(), true, false)) }
}

/// Start a background worker of this library, once (not restarted), that runs `function`
/// with `arg` and connects to the database itself: `name` in the server log, `kind` in
/// `pg_stat_activity.backend_type`.
pub fn launch_worker(name: &str, kind: &str, function: &str, arg: usize) -> Result<(), String> {
    use pgrx::bgworkers::{BackgroundWorkerBuilder, BgWorkerStartTime};
    BackgroundWorkerBuilder::new(name)
        .set_type(kind)
        .set_library("realtime_ext")
        .set_function(function)
        .set_argument(Some(pg_sys::Datum::from(arg)))
        .enable_spi_access()
        .set_start_time(BgWorkerStartTime::RecoveryFinished)
        .set_restart_time(None)
        .load_dynamic()
        .map(|_| ())
        .map_err(|_| "no background worker slot is free; raise max_worker_processes".to_string())
}

/// The shared-memory struct `name` of `size` bytes, found or created under
/// AddinShmemInitLock; `init` runs on it, still under the lock, only when this call created
/// it (the first process to get there after the server started).
///
/// # Safety
/// Called from a `shmem_startup_hook`, with `size` what the `shmem_request_hook` asked for.
pub unsafe fn shmem_struct(name: &CStr, size: usize, init: impl FnOnce(*mut u8)) -> *mut u8 {
    // AddinShmemInitLock is a macro over the main LWLock array (lwlocknames.txt: 21).
    let init_lock = &raw mut (*pg_sys::MainLWLockArray.add(21)).lock;
    pg_sys::LWLockAcquire(init_lock, pg_sys::LWLockMode::LW_EXCLUSIVE);
    let mut found = false;
    let base = pg_sys::ShmemInitStruct(name.as_ptr(), size, &mut found) as *mut u8;
    if !found {
        init(base);
    }
    pg_sys::LWLockRelease(init_lock);
    base
}
