//! Subscription filters `column=op.value`, evaluated on the network threads with the same
//! result SQL's WHERE would give: numbers compare as exact decimals, timestamptz as instants,
//! text by code point (C collation), and a NULL never matches.

use crate::bridge::{FilterOp, FilterSpec, ResolvedFilter, ValueKind};
use bigdecimal::BigDecimal;
use serde_json::{Map, Value};
use std::cmp::Ordering;
use std::str::FromStr;

/// Parse `column=op.value` (for `in`: `column=in.(a,b,c)`).
pub fn parse(text: &str) -> Result<FilterSpec, String> {
    let (column, rest) = text
        .split_once('=')
        .ok_or("filter must look like column=op.value")?;
    let (op, value) = rest
        .split_once('.')
        .ok_or("filter must look like column=op.value")?;
    if column.is_empty() {
        return Err("filter names no column".into());
    }
    let op = match op {
        "eq" => FilterOp::Eq,
        "neq" => FilterOp::Neq,
        "lt" => FilterOp::Lt,
        "lte" => FilterOp::Lte,
        "gt" => FilterOp::Gt,
        "gte" => FilterOp::Gte,
        "in" => FilterOp::In,
        other => {
            return Err(format!(
                "unknown filter operator \"{other}\"; use eq, neq, lt, lte, gt, gte or in"
            ))
        }
    };
    let values = if op == FilterOp::In {
        let inner = value
            .strip_prefix('(')
            .and_then(|v| v.strip_suffix(')'))
            .ok_or("in takes a list: column=in.(a,b,c)")?;
        if inner.is_empty() {
            return Err("in takes at least one value".into());
        }
        split_list(inner)?
    } else {
        vec![value.to_string()]
    };
    Ok(FilterSpec {
        column: column.to_string(),
        op,
        values,
    })
}

/// Split `a, "b,c", d`: double quotes let a value hold a comma.
fn split_list(list: &str) -> Result<Vec<String>, String> {
    let mut values = Vec::new();
    let mut rest = list.trim_start();
    loop {
        let (value, after) = match rest.strip_prefix('"') {
            Some(quoted) => {
                let end = quoted.find('"').ok_or("unterminated quote in in.(...)")?;
                (&quoted[..end], quoted[end + 1..].trim_start())
            }
            None => {
                let end = rest.find(',').unwrap_or(rest.len());
                (rest[..end].trim_end(), &rest[end..])
            }
        };
        values.push(value.to_string());
        match after.strip_prefix(',') {
            Some(next) => rest = next.trim_start(),
            None if after.is_empty() => return Ok(values),
            None => return Err("expected a comma between values in in.(...)".into()),
        }
    }
}

/// Which operators a column kind supports.
pub fn check_op(kind: ValueKind, op: FilterOp) -> Result<(), String> {
    let ordering = matches!(
        op,
        FilterOp::Lt | FilterOp::Lte | FilterOp::Gt | FilterOp::Gte
    );
    if ordering && kind == ValueKind::Other {
        return Err("this column's type supports only eq, neq and in".into());
    }
    Ok(())
}

/// Comparable form of a JSON value of a given kind. Infinities and NaN sort as in PostgreSQL.
#[derive(PartialEq, Eq, PartialOrd, Ord, Debug)]
enum Key {
    NegInf,
    Number(BigDecimal),
    Instant(i64),
    Text(String),
    PosInf,
    NaN,
}

fn key(kind: ValueKind, v: &Value) -> Option<Key> {
    match (kind, v) {
        (_, Value::String(s)) if s == "-Infinity" || s == "-infinity" => Some(Key::NegInf),
        (_, Value::String(s)) if s == "Infinity" || s == "infinity" => Some(Key::PosInf),
        (ValueKind::Number, Value::String(s)) if s == "NaN" => Some(Key::NaN),
        (ValueKind::Number, Value::Number(n)) => {
            BigDecimal::from_str(&n.to_string()).ok().map(Key::Number)
        }
        (ValueKind::Instant, Value::String(s)) => chrono::DateTime::parse_from_rfc3339(s)
            .ok()
            .map(|t| Key::Instant(t.timestamp_micros())),
        (ValueKind::Text, Value::String(s)) => Some(Key::Text(s.clone())),
        _ => None,
    }
}

