//! What differs between the PostgreSQL majors realtime_ext supports (15 to 18), each in one
//! function, so the rest of the extension reads the same for all of them.
//!
//! - 17: a wait event set is tracked by a resource owner instead of living in a memory context.
//! - 18: a tuple descriptor keeps a compact copy of each attribute in front of the full ones;
//!   minimal tuples can be formed with room before them (`extra`, unused here).

use pgrx::pg_sys;

/// The attributes of `desc`.
///
/// # Safety
/// `desc` is a valid tuple descriptor that outlives the slice.
pub unsafe fn attributes<'d>(desc: pg_sys::TupleDesc) -> &'d [pg_sys::FormData_pg_attribute] {
    let natts = (*desc).natts as usize;
    std::slice::from_raw_parts(first_attribute(desc), natts)
}

/// Attribute `i` of `desc`, to fill in; call `attribute_set` once it is filled.
///
/// # Safety
/// `desc` is a valid tuple descriptor and `i < natts`.
pub unsafe fn attribute_mut<'d>(
    desc: pg_sys::TupleDesc,
    i: usize,
) -> &'d mut pg_sys::FormData_pg_attribute {
    &mut *first_attribute(desc).add(i)
}

/// Attribute `i` of `desc` was filled in through `attribute_mut`: its cached offset is
/// unknown (18 keeps that in the compact copy, made from the full attribute).
///
/// # Safety
/// `desc` is a valid tuple descriptor and `i < natts`.
pub unsafe fn attribute_set(desc: pg_sys::TupleDesc, i: usize) {
    #[cfg(feature = "pg18")]
    pg_sys::populate_compact_attribute(desc, i as std::ffi::c_int);
    #[cfg(not(feature = "pg18"))]
    {
        attribute_mut(desc, i).attcacheoff = -1;
    }
}

unsafe fn first_attribute(desc: pg_sys::TupleDesc) -> *mut pg_sys::FormData_pg_attribute {
    // 18 puts `natts` compact attributes first (tupdesc.h, TupleDescAttr).
    #[cfg(feature = "pg18")]
    return (*desc)
        .compact_attrs
        .as_mut_ptr()
        .add((*desc).natts as usize)
        .cast();
    #[cfg(not(feature = "pg18"))]
    return (*desc).attrs.as_mut_ptr();
}

/// `heap_form_minimal_tuple`, with no room before the tuple.
///
/// # Safety
/// As `heap_form_minimal_tuple`: `values` and `isnull` hold `natts` entries for `desc`.
pub unsafe fn form_minimal_tuple(
    desc: pg_sys::TupleDesc,
    values: *mut pg_sys::Datum,
    isnull: *mut bool,
) -> pg_sys::MinimalTuple {
    #[cfg(feature = "pg18")]
    return pg_sys::heap_form_minimal_tuple(desc, values, isnull, 0);
    #[cfg(not(feature = "pg18"))]
    return pg_sys::heap_form_minimal_tuple(desc, values, isnull);
}

/// `minimal_tuple_from_heap_tuple`, with no room before the tuple.
///
/// # Safety
/// `tuple` is a valid heap tuple.
pub unsafe fn minimal_from_heap(tuple: pg_sys::HeapTuple) -> pg_sys::MinimalTuple {
    #[cfg(feature = "pg18")]
    return pg_sys::minimal_tuple_from_heap_tuple(tuple, 0);
    #[cfg(not(feature = "pg18"))]
    return pg_sys::minimal_tuple_from_heap_tuple(tuple);
}

/// A wait event set for `events` events that lives as long as the process.
///
/// # Safety
/// Called on a Postgres thread.
pub unsafe fn long_lived_wait_event_set(events: i32) -> *mut pg_sys::WaitEventSet {
    // 17 and later: with no resource owner the set is kept in TopMemoryContext (latch.c).
    #[cfg(any(feature = "pg17", feature = "pg18"))]
    return pg_sys::CreateWaitEventSet(std::ptr::null_mut(), events);
    #[cfg(not(any(feature = "pg17", feature = "pg18")))]
    return pg_sys::CreateWaitEventSet(pg_sys::TopMemoryContext, events);
}
