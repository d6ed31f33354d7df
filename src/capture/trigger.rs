//! The trigger functions attached by `realtime_watch()`. They run inside the writer's statement:
//! render the row as `row_to_json` would and append it to the pending buffer.

use super::{pending, target};
use crate::event::Op;
use pgrx::pg_sys;
use std::cell::RefCell;

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

thread_local! {
    /// Reused between rows: the rendered new and old images.
    static IMAGES: RefCell<(Vec<u8>, Vec<u8>)> = const { RefCell::new((Vec::new(), Vec::new())) };
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
    IMAGES.with(|images| {
        let (new_json, old_json) = &mut *images.borrow_mut();
        let render = |tuple: pg_sys::HeapTuple, out: &mut Vec<u8>| {
            out.clear();
            (!tuple.is_null()).then(|| target.format.render(tuple, desc, out))
        };
        let new = render(new, new_json).map(|()| new_json.as_slice());
        let old = render(old, old_json).map(|()| old_json.as_slice());
        pending::push(op, &target, new, old);
    })
}
