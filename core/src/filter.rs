//! Subscription filters `column=op.value`, evaluated on the network threads with the same
//! result SQL's `WHERE column op 'value'` gives. Each column type the worker accepts a filter on
//! has a comparison key here that orders exactly as the type does: numbers as exact decimals,
//! timestamps and dates as instants on the proleptic calendar (BC years, years past 9999,
//! offsets with seconds, infinities), text by code point where the column's collation orders
//! that way, jsonb by its own equality. Types whose values do not compare as their text does
//! and that have no key here are refused by the worker, never answered differently from SQL.
//!
//! Filter values are turned into keys once, at subscribe; a row value costs one linear parse.

use serde_json::{Map, Value};
use std::cmp::Ordering;

/// A filter as the client wrote it: `column=op.value`.
#[derive(Clone, Debug, PartialEq)]
pub struct FilterSpec {
    pub column: String,
    pub op: FilterOp,
    pub values: Vec<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FilterOp {
    Eq,
    Neq,
    Lt,
    Lte,
    Gt,
    Gte,
    In,
}

/// How values of a column compare, decided by the worker from its SQL type and collation.
/// Types not listed have no kind: filters on them are refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ValueKind {
    /// int2/4/8, numeric, float4/8, oid: exact decimals; NaN above Infinity.
    Number,
    /// timestamptz: instants, whatever offset a writer's TimeZone rendered.
    Instant,
    /// timestamp without time zone.
    Timestamp,
    Date,
    /// time without time zone.
    Time,
    /// text, varchar, bpchar, name, uuid. `ordered`: the collation orders by code point, so
    /// lt/gt agree with SQL; `blank_padded`: bpchar, whose trailing spaces do not count.
    Text {
        ordered: bool,
        blank_padded: bool,
    },
    /// bool, enums, inet, cidr, macaddr, timetz, bit, "char": equality only, and their
    /// rendering is canonical (equal text iff equal values).
    Exact,
    /// jsonb: equality as jsonb defines it.
    Jsonb,
}

impl ValueKind {
    /// Whether lt/lte/gt/gte agree with SQL for this kind.
    pub fn ordered(self) -> bool {
        match self {
            ValueKind::Number
            | ValueKind::Instant
            | ValueKind::Timestamp
            | ValueKind::Date
            | ValueKind::Time => true,
            ValueKind::Text { ordered, .. } => ordered,
            ValueKind::Exact | ValueKind::Jsonb => false,
        }
    }
}

/// A filter whose column and values Postgres has checked: values are the column type's own
/// JSON rendering of what the client wrote (`to_json(value::type)`).
#[derive(Clone, Debug)]
pub struct ResolvedFilter {
    pub column: String,
    pub op: FilterOp,
    pub kind: ValueKind,
    pub values: Vec<serde_json::Value>,
}

/// Why a filter is refused before any value is looked at.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FilterError {
    #[error("filter must look like column=op.value")]
    Shape,
    #[error("filter names no column")]
    NoColumn,
    #[error("unknown filter operator \"{0}\"; use eq, neq, lt, lte, gt, gte or in")]
    UnknownOperator(String),
    #[error("in takes a list: column=in.(a,b,c)")]
    NotAList,
    #[error("in takes at least one value")]
    EmptyList,
    #[error("in takes at most {MAX_IN_VALUES} values")]
    TooManyValues,
    #[error("unterminated quote in in.(...)")]
    UnterminatedQuote,
    #[error("expected a comma between values in in.(...)")]
    MissingComma,
    #[error("the column's collation does not order text by code point; use eq, neq or in")]
    UnorderedText,
    #[error("this column's type supports only eq, neq and in")]
    Unordered,
    /// The worker rendered a value this side cannot read back: a bug, not bad input.
    #[error("unreadable filter value {0}")]
    Unreadable(String),
}

/// Most values an `in` list may hold.
pub const MAX_IN_VALUES: usize = 100;

