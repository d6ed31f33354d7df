//! Property tests of everything that parses client input: whatever arrives, the parsers return
//! a value or a defined error, and never panic. Bounded: a few thousand cases each, seconds in
//! all (PROPTEST_CASES overrides the count).

use proptest::prelude::*;
use realtime_core::filter::{self, Compiled, FilterOp, ResolvedFilter, ValueKind, MAX_IN_VALUES};
use realtime_core::ops::OpSet;
use realtime_core::protocol::native::{self, ClientMessage, Coded};
use serde_json::{json, Map, Value};

fn config() -> ProptestConfig {
    ProptestConfig {
        cases: std::env::var("PROPTEST_CASES")
            .ok()
            .and_then(|n| n.parse().ok())
            .unwrap_or(2000),
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

/// Any JSON value, a few levels deep.
fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|n| json!(n)),
        any::<f64>()
            .prop_map(|f| serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number)),
        "\\PC{0,12}".prop_map(Value::String),
    ];
    leaf.prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::btree_map("\\PC{0,6}", inner, 0..4)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// Messages that look like ours: a known or unknown type, known and unknown fields.
fn message_like() -> impl Strategy<Value = String> {
    let kind = prop_oneof![
        Just("subscribe"),
        Just("unsubscribe"),
        Just("ping"),
        Just("tables"),
        Just("broadcast"),
        Just("track"),
        Just("other"),
    ];
    let field = prop_oneof![
        Just("id"),
        Just("table"),
        Just("channel"),
        Just("event"),
        Just("payload"),
        Just("state"),
        Just("events"),
        Just("filter"),
        Just("ref"),
        Just("extra"),
    ];
    (kind, prop::collection::btree_map(field, json_value(), 0..5)).prop_map(|(kind, fields)| {
        let mut m: Map<String, Value> = fields
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect();
        m.insert("type".into(), json!(kind));
        Value::Object(m).to_string()
    })
}

fn op_name() -> impl Strategy<Value = &'static str> {
    prop_oneof![
        Just("eq"),
        Just("neq"),
        Just("lt"),
        Just("lte"),
        Just("gt"),
        Just("gte"),
        Just("in"),
        Just("like"),
        Just(""),
    ]
}

fn value_kind() -> impl Strategy<Value = ValueKind> {
    prop_oneof![
        Just(ValueKind::Number),
        Just(ValueKind::Instant),
        Just(ValueKind::Timestamp),
        Just(ValueKind::Date),
        Just(ValueKind::Time),
        (any::<bool>(), any::<bool>()).prop_map(|(ordered, blank_padded)| ValueKind::Text {
            ordered,
            blank_padded
        }),
        Just(ValueKind::Exact),
        Just(ValueKind::Jsonb),
    ]
}

/// Text that parsers of numbers, times and dates find interesting.
fn value_text() -> impl Strategy<Value = String> {
    prop_oneof![
        "[-+0-9.eE]{0,12}",
        "[0-9]{1,6}-[0-9]{1,2}-[0-9]{1,2}( BC)?",
        "[0-9]{1,6}-[0-9]{1,2}-[0-9]{1,2}T[0-9]{1,2}:[0-9]{1,2}:[0-9]{1,2}(\\.[0-9]{0,8})?([+-][0-9]{2}(:[0-9]{2}){0,2})?( BC)?",
        "[0-9]{1,2}:[0-9]{1,2}:[0-9]{1,2}(\\.[0-9]{0,8})?",
        Just("infinity".to_string()),
        Just("-infinity".to_string()),
        Just("NaN".to_string()),
        "\\PC{0,16}",
    ]
}

