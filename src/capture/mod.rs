//! The writer side: statement, row and TRUNCATE triggers capture changes into a backend-local
//! pending buffer; transaction callbacks publish it to the shared queue at commit (or drop it on
//! abort).

mod pending;
mod target;
mod trigger;
mod xact;

/// Called from `_PG_init` in every backend.
pub fn init() {
    xact::register_callbacks();
    target::register_invalidation();
}
