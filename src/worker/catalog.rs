//! Answers the network threads' questions from the catalogs, on the worker's Postgres thread.
//! Each question runs in its own transaction; a Postgres error becomes an error reply.

use super::audiences::{Audiences, Condition};
use super::casts;
use super::policy::Policies;
use super::roles::{optional, role, Answer, Role};
use super::security::with_time_limit;
use crate::pg::xact::{in_subtransaction, in_transaction};
use pgrx::prelude::*;
use realtime_core::auth::Principal;
use realtime_core::bridge::{Request, ResolveError, Resolved, Target, WatchedTable};
use realtime_core::change::Topic;
use realtime_core::filter::{check_op, FilterOp, FilterSpec, Fold, ResolvedFilter, ValueKind};
use realtime_core::ops::{Op, OpSet};
use realtime_core::visibility::RowAccess;
use std::collections::HashSet;

/// Longest a catalog question may keep the worker from delivering changes: a domain CHECK
/// that sleeps is cancelled past it.
const REQUEST_TIME_LIMIT: std::time::Duration = std::time::Duration::from_millis(250);

/// Answer one question. `published`: the last position judged so far, where an audience
/// joined now begins.
pub fn answer(request: Request, audiences: &mut Audiences, published: u64) {
    match request {
        Request::Authorize { principal, reply } => {
            let answer = with_time_limit(REQUEST_TIME_LIMIT, || {
                in_transaction(|| role(&principal).map(|_| ()), ResolveError::Internal)
            });
            let _ = reply.send(answer);
        }
        Request::Resolve {
            target: Target::Channel(channel),
            principal,
            reply,
            ..
        } => {
            let answer = with_time_limit(REQUEST_TIME_LIMIT, || {
                in_transaction(
                    || resolve_channel(&channel, &principal),
                    ResolveError::Internal,
                )
            });
            let _ = reply.send(answer);
        }
        Request::Resolve {
            target: Target::Table(table),
            filter,
            principal,
            reply,
        } => {
            let answer = with_time_limit(REQUEST_TIME_LIMIT, || {
                in_transaction(
                    || resolve(&table, &filter, &principal),
                    ResolveError::Internal,
                )
            });
            // The audience is joined only once the answer stands (its transaction committed).
            let answer = answer.map(|(mut resolved, checked, seen)| {
                let relid = resolved.topic.relid().expect("a table's");
                super::invalidation::track(relid, seen);
                if let Some(Checked { role, condition }) = checked {
                    resolved.judged_after = published;
                    resolved.rows = RowAccess::Checked(audiences.join(
                        relid,
                        role,
                        &principal,
                        condition,
                        quote_name(&resolved.schema, &resolved.table),
                        pgrx::spi::quote_identifier(&resolved.table),
                    ));
                }
                resolved
            });
            // A session that left before the answer will not release its audience.
            if let Err(Ok(Resolved {
                rows: RowAccess::Checked(id),
                ..
            })) = reply.send(answer)
            {
                audiences.leave(id);
            }
        }
        Request::Tables { principal, reply } => {
            let answer = with_time_limit(REQUEST_TIME_LIMIT, || {
                in_transaction(|| readable_tables(&principal), ResolveError::Internal)
            });
            let _ = reply.send(answer);
        }
        Request::StartJudge { reply } => {
            let _ = reply.send(super::apart::launch().map_err(ResolveError::Internal));
        }
        Request::StartSnapshot { ticket, reply } => {
            let _ = reply.send(super::snapshot::launch(ticket).map_err(ResolveError::Internal));
        }
        Request::Release { audience } => audiences.leave(audience),
        // Taken by the main loop before questions are queued (`webhooks`).
        Request::Webhook(_) => {}
        Request::Judge {
            audience,
            mut changes,
            reply,
        } => {
            audiences.judge_one(audience, &mut changes);
            let _ = reply.send(Ok(changes));
        }
    }
}

/// A channel for a subscription by `principal`, if it may receive it (`topics`). Refused
/// alike whether the channel is unknown or only not readable.
fn resolve_channel(channel: &str, principal: &Principal) -> Answer<Resolved> {
    let role = role(principal)?;
    let rights = super::topics::rights(channel, &role, principal)?;
    if !rights.receive {
        return Err(ResolveError::UnknownChannel(channel.to_string()));
    }
    Ok(Resolved {
        topic: Topic::Channel(channel.into()),
        schema: String::new(),
        table: channel.to_string(),
        watched: OpSet::EMPTY.with(Op::Message),
        filter: Vec::new(),
        columns: None,
        rows: RowAccess::All,
        judged_after: 0,
        described: "[]".into(),
        rights: rights.room,
    })
}

