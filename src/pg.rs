//! PostgreSQL symbols that pgrx's bindings lack.

use std::ffi::c_int;

/// utils/timeout.h: `TimeoutId`'s STATEMENT_TIMEOUT (the fourth predefined reason).
pub const STATEMENT_TIMEOUT: c_int = 3;

unsafe extern "C-unwind" {
    /// utils/timeout.h
    pub fn enable_timeout_after(id: c_int, delay_ms: c_int);
    /// utils/timeout.h
    pub fn disable_timeout(id: c_int, keep_indicator: bool);
}
