//! Which watched table a captured row belongs to, and how its rows are rendered. A row in a
//! partition is reported under the partitioned table that was watched, so subscribers of
//! `measurements` see all partitions. Cached per backend; any relcache invalidation (renames,
//! ATTACH/DETACH, ALTER TABLE) or change to casts empties the cache.

use crate::render::{Casts, RowFormat};
use pgrx::pg_sys;
use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;

pub struct Target {
    pub relid: u32,
    pub schema: String,
    pub table: String,
    /// For rows of the relation the trigger fired on (a partition's columns may be ordered
    /// differently from its root's).
    pub format: RowFormat,
    /// `shape::describe` of the relation, when its rows can be rendered by the worker.
    pub columns: Option<Vec<u8>>,
}

thread_local! {
    static CACHE: RefCell<HashMap<pg_sys::Oid, Rc<Target>>> = RefCell::new(HashMap::new());
}

fn clear() {
    // Taken out first: dropping formats frees memory contexts, outside the RefCell borrow.
    let old = CACHE.with(|c| std::mem::take(&mut *c.borrow_mut()));
    drop(old);
}

#[pgrx::pg_guard]
unsafe extern "C-unwind" fn relation_changed(_arg: pg_sys::Datum, _relid: pg_sys::Oid) {
    clear();
}

/// A new cast to json changes how row_to_json renders a user-defined type.
#[pgrx::pg_guard]
unsafe extern "C-unwind" fn cast_changed(_arg: pg_sys::Datum, _cache: std::ffi::c_int, _hash: u32) {
    clear();
}

pub fn register_invalidation() {
    // SAFETY: registered once per backend, from _PG_init's capture::init; the callbacks are plain functions that live forever.
    unsafe {
        pg_sys::CacheRegisterRelcacheCallback(Some(relation_changed), pg_sys::Datum::from(0));
        let casts = pg_sys::SysCacheIdentifier::CASTSOURCETARGET as std::ffi::c_int;
        pg_sys::CacheRegisterSyscacheCallback(casts, Some(cast_changed), pg_sys::Datum::from(0));
    }
}

/// `is_clone`: the trigger was cloned from a partitioned ancestor.
pub fn resolve(rel: pg_sys::Relation, is_clone: bool) -> Rc<Target> {
    // SAFETY: `rel` is the trigger's open relation, valid for the trigger call.
    let relid = unsafe { (*rel).rd_id };
    if let Some(t) = CACHE.with(|c| c.borrow().get(&relid).cloned()) {
        // SAFETY: `rel` is the trigger's open relation, valid for the trigger call.
        if t.format.fits(unsafe { (*rel).rd_att }) {
            return t;
        }
    }
    let root = if is_clone {
        // SAFETY: a trigger runs inside the writer's transaction.
        unsafe { crate::pg::topmost_ancestor(relid) }
    } else {
        relid
    };
    // SAFETY: `rel` is the trigger's open relation, valid for the trigger call.
    let desc = unsafe { (*rel).rd_att };
    let format = RowFormat::new(desc, Casts::Honour);
    // SAFETY: catalog lookups inside the trigger's transaction; NULL results are handled by string_from.
    let target = Rc::new(unsafe {
        Target {
            relid: root.to_u32(),
            schema: crate::pg::string_from(pg_sys::get_namespace_name(pg_sys::get_rel_namespace(
                root,
            ))),
            table: crate::pg::string_from(pg_sys::get_rel_name(root)),
            columns: format.deferrable().then(|| crate::shape::describe(desc)),
            format,
        }
    });
    CACHE.with(|c| c.borrow_mut().insert(relid, target.clone()));
    target
}
