//! Subscription filters `column=op.value` (several joined by commas must all hold; `not.`
//! before the operator negates it), evaluated on the network threads with the same result
//! SQL's `WHERE column op 'value' AND ...` gives. Each column type the worker accepts a filter on
//! has a comparison key here that orders exactly as the type does: numbers as exact decimals,
//! timestamps and dates as instants on the proleptic calendar (BC years, years past 9999,
//! offsets with seconds, infinities), text by code point where the column's collation orders
//! that way, jsonb by its own equality. Types whose values do not compare as their text does
//! and that have no key here are refused by the worker, never answered differently from SQL.
//!
//! `like` and `ilike` match by character as a deterministic collation does; `ilike` only where
//! the worker knows how the column's collation lowers letters (ASCII only, or Unicode's simple
//! mapping). Regular expressions (`match`, `imatch`) are refused: no engine here answers
//! exactly as PostgreSQL's does.
//!
//! Filter values are turned into keys once, at subscribe; a row value costs one linear parse.

use serde_json::{Map, Value};
use std::cmp::Ordering;

/// One condition of a filter as the client wrote it: `column=op.value`, `column=not.op.value`.
#[derive(serde::Serialize, serde::Deserialize, Clone, Debug, PartialEq)]
pub struct FilterSpec {
    pub column: String,
    pub op: FilterOp,
    pub negated: bool,
    pub values: Vec<String>,
}

#[derive(serde::Serialize, serde::Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub enum FilterOp {
    Eq,
    Neq,
    Lt,
    Lte,
    Gt,
    Gte,
    In,
    /// `is.null`, `is.true`, `is.false`, `is.unknown`: the value is one of those words.
    Is,
    /// IS DISTINCT FROM: as `neq`, but NULL is distinct from every value.
    IsDistinct,
    Like,
    ILike,
}

/// How a column's collation lowers letters, for `ilike`.
#[derive(serde::Serialize, serde::Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fold {
    /// Only A to Z (C and POSIX).
    Ascii,
    /// Unicode's simple lowercase mapping (C.UTF-8 and the other glibc UTF-8 locales but the
    /// Turkic ones).
    Unicode,
}

/// How values of a column compare, decided by the worker from its SQL type and collation.
/// Types not listed have no kind: filters on them are refused.
#[derive(serde::Serialize, serde::Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
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
#[derive(serde::Serialize, serde::Deserialize, Clone, Debug)]
pub struct ResolvedFilter {
    pub column: String,
    pub op: FilterOp,
    pub negated: bool,
    pub kind: ValueKind,
    /// For `like` and `ilike`, the pattern as text; for `is`, the word.
    pub values: Vec<serde_json::Value>,
    /// For `ilike`: how the collation lowers letters.
    pub fold: Option<Fold>,
}

/// Why a filter is refused before any value is looked at.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FilterError {
    #[error("filter must look like column=op.value")]
    Shape,
    #[error("filter names no column")]
    NoColumn,
    #[error("unknown filter operator \"{0}\"; use eq, neq, lt, lte, gt, gte, in, is, isdistinct, like or ilike (with not. to negate)")]
    UnknownOperator(String),
    #[error("{0} (regular expressions) is not supported: its answer could differ from PostgreSQL's regular expressions; use like or ilike")]
    Regex(String),
    #[error("is takes null, true, false or unknown")]
    IsWhat,
    #[error("a filter has at most {MAX_CONDITIONS} conditions")]
    TooManyConditions,
    #[error("a like pattern must not end with the escape character \\")]
    TrailingEscape,
    #[error("a like pattern has at most {MAX_PATTERN_CHARS} characters")]
    PatternTooLong,
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
/// Most conditions one filter may join.
pub const MAX_CONDITIONS: usize = 10;
/// Most characters of a `like` pattern: matching a row value costs at most its length times
/// this, on the network threads, for every change the subscription is offered.
pub const MAX_PATTERN_CHARS: usize = 256;

/// Parse a filter: conditions joined by commas. A comma starts a new condition only where what
/// follows reads as one (`column=op.`), so a value may hold commas (`note=eq.a,b`).
pub fn parse_all(text: &str) -> Result<Vec<FilterSpec>, FilterError> {
    let mut conditions = Vec::new();
    let mut start = 0;
    let mut depth = 0usize;
    let mut quoted = false;
    for (at, c) in text.char_indices() {
        match c {
            '"' => quoted = !quoted,
            '(' if !quoted => depth += 1,
            ')' if !quoted => depth = depth.saturating_sub(1),
            ',' if !quoted && depth == 0 && starts_condition(&text[at + 1..]) => {
                conditions.push(parse(&text[start..at])?);
                start = at + 1;
                if conditions.len() == MAX_CONDITIONS {
                    return Err(FilterError::TooManyConditions);
                }
            }
            _ => {}
        }
    }
    conditions.push(parse(&text[start..])?);
    Ok(conditions)
}

