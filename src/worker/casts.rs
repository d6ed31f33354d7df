//! Filter values cast to their column's type and rendered as JSON, as the subscriber would
//! cast them in SQL, and kept: an unrelated catalog change has every session authorize its
//! subscriptions again, and casting again each time would run input functions, domain CHECKs
//! and casts to json once per session per catalog change. A change to any type, constraint,
//! cast, function or role forgets them all.

use super::security::as_subscriber;
use crate::pg::xact::in_subtransaction;
use pgrx::prelude::*;
use std::cell::RefCell;
use std::collections::HashMap;

/// Casts remembered; past it the cache starts afresh (no subscriber can grow it without bound).
const MAX_CACHED: usize = 10_000;

#[derive(PartialEq, Eq, Hash)]
struct Key {
    type_name: String,
    value: String,
    role: pg_sys::Oid,
    claims: String,
}

thread_local! {
    /// The worker's Postgres thread only: its catalog questions are the only callers.
    static CACHE: RefCell<HashMap<Key, Result<serde_json::Value, String>>> = RefCell::default();
}

pub fn register() {
    unsafe extern "C-unwind" fn forget(_: pg_sys::Datum, _: i32, _: u32) {
        CACHE.with(|c| c.borrow_mut().clear());
    }
    // SAFETY: the worker's Postgres thread at start; the callback lives as long as the process.
    unsafe {
        for cache in [
            pg_sys::SysCacheIdentifier::TYPEOID,
            pg_sys::SysCacheIdentifier::CONSTROID,
            pg_sys::SysCacheIdentifier::CASTSOURCETARGET,
            pg_sys::SysCacheIdentifier::PROCOID,
            pg_sys::SysCacheIdentifier::AUTHOID,
            pg_sys::SysCacheIdentifier::AUTHMEMMEMROLE,
        ] {
            pg_sys::CacheRegisterSyscacheCallback(
                cache as i32,
                Some(forget),
                pg_sys::Datum::from(0),
            );
        }
    }
}

/// `value` cast to `type_name` (as `format_type` spells it) and rendered by `to_json`, as
/// `role` with `claims`: the error PostgreSQL raised, or `NULL`, if it could not be.
pub fn render(
    type_name: &str,
    value: &str,
    role: pg_sys::Oid,
    claims: &str,
) -> Result<serde_json::Value, String> {
    let key = Key {
        type_name: type_name.to_string(),
        value: value.to_string(),
        role,
        claims: claims.to_string(),
    };
    if let Some(hit) = CACHE.with(|c| c.borrow().get(&key).cloned()) {
        return hit;
    }
    let sql = format!("SELECT to_json(CAST($1 AS {type_name}))::text");
    let rendered = in_subtransaction(|| {
        as_subscriber(role, Some(claims), || {
            Spi::get_one_with_args::<String>(&sql, &[value.into()]).map_err(|e| e.to_string())
        })
    })
    .and_then(|r| r)
    .and_then(|json| json.ok_or_else(|| "NULL".to_string()))
    .and_then(|json| serde_json::from_str(&json).map_err(|e| e.to_string()));
    // A statement timeout says nothing about the value: asked again, it is cast again.
    if !rendered
        .as_ref()
        .is_err_and(|e| e.contains("statement timeout"))
    {
        CACHE.with(|c| {
            let mut c = c.borrow_mut();
            if c.len() >= MAX_CACHED {
                c.clear();
            }
            c.insert(key, rendered.clone());
        });
    }
    rendered
}