/// Numbers in filters: at most this many significant digits and this decimal exponent.
/// (numeric itself allows 131,072 digits: one such value in an `in` list rendered 128 KiB.)
const MAX_FILTER_DIGITS: usize = 1000;
const MAX_FILTER_EXPONENT: i64 = 1000;

/// Most tables one `tables` answer lists.
const MAX_TABLES_LISTED: i64 = 1000;

/// The watched tables `principal`'s role may read at least one column of, by name.
fn readable_tables(principal: &Principal) -> Answer<Vec<WatchedTable>> {
    let role = role(principal)?;
    Spi::connect(|client| {
        let rows = client.select(
            "SELECT n.nspname::text, c.relname::text, bit_or(t.tgtype::int)
               FROM realtime.capture_triggers t
               JOIN pg_class c ON c.oid = t.tgrelid
               JOIN pg_namespace n ON n.oid = c.relnamespace
              WHERE has_any_column_privilege($1, c.oid, 'SELECT')
              GROUP BY 1, 2 ORDER BY 1, 2 LIMIT $2",
            None,
            &[role.oid.into(), MAX_TABLES_LISTED.into()],
        )?;
        rows.map(|row| {
            let tgtype = row.get::<i32>(3)?.unwrap_or(0);
            Ok(WatchedTable {
                schema: row.get::<String>(1)?.unwrap_or_default(),
                table: row.get::<String>(2)?.unwrap_or_default(),
                events: ops_of_tgtype(tgtype)
                    .iter()
                    .map(|op| op.name().to_string())
                    .collect(),
            })
        })
        .collect::<Result<Vec<_>, pgrx::spi::Error>>()
    })
    .map_err(|e| ResolveError::Internal(e.to_string()))
}

/// A subscription whose rows the worker judges in batches: as whom, and the policies' SQL.
struct Checked {
    role: pg_sys::Oid,
    condition: Condition,
}

fn resolve(
    table: &str,
    filter: &[FilterSpec],
    principal: &Principal,
) -> Answer<(Resolved, Option<Checked>, Option<String>)> {
    let unknown = || ResolveError::UnknownTable(table.to_string());
    // The name is read as SQL reads one (quotes, case folding); unqualified means public.
    // parse_ident raises on a malformed name: that too means "no such table".
    let parts = in_subtransaction(|| {
        Spi::get_one_with_args::<Vec<String>>("SELECT parse_ident($1)", &[table.into()])
            .ok()
            .flatten()
    })
    .ok()
    .flatten()
    .ok_or_else(unknown)?;
    let (schema, name) = match parts.as_slice() {
        [name] => ("public", name.as_str()),
        [schema, name] => (schema.as_str(), name.as_str()),
        _ => return Err(unknown()),
    };
    // System catalogs are not there as far as clients can tell.
    let found = optional(Spi::get_two_with_args::<i64, i32>(
        "SELECT c.oid::int8,
                (SELECT bit_or(t.tgtype::int) FROM realtime.capture_triggers t
                  WHERE t.tgrelid = c.oid)
           FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
          WHERE n.nspname = $1 AND c.relname = $2 AND c.relkind IN ('r', 'p')
            AND c.oid >= 16384
            AND n.nspname NOT IN ('pg_catalog', 'information_schema', 'pg_toast')",
        &[schema.into(), name.into()],
    ))?;
    let (Some(relid), tgtype) = found else {
        return Err(unknown());
    };
    let role = role(principal)?;
    let columns = readable_columns(relid, &role, table)?;
    let Some(tgtype) = tgtype else {
        return Err(ResolveError::NotWatched {
            table: format!("{schema}.{name}"),
            quoted: quote_name(schema, name),
        });
    };
    if let Some(columns) = &columns {
        if let Some(f) = filter.iter().find(|f| !columns.contains(&f.column)) {
            return Err(ResolveError::Forbidden(format!(
                "permission denied for column \"{}\"",
                f.column
            )));
        }
    }
    let filter = filter
        .iter()
        .map(|f| resolve_filter(relid, &role, principal, f))
        .collect::<Result<_, _>>()?;
    let (rows, checked) = row_access(relid, &role, principal)?;
    let seen = match super::invalidation::tracked(relid as u32) {
        true => None,
        false => optional(super::invalidation::fingerprint(relid as u32))?,
    };
    Ok((
        Resolved {
            topic: Topic::Table(relid as u32),
            schema: schema.to_string(),
            table: name.to_string(),
            watched: ops_of_tgtype(tgtype),
            filter,
            columns,
            rows,
            judged_after: 0,
            described: describe(relid, &role)?.into(),
            rights: Default::default(),
        },
        checked,
        seen,
    ))
}