/// Parse `column=op.value` (for `in`: `column=in.(a,b,c)`).
pub fn parse(text: &str) -> Result<FilterSpec, FilterError> {
    let (column, rest) = text.split_once('=').ok_or(FilterError::Shape)?;
    let (op, value) = rest.split_once('.').ok_or(FilterError::Shape)?;
    if column.is_empty() {
        return Err(FilterError::NoColumn);
    }
    let op = match op {
        "eq" => FilterOp::Eq,
        "neq" => FilterOp::Neq,
        "lt" => FilterOp::Lt,
        "lte" => FilterOp::Lte,
        "gt" => FilterOp::Gt,
        "gte" => FilterOp::Gte,
        "in" => FilterOp::In,
        other => return Err(FilterError::UnknownOperator(other.to_string())),
    };
    let values = if op == FilterOp::In {
        let inner = value
            .strip_prefix('(')
            .and_then(|v| v.strip_suffix(')'))
            .ok_or(FilterError::NotAList)?;
        if inner.is_empty() {
            return Err(FilterError::EmptyList);
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
fn split_list(list: &str) -> Result<Vec<String>, FilterError> {
    let mut values = Vec::new();
    let mut rest = list.trim_start();
    loop {
        if values.len() == MAX_IN_VALUES {
            return Err(FilterError::TooManyValues);
        }
        let (value, after) = match rest.strip_prefix('"') {
            Some(quoted) => {
                let end = quoted.find('"').ok_or(FilterError::UnterminatedQuote)?;
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
            None => return Err(FilterError::MissingComma),
        }
    }
}

/// Which operators a column kind supports.
pub fn check_op(kind: ValueKind, op: FilterOp) -> Result<(), FilterError> {
    let ordering = matches!(
        op,
        FilterOp::Lt | FilterOp::Lte | FilterOp::Gt | FilterOp::Gte
    );
    if ordering && !kind.ordered() {
        return Err(match kind {
            ValueKind::Text { .. } => FilterError::UnorderedText,
            _ => FilterError::Unordered,
        });
    }
    Ok(())
}

/// Whether two JSON numbers are equal as exact decimals.
pub fn numbers_equal(a: &str, b: &str) -> bool {
    match (Decimal::parse(a), Decimal::parse(b)) {
        (Some(x), Some(y)) => x == y,
        _ => a == b,
    }
}

/// A filter ready to be matched: its values already turned into keys.
#[derive(Debug)]
pub struct Compiled {
    column: String,
    op: FilterOp,
    kind: ValueKind,
    keys: Vec<Key>,
}

impl Compiled {
    /// Fails if the worker's rendering of a value cannot be read back (a bug, not bad input).
    pub fn new(filter: ResolvedFilter) -> Result<Compiled, FilterError> {
        if filter.values.is_empty() {
            return Err(FilterError::EmptyList);
        }
        let keys = filter
            .values
            .iter()
            .map(|v| key(filter.kind, v).ok_or_else(|| FilterError::Unreadable(v.to_string())))
            .collect::<Result<_, _>>()?;
        Ok(Compiled {
            column: filter.column,
            op: filter.op,
            kind: filter.kind,
            keys,
        })
    }

    /// Whether `row` satisfies the filter. A missing column, a NULL, or a value that cannot be
    /// read as the column's type never matches, as NULL never satisfies a WHERE.
    pub fn matches(&self, row: Option<&Map<String, Value>>) -> bool {
        let Some(v) = row.and_then(|r| r.get(&self.column)) else {
            return false;
        };
        if v.is_null() {
            return false;
        }
        let Some(k) = key(self.kind, v) else {
            return false;
        };
        let first = &self.keys[0];
        match self.op {
            FilterOp::Eq => k == *first,
            FilterOp::Neq => k != *first,
            FilterOp::In => self.keys.contains(&k),
            FilterOp::Lt => k.cmp(first) == Ordering::Less,
            FilterOp::Lte => k.cmp(first) != Ordering::Greater,
            FilterOp::Gt => k.cmp(first) == Ordering::Greater,
            FilterOp::Gte => k.cmp(first) != Ordering::Less,
        }
    }
}

/// Comparable form of a rendered value. Keys of one filter are all of the column's kind.
#[derive(Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Key {
    /// Numbers: -Infinity < finite < Infinity < NaN, as PostgreSQL sorts numeric and float.
    Number(Bound<Decimal>),
    /// Microseconds (timestamps, times) or days (dates) on one time line; ±infinity at the ends.
    Time(Bound<i64>),
    Text(String),
    /// Equality-only kinds whose rendering is canonical: equal JSON means equal values.
    Exact(String),
    /// jsonb: equal as jsonb compares (numbers as numerics, object keys unordered).
    Jsonb(JsonbKey),
}

#[derive(Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Bound<T> {
    NegInf,
    Finite(T),
    PosInf,
    NaN,
}

fn key(kind: ValueKind, v: &Value) -> Option<Key> {
    let text = v.as_str();
    let time = |parse: fn(&str) -> Option<i64>| -> Option<Key> {
        Some(Key::Time(match text? {
            "infinity" => Bound::PosInf,
            "-infinity" => Bound::NegInf,
            s => Bound::Finite(parse(s)?),
        }))
    };
    match kind {
        ValueKind::Number => Some(Key::Number(match v {
            Value::Number(n) => Bound::Finite(Decimal::parse(&n.to_string())?),
            Value::String(s) => match s.as_str() {
                "NaN" => Bound::NaN,
                "Infinity" => Bound::PosInf,
                "-Infinity" => Bound::NegInf,
                // oid renders as a JSON string.
                digits => Bound::Finite(Decimal::parse(digits)?),
            },
            _ => return None,
        })),
        ValueKind::Instant => time(parse_timestamp_tz),
        ValueKind::Timestamp => time(parse_timestamp),
        ValueKind::Date => time(parse_date),
        ValueKind::Time => time(parse_time),
        ValueKind::Text { blank_padded, .. } => {
            let s = text?;
            // bpchar ignores trailing spaces when comparing.
            let s = if blank_padded {
                s.trim_end_matches(' ')
            } else {
                s
            };
            Some(Key::Text(s.to_string()))
        }
        ValueKind::Exact => Some(Key::Exact(v.to_string())),
        ValueKind::Jsonb => Some(Key::Jsonb(JsonbKey::new(v)?)),
    }
}

/// An exact decimal: `0.d1d2d3... × 10^exponent` with no leading or trailing zero digits.
/// Comparing two is linear in their digits, whatever their exponents: no big-number arithmetic.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Decimal {
    negative: bool,
    /// Significant digits as ASCII; empty for zero.
    digits: Vec<u8>,
    exponent: i64,
}

impl Decimal {
    /// Parses JSON number grammar (what PostgreSQL renders numbers as).
    fn parse(s: &str) -> Option<Decimal> {
        let (negative, s) = match s.strip_prefix('-') {
            Some(rest) => (true, rest),
            None => (false, s),
        };
        let (mantissa, exp) = match s.find(['e', 'E']) {
            Some(i) => (&s[..i], s[i + 1..].parse::<i64>().ok()?),
            None => (s, 0),
        };
        let (int, frac) = mantissa.split_once('.').unwrap_or((mantissa, ""));
        if int.is_empty() || !int.bytes().chain(frac.bytes()).all(|b| b.is_ascii_digit()) {
            return None;
        }
        let all: Vec<u8> = int.bytes().chain(frac.bytes()).collect();
        let lead = all.iter().take_while(|&&b| b == b'0').count();
        if lead == all.len() {
            return Some(Decimal {
                negative: false,
                digits: Vec::new(),
                exponent: 0,
            });
        }
        let trail = all.iter().rev().take_while(|&&b| b == b'0').count();
        Some(Decimal {
            negative,
            digits: all[lead..all.len() - trail].to_vec(),
            exponent: (int.len() as i64 - lead as i64).checked_add(exp)?,
        })
    }

    fn sign(&self) -> i8 {
        match (self.digits.is_empty(), self.negative) {
            (true, _) => 0,
            (false, true) => -1,
            (false, false) => 1,
        }
    }
}

impl Ord for Decimal {
    fn cmp(&self, other: &Decimal) -> Ordering {
        let by_sign = self.sign().cmp(&other.sign());
        if by_sign != Ordering::Equal || self.sign() == 0 {
            return by_sign;
        }
        let magnitude = self
            .exponent
            .cmp(&other.exponent)
            .then_with(|| self.digits.cmp(&other.digits));
        if self.negative {
            magnitude.reverse()
        } else {
            magnitude
        }
    }
}

impl PartialOrd for Decimal {
    fn partial_cmp(&self, other: &Decimal) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

/// jsonb values compare equal when their structure is equal and their numbers are equal as
/// numerics (`{"a":1}` = `{"a":1.0}`); object keys are already sorted (serde_json's map).
#[derive(Debug, PartialEq, Eq, PartialOrd, Ord)]
enum JsonbKey {
    Null,
    String(String),
    Number(Decimal),
    Bool(bool),
    Array(Vec<JsonbKey>),
    Object(Vec<(String, JsonbKey)>),
}

impl JsonbKey {
    fn new(v: &Value) -> Option<JsonbKey> {
        Some(match v {
            Value::Null => JsonbKey::Null,
            Value::Bool(b) => JsonbKey::Bool(*b),
            Value::String(s) => JsonbKey::String(s.clone()),
            Value::Number(n) => JsonbKey::Number(Decimal::parse(&n.to_string())?),
            Value::Array(a) => JsonbKey::Array(a.iter().map(JsonbKey::new).collect::<Option<_>>()?),
            Value::Object(o) => JsonbKey::Object(
                o.iter()
                    .map(|(k, v)| Some((k.clone(), JsonbKey::new(v)?)))
                    .collect::<Option<_>>()?,
            ),
        })
    }
}

/// Reads the leading digits of `s` as a number; returns it and the rest.
fn number(s: &str) -> Option<(i64, &str)> {
    let end = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    if end == 0 || end > 12 {
        return None;
    }
    Some((s[..end].parse().ok()?, &s[end..]))
}

fn expect<'a>(s: &'a str, prefix: &str) -> Option<&'a str> {
    s.strip_prefix(prefix)
}