/// Whether `text` begins a condition: `column=op.` or `column=not.op.` with an operator.
fn starts_condition(text: &str) -> bool {
    let Some((column, rest)) = text.split_once('=') else {
        return false;
    };
    let rest = rest.strip_prefix("not.").unwrap_or(rest);
    !column.is_empty()
        && !column.contains(',')
        && rest
            .split_once('.')
            .is_some_and(|(op, _)| operator(op).is_ok())
}

fn operator(name: &str) -> Result<FilterOp, FilterError> {
    Ok(match name {
        "eq" => FilterOp::Eq,
        "neq" => FilterOp::Neq,
        "lt" => FilterOp::Lt,
        "lte" => FilterOp::Lte,
        "gt" => FilterOp::Gt,
        "gte" => FilterOp::Gte,
        "in" => FilterOp::In,
        "is" => FilterOp::Is,
        "isdistinct" => FilterOp::IsDistinct,
        "like" => FilterOp::Like,
        "ilike" => FilterOp::ILike,
        "match" | "imatch" => return Err(FilterError::Regex(name.to_string())),
        other => return Err(FilterError::UnknownOperator(other.to_string())),
    })
}

/// Parse one condition `column=op.value` (for `in`: `column=in.(a,b,c)`).
pub fn parse(text: &str) -> Result<FilterSpec, FilterError> {
    let (column, rest) = text.split_once('=').ok_or(FilterError::Shape)?;
    let (negated, rest) = match rest.strip_prefix("not.") {
        Some(rest) => (true, rest),
        None => (false, rest),
    };
    let (op, value) = rest.split_once('.').ok_or(FilterError::Shape)?;
    if column.is_empty() {
        return Err(FilterError::NoColumn);
    }
    let op = operator(op)?;
    if op == FilterOp::Is && !matches!(value, "null" | "true" | "false" | "unknown") {
        return Err(FilterError::IsWhat);
    }
    if matches!(op, FilterOp::Like | FilterOp::ILike) {
        Pattern::new(value, None)?;
    }
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
        negated,
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

/// Which operators a column kind supports (`like`, `ilike` and `is` are checked against the
/// column's type by the worker).
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

/// A filter ready to be matched: every condition's values already turned into keys.
#[derive(Debug)]
pub struct Compiled {
    conditions: Vec<Condition>,
}

#[derive(Debug)]
struct Condition {
    column: String,
    op: FilterOp,
    negated: bool,
    kind: ValueKind,
    keys: Vec<Key>,
    /// `like`, `ilike`.
    pattern: Option<Pattern>,
    /// `is`: null (or unknown), true or false.
    is: Option<Option<bool>>,
}

impl Compiled {
    /// Fails if the worker's rendering of a value cannot be read back (a bug, not bad input).
    pub fn new(conditions: Vec<ResolvedFilter>) -> Result<Compiled, FilterError> {
        let conditions = conditions
            .into_iter()
            .map(Condition::new)
            .collect::<Result<_, _>>()?;
        Ok(Compiled { conditions })
    }

    /// Whether `row` satisfies every condition. As in a WHERE, a condition on a NULL (or a
    /// missing column, or a value that cannot be read as the column's type) is unknown, which
    /// does not match, negated or not; `is` and `isdistinct` are never unknown.
    pub fn matches(&self, row: Option<&Map<String, Value>>) -> bool {
        self.conditions.iter().all(|c| c.holds(row) == Some(true))
    }
}

impl Condition {
    fn new(filter: ResolvedFilter) -> Result<Condition, FilterError> {
        let mut condition = Condition {
            column: filter.column,
            op: filter.op,
            negated: filter.negated,
            kind: filter.kind,
            keys: Vec::new(),
            pattern: None,
            is: None,
        };
        let first = filter.values.first().ok_or(FilterError::EmptyList)?;
        match filter.op {
            FilterOp::Is => {
                condition.is = Some(match first.as_str() {
                    Some("null" | "unknown") => None,
                    Some("true") => Some(true),
                    Some("false") => Some(false),
                    _ => return Err(FilterError::IsWhat),
                })
            }
            FilterOp::Like | FilterOp::ILike => {
                let text = first
                    .as_str()
                    .ok_or_else(|| FilterError::Unreadable(first.to_string()))?;
                let fold =
                    (filter.op == FilterOp::ILike).then(|| filter.fold.unwrap_or(Fold::Ascii));
                condition.pattern = Some(Pattern::new(text, fold)?);
            }
            _ => {
                condition.keys = filter
                    .values
                    .iter()
                    .map(|v| {
                        key(filter.kind, v).ok_or_else(|| FilterError::Unreadable(v.to_string()))
                    })
                    .collect::<Result<_, _>>()?
            }
        }
        Ok(condition)
    }

    /// SQL's answer for `row`: `None` for unknown.
    fn holds(&self, row: Option<&Map<String, Value>>) -> Option<bool> {
        let v = row
            .and_then(|r| r.get(&self.column))
            .filter(|v| !v.is_null());
        let answer = match (self.op, v) {
            (FilterOp::Is, v) => Some(match self.is.flatten() {
                None => v.is_none(),
                Some(truth) => v.and_then(Value::as_bool) == Some(truth),
            }),
            (FilterOp::IsDistinct, None) => Some(true),
            (_, None) => None,
            (FilterOp::Like | FilterOp::ILike, Some(v)) => {
                Some(self.pattern.as_ref()?.matches(v.as_str()?))
            }
            (op, Some(v)) => {
                let k = key(self.kind, v)?;
                let first = &self.keys[0];
                Some(match op {
                    FilterOp::Eq => k == *first,
                    FilterOp::Neq | FilterOp::IsDistinct => k != *first,
                    FilterOp::In => self.keys.contains(&k),
                    FilterOp::Lt => k.cmp(first) == Ordering::Less,
                    FilterOp::Lte => k.cmp(first) != Ordering::Greater,
                    FilterOp::Gt => k.cmp(first) == Ordering::Greater,
                    FilterOp::Gte => k.cmp(first) != Ordering::Less,
                    FilterOp::Is | FilterOp::Like | FilterOp::ILike => {
                        unreachable!("matched above")
                    }
                })
            }
        };
        answer.map(|holds| holds != self.negated)
    }
}

/// A `like` pattern: `%` any run of characters, `_` any one, `\` makes the next literal.
#[derive(Debug)]
struct Pattern {
    items: Vec<Item>,
    fold: Option<Fold>,
}

#[derive(Debug, PartialEq)]
enum Item {
    Any,
    One,
    Char(char),
}

impl Pattern {
    fn new(text: &str, fold: Option<Fold>) -> Result<Pattern, FilterError> {
        if text.chars().count() > MAX_PATTERN_CHARS {
            return Err(FilterError::PatternTooLong);
        }
        let mut items = Vec::new();
        let mut chars = text.chars().map(|c| lower(c, fold));
        while let Some(c) = chars.next() {
            items.push(match c {
                '%' => Item::Any,
                '_' => Item::One,
                '\\' => Item::Char(chars.next().ok_or(FilterError::TrailingEscape)?),
                c => Item::Char(c),
            });
        }
        Ok(Pattern { items, fold })
    }

    /// Whether all of `text` matches: one pass, going back only to the last `%` (linear in
    /// practice, at worst text × pattern).
    fn matches(&self, text: &str) -> bool {
        let text: Vec<char> = text.chars().map(|c| lower(c, self.fold)).collect();
        let (mut t, mut p) = (0, 0);
        let mut resume: Option<(usize, usize)> = None;
        while t < text.len() {
            match self.items.get(p) {
                Some(Item::Any) => {
                    resume = Some((p, t));
                    p += 1;
                }
                Some(Item::One) => (t, p) = (t + 1, p + 1),
                Some(Item::Char(c)) if *c == text[t] => (t, p) = (t + 1, p + 1),
                _ => match resume {
                    Some((any, from)) => {
                        resume = Some((any, from + 1));
                        (t, p) = (from + 1, any + 1);
                    }
                    None => return false,
                },
            }
        }
        self.items[p..].iter().all(|item| *item == Item::Any)
    }
}

/// `c` as the collation lowers it (`None`: not at all).
fn lower(c: char, fold: Option<Fold>) -> char {
    match fold {
        None => c,
        Some(Fold::Ascii) => c.to_ascii_lowercase(),
        // Unicode's simple mapping: one character for one. Only U+0130 has a longer full
        // mapping; its simple one is "i".
        Some(Fold::Unicode) => {
            let mut lowered = c.to_lowercase();
            match (lowered.next(), lowered.next()) {
                (Some(l), None) => l,
                _ if c == '\u{130}' => 'i',
                _ => c,
            }
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
        Compiled::new(vec![ResolvedFilter {
            column: "c".into(),
            op,
            negated: false,
            kind,
            values,
            fold: None,
        }])
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
        assert!(parse("score=match.x").is_err());
        assert!(parse("score=like.x\\").is_err());
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

    fn like(pattern: &str, fold: Option<Fold>, text: &str) -> bool {
        Pattern::new(pattern, fold).unwrap().matches(text)
    }

    #[test]
    fn like_patterns_match_by_character() {
        assert!(like("%", None, ""));
        assert!(like("a%b%c", None, "a__b__c"));
        assert!(like("%aab", None, "aaaab"), "going back to the last %");
        assert!(!like("a_c", None, "ac"));
        assert!(like("a_c", None, "aéc"), "_ is one character, not one byte");
        assert!(like("100\\%", None, "100%"));
        assert!(!like("100\\%", None, "1000"));
        assert!(like("a\\\\b", None, "a\\b"));
        assert!(!like("abc", None, "abcd"));
        assert!(!like("ABC", None, "abc"));
        assert!(like("ABC", Some(Fold::Ascii), "abc"));
        assert!(!like("ÉCLAIR", Some(Fold::Ascii), "éclair"));
        assert!(like("ÉCLAIR", Some(Fold::Unicode), "éclair"));
        assert!(
            like("i", Some(Fold::Unicode), "\u{130}"),
            "İ lowers to i alone"
        );
        assert_eq!(
            parse("t=like.a\\").unwrap_err(),
            FilterError::TrailingEscape
        );
        let long = format!("t=like.{}", "%a".repeat(MAX_PATTERN_CHARS / 2 + 1));
        assert_eq!(parse(&long).unwrap_err(), FilterError::PatternTooLong);
    }

    #[test]
    fn conditions_split_where_a_condition_follows() {
        let all = parse_all("a=gte.0,b=not.like.x,y,c=in.(1,2)").unwrap();
        let ops: Vec<_> = all
            .iter()
            .map(|c| (c.column.as_str(), c.op, c.negated))
            .collect();
        assert_eq!(
            ops,
            [
                ("a", FilterOp::Gte, false),
                ("b", FilterOp::Like, true),
                ("c", FilterOp::In, false)
            ]
        );
        assert_eq!(all[1].values, ["x,y"]);
        assert_eq!(parse_all("t=eq.a,b=c").unwrap()[0].values, ["a,b=c"]);
        let many = ["a=eq.1"; MAX_CONDITIONS + 1].join(",");
        assert_eq!(
            parse_all(&many).unwrap_err(),
            FilterError::TooManyConditions
        );
        assert!(matches!(parse("t=imatch.x"), Err(FilterError::Regex(_))));
        assert_eq!(parse("t=is.maybe").unwrap_err(), FilterError::IsWhat);
    }

    #[test]
    fn is_isdistinct_and_not_answer_as_sql_does_for_null() {
        let cond = |op, negated, value: Value| {
            Compiled::new(vec![ResolvedFilter {
                column: "c".into(),
                op,
                negated,
                kind: ValueKind::Exact,
                values: vec![value],
                fold: None,
            }])
            .unwrap()
        };
        let null = row(Value::Null);
        let (yes, no) = (row(json!(true)), row(json!(false)));
        assert!(cond(FilterOp::Is, false, json!("null")).matches(Some(&null)));
        assert!(!cond(FilterOp::Is, false, json!("null")).matches(Some(&yes)));
        assert!(cond(FilterOp::Is, true, json!("null")).matches(Some(&no)));
        assert!(cond(FilterOp::Is, false, json!("true")).matches(Some(&yes)));
        assert!(
            cond(FilterOp::Is, true, json!("true")).matches(Some(&null)),
            "NULL IS NOT TRUE"
        );
        assert!(cond(FilterOp::IsDistinct, false, json!(true)).matches(Some(&null)));
        assert!(!cond(FilterOp::IsDistinct, true, json!(true)).matches(Some(&null)));
        assert!(cond(FilterOp::IsDistinct, true, json!(true)).matches(Some(&yes)));
        // NOT of unknown is unknown: a negated eq never matches NULL.
        assert!(!cond(FilterOp::Eq, true, json!(true)).matches(Some(&null)));
        assert!(cond(FilterOp::Eq, true, json!(true)).matches(Some(&no)));
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