/// The columns `role` may SELECT in attribute order, as a JSON array of `{"name", "type"}`.
fn describe(relid: i64, role: &Role) -> Answer<String> {
    let described = optional(Spi::get_one_with_args::<String>(
        "SELECT coalesce(json_agg(json_build_object('name', a.attname, 'type', t.typname)
                                  ORDER BY a.attnum), '[]')::text
           FROM pg_attribute a JOIN pg_type t ON t.oid = a.atttypid
          WHERE a.attrelid = $2::oid AND a.attnum > 0 AND NOT a.attisdropped
            AND has_column_privilege($1, $2::oid, a.attnum, 'SELECT')",
        &[role.oid.into(), relid.into()],
    ))?;
    Ok(described.unwrap_or_else(|| "[]".into()))
}

/// The columns `role` may SELECT: `None` for all (a table-level grant, or every column's),
/// refused as if `requested` did not exist if none.
fn readable_columns(relid: i64, role: &Role, requested: &str) -> Answer<Option<HashSet<String>>> {
    let (table_grant, columns, all) =
        optional(Spi::get_three_with_args::<bool, Vec<String>, i64>(
            "SELECT has_table_privilege($1, $2::oid, 'SELECT'),
                ARRAY(SELECT a.attname::text FROM pg_attribute a
                       WHERE a.attrelid = $2::oid AND a.attnum > 0 AND NOT a.attisdropped
                         AND has_column_privilege($1, $2::oid, a.attnum, 'SELECT')),
                (SELECT count(*) FROM pg_attribute a
                  WHERE a.attrelid = $2::oid AND a.attnum > 0 AND NOT a.attisdropped)",
            &[role.oid.into(), relid.into()],
        ))?;
    let columns = columns.unwrap_or_default();
    if table_grant == Some(true) || columns.len() as i64 == all.unwrap_or(0) {
        return Ok(None);
    }
    if columns.is_empty() {
        return Err(ResolveError::Unreadable(requested.to_string()));
    }
    Ok(Some(columns.into_iter().collect()))
}

/// Which rows `role` may see with these claims: all, a compiled rule, or judged here in
/// batches (`Checked`).
fn row_access(
    relid: i64,
    role: &Role,
    principal: &Principal,
) -> Answer<(RowAccess, Option<Checked>)> {
    let (enabled, forced, owner) = optional(Spi::get_three_with_args::<bool, bool, bool>(
        "SELECT relrowsecurity, relforcerowsecurity, pg_has_role($2, relowner, 'USAGE')
           FROM pg_class WHERE oid = $1::oid",
        &[relid.into(), role.oid.into()],
    ))?;
    // As check_enable_rls decides: off, or the role is exempt (BYPASSRLS, superuser, or the
    // owner unless FORCE ROW LEVEL SECURITY).
    if enabled != Some(true) || role.bypasses_rls || (owner == Some(true) && forced != Some(true)) {
        return Ok((RowAccess::All, None));
    }
    let relid = pg_sys::Oid::from(relid as u32);
    let policies = Policies::load(relid, role.oid).map_err(ResolveError::Internal)?;
    if let Some(rule) = policies
        .rule(role.oid, principal)
        .map_err(|e| ResolveError::Internal(format!("row security policy failed: {e}")))?
    {
        return Ok((RowAccess::Rule(std::sync::Arc::new(rule)), None));
    }
    // Joined by `answer` once the transaction committed.
    let checked = Checked {
        role: role.oid,
        condition: Condition {
            sql: policies.condition(),
            over_claims: policies.condition_over_claims(),
        },
    };
    Ok((RowAccess::Checked(0), Some(checked)))
}

/// `schema.table` as SQL text, quoted where needed.
fn quote_name(schema: &str, name: &str) -> String {
    format!(
        "{}.{}",
        pgrx::spi::quote_identifier(schema),
        pgrx::spi::quote_identifier(name)
    )
}

/// The events of a table's capture triggers, from their `pg_trigger.tgtype` bits.
fn ops_of_tgtype(tgtype: i32) -> OpSet {
    use pg_sys::{
        TRIGGER_TYPE_DELETE, TRIGGER_TYPE_INSERT, TRIGGER_TYPE_TRUNCATE, TRIGGER_TYPE_UPDATE,
    };
    [
        (TRIGGER_TYPE_INSERT, Op::Insert),
        (TRIGGER_TYPE_UPDATE, Op::Update),
        (TRIGGER_TYPE_DELETE, Op::Delete),
        (TRIGGER_TYPE_TRUNCATE, Op::Truncate),
    ]
    .into_iter()
    .filter(|(bit, _)| tgtype as u32 & bit != 0)
    .map(|(_, op)| op)
    .collect()
}