/// Days from 1970-01-01 of a proleptic Gregorian date (astronomical year: 1 BC is year 0).
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// `YYYY-MM-DD` (the year may be longer) as days; returns them and the rest. `bc`: the value
/// ended in ` BC`, so its year Y is astronomical year 1 - Y.
fn date_part(s: &str, bc: bool) -> Option<(i64, &str)> {
    let (year, s) = number(s)?;
    let (month, s) = number(expect(s, "-")?)?;
    let (day, s) = number(expect(s, "-")?)?;
    if !(1..=12).contains(&month) || !(1..=31).contains(&day) {
        return None;
    }
    let year = if bc { 1 - year } else { year };
    Some((days_from_civil(year, month, day), s))
}

/// `HH:MM:SS[.ffffff]` as microseconds; returns it and the rest.
fn time_part(s: &str) -> Option<(i64, &str)> {
    let (h, s) = number(s)?;
    let (m, s) = number(expect(s, ":")?)?;
    let (sec, mut s) = number(expect(s, ":")?)?;
    let mut micros = 0;
    if let Some(frac) = s.strip_prefix('.') {
        let end = frac
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(frac.len());
        if end == 0 || end > 6 {
            return None;
        }
        micros = frac[..end].parse::<i64>().ok()? * 10i64.pow(6 - end as u32);
        s = &frac[end..];
    }
    Some((((h * 60 + m) * 60 + sec) * 1_000_000 + micros, s))
}

