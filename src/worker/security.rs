//! Whose rights the worker's calls into PostgreSQL run with.
//!
//! The worker is a superuser process that takes input from the network, so any code a
//! non-superuser can define must never run as the worker's role. Every call the worker makes:
//!
//! | call | where | runs as |
//! |---|---|---|
//! | `parse_ident`, catalog lookups of a table, its triggers and columns | `catalog` | worker; built-in functions only, with `search_path = pg_catalog` so no user schema can capture a name |
//! | `CAST(value AS column type)` and `to_json` of a filter value: input functions, domain CHECKs, casts to json | `catalog::render_values` | the table's owner, security-restricted (`as_owner`) |
//! | role lookups, `has_table_privilege`/`has_column_privilege`, `pg_policy`, `pg_class` row-security flags; the watched tables a role may read (`has_any_column_privilege`, for `tables`) | `catalog`, `policy` | worker; built-in functions only |
//! | compiling a subscriber's policies (`eval_const_expressions` inlines SQL functions and may run immutable ones) and evaluating their claim sides | `policy` | the subscriber's role with its claims, security-restricted (`as_owner`) |
//! | policies judged per batch (sub-selects, functions of the row) | `audiences` | the subscriber's role with its claims, security-restricted, 250 ms per batch |
//! | rendering raw tuples of deferred shapes | `rows` | worker; only built-in output functions and enums (`render::prints_the_same_in_worker`), casts ignored |
//! | commit-log lookups of prepared and stuck transactions | `publisher` | worker; no user code |
//! | a snapshot's rows (`SELECT row_to_json(t) FROM (SELECT <readable columns> FROM table) t ORDER BY ...`), after the role is checked again | `crate::snapshot`, a background worker of its own | the subscriber's role with its claims, security-restricted, read-only REPEATABLE READ |
//! | `ProcessConfigFile`, interrupts, latch waits | `mod` | worker; no user code |
//!
//! Each catalog question is also bounded in time (`with_time_limit`), so code a table owner
//! wrote cannot hold up delivery to everyone else.

use pgrx::pg_sys;
use std::time::Duration;

/// Run `f` as `role` inside a security-restricted operation, as VACUUM runs index expressions:
/// SET ROLE, temporary objects and the like are refused, and any `SET` it makes is undone.
/// Restored when `f` returns or unwinds (an ERROR inside also rolls back the subtransaction
/// the caller runs it in, which restores the same state).
pub fn as_owner<T>(role: pg_sys::Oid, f: impl FnOnce() -> T) -> T {
    struct Restore {
        user: pg_sys::Oid,
        context: i32,
        nest: i32,
    }
    impl Drop for Restore {
        fn drop(&mut self) {
            // SAFETY: called on the worker's Postgres thread, inside the transaction that
            // `as_owner` began in; restores what it saved.
            unsafe {
                pg_sys::AtEOXact_GUC(false, self.nest);
                pg_sys::SetUserIdAndSecContext(self.user, self.context);
            }
        }
    }
    let mut user = pg_sys::InvalidOid;
    let mut context = 0;
    // SAFETY: plain reads and writes of the backend's user id and GUC nest level, on the
    // worker's Postgres thread inside a transaction.
    let _restore = unsafe {
        pg_sys::GetUserIdAndSecContext(&mut user, &mut context);
        pg_sys::SetUserIdAndSecContext(
            role,
            context
                | pg_sys::SECURITY_LOCAL_USERID_CHANGE as i32
                | pg_sys::SECURITY_RESTRICTED_OPERATION as i32,
        );
        Restore {
            user,
            context,
            nest: pg_sys::NewGUCNestLevel(),
        }
    };
    f()
}

/// Run `f` with a statement timeout of `limit`: past it, the next CHECK_FOR_INTERRUPTS in
/// whatever `f` runs raises "canceling statement due to statement timeout". The caller runs
/// `f` where an ERROR is caught (a subtransaction or `in_transaction`).
pub fn with_time_limit<T>(limit: Duration, f: impl FnOnce() -> T) -> T {
    struct Disarm;
    impl Drop for Disarm {
        fn drop(&mut self) {
            // SAFETY: the timeout module is set up for every backend by InitPostgres; a cancel
            // that fired after `f` finished must not surface later in the main loop.
            unsafe {
                crate::pg::disable_timeout(crate::pg::STATEMENT_TIMEOUT, false);
                pg_sys::QueryCancelPending = 0;
            }
        }
    }
    // SAFETY: as above; STATEMENT_TIMEOUT is registered by InitPostgres for database workers.
    unsafe {
        crate::pg::enable_timeout_after(
            crate::pg::STATEMENT_TIMEOUT,
            limit.as_millis().min(i32::MAX as u128) as i32,
        )
    };
    let _disarm = Disarm;
    f()
}