/// How a column's values compare, or why filters on it are refused.
fn kind_of(base: pg_sys::Oid, is_enum: bool, ordered_collation: Option<bool>) -> Option<ValueKind> {
    use pgrx::pg_sys::*;
    let text = |blank_padded| ValueKind::Text {
        ordered: ordered_collation.unwrap_or(true),
        blank_padded,
    };
    Some(match base {
        INT2OID | INT4OID | INT8OID | OIDOID | NUMERICOID | FLOAT4OID | FLOAT8OID => {
            ValueKind::Number
        }
        TIMESTAMPTZOID => ValueKind::Instant,
        TIMESTAMPOID => ValueKind::Timestamp,
        DATEOID => ValueKind::Date,
        TIMEOID => ValueKind::Time,
        TEXTOID | VARCHAROID | NAMEOID | UUIDOID => text(false),
        BPCHAROID => text(true),
        BOOLOID | CHAROID | INETOID | CIDROID | MACADDROID | MACADDR8OID | TIMETZOID | BITOID
        | VARBITOID => ValueKind::Exact,
        JSONBOID => ValueKind::Jsonb,
        _ if is_enum => ValueKind::Exact,
        _ => return None,
    })
}

fn resolve_filter(
    relid: i64,
    role: &Role,
    principal: &Principal,
    spec: &FilterSpec,
) -> Answer<ResolvedFilter> {
    // The collation decides whether text orders by code point (C, POSIX, C.UTF-8), and a
    // nondeterministic one makes even equality differ from the bytes.
    // And how it lowers letters, for ilike: ASCII only (libc's C, POSIX), Unicode's simple
    // mapping (glibc's UTF-8 locales but the Turkic ones, whose I and i differ), or unknown
    // (ICU, the builtin provider, other encodings): then ilike is refused.
    let column = optional(Spi::connect(|client| {
        let row = client
            .select(
                "WITH c AS (
                   SELECT format_type(a.atttypid, a.atttypmod) AS type_name, a.atttypid::int8 AS typid,
                          a.attcollation, co.collisdeterministic,
                          CASE WHEN co.oid = 100 THEN d.datlocprovider ELSE co.collprovider END AS provider,
                          CASE WHEN co.oid = 100 THEN d.datcollate ELSE co.collcollate END AS coll,
                          CASE WHEN co.oid = 100 THEN d.datctype ELSE co.collctype END AS ctype
                     FROM pg_attribute a
                     LEFT JOIN pg_collation co ON co.oid = a.attcollation
                     JOIN pg_database d ON d.datname = current_database()
                    WHERE a.attrelid = $1::oid AND a.attname = $2 AND a.attnum > 0
                      AND NOT a.attisdropped)
                 SELECT type_name, typid,
                        CASE WHEN attcollation = 0 THEN 'none'
                             WHEN NOT collisdeterministic THEN 'nondeterministic'
                             WHEN provider = 'c' AND coll IN ('C', 'POSIX', 'C.UTF-8', 'C.utf8')
                             THEN 'codepoint' ELSE 'other' END,
                        CASE WHEN provider = 'c' AND ctype IN ('C', 'POSIX') THEN 'ascii'
                             WHEN provider = 'c' AND getdatabaseencoding() = 'UTF8'
                              AND ctype ~* '\\.utf-?8$' AND ctype !~ '^(tr|az|crh)_'
                             THEN 'unicode' ELSE 'unknown' END
                   FROM c",
                None,
                &[relid.into(), spec.column.as_str().into()],
            )?
            .first();
        Ok::<_, pgrx::spi::Error>((
            row.get::<String>(1)?,
            row.get::<i64>(2)?,
            row.get::<String>(3)?,
            row.get::<String>(4)?,
        ))
    }))?;
    let (Some(type_name), Some(typid), Some(collation), Some(folding)) = column else {
        return Err(ResolveError::UnknownColumn(spec.column.clone()));
    };
    // SAFETY: syscache lookups on the worker's Postgres thread, inside a transaction.
    let (base, is_enum) = unsafe {
        let base = pg_sys::getBaseType(pg_sys::Oid::from(typid as u32));
        (base, pg_sys::type_is_enum(base))
    };
    let refuse = |why: String| ResolveError::FilterRefused {
        column: spec.column.clone(),
        why,
    };
    if collation == "nondeterministic" {
        return Err(refuse(
            "filters are not supported on text with a nondeterministic collation".into(),
        ));
    }
    let ordered = match collation.as_str() {
        "none" => None,
        c => Some(c == "codepoint"),
    };
    let Some(kind) = kind_of(base, is_enum, ordered) else {
        return Err(refuse(format!(
            "filters are not supported on type {type_name}: its values do not compare as their text does"
        )));
    };
    check_op(kind, spec.op).map_err(|e| refuse(e.to_string()))?;
    // In a row, a jsonb null and an SQL NULL both render as null: only `eq` and `in` give
    // SQL's answer for both.
    if kind == ValueKind::Jsonb && (spec.negated || !matches!(spec.op, FilterOp::Eq | FilterOp::In))
    {
        return Err(refuse(
            "jsonb filters take eq or in with non-null values (a jsonb null cannot be told from an SQL NULL)".into(),
        ));
    }
    // Patterns match text types (not uuid, not blank-padded char, whose padding LIKE sees);
    // `is true` and `is false`, booleans.
    let textual = matches!(base, pg_sys::TEXTOID | pg_sys::VARCHAROID | pg_sys::NAMEOID);
    let fold = match (spec.op, folding.as_str()) {
        (FilterOp::Like | FilterOp::ILike, _) if !textual => {
            return Err(refuse(format!("like and ilike take text, not {type_name}")))
        }
        (FilterOp::ILike, "ascii") => Some(Fold::Ascii),
        (FilterOp::ILike, "unicode") => Some(Fold::Unicode),
        (FilterOp::ILike, _) => {
            return Err(refuse(
                "ilike is not supported under this column's collation (how it lowers letters is not known here); use like".into(),
            ))
        }
        (FilterOp::Is, _) if spec.values[0] != "null" && base != pg_sys::BOOLOID => {
            return Err(refuse(format!("is {} takes a boolean column", spec.values[0])))
        }
        _ => None,
    };
    if spec.op == FilterOp::Is {
        return Ok(ResolvedFilter {
            column: spec.column.clone(),
            op: spec.op,
            negated: spec.negated,
            kind,
            values: vec![spec.values[0].clone().into()],
            fold,
        });
    }
    if kind == ValueKind::Number {
        if let Some(v) = spec.values.iter().find(|v| !modest_number(v)) {
            return Err(ResolveError::FilterValue(format!(
                "\"{}\": numbers in filters may have at most {MAX_FILTER_DIGITS} digits and an exponent within ±{MAX_FILTER_EXPONENT}",
                shorten(v)
            )));
        }
    }
    let values = render_values(role, principal, &type_name, &spec.values)?;
    if kind == ValueKind::Jsonb && values.iter().any(|v| v.is_null()) {
        return Err(refuse(
            "jsonb filters take eq or in with non-null values (a jsonb null cannot be told from an SQL NULL)".into(),
        ));
    }
    Ok(ResolvedFilter {
        column: spec.column.clone(),
        op: spec.op,
        negated: spec.negated,
        kind,
        values,
        fold,
    })
}