fn split_bc(s: &str) -> (&str, bool) {
    match s.strip_suffix(" BC") {
        Some(rest) => (rest, true),
        None => (s, false),
    }
}

fn parse_date(s: &str) -> Option<i64> {
    let (s, bc) = split_bc(s);
    let (days, rest) = date_part(s, bc)?;
    rest.is_empty().then_some(days)
}

/// `YYYY-MM-DDTHH:MM:SS[.f]`, the rest handed to `zone`.
fn parse_datetime(s: &str, zone: impl Fn(&str) -> Option<i64>) -> Option<i64> {
    let (s, bc) = split_bc(s);
    let (days, rest) = date_part(s, bc)?;
    let (micros, rest) = time_part(expect(rest, "T")?)?;
    let offset = zone(rest)?;
    days.checked_mul(86_400_000_000)?
        .checked_add(micros)?
        .checked_sub(offset)
}

fn parse_timestamp(s: &str) -> Option<i64> {
    parse_datetime(s, |rest| rest.is_empty().then_some(0))
}

/// A timestamptz as rendered in any writer's TimeZone: `+HH:MM` or `+HH:MM:SS` (local mean
/// time offsets before standard time have seconds).
fn parse_timestamp_tz(s: &str) -> Option<i64> {
    parse_datetime(s, |rest| {
        let (sign, rest) = match rest.as_bytes().first()? {
            b'+' => (1, &rest[1..]),
            b'-' => (-1, &rest[1..]),
            b'Z' if rest.len() == 1 => return Some(0),
            _ => return None,
        };
        let (h, rest) = number(rest)?;
        let (m, rest) = match rest.strip_prefix(':') {
            Some(r) => number(r)?,
            None => (0, rest),
        };
        let (sec, rest) = match rest.strip_prefix(':') {
            Some(r) => number(r)?,
            None => (0, rest),
        };
        rest.is_empty()
            .then_some(sign * ((h * 60 + m) * 60 + sec) * 1_000_000)
    })
}

