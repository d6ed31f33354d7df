//! LISTEN from a background worker. PostgreSQL refuses the SQL command there, because nothing
//! would read what arrives, but its functions work for a worker that does (async.c says so).
//! Notifications reach a backend as protocol messages ('A'); while it reads them, the worker
//! points the protocol's output at a function that keeps them, as `pq_redirect_to_shm_mq`
//! does for parallel workers.

use pgrx::pg_sys;
use std::cell::RefCell;
use std::ffi::{c_char, c_int, CString};

/// libpq/libpq.h (PostgreSQL 14 and later).
#[repr(C)]
struct PqCommMethods {
    comm_reset: unsafe extern "C-unwind" fn(),
    flush: unsafe extern "C-unwind" fn() -> c_int,
    flush_if_writable: unsafe extern "C-unwind" fn() -> c_int,
    is_send_pending: unsafe extern "C-unwind" fn() -> bool,
    putmessage: unsafe extern "C-unwind" fn(c_char, *const c_char, usize) -> c_int,
    putmessage_noblock: unsafe extern "C-unwind" fn(c_char, *const c_char, usize),
}

unsafe extern "C-unwind" {
    /// commands/async.h
    fn Async_Listen(channel: *const c_char);
    fn Async_Unlisten(channel: *const c_char);
    fn ProcessNotifyInterrupt(flush: bool);
}

unsafe extern "C" {
    /// libpq/libpq.h
    static mut PqCommMethods: *const PqCommMethods;
    /// commands/async.h: set by the signal handler when a notification may be waiting.
    static notifyInterruptPending: c_int;
}

/// A notification as NOTIFY sent it.
pub struct Notification {
    pub pid: u32,
    pub channel: String,
    pub payload: String,
}

thread_local! {
    static RECEIVED: RefCell<Vec<Notification>> = const { RefCell::new(Vec::new()) };
}

static KEEP: PqCommMethods = PqCommMethods {
    comm_reset: nothing,
    flush: zero,
    flush_if_writable: zero,
    is_send_pending: no,
    putmessage: keep,
    putmessage_noblock: keep_noblock,
};

unsafe extern "C-unwind" fn nothing() {}
unsafe extern "C-unwind" fn zero() -> c_int {
    0
}
unsafe extern "C-unwind" fn no() -> bool {
    false
}
unsafe extern "C-unwind" fn keep_noblock(kind: c_char, s: *const c_char, len: usize) {
    // SAFETY: as `keep`.
    unsafe { keep(kind, s, len) };
}

/// A NotificationResponse is pid (int32, network order), channel and payload (C strings).
unsafe extern "C-unwind" fn keep(kind: c_char, s: *const c_char, len: usize) -> c_int {
    if kind as u8 != b'A' || s.is_null() {
        return 0;
    }
    // SAFETY: PostgreSQL passes the message body it built, `len` bytes at `s`.
    let body = unsafe { std::slice::from_raw_parts(s as *const u8, len) };
    let Some((pid, rest)) = body.split_first_chunk::<4>() else {
        return 0;
    };
    let mut strings = rest.split(|b| *b == 0);
    let (Some(channel), Some(payload)) = (strings.next(), strings.next()) else {
        return 0;
    };
    RECEIVED.with(|r| {
        r.borrow_mut().push(Notification {
            pid: u32::from_be_bytes(*pid),
            channel: String::from_utf8_lossy(channel).into_owned(),
            payload: String::from_utf8_lossy(payload).into_owned(),
        })
    });
    0
}

/// Start listening on `channel` when the current transaction commits.
pub fn listen(channel: &str) {
    let Ok(name) = CString::new(channel) else {
        return;
    };
    // SAFETY: inside a transaction on the worker's Postgres thread; the name is copied.
    unsafe { Async_Listen(name.as_ptr()) }
}

/// Stop listening on `channel` when the current transaction commits.
pub fn unlisten(channel: &str) {
    let Ok(name) = CString::new(channel) else {
        return;
    };
    // SAFETY: as `listen`.
    unsafe { Async_Unlisten(name.as_ptr()) }
}

/// The notifications that arrived since the last call, in commit order. Outside any
/// transaction: PostgreSQL reads them in one of its own.
pub fn received() -> Result<Vec<Notification>, String> {
    // SAFETY: a flag the SIGUSR1 handler sets; read as the volatile it is.
    if unsafe { std::ptr::read_volatile(&raw const notifyInterruptPending) } == 0 {
        return Ok(Vec::new());
    }
    let result = {
        let _redirected = Redirect::new();
        // SAFETY: the worker's Postgres thread, outside a transaction; an ERROR is caught and
        // its transaction aborted below.
        super::xact::catching(|| unsafe { ProcessNotifyInterrupt(false) })
    };
    if result.is_err() {
        // SAFETY: the worker's Postgres thread; leaves no transaction behind.
        unsafe { pg_sys::AbortOutOfAnyTransaction() };
    }
    let received = RECEIVED.with(|r| std::mem::take(&mut *r.borrow_mut()));
    result.map(|()| received)
}

/// Protocol output goes to `keep` for as long as it lives (errors and notices included:
/// they are logged, not sent), and is put back when it is dropped, even by an unwinding ERROR.
struct Redirect {
    methods: *const PqCommMethods,
    dest: pg_sys::CommandDest::Type,
}

impl Redirect {
    fn new() -> Redirect {
        // SAFETY: globals of the worker's own process, set back by `drop`.
        unsafe {
            let saved = Redirect {
                methods: PqCommMethods,
                dest: pg_sys::whereToSendOutput,
            };
            PqCommMethods = &KEEP;
            pg_sys::whereToSendOutput = pg_sys::CommandDest::DestRemote;
            saved
        }
    }
}

impl Drop for Redirect {
    fn drop(&mut self) {
        // SAFETY: puts back what `new` found.
        unsafe {
            PqCommMethods = self.methods;
            pg_sys::whereToSendOutput = self.dest;
        }
    }
}
