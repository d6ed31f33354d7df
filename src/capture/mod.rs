//! The writer side: statement, row and TRUNCATE triggers capture changes into a backend-local
//! pending buffer; transaction callbacks publish it to the shared queue at commit (or drop it on
//! abort).

mod pending;
mod prepared;
mod target;
mod trigger;
mod utility;
mod xact;

/// Once the current transaction commits, subscriptions to `relid` end with `reason`.
pub fn end_subscriptions(relid: pgrx::pg_sys::Oid, reason: realtime_core::change::EndReason) {
    pending::push_end(relid.to_u32(), reason)
}

/// Called from `_PG_init` in every backend.
pub fn init() {
    xact::register_callbacks();
    utility::register_hook();
    target::register_invalidation();
}
