//! The trigger functions attached by `realtime_watch()`. They run inside the writer's statement
//! and append its changes to the pending buffer.
//!
//! Ordinary tables get statement triggers with transition tables: PostgreSQL hands over all of
//! a statement's rows at its end, which costs the writer about what inserting them cost, while
//! an AFTER ROW trigger queues an event per row and fetches each row back from the heap (a
//! no-op row trigger alone made a 1,000,000-row insert 1.2× slower). Their rows are copied raw;
//! the worker renders them (`shape`). Partitioned tables keep row triggers, which PostgreSQL
//! clones onto every partition, present and future, so that writes made directly to a
//! partition are seen too.

use super::{pending, target};
use crate::event::Op;
use crate::pg::memory::RowMemory;
use pgrx::pg_sys;
use std::cell::RefCell;

#[pgrx::pg_schema]
pub mod realtime {
    use super::*;
    use pgrx::prelude::*;

    /// AFTER INSERT OR UPDATE OR DELETE ... FOR EACH ROW (partitioned tables)
    #[pg_trigger]
    fn capture_row<'a>(
        trigger: &'a pgrx::PgTrigger<'a>,
    ) -> Result<Option<PgHeapTuple<'a, pgrx::AllocatedByPostgres>>, std::convert::Infallible> {
        capture_row_event(trigger.trigger_data());
        Ok(None)
    }

    /// AFTER INSERT | UPDATE | DELETE ... REFERENCING ... FOR EACH STATEMENT (ordinary tables)
    #[pg_trigger]
    fn capture_rows<'a>(
        trigger: &'a pgrx::PgTrigger<'a>,
    ) -> Result<Option<PgHeapTuple<'a, pgrx::AllocatedByPostgres>>, std::convert::Infallible> {
        capture_statement(trigger.trigger_data());
        Ok(None)
    }

    /// AFTER TRUNCATE ... FOR EACH STATEMENT
    #[pg_trigger]
    fn capture_truncate<'a>(
        trigger: &'a pgrx::PgTrigger<'a>,
    ) -> Result<Option<PgHeapTuple<'a, pgrx::AllocatedByPostgres>>, std::convert::Infallible> {
        capture_row_event(trigger.trigger_data());
        Ok(None)
    }
}

thread_local! {
    /// Reused between rows: the rendered new and old images.
    static IMAGES: RefCell<(Vec<u8>, Vec<u8>)> = const { RefCell::new((Vec::new(), Vec::new())) };
}

fn op_of(td: &pg_sys::TriggerData) -> Op {
    match td.tg_event & pg_sys::TRIGGER_EVENT_OPMASK {
        pg_sys::TRIGGER_EVENT_INSERT => Op::Insert,
        pg_sys::TRIGGER_EVENT_UPDATE => Op::Update,
        pg_sys::TRIGGER_EVENT_DELETE => Op::Delete,
        _ => Op::Truncate,
    }
}

/// Render `tuple` (if any) into `out` with the target's format.
fn render<'o>(
    target: &target::Target,
    desc: pg_sys::TupleDesc,
    tuple: pg_sys::HeapTuple,
    out: &'o mut Vec<u8>,
) -> Option<&'o [u8]> {
    out.clear();
    if tuple.is_null() {
        return None;
    }
    target.format.render(tuple, desc, out);
    Some(out.as_slice())
}

fn capture_row_event(td: &pg_sys::TriggerData) {
    let op = op_of(td);
    // SAFETY: tg_trigger and tg_relation are valid for the trigger call.
    let is_clone = unsafe { (*td.tg_trigger).tgisclone };
    let target = target::resolve(td.tg_relation, is_clone);
    // SAFETY: tg_relation is valid for the trigger call.
    let desc = unsafe { (*td.tg_relation).rd_att };
    let (new, old) = match op {
        Op::Insert => (td.tg_trigtuple, std::ptr::null_mut()),
        Op::Update => (td.tg_newtuple, td.tg_trigtuple),
        Op::Delete => (std::ptr::null_mut(), td.tg_trigtuple),
        Op::Truncate | Op::Message => (std::ptr::null_mut(), std::ptr::null_mut()),
    };
    IMAGES.with(|images| {
        let (new_json, old_json) = &mut *images.borrow_mut();
        let new = render(&target, desc, new, new_json);
        let old = render(&target, desc, old, old_json);
        pending::push(op, &target, new, old);
    })
}