fn parse_time(s: &str) -> Option<i64> {
    let (micros, rest) = time_part(s)?;
    rest.is_empty().then_some(micros)
}

#[cfg(test)]
mod unit {
    use super::*;
    use serde_json::json;

    fn f(kind: ValueKind, op: FilterOp, values: Vec<Value>) -> Compiled {
        Compiled::new(ResolvedFilter {
            column: "c".into(),
            op,
            kind,
            values,
        })
        .unwrap()
    }
    fn row(v: Value) -> Map<String, Value> {
        json!({ "c": v }).as_object().unwrap().clone()
    }
    fn num(s: &str) -> Value {
        serde_json::from_str(s).unwrap()
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
        let list = |n: usize| format!("a=in.({})", vec!["1"; n].join(","));
        assert_eq!(
            parse(&list(MAX_IN_VALUES)).unwrap().values.len(),
            MAX_IN_VALUES
        );
        assert_eq!(
            parse(&list(MAX_IN_VALUES + 1)).unwrap_err(),
            FilterError::TooManyValues
        );
    }

    #[test]
    fn decimals_compare_exactly() {
        let d = |s: &str| Decimal::parse(s).unwrap();
        assert_eq!(d("2"), d("2.000"));
        assert_eq!(d("-0"), d("0.0"));
        assert!(d("12345678901234567890.000000000001") > d("12345678901234567890"));
        assert!(d("-1.5") < d("-1.25"));
        assert!(d("1e-7") < d("0.000001"));
        assert!(d("1e131071") > d("9.99e131070"));
        assert!(d("-1e131071") < d("-1"));
        assert!(Decimal::parse("1e").is_none() && Decimal::parse("x").is_none());
        let huge = format!("1{}", "0".repeat(131_071));
        assert_eq!(d(&huge), d("1e131071"));
        assert!(d(&huge) > d("0.5"));
    }

    #[test]
    fn numbers_sort_as_postgres_sorts_them() {
        let lt = f(ValueKind::Number, FilterOp::Lt, vec![num("10")]);
        assert!(lt.matches(Some(&row(num("9.99")))));
        assert!(lt.matches(Some(&row(json!("-Infinity")))));
        assert!(!lt.matches(Some(&row(json!("NaN")))));
        assert!(!lt.matches(Some(&row(json!("Infinity")))));
        let nan = f(ValueKind::Number, FilterOp::Gt, vec![json!("Infinity")]);
        assert!(nan.matches(Some(&row(json!("NaN")))));
        let eq = f(ValueKind::Number, FilterOp::Eq, vec![num("2")]);
        assert!(eq.matches(Some(&row(num("2.0")))));
    }