/// Whether a number's text is within the filter bounds (or not a number at all: then its
/// type's input function says what is wrong with it).
fn modest_number(v: &str) -> bool {
    let digits = v.bytes().filter(u8::is_ascii_digit).count();
    let exponent = v
        .split_once(['e', 'E'])
        .map_or(Some(0), |(_, e)| e.trim().parse::<i64>().ok());
    digits <= MAX_FILTER_DIGITS && exponent.is_none_or(|e| e.abs() <= MAX_FILTER_EXPONENT)
}

fn shorten(v: &str) -> String {
    match v.char_indices().nth(40) {
        Some((i, _)) => format!("{}...", &v[..i]),
        None => v.to_string(),
    }
}

/// Let the column's own type check and render each value, exactly as the row will be. Input
/// functions, domain CHECKs and casts to json run as the subscriber, as its own `WHERE col =
/// 'value'` would run them in SQL, never as the worker's superuser or the table's owner.
fn render_values(
    role: &Role,
    principal: &Principal,
    type_name: &str,
    values: &[String],
) -> Answer<Vec<serde_json::Value>> {
    values
        .iter()
        .map(|v| {
            casts::render(type_name, v, role.oid, &principal.claims).map_err(|why| {
                ResolveError::FilterValue(format!(
                    "\"{}\" is not a valid {type_name}: {why}",
                    shorten(v)
                ))
            })
        })
        .collect()
}