fn capture_statement(td: &pg_sys::TriggerData) {
    let op = op_of(td);
    let target = target::resolve(td.tg_relation, false);
    // SAFETY: tg_relation is valid for the trigger call.
    let desc = unsafe { (*td.tg_relation).rd_att };
    // For an UPDATE, the n-th old row and the n-th new row are the same row.
    let mut new_rows = Transition::open(td.tg_newtable, desc);
    let mut old_rows = Transition::open(td.tg_oldtable, desc);
    let memory = RowMemory::under_current();
    let mut shaped = false;
    IMAGES.with(|images| {
        let (new_json, old_json) = &mut *images.borrow_mut();
        loop {
            let new = new_rows.as_mut().and_then(Transition::next);
            let old = old_rows.as_mut().and_then(Transition::next);
            if new.is_none() && old.is_none() {
                break;
            }
            // SAFETY: the slots hold tuples of `desc` until the next fetch; all allocation happens in `memory`.
            memory.run(|| unsafe {
                if let Some(columns) = &target.columns {
                    if !shaped {
                        let mut shape = Vec::new();
                        crate::shape::encode(columns, &mut shape);
                        pending::push_shape(&target, &shape);
                        shaped = true;
                    }
                    let new = new.map(|slot| raw_tuple(slot, desc));
                    let old = old.map(|slot| raw_tuple(slot, desc));
                    pending::push_tuple(op, new, old);
                } else {
                    let heap = |slot: Option<*mut pg_sys::TupleTableSlot>| {
                        slot.map_or(std::ptr::null_mut(), |s| {
                            pg_sys::ExecFetchSlotHeapTuple(s, false, std::ptr::null_mut())
                        })
                    };
                    let new = render(&target, desc, heap(new), new_json);
                    let old = render(&target, desc, heap(old), old_json);
                    pending::push(op, &target, new, old);
                }
            });
        }
    })
}

/// A transition table's tuple as bytes the worker can read without this backend or its
/// relation cache: values stored out of line (TOAST) are fetched into the tuple (compressed
/// ones stay compressed), and a tuple stored before columns with defaults were added gets
/// those columns' values.
unsafe fn raw_tuple<'m>(slot: *mut pg_sys::TupleTableSlot, desc: pg_sys::TupleDesc) -> &'m [u8] {
    let mut should_free = false;
    let mut tuple = pg_sys::ExecFetchSlotMinimalTuple(slot, &mut should_free);
    let natts = (*desc).natts;
    if ((*tuple).t_infomask2 as u32 & pg_sys::HEAP_NATTS_MASK) < natts as u32 {
        pg_sys::slot_getsomeattrs_int(slot, natts);
        tuple =
            crate::pg::versions::form_minimal_tuple(desc, (*slot).tts_values, (*slot).tts_isnull);
    }
    if (*tuple).t_infomask as u32 & pg_sys::HEAP_HASEXTERNAL != 0 {
        let flat =
            crate::pg::toast_flatten_tuple(pg_sys::heap_tuple_from_minimal_tuple(tuple), desc);
        tuple = crate::pg::versions::minimal_from_heap(flat);
    }
    std::slice::from_raw_parts(tuple.cast(), (*tuple).t_len as usize)
}

/// Reads one transition table from the start, with a read pointer of its own: other AFTER
/// triggers of the statement read the same tuplestore.
struct Transition {
    store: *mut pg_sys::Tuplestorestate,
    pointer: std::ffi::c_int,
    slot: *mut pg_sys::TupleTableSlot,
}

impl Transition {
    fn open(store: *mut pg_sys::Tuplestorestate, desc: pg_sys::TupleDesc) -> Option<Transition> {
        if store.is_null() {
            return None;
        }
        // SAFETY: `store` is the trigger's transition tuplestore, valid for the trigger call; the slot is dropped with `self`.
        unsafe {
            let pointer =
                pg_sys::tuplestore_alloc_read_pointer(store, pg_sys::EXEC_FLAG_REWIND as _);
            pg_sys::tuplestore_select_read_pointer(store, pointer);
            pg_sys::tuplestore_rescan(store);
            let slot = pg_sys::MakeSingleTupleTableSlot(desc, &pg_sys::TTSOpsMinimalTuple);
            Some(Transition {
                store,
                pointer,
                slot,
            })
        }
    }

    /// The next row, valid until the next call.
    fn next(&mut self) -> Option<*mut pg_sys::TupleTableSlot> {
        // SAFETY: store, pointer and slot were set up by `open` for this trigger call.
        unsafe {
            pg_sys::tuplestore_select_read_pointer(self.store, self.pointer);
            pg_sys::tuplestore_gettupleslot(self.store, true, false, self.slot).then_some(self.slot)
        }
    }
}

impl Drop for Transition {
    fn drop(&mut self) {
        // SAFETY: the slot was made by `open` and is dropped once.
        unsafe { pg_sys::ExecDropSingleTupleTableSlot(self.slot) };
    }
}
