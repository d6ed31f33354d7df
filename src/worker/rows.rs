//! Renders the raw tuples that statement triggers captured (see `shape`), on the worker's
//! Postgres thread. Output functions need a transaction: one is opened at the first shape of a
//! pass and closed by `finish`. An ERROR while rendering (say, a column's type was dropped
//! after the commit) aborts that transaction and comes back as an `Err`, so that the publisher
//! can report the rest of that transaction as a gap and carry on.

use crate::event::{EventRef, Op, ShapeRef, TupleRef};
use crate::pg::memory::RowMemory;
use crate::pg::xact::{catching, Transaction};
use crate::render::RenderError;
use crate::render::{Casts, RowFormat};
use crate::shape::{self, Settings};
use pgrx::pg_sys;
use std::collections::HashMap;
use std::panic::AssertUnwindSafe;
use std::rc::Rc;

/// Distinct shapes kept; past this the cache starts over (shapes change only with DDL or
/// with a writer's settings).
const MAX_PLANS: usize = 256;

struct Plan {
    settings: Settings,
    desc: pg_sys::TupleDesc,
    format: RowFormat,
}

impl Drop for Plan {
    fn drop(&mut self) {
        // SAFETY: the descriptor was made by plan_for and is freed once.
        unsafe { pg_sys::FreeTupleDesc(self.desc) };
    }
}

struct Current {
    relid: u32,
    schema: String,
    table: String,
    plan: Rc<Plan>,
}

pub struct Rows {
    plans: HashMap<Vec<u8>, Rc<Plan>>,
    current: Option<Current>,
    /// Open from the first shape of a pass to `finish`.
    transaction: Transaction,
    /// The worker's own settings, while a writer's are applied.
    saved: Option<Settings>,
    memory: RowMemory,
    new_json: Vec<u8>,
    old_json: Vec<u8>,
}

impl Rows {
    pub fn new() -> Rows {
        let memory = RowMemory::under_top();
        Rows {
            plans: HashMap::new(),
            current: None,
            transaction: Transaction::default(),
            saved: None,
            memory,
            new_json: Vec::new(),
            old_json: Vec::new(),
        }
    }

    /// The tuples that follow are of this shape.
    pub fn shape(&mut self, shape: &ShapeRef) -> Result<(), RenderError> {
        self.guarded(|rows| {
            rows.transaction.begin();
            let plan = match rows.plans.get(shape.shape) {
                Some(plan) => plan.clone(),
                None => {
                    let plan = Rc::new(plan_for(shape)?);
                    if rows.plans.len() >= MAX_PLANS {
                        rows.plans.clear();
                    }
                    rows.plans.insert(shape.shape.to_vec(), plan.clone());
                    plan
                }
            };
            if rows.saved.is_none() {
                rows.saved = Some(Settings::current());
            }
            plan.settings.apply()?;
            rows.current = Some(Current {
                relid: shape.relid,
                schema: shape.schema.to_string(),
                table: shape.table.to_string(),
                plan,
            });
            Ok(())
        })
    }

    /// Render a tuple of the current shape; `event` then hands out the change.
    pub fn render(&mut self, tuple: &TupleRef) -> Result<(), RenderError> {
        self.guarded(|rows| {
            let current = rows.current.as_ref().ok_or(RenderError::NoShape)?;
            for (image, out) in [
                (tuple.new, &mut rows.new_json),
                (tuple.old, &mut rows.old_json),
            ] {
                out.clear();
                let Some(bytes) = image else { continue };
                // A MinimalTuple starts with its length.
                if bytes.len() < 16 || bytes[..4] != (bytes.len() as u32).to_le_bytes() {
                    return Err(RenderError::DamagedRow);
                }
                // SAFETY: `bytes` was checked to be a MinimalTuple of its own length; the plan's descriptor matches the shape it was captured with.
                rows.memory.run(|| unsafe {
                    let heap = pg_sys::heap_tuple_from_minimal_tuple(bytes.as_ptr() as _);
                    current.plan.format.render(heap, current.plan.desc, out);
                });
            }
            Ok(())
        })
    }

    /// The change last rendered.
    pub fn event(&self, op: Op) -> Result<EventRef<'_>, RenderError> {
        let current = self.current.as_ref().ok_or(RenderError::NoShape)?;
        Ok(EventRef {
            op,
            relid: current.relid,
            schema: &current.schema,
            table: &current.table,
            new: utf8(&self.new_json, op != Op::Delete)?,
            old: utf8(&self.old_json, op != Op::Insert)?,
        })
    }

    /// End of a pass: the worker's own settings back, the transaction closed.
    pub fn finish(&mut self) {
        if let Some(settings) = self.saved.take() {
            // The worker's own time zone was valid when saved.
            let _ = settings.apply();
        }
        self.current = None;
        self.transaction.commit();
    }

    /// Run `f`; if it raises an ERROR, roll back and return the error's message.
    fn guarded(
        &mut self,
        f: impl FnOnce(&mut Rows) -> Result<(), RenderError>,
    ) -> Result<(), RenderError> {
        let result =
            catching(AssertUnwindSafe(|| f(self))).unwrap_or_else(|e| Err(RenderError::Raised(e)));
        if result.is_err() {
            self.transaction.abort();
            self.memory.reset();
            // Cached output-function state may be half-built.
            self.plans.clear();
            self.finish();
        }
        result
    }
}

fn utf8(json: &[u8], present: bool) -> Result<Option<&str>, RenderError> {
    match present {
        false => Ok(None),
        true => std::str::from_utf8(json)
            .map(Some)
            .map_err(|_| RenderError::NotUtf8),
    }
}

fn plan_for(shape: &ShapeRef) -> Result<Plan, RenderError> {
    let damaged = || RenderError::DamagedShape(shape.table.to_string());
    // SAFETY: on the worker's Postgres thread; the previous memory context is restored below.
    let (settings, desc) = unsafe {
        let previous = pg_sys::MemoryContextSwitchTo(pg_sys::TopMemoryContext);
        let decoded = shape::decode(shape.shape);
        pg_sys::MemoryContextSwitchTo(previous);
        decoded.ok_or_else(damaged)?
    };
    let format = RowFormat::new(desc, Casts::Ignore);
    let plan = Plan {
        settings,
        desc,
        format,
    };
    if !plan.format.deferrable() {
        return Err(RenderError::TypesChanged(shape.table.to_string()));
    }
    Ok(plan)
}