    #[test]
    fn timestamps_compare_as_instants_whatever_their_rendering() {
        let at = |s: &str| parse_timestamp_tz(s).unwrap();
        assert_eq!(
            at("2026-01-01T02:00:00+02:00"),
            at("2026-01-01T00:00:00+00:00")
        );
        assert_eq!(
            at("1900-01-01T00:19:32+00:19:32"),
            at("1900-01-01T00:00:00+00:00")
        );
        assert!(at("10000-01-01T00:00:00+00:00") > at("9999-12-31T23:59:59.999999+00:00"));
        assert!(at("0044-03-15T00:00:00+00:00 BC") < at("0001-01-01T00:00:00+00:00"));
        assert!(at("0044-03-15T00:00:00+00:00 BC") < at("0010-01-01T00:00:00+00:00 BC"));
        assert_eq!(
            at("0001-12-31T00:00:00+00:00 BC") + 86_400_000_000,
            at("0001-01-01T00:00:00+00:00")
        );
        let d = |s: &str| parse_date(s).unwrap();
        assert!(d("10000-01-01") > d("9999-12-31"));
        assert!(d("0044-03-15 BC") < d("0020-01-01 BC"));
        assert!(d("0001-01-01 BC") < d("0001-01-01"));
        let lt = f(ValueKind::Date, FilterOp::Lt, vec![json!("0020-01-01 BC")]);
        assert!(lt.matches(Some(&row(json!("0044-03-15 BC")))));
        assert!(lt.matches(Some(&row(json!("-infinity")))));
        assert!(!lt.matches(Some(&row(json!("0010-01-01 BC")))));
        assert!(!lt.matches(Some(&row(json!("infinity")))));
        assert!(parse_time("12:00:00.5").unwrap() > parse_time("12:00:00.10").unwrap());
    }

    #[test]
    fn text_compares_by_code_point_and_bpchar_ignores_trailing_blanks() {
        let text = ValueKind::Text {
            ordered: true,
            blank_padded: false,
        };
        assert!(f(text, FilterOp::Lt, vec![json!("m")]).matches(Some(&row(json!("Mu")))));
        let bpchar = ValueKind::Text {
            ordered: true,
            blank_padded: true,
        };
        assert!(f(bpchar, FilterOp::Eq, vec![json!("ab  ")]).matches(Some(&row(json!("ab")))));
    }

    #[test]
    fn jsonb_equality_is_jsonb_equality() {
        let eq = f(
            ValueKind::Jsonb,
            FilterOp::Eq,
            vec![json!({"a": 1, "b": [1, "x"]})],
        );
        assert!(eq.matches(Some(&row(num(r#"{"b":[1.00,"x"],"a":1.0}"#)))));
        assert!(!eq.matches(Some(&row(num(r#"{"a":1,"b":[1,"y"]}"#)))));
    }

    #[test]
    fn null_never_matches() {
        for op in [FilterOp::Eq, FilterOp::Neq, FilterOp::Lt, FilterOp::In] {
            assert!(!f(ValueKind::Number, op, vec![json!(1)]).matches(Some(&row(Value::Null))));
        }
        assert!(!f(ValueKind::Number, FilterOp::Neq, vec![json!(1)]).matches(None));
    }

    #[test]
    fn equality_only_kinds_refuse_ordering() {
        assert!(check_op(ValueKind::Exact, FilterOp::Lt).is_err());
        assert!(check_op(ValueKind::Jsonb, FilterOp::Gte).is_err());
        let unordered = ValueKind::Text {
            ordered: false,
            blank_padded: false,
        };
        assert!(check_op(unordered, FilterOp::Lt).is_err());
        assert!(check_op(unordered, FilterOp::In).is_ok());
        assert!(
            f(ValueKind::Exact, FilterOp::Eq, vec![json!(true)]).matches(Some(&row(json!(true))))
        );
    }
}
