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

/// Once the current transaction commits, subscribers are authorized again (before anything
/// committed after it reaches them), and the worker rereads what it relays.
pub fn catalog_changed() {
    pending::push_catalog_change()
}

/// Send a message to `topic`'s subscribers when the current transaction commits, in order
/// with its row changes. `payload` is JSON text.
pub fn send_message(topic: &str, event: &str, sender: u32, payload: &[u8]) {
    pending::push_message(topic, event, sender, payload)
}

/// Called from `_PG_init` in every backend.
pub fn init() {
    xact::register_callbacks();
    utility::register_hook();
    target::register_invalidation();
}
