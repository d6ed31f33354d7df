//! Memory contexts the Rust code creates.

use pgrx::pg_sys;

/// The memory context `RowFormat::render` runs in, emptied after each row, so that a
/// million-row statement does not keep a million rows' worth of output strings and copies.
pub struct RowMemory(pg_sys::MemoryContext);

impl RowMemory {
    /// For the life of the process (the worker's).
    pub fn under_top() -> RowMemory {
        // SAFETY: TopMemoryContext exists for the life of the process.
        RowMemory::new(unsafe { pg_sys::TopMemoryContext })
    }

    /// For the current call (a trigger's).
    pub fn under_current() -> RowMemory {
        // SAFETY: the current context outlives the call that creates this one.
        RowMemory::new(unsafe { pg_sys::CurrentMemoryContext })
    }

    fn new(parent: pg_sys::MemoryContext) -> RowMemory {
        // SAFETY: a child of a live context, with PostgreSQL's default sizes.
        RowMemory(unsafe {
            pg_sys::AllocSetContextCreateInternal(
                parent,
                c"realtime_ext row".as_ptr(),
                pg_sys::ALLOCSET_DEFAULT_MINSIZE as usize,
                pg_sys::ALLOCSET_DEFAULT_INITSIZE as usize,
                pg_sys::ALLOCSET_DEFAULT_MAXSIZE as usize,
            )
        })
    }

    /// Run `f` in this context, then empty it.
    pub fn run<T>(&self, f: impl FnOnce() -> T) -> T {
        // SAFETY: `self.0` lives until `self` is dropped; the previous context is restored before returning.
        unsafe {
            let previous = pg_sys::MemoryContextSwitchTo(self.0);
            let result = f();
            pg_sys::MemoryContextSwitchTo(previous);
            self.reset();
            result
        }
    }

    /// Empty it; after an ERROR escaped `run`, what the row had allocated is still there.
    pub fn reset(&self) {
        // SAFETY: `self.0` lives until `self` is dropped.
        unsafe { pg_sys::MemoryContextReset(self.0) };
    }
}

impl Drop for RowMemory {
    fn drop(&mut self) {
        // SAFETY: deleted once, by its owner.
        unsafe { pg_sys::MemoryContextDelete(self.0) };
    }
}
