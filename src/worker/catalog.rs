//! Answers the network threads' questions from the catalogs, on the worker's Postgres thread.
//! Each question runs in its own transaction; a Postgres error becomes an error reply.

use crate::bridge::{FilterSpec, Request, ResolvedFilter, ResolvedTable, ValueKind};
use crate::net::filter::check_op;
use crate::protocol::ErrorCode;
use pgrx::prelude::*;

type Answer<T> = Result<T, (ErrorCode, String)>;

/// pgrx reports "no row" as an error; here it is an answer.
fn optional<T: Default>(result: Result<T, pgrx::spi::Error>) -> Answer<T> {
    match result {
        Ok(v) => Ok(v),
        Err(pgrx::spi::Error::InvalidPosition) => Ok(T::default()),
        Err(e) => Err((ErrorCode::Internal, e.to_string())),
    }
}

pub fn answer(request: Request) {
    match request {
        Request::Resolve {
            table,
            filter,
            reply,
        } => {
            let _ = reply.send(in_transaction(|| resolve(&table, filter.as_ref())));
        }
    }
}

/// Run `f` in a transaction of its own; an ERROR it raises is rolled back and returned.
fn in_transaction<T>(f: impl FnOnce() -> Answer<T> + std::panic::UnwindSafe) -> Answer<T> {
    unsafe {
        pg_sys::SetCurrentStatementStartTimestamp();
        pg_sys::StartTransactionCommand();
        pg_sys::PushActiveSnapshot(pg_sys::GetTransactionSnapshot());
    }
    let result = PgTryBuilder::new(f)
        .catch_others(|e| Err((ErrorCode::Internal, crate::error::message(&e))))
        .execute();
    unsafe {
        if result.is_ok() {
            pg_sys::PopActiveSnapshot();
            pg_sys::CommitTransactionCommand();
        } else {
            pg_sys::AbortCurrentTransaction();
        }
    }
    result
}

/// Run `f` in a subtransaction, as a PL/pgSQL EXCEPTION block does: an ERROR it raises is
/// rolled back and becomes `None`, and the surrounding transaction carries on.
fn in_subtransaction<T>(f: impl FnOnce() -> Option<T> + std::panic::UnwindSafe) -> Option<T> {
    unsafe {
        let context = pg_sys::CurrentMemoryContext;
        let owner = pg_sys::CurrentResourceOwner;
        pg_sys::BeginInternalSubTransaction(std::ptr::null());
        pg_sys::MemoryContextSwitchTo(context);
        let result = PgTryBuilder::new(f).catch_others(|_| None).execute();
        if result.is_some() {
            pg_sys::ReleaseCurrentSubTransaction();
        } else {
            pg_sys::RollbackAndReleaseCurrentSubTransaction();
        }
        pg_sys::MemoryContextSwitchTo(context);
        pg_sys::CurrentResourceOwner = owner;
        result
    }
}

fn resolve(table: &str, filter: Option<&FilterSpec>) -> Answer<ResolvedTable> {
    let unknown = || {
        (
            ErrorCode::UnknownTable,
            format!("table \"{table}\" does not exist"),
        )
    };
    // to_regclass raises on malformed names ("a.b.c.d"); that too means "no such table".
    let found = in_subtransaction(|| {
        Spi::get_three_with_args::<i64, String, String>(
            "SELECT c.oid::int8, n.nspname::text, c.relname::text
               FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
              WHERE c.oid = to_regclass($1)",
            &[table.into()],
        )
        .ok()
    });
    let Some((Some(relid), Some(schema), Some(name))) = found else {
        return Err(unknown());
    };
    let tgtype = optional(Spi::get_one_with_args::<i32>(
        "SELECT tgtype FROM realtime.watched WHERE tbl = $1::oid",
        &[relid.into()],
    ))?;
    let Some(tgtype) = tgtype else {
        return Err((
            ErrorCode::TableNotWatched,
            format!("table \"{schema}.{name}\" is not watched; run SELECT realtime_watch('{schema}.{name}')"),
        ));
    };
    let filter = filter.map(|f| resolve_filter(relid, f)).transpose()?;
    Ok(ResolvedTable {
        relid: relid as u32,
        schema,
        table: name,
        watched_ops: ops_of_tgtype(tgtype),
        filter,
    })
}

fn ops_of_tgtype(tgtype: i32) -> u8 {
    use crate::event::Op;
    [
        (4, Op::Insert),
        (16, Op::Update),
        (8, Op::Delete),
        (32, Op::Truncate),
    ]
    .into_iter()
    .filter(|(bit, _)| tgtype & bit != 0)
    .fold(0, |ops, (_, op)| ops | op.bit())
}

fn resolve_filter(relid: i64, spec: &FilterSpec) -> Answer<ResolvedFilter> {
    let column = optional(Spi::get_three_with_args::<i64, String, String>(
        "SELECT a.atttypid::int8, t.typcategory::text, format_type(a.atttypid, a.atttypmod)
           FROM pg_attribute a JOIN pg_type t ON t.oid = a.atttypid
          WHERE a.attrelid = $1::oid AND a.attname = $2 AND a.attnum > 0 AND NOT a.attisdropped",
        &[relid.into(), spec.column.as_str().into()],
    ))?;
    let (Some(typid), Some(category), Some(type_name)) = column else {
        return Err((
            ErrorCode::UnknownColumn,
            format!("column \"{}\" does not exist", spec.column),
        ));
    };
    let kind = match (typid, category.as_str()) {
        (1184, _) => ValueKind::Instant,
        (_, "N") => ValueKind::Number,
        (_, "S") | (2950, _) | (1082 | 1083 | 1114, _) => ValueKind::Text,
        _ => ValueKind::Other,
    };
    check_op(kind, spec.op).map_err(|m| {
        (
            ErrorCode::InvalidFilter,
            format!("column \"{}\": {m}", spec.column),
        )
    })?;
    // Let the column's own type check and render each value, exactly as the row will be.
    let sql = format!("SELECT to_json(CAST($1 AS {type_name}))::text");
    let values = spec
        .values
        .iter()
        .map(|v| {
            in_subtransaction(|| {
                Spi::get_one_with_args::<String>(&sql, &[v.as_str().into()])
                    .ok()
                    .flatten()
            })
            .and_then(|json| serde_json::from_str(&json).ok())
            .ok_or_else(|| {
                (
                    ErrorCode::InvalidFilterValue,
                    format!("\"{v}\" is not a valid {type_name}"),
                )
            })
        })
        .collect::<Answer<Vec<_>>>()?;
    Ok(ResolvedFilter {
        column: spec.column.clone(),
        op: spec.op,
        kind,
        values,
    })
}
