//! The trigger functions attached by `realtime_watch()`. They run inside the writer's statement:
//! render the row with PostgreSQL's own `row_to_json` and append it to the pending buffer.

use super::{pending, target};
use crate::event::Op;
use pgrx::pg_sys;

#[pgrx::pg_schema]
pub mod realtime {
    use super::*;
    use pgrx::prelude::*;

    /// AFTER INSERT OR UPDATE OR DELETE ... FOR EACH ROW
    #[pg_trigger]
    fn capture_row<'a>(
        trigger: &'a pgrx::PgTrigger<'a>,
    ) -> Result<Option<PgHeapTuple<'a, pgrx::AllocatedByPostgres>>, std::convert::Infallible> {
        capture(trigger.trigger_data());
        Ok(None)
    }

    /// AFTER TRUNCATE ... FOR EACH STATEMENT
    #[pg_trigger]
    fn capture_truncate<'a>(
        trigger: &'a pgrx::PgTrigger<'a>,
    ) -> Result<Option<PgHeapTuple<'a, pgrx::AllocatedByPostgres>>, std::convert::Infallible> {
        capture(trigger.trigger_data());
        Ok(None)
    }
}

// The fmgr entry point itself (pg_sys only exposes a guarded wrapper).
unsafe extern "C-unwind" {
    fn row_to_json(fcinfo: pg_sys::FunctionCallInfo) -> pg_sys::Datum;
}

fn capture(td: &pg_sys::TriggerData) {
    let op = match td.tg_event & pg_sys::TRIGGER_EVENT_OPMASK {
        pg_sys::TRIGGER_EVENT_INSERT => Op::Insert,
        pg_sys::TRIGGER_EVENT_UPDATE => Op::Update,
        pg_sys::TRIGGER_EVENT_DELETE => Op::Delete,
        _ => Op::Truncate,
    };
    let is_clone = unsafe { (*td.tg_trigger).tgisclone };
    let target = target::resolve(td.tg_relation, is_clone);
    let desc = unsafe { (*td.tg_relation).rd_att };
    let (new, old) = match op {
        Op::Insert => (td.tg_trigtuple, std::ptr::null_mut()),
        Op::Update => (td.tg_newtuple, td.tg_trigtuple),
        Op::Delete => (std::ptr::null_mut(), td.tg_trigtuple),
        Op::Truncate => (std::ptr::null_mut(), std::ptr::null_mut()),
    };
    let new = row_json(new, desc);
    let old = row_json(old, desc);
    pending::push(op, &target, new.as_deref(), old.as_deref());
}

/// PostgreSQL's own JSON rendering of a row, so every type (numeric, timestamptz, jsonb,
/// arrays, composites, enums, bytea, types with casts to json) comes out as it would in SQL.
fn row_json(tuple: pg_sys::HeapTuple, desc: pg_sys::TupleDesc) -> Option<&'static [u8]> {
    if tuple.is_null() {
        return None;
    }
    unsafe {
        let row = pg_sys::heap_copy_tuple_as_datum(tuple, desc);
        let json = pg_sys::DirectFunctionCall1Coll(Some(row_to_json), pg_sys::InvalidOid, row);
        let text = pg_sys::pg_detoast_datum_packed(json.cast_mut_ptr());
        // The datum lives in the trigger's per-tuple memory context, reset after this call
        // returns; it is copied into the pending buffer before then.
        Some(pgrx::varlena::varlena_to_byte_slice(text))
    }
}