/// A time claim as a token might carry it: absent, huge, negative, fractional, in range, a
/// string, null, or another JSON value.
fn time_claim() -> impl Strategy<Value = Option<Value>> {
    let now = realtime_core::auth::now() as i64;
    prop_oneof![
        Just(None),
        (now - 100_000..now + 100_000).prop_map(|t| Some(json!(t))),
        any::<i64>().prop_map(|t| Some(json!(t))),
        any::<u64>().prop_map(|t| Some(json!(t))),
        any::<f64>().prop_map(|t| serde_json::Number::from_f64(t).map(Value::Number)),
        Just(Some(json!(1e19))),
        Just(Some(
            serde_json::from_str::<Value>("1e400").unwrap_or(Value::Null)
        )),
        Just(Some(json!(10000000000000000000u64))),
        (now as f64..now as f64 + 1e6).prop_map(|t| Some(json!(t))),
        Just(Some(Value::Null)),
        "\\PC{0,12}".prop_map(|t| Some(Value::String(t))),
        json_value().prop_map(Some),
    ]
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn any_text_is_a_message_or_a_coded_error(text in "\\PC{0,200}") {
        if let Err(e) = native::parse(&text) {
            let _ = (e.code(), e.to_string());
        }
    }

    #[test]
    fn message_like_json_is_a_message_or_a_coded_error(text in message_like()) {
        match native::parse(&text) {
            Ok(ClientMessage::Subscribe { id, table, channel, .. }) => {
                prop_assert!(id.is_string() || id.is_number());
                prop_assert!(table.iter().chain(&channel).all(|name| !name.contains('\0')));
            }
            Ok(ClientMessage::Unsubscribe { id }) => prop_assert!(id.is_string() || id.is_number()),
            Ok(ClientMessage::Ping { .. } | ClientMessage::Tables { .. } | ClientMessage::Auth { .. } | ClientMessage::Ack { .. } | ClientMessage::Broadcast { .. } | ClientMessage::Track { .. } | ClientMessage::Untrack { .. }) => {}
            Err(e) => prop_assert!(!e.to_string().is_empty(), "{:?}", e.code()),
        }
    }

    #[test]
    fn any_text_or_jwt_shape_is_refused_as_a_token(
        parts in prop::collection::vec("[A-Za-z0-9_=+/-]{0,40}", 0..5),
        text in "\\PC{0,200}",
    ) {
        let auth = realtime_core::auth::AuthConfig::new(&realtime_core::auth::AuthSettings {
            secret: "a-test-secret-that-is-32-bytes-long!!".into(),
            ..Default::default()
        }).unwrap();
        prop_assert!(auth.verify(&parts.join(".")).is_err());
        prop_assert!(auth.verify(&text).is_err());
    }

    #[test]
    fn any_time_claims_are_accepted_within_range_or_refused(
        times in prop::collection::vec(time_claim(), 3),
    ) {
        use realtime_core::auth::{AuthConfig, AuthSettings, MAX_TOKEN_TIME};
        let secret = "a-test-secret-that-is-32-bytes-long!!";
        let auth = AuthConfig::new(&AuthSettings { secret: secret.into(), ..Default::default() }).unwrap();
        let mut claims = Map::new();
        claims.insert("role".into(), json!("alice"));
        for (name, t) in ["exp", "nbf", "iat"].into_iter().zip(times) {
            if let Some(t) = t {
                claims.insert(name.into(), t);
            }
        }
        let token = jsonwebtoken::encode(
            &jsonwebtoken::Header::default(),
            &Value::Object(claims.clone()),
            &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
        ).unwrap();
        match auth.verify(&token) {
            Ok(p) => {
                // Accepted only with every time claim in range, and then any expiry can be
                // added to a clock.
                for name in ["exp", "nbf", "iat"] {
                    if let Some(t) = claims.get(name) {
                        let t = t.as_f64().unwrap();
                        prop_assert!((0.0..=MAX_TOKEN_TIME as f64).contains(&t), "{name} = {t}");
                    }
                }
                if let Some(e) = p.expires {
                    prop_assert!(e <= MAX_TOKEN_TIME);
                    prop_assert!(std::time::SystemTime::UNIX_EPOCH.checked_add(std::time::Duration::from_secs(e)).is_some());
                }
            }
            Err(e) => prop_assert!(!e.to_string().is_empty()),
        }
    }

    #[test]
    fn event_names_parse_or_name_the_culprit(names in prop::collection::vec("\\PC{0,10}", 0..6)) {
        match OpSet::parse(&names) {
            Ok(set) => prop_assert!(set.iter().count() <= 4),
            Err(bad) => prop_assert!(names.contains(&bad)),
        }
    }

    #[test]
    fn like_matches_as_the_definition_says(pattern in "[ab%_\\\\]{0,8}", text in "[ab%_\\\\]{0,10}") {
        let compiled = Compiled::new(vec![ResolvedFilter {
            column: "c".into(),
            op: FilterOp::Like,
            negated: false,
            kind: ValueKind::Text { ordered: true, blank_padded: false },
            values: vec![Value::from(pattern.as_str())],
            fold: None,
        }]);
        let row: Map<String, Value> = [("c".to_string(), Value::from(text.as_str()))].into_iter().collect();
        match (compiled, like_reference(&pattern, &text)) {
            (Ok(compiled), Some(expected)) => prop_assert_eq!(compiled.matches(Some(&row)), expected),
            (Err(_), None) => {}
            (compiled, expected) => prop_assert!(false, "{:?} vs {:?}", compiled.map(|_| ()), expected),
        }
    }

    #[test]
    fn any_text_is_a_filter_or_a_filter_error(text in "\\PC{0,120}") {
        if let Ok(spec) = filter::parse(&text) {
            prop_assert!(!spec.column.is_empty());
            prop_assert!(!spec.values.is_empty() && spec.values.len() <= MAX_IN_VALUES);
        }
    }

    #[test]
    fn well_formed_filters_read_back(
        column in "[a-z_][a-z0-9_ ]{0,10}",
        op in op_name(),
        values in prop::collection::vec("[^,\"()]{0,8}", 1..5),
    ) {
        let text = if op == "in" {
            format!("{column}=in.({})", values.join(","))
        } else {
            format!("{column}={op}.{}", values[0])
        };
        match filter::parse(&text) {
            Ok(spec) => {
                prop_assert_eq!(spec.column, column);
                let expected: Vec<String> = if op == "in" {
                    values.iter().map(|v| v.trim().to_string()).collect()
                } else {
                    vec![values[0].clone()]
                };
                prop_assert_eq!(spec.values, expected);
                prop_assert!(spec.op == FilterOp::In || op != "in");
            }
            // `in.()` is refused: it names no value.
            Err(e) => prop_assert!(
                matches!(op, "like" | "") || (op == "in" && values.concat().is_empty()),
                "{text}: {e}"
            ),
        }
    }

    /// Whatever the worker sent and whatever a row holds, matching answers without panicking,
    /// and eq agrees with neq.
    #[test]
    fn matching_any_row_value_never_panics(
        kind in value_kind(),
        filter_value in value_text(),
        row_value in prop_oneof![value_text().prop_map(Value::String), json_value()],
    ) {
        let filter_json = match kind {
            ValueKind::Number => serde_json::from_str(&filter_value).unwrap_or(json!(filter_value)),
            _ => json!(filter_value),
        };
        let compile = |op| Compiled::new(vec![ResolvedFilter {
            column: "c".into(),
            op,
            negated: false,
            kind,
            values: vec![filter_json.clone()],
            fold: None,
        }]);
        let row: Map<String, Value> = [("c".to_string(), row_value)].into_iter().collect();
        if let (Ok(eq), Ok(neq)) = (compile(FilterOp::Eq), compile(FilterOp::Neq)) {
            let (e, n) = (eq.matches(Some(&row)), neq.matches(Some(&row)));
            prop_assert!(!(e && n));
            for op in [FilterOp::Lt, FilterOp::Lte, FilterOp::Gt, FilterOp::Gte, FilterOp::In] {
                let _ = compile(op).map(|f| f.matches(Some(&row)));
            }
        }
    }
}

/// LIKE as SQL defines it, by recursion over the pattern: `None` if the pattern ends with the
/// escape character (an error in PostgreSQL when a match reaches it; refused at subscribe).
fn like_reference(pattern: &str, text: &str) -> Option<bool> {
    let mut escaped = false;
    for c in pattern.chars() {
        escaped = !escaped && c == '\\';
    }
    if escaped {
        return None;
    }
    fn go(p: &[char], t: &[char]) -> Option<bool> {
        Some(match p.split_first() {
            None => t.is_empty(),
            Some(('%', rest)) => {
                for skip in 0..=t.len() {
                    if go(rest, &t[skip..])? {
                        return Some(true);
                    }
                }
                false
            }
            Some(('_', rest)) => !t.is_empty() && go(rest, &t[1..])?,
            Some(('\\', rest)) => {
                let (c, rest) = rest.split_first()?;
                t.first() == Some(c) && go(rest, &t[1..])?
            }
            Some((c, rest)) => t.first() == Some(c) && go(rest, &t[1..])?,
        })
    }
    let (p, t): (Vec<char>, Vec<char>) = (pattern.chars().collect(), text.chars().collect());
    go(&p, &t)
}