fn equal(kind: ValueKind, a: &Value, b: &Value) -> bool {
    match (key(kind, a), key(kind, b)) {
        (Some(x), Some(y)) => x == y,
        _ => a == b,
    }
}

pub fn matches(filter: &ResolvedFilter, row: Option<&Map<String, Value>>) -> bool {
    let Some(v) = row.and_then(|r| r.get(&filter.column)) else {
        return false;
    };
    if v.is_null() {
        return false;
    }
    let kind = filter.kind;
    match filter.op {
        FilterOp::Eq => equal(kind, v, &filter.values[0]),
        FilterOp::Neq => !equal(kind, v, &filter.values[0]),
        FilterOp::In => filter.values.iter().any(|f| equal(kind, v, f)),
        op => {
            let (Some(a), Some(b)) = (key(kind, v), key(kind, &filter.values[0])) else {
                return false;
            };
            let ord = a.cmp(&b);
            match op {
                FilterOp::Lt => ord == Ordering::Less,
                FilterOp::Lte => ord != Ordering::Greater,
                FilterOp::Gt => ord == Ordering::Greater,
                _ => ord != Ordering::Less,
            }
        }
    }
}

#[cfg(test)]
mod unit {
    use super::*;
    use serde_json::json;

    fn f(kind: ValueKind, op: FilterOp, values: Vec<Value>) -> ResolvedFilter {
        ResolvedFilter {
            column: "c".into(),
            op,
            kind,
            values,
        }
    }
    fn row(v: Value) -> Map<String, Value> {
        json!({ "c": v }).as_object().unwrap().clone()
    }

    #[test]
    fn parses_all_operators() {
        assert_eq!(parse("score=gte.0.5").unwrap().values, vec!["0.5"]);
        assert_eq!(
            parse("kind=in.(a,\"b,c\", d)").unwrap().values,
            vec!["a", "b,c", "d"]
        );
        assert!(parse("score").is_err());
        assert!(parse("score=like.x").is_err());
        assert!(parse("=eq.1").is_err());
        assert!(parse("a=in.()").is_err());
        assert!(parse("a=in.1,2").is_err());
    }

    #[test]
    fn numbers_compare_as_exact_decimals() {
        let big: Value = serde_json::from_str("12345678901234567890.000000000001").unwrap();
        let big_row = row(big.clone());
        let lower: Value = serde_json::from_str("12345678901234567890").unwrap();
        assert!(matches(
            &f(ValueKind::Number, FilterOp::Gt, vec![lower]),
            Some(&big_row)
        ));
        assert!(matches(
            &f(ValueKind::Number, FilterOp::Eq, vec![json!(2)]),
            Some(&row(json!(2.0)))
        ));
        assert!(matches(
            &f(ValueKind::Number, FilterOp::Lt, vec![json!(10)]),
            Some(&row(json!(9)))
        ));
        assert!(!matches(
            &f(ValueKind::Number, FilterOp::Lt, vec![json!(10)]),
            Some(&row(json!("NaN")))
        ));
    }

    #[test]
    fn instants_ignore_rendering_offset() {
        let filter = f(
            ValueKind::Instant,
            FilterOp::Eq,
            vec![json!("2026-01-01T00:00:00+00:00")],
        );
        assert!(matches(
            &filter,
            Some(&row(json!("2026-01-01T02:00:00+02:00")))
        ));
        let filter = f(
            ValueKind::Instant,
            FilterOp::Gt,
            vec![json!("2026-01-01T00:00:00+00:00")],
        );
        assert!(!matches(
            &filter,
            Some(&row(json!("2026-01-01T01:00:00+02:00")))
        ));
    }

    #[test]
    fn null_never_matches() {
        for op in [FilterOp::Eq, FilterOp::Neq, FilterOp::Lt, FilterOp::In] {
            assert!(!matches(
                &f(ValueKind::Number, op, vec![json!(1)]),
                Some(&row(Value::Null))
            ));
        }
        assert!(!matches(
            &f(ValueKind::Number, FilterOp::Neq, vec![json!(1)]),
            None
        ));
    }

    #[test]
    fn equality_only_kinds_refuse_ordering() {
        assert!(check_op(ValueKind::Other, FilterOp::Lt).is_err());
        assert!(check_op(ValueKind::Other, FilterOp::In).is_ok());
        assert!(matches(
            &f(ValueKind::Other, FilterOp::Eq, vec![json!(true)]),
            Some(&row(json!(true)))
        ));
    }
}
