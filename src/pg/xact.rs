//! Transaction brackets for the background worker, which has no transaction of its own: one
//! place that starts, commits and aborts, and turns a raised ERROR into a `Result`.

use pgrx::{pg_sys, PgTryBuilder};
use std::panic::UnwindSafe;

/// Run `f`; an ERROR it raises (or a Rust panic) becomes its message instead of unwinding.
/// The caller decides what to roll back.
pub fn catching<T>(f: impl FnOnce() -> T + UnwindSafe) -> Result<T, String> {
    PgTryBuilder::new(|| Ok(f()))
        .catch_others(|e| Err(crate::error::message(&e)))
        .execute()
}

/// Run `f` in a transaction of its own: committed if it returns `Ok`, rolled back if it
/// returns `Err` or raises (the ERROR's message is passed to `raised`).
pub fn in_transaction<T, E>(
    f: impl FnOnce() -> Result<T, E> + UnwindSafe,
    raised: impl FnOnce(String) -> E,
) -> Result<T, E> {
    let mut txn = Transaction::default();
    txn.begin();
    // SAFETY: in the transaction just started; popped below before it ends.
    unsafe { pg_sys::PushActiveSnapshot(pg_sys::GetTransactionSnapshot()) };
    let result = catching(f).unwrap_or_else(|message| Err(raised(message)));
    if result.is_ok() {
        // SAFETY: the snapshot pushed above is still the active one.
        unsafe { pg_sys::PopActiveSnapshot() };
        txn.commit();
    } else {
        txn.abort();
    }
    result
}

/// Run `f` in the transaction under way, or in one of its own if there is none. In the
/// transaction under way `f` runs as is, with no snapshot pushed and no ERROR caught: SQL in it
/// needs a snapshot of its own there.
pub fn in_any_transaction<T>(
    f: impl FnOnce() -> Result<T, String> + UnwindSafe,
) -> Result<T, String> {
    // SAFETY: a plain read of the transaction state, on a Postgres thread.
    if unsafe { pg_sys::IsTransactionState() } {
        f()
    } else {
        in_transaction(f, |e| e)
    }
}

/// Run `f` in a subtransaction that is rolled back whatever happens: for probes that write
/// (`worker::topics`). An ERROR it raises becomes its message.
pub fn rolled_back<T>(f: impl FnOnce() -> T + UnwindSafe) -> Result<T, String> {
    subtransaction(f, false)
}

/// Run `f` in a subtransaction, as a PL/pgSQL EXCEPTION block does: an ERROR it raises is
/// rolled back and becomes its message, and the surrounding transaction carries on.
pub fn in_subtransaction<T>(f: impl FnOnce() -> T + UnwindSafe) -> Result<T, String> {
    subtransaction(f, true)
}

/// `f` in a subtransaction, released if it returned and `keep` is set, else rolled back.
fn subtransaction<T>(f: impl FnOnce() -> T + UnwindSafe, keep: bool) -> Result<T, String> {
    // SAFETY: called inside a transaction; memory context and resource owner are restored
    // afterwards, as PL/pgSQL's exec_stmt_block does.
    unsafe {
        let context = pg_sys::CurrentMemoryContext;
        let owner = pg_sys::CurrentResourceOwner;
        pg_sys::BeginInternalSubTransaction(std::ptr::null());
        pg_sys::MemoryContextSwitchTo(context);
        let result = catching(f);
        if keep && result.is_ok() {
            pg_sys::ReleaseCurrentSubTransaction();
        } else {
            pg_sys::RollbackAndReleaseCurrentSubTransaction();
        }
        pg_sys::MemoryContextSwitchTo(context);
        pg_sys::CurrentResourceOwner = owner;
        result
    }
}

/// A transaction the worker opens when it first needs one and closes when it is done (for
/// deferred rendering: once per pass, not once per row).
#[derive(Default)]
pub struct Transaction {
    open: bool,
}

impl Transaction {
    /// Start one unless already open.
    pub fn begin(&mut self) {
        if !std::mem::replace(&mut self.open, true) {
            // SAFETY: the worker's Postgres thread, outside any transaction (`open` was false).
            unsafe {
                pg_sys::SetCurrentStatementStartTimestamp();
                pg_sys::StartTransactionCommand();
            }
        }
    }

    pub fn commit(&mut self) {
        if std::mem::take(&mut self.open) {
            // SAFETY: the transaction `begin` started is still open.
            unsafe { pg_sys::CommitTransactionCommand() };
        }
    }

    /// Roll back after an ERROR was caught.
    pub fn abort(&mut self) {
        if std::mem::take(&mut self.open) {
            // SAFETY: the transaction `begin` started is open, in an aborted state.
            unsafe { pg_sys::AbortCurrentTransaction() };
        }
    }
}
