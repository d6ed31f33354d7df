//! Filters select exactly the rows SQL's WHERE selects, for each supported column type.
mod common;
use common::{Cluster, Ws};
use std::collections::BTreeSet;

const MARKER: i64 = 1_000_000;

/// (filter as a client writes it, the same condition in SQL)
const CASES: &[(&str, &str)] = &[
    ("i=eq.5", "i = 5"),
    ("i=neq.5", "i <> 5"),
    ("i=lt.0", "i < 0"),
    ("i=lte.0", "i <= 0"),
    ("i=gt.3", "i > 3"),
    ("i=gte.3", "i >= 3"),
    ("i=in.(1,2,3)", "i IN (1, 2, 3)"),
    ("n=gt.0.5", "n > 0.5"),
    ("n=eq.0.50", "n = 0.50"),
    ("n=lte.-1.25", "n <= -1.25"),
    ("n=in.(1.0,2)", "n IN (1.0, 2)"),
    ("t=eq.alpha", "t = 'alpha'"),
    ("t=neq.alpha", "t <> 'alpha'"),
    ("t=lt.m", "t < 'm'"),
    ("t=gte.m", "t >= 'm'"),
    ("t=in.(alpha,\"b,c\")", "t IN ('alpha', 'b,c')"),
    ("b=eq.true", "b = true"),
    ("b=neq.true", "b <> true"),
    ("b=in.(false)", "b IN (false)"),
    (
        "ts=gt.2026-01-01T12:00:00+02:00",
        "ts > '2026-01-01T12:00:00+02:00'",
    ),
    (
        "ts=lte.2026-01-01 10:00:00+00",
        "ts <= '2026-01-01 10:00:00+00'",
    ),
    (
        "ts=eq.2026-01-01T09:00:00-01:00",
        "ts = '2026-01-01T09:00:00-01:00'",
    ),
    (
        "u=eq.00000000-0000-0000-0000-00000000000A",
        "u = '00000000-0000-0000-0000-00000000000A'",
    ),
    (
        "u=lt.00000000-0000-0000-0000-000000000005",
        "u < '00000000-0000-0000-0000-000000000005'",
    ),
    (
        "u=in.(00000000-0000-0000-0000-000000000001,00000000-0000-0000-0000-000000000002)",
        "u IN ('00000000-0000-0000-0000-000000000001', '00000000-0000-0000-0000-000000000002')",
    ),
    ("t=like.%a", "t LIKE '%a'"),
    ("t=like.b_ta", "t LIKE 'b_ta'"),
    ("t=like.b\\,c", "t LIKE 'b\\,c'"),
    ("t=not.like.%a", "NOT (t LIKE '%a')"),
    ("t=ilike.mu", "t ILIKE 'mu'"),
    ("t=ilike.%CL%", "t ILIKE '%CL%'"),
    ("t=ilike.ÉCLAIR", "t ILIKE 'ÉCLAIR'"),
    ("t=not.ilike.%A%", "NOT (t ILIKE '%A%')"),
    ("t=is.null", "t IS NULL"),
    ("t=not.is.null", "t IS NOT NULL"),
    ("b=is.true", "b IS TRUE"),
    ("b=not.is.false", "b IS NOT FALSE"),
    ("b=is.unknown", "b IS UNKNOWN"),
    ("i=isdistinct.2", "i IS DISTINCT FROM 2"),
    ("i=not.isdistinct.2", "i IS NOT DISTINCT FROM 2"),
    ("i=not.eq.2", "NOT (i = 2)"),
    ("i=not.in.(1,2,3)", "NOT (i IN (1, 2, 3))"),
    ("t=eq.b,c", "t = 'b,c'"),
    ("i=gte.0,i=lt.5", "i >= 0 AND i < 5"),
    (
        "i=gt.0,t=like.%e%,b=not.is.true",
        "i > 0 AND t LIKE '%e%' AND b IS NOT TRUE",
    ),
];

#[test]
fn filters_agree_with_sql_where() {
    let cluster = Cluster::start("filters", &[]);
    let mut db = cluster.client();
    db.batch_execute(
        "CREATE TABLE fx (id bigint PRIMARY KEY, i int, n numeric, t text, b bool, ts timestamptz, u uuid);
         SELECT realtime_watch('fx');",
    )
    .unwrap();
    let mut clients: Vec<Ws> = CASES
        .iter()
        .map(|(filter, _)| {
            let mut ws = cluster.ws();
            ws.subscribe("f", "fx", Some(filter));
            ws.subscribe("marker", "fx", Some(&format!("id=eq.{MARKER}")));
            ws
        })
        .collect();
    // Rows rendered in a non-UTC session time zone: filters compare instants, not text.
    db.batch_execute(
        "SET TimeZone = 'Asia/Kolkata'; SELECT setseed(0.42);
         INSERT INTO fx
         SELECT g,
                CASE WHEN g % 11 = 0 THEN NULL ELSE (random() * 12)::int - 4 END,
                CASE WHEN g % 13 = 0 THEN NULL ELSE round((random() * 6 - 3)::numeric, 2) END,
                CASE WHEN g % 7 = 0 THEN NULL ELSE (ARRAY['alpha', 'beta', 'b,c', 'm', 'zeta', 'Mu', 'éclair'])[1 + (g / 2) % 7] END,
                CASE WHEN g % 5 = 0 THEN NULL ELSE g % 3 = 0 END,
                CASE WHEN g % 9 = 0 THEN NULL ELSE '2026-01-01 00:00:00+00'::timestamptz + (g % 24) * interval '1 hour' END,
                CASE WHEN g % 17 = 0 THEN NULL ELSE ('00000000-0000-0000-0000-0000000000' || lpad(to_hex(g % 16), 2, '0'))::uuid END
           FROM generate_series(1, 300) g;
         INSERT INTO fx (id, n) VALUES (301, 0.500), (302, 1), (303, 2.000);",
    )
    .unwrap();
    db.batch_execute(&format!("INSERT INTO fx (id) VALUES ({MARKER})"))
        .unwrap();

    for ((filter, condition), ws) in CASES.iter().zip(clients.iter_mut()) {
        let mut got = BTreeSet::new();
        loop {
            let m = ws.recv();
            assert_eq!(m["type"], "change", "{filter}: {m}");
            let id = m["new"]["id"].as_i64().unwrap();
            if id == MARKER {
                break;
            }
            got.insert(id);
        }
        let want: BTreeSet<i64> = db
            .query(
                &format!("SELECT id FROM fx WHERE {condition} AND id <> {MARKER}"),
                &[],
            )
            .unwrap()
            .iter()
            .map(|r| r.get(0))
            .collect();
        assert!(
            !want.is_empty(),
            "{filter}: a case that selects nothing proves little"
        );
        assert_eq!(got, want, "filter {filter} vs WHERE {condition}");
    }
}

#[test]
fn filtered_deletes_match_the_old_row() {
    let cluster = Cluster::start("filters_delete", &[]);
    let mut db = cluster.client();
    db.batch_execute("CREATE TABLE fd (id int, kind text); SELECT realtime_watch('fd'); INSERT INTO fd VALUES (1, 'a'), (2, 'b')").unwrap();
    let mut ws = cluster.ws();
    ws.subscribe("f", "fd", Some("kind=eq.b"));
    db.batch_execute("DELETE FROM fd").unwrap();
    let c = ws.changes(1);
    assert_eq!(c[0]["op"], "DELETE");
    assert_eq!(c[0]["old"]["id"], 2);
}

/// Extreme values of every type a filter is accepted on, written from sessions in several
/// time zones (offsets with seconds before 1937 in Amsterdam, half hours in St. John's).
const EXTREMES: &str = "
    CREATE TYPE mood AS ENUM ('sad', 'ok', 'happy');
    CREATE TABLE ex (id int PRIMARY KEY, tz timestamptz, ts timestamp, d date, tm time,
                     n numeric, f float8, i8 bigint, bp char(4), vc varchar(10), u uuid,
                     j jsonb, e mood, b bool, ip inet,
                     i2 smallint, f4 real, o oid, nm name, ch \"char\", cn cidr, ma macaddr,
                     m8 macaddr8, ttz timetz, bt bit(4), vb varbit);
    SELECT realtime_watch('ex');";

const EXTREME_ROWS: &[&str] = &[
    "('1899-12-31 23:00:00+00', '1899-12-31 23:00', '1899-12-31', '00:00', 'NaN', 'NaN', -9223372036854775808, 'ab', 'ab', '00000000-0000-0000-0000-000000000001', '{\"a\":1.0}', 'sad', true, '10.0.0.1', 1, 0.5, 1, 'alpha', 'a', '10.0.0.0/8', '08:00:2b:01:02:03', '08:00:2b:01:02:03:04:05', '12:00+02', B'1010', B'1')",
    "('1900-01-01 00:00:00+00', '1900-01-01', '0044-03-15 BC', '12:00:00.5', 'Infinity', 'Infinity', 9223372036854775807, 'ab  ', 'ab ', '00000000-0000-0000-0000-00000000000A', '{\"a\":1}', 'happy', false, '10.0.0.1/32', -32768, 'NaN', 0, 'Beta', 'B', '10.0.0.0/16', '08:00:2B:01:02:03', '08-00-2b-01-02-03-04-05', '12:00+00', B'0101', B'10')",
    "('0044-03-15 12:00:00+00 BC', '0044-03-15 12:00 BC', '0010-01-01 BC', '12:00:00.10', '-Infinity', '-Infinity', 0, 'b', 'b', 'ffffffff-ffff-ffff-ffff-ffffffffffff', '[1, 2.50]', 'ok', NULL, '::1', 32767, 'Infinity', 4294967295, 'beta', 'b', '192.168.0.0/16', 'ff:ff:ff:ff:ff:ff', 'ff:ff:ff:ff:ff:ff:ff:ff', '10:00+00', B'1111', B'')",
    "('10000-01-01 00:00:00+00', '10000-01-01', '10000-01-01', '23:59:59.999999', 1e100, 1e300, 1, 'Ab', 'Ab', NULL, '\"x\"', NULL, true, '192.168.0.0/16', 0, '-Infinity', 7, 'é', 'é', '::/0', '00:00:00:00:00:00', '00:00:00:00:00:00:00:00', '12:00:00.5+02', B'0000', B'0001')",
    "('infinity', 'infinity', 'infinity', '24:00', 0.1, '-0', -1, NULL, 'é', '00000000-0000-0000-0000-000000000002', 'null', 'happy', false, NULL, 2, -0.0, 16384, '', ' ', '10.0.0.0/8', '08:00:2b:01:02:04', '08:00:2b:01:02:03:04:06', '23:59:59.999999-14', B'1010', B'1010')",
    "('-infinity', '-infinity', '-infinity', NULL, -0.000001, 0.1, 2, 'zz', 'Z', '00000000-0000-0000-0000-000000000001', '{\"b\":[1,{\"c\":null}]}', 'sad', true, '10.0.0.2', -1, 1e30, 2, 'zeta', 'z', '172.16.0.0/12', '08:00:2b:01:02:03', '08:00:2b:01:02:03:04:05', '00:00+14', B'0011', B'11')",
    "('0001-01-01 00:00:00+00', '0001-01-01', '0001-01-01', '00:00:01', 0, 0, 3, 'ab', 'ab', NULL, '{\"a\":1.000}', 'ok', true, '10.0.0.1', 3, 0.1, 3, 'Alpha', 'A', '10.1.0.0/16', '01:02:03:04:05:06', '01:02:03:04:05:06:07:08', '12:00:00-01:30', B'0110', B'0')",
    "('9999-12-31 23:59:59.999999+00', '9999-12-31 23:59:59.999999', '9999-12-31', '11:59', -1e-100, -1e-300, 4, 'a', 'a', '00000000-0000-0000-0000-000000000003', '{}', 'happy', false, '10.0.0.3', NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL)",
];

/// (column, operator, value): the filter `column=op.value` and SQL's `column OP 'value'`.
const EXTREME_CASES: &[(&str, &str, &str)] = &[
    ("tz", "lt", "1900-01-01T00:00:00Z"),
    ("tz", "gte", "1900-01-01T00:00:00+00:00"),
    ("tz", "gt", "9999-12-31T00:00:00Z"),
    ("tz", "lt", "0001-01-01T00:00:00Z"),
    ("tz", "eq", "infinity"),
    ("tz", "neq", "-infinity"),
    ("ts", "lt", "0001-01-01T00:00:00"),
    ("ts", "gt", "9999-12-31T23:59:59"),
    ("ts", "lte", "1900-01-01T00:00:00"),
    ("d", "gt", "9999-12-31"),
    ("d", "lt", "0020-01-01 BC"),
    ("d", "gte", "0044-03-15 BC"),
    ("d", "eq", "-infinity"),
    ("tm", "gt", "12:00:00.1"),
    ("tm", "lte", "12:00:00.10"),
    ("n", "gt", "1e50"),
    ("n", "eq", "NaN"),
    ("n", "lt", "0"),
    ("n", "gte", "Infinity"),
    ("n", "in", "(0,0.1,NaN)"),
    ("f", "eq", "0"),
    ("f", "gt", "1e299"),
    ("f", "lt", "-1e-301"),
    ("f", "neq", "NaN"),
    ("i8", "lt", "-9223372036854775807"),
    ("i8", "gte", "2"),
    ("bp", "eq", "ab"),
    ("bp", "lt", "b"),
    ("vc", "eq", "ab"),
    ("vc", "gt", "a"),
    ("vc", "lt", "Z"),
    ("u", "lt", "00000000-0000-0000-0000-00000000000b"),
    ("u", "eq", "00000000-0000-0000-0000-00000000000A"),
    ("j", "eq", "{\"a\":1}"),
    ("j", "in", "({},[1])"),
    ("e", "eq", "happy"),
    ("e", "in", "(sad,ok)"),
    ("b", "neq", "true"),
    ("ip", "eq", "10.0.0.1"),
    ("ip", "in", "(10.0.0.2,192.168.0.0/16)"),
    ("i2", "lt", "0"),
    ("i2", "gte", "32767"),
    ("f4", "gt", "0.4"),
    ("f4", "eq", "0.1"),
    ("f4", "eq", "NaN"),
    ("f4", "lt", "-1e38"),
    ("o", "gt", "16383"),
    ("o", "lte", "2"),
    ("nm", "lt", "alpha"),
    ("nm", "gte", "beta"),
    ("ch", "eq", "b"),
    ("ch", "in", "(a,é)"),
    ("cn", "eq", "10.0.0.0/8"),
    ("ma", "eq", "08:00:2b:01:02:03"),
    ("ma", "in", "(08-00-2b-01-02-04,ff:ff:ff:ff:ff:ff)"),
    ("m8", "eq", "08:00:2b:01:02:03:04:05"),
    ("ttz", "eq", "12:00:00+02"),
    ("ttz", "neq", "12:00+00"),
    ("bt", "eq", "1010"),
    ("vb", "in", "(1,0001)"),
    ("vb", "neq", ""),
];

fn sql_condition(column: &str, op: &str, value: &str) -> String {
    let lit = |v: &str| format!("'{}'", v.replace('\'', "''"));
    let sql_op = match op {
        "eq" => "=",
        "neq" => "<>",
        "lt" => "<",
        "lte" => "<=",
        "gt" => ">",
        "gte" => ">=",
        _ => "IN",
    };
    if op == "in" {
        let inner = &value[1..value.len() - 1];
        // Split on commas outside brackets and quotes (the jsonb list holds an array).
        let (mut items, mut depth, mut quoted, mut start) = (Vec::new(), 0, false, 0);
        for (i, c) in inner.char_indices() {
            match c {
                '"' => quoted = !quoted,
                '[' | '{' if !quoted => depth += 1,
                ']' | '}' if !quoted => depth -= 1,
                ',' if !quoted && depth == 0 => {
                    items.push(&inner[start..i]);
                    start = i + 1;
                }
                _ => {}
            }
        }
        items.push(&inner[start..]);
        let list: Vec<String> = items.iter().map(|v| lit(v)).collect();
        format!("{column} IN ({})", list.join(", "))
    } else {
        format!("{column} {sql_op} {}", lit(value))
    }
}

#[test]
fn filters_agree_with_sql_at_the_extremes_in_every_time_zone() {
    let cluster = Cluster::start("filters_extremes", &[]);
    let mut db = cluster.client();
    db.batch_execute(EXTREMES).unwrap();
    let mut clients: Vec<Ws> = EXTREME_CASES
        .iter()
        .map(|(column, op, value)| {
            let mut ws = cluster.ws();
            let filter = format!("{column}={op}.{value}");
            ws.subscribe("f", "ex", Some(&filter));
            ws.subscribe("marker", "ex", Some(&format!("id=eq.{MARKER}")));
            ws
        })
        .collect();
    let zones = [
        "UTC",
        "Europe/Amsterdam",
        "America/St_Johns",
        "Asia/Kathmandu",
    ];
    let mut id = 0;
    for zone in zones {
        let mut writer = cluster.client();
        writer
            .batch_execute(&format!("SET TimeZone = '{zone}'"))
            .unwrap();
        for row in EXTREME_ROWS {
            id += 1;
            writer
                .batch_execute(&format!("INSERT INTO ex VALUES ({id}, {}", &row[1..]))
                .unwrap();
        }
    }
    db.batch_execute(&format!("INSERT INTO ex (id) VALUES ({MARKER})"))
        .unwrap();
    for ((column, op, value), ws) in EXTREME_CASES.iter().zip(clients.iter_mut()) {
        let mut got = BTreeSet::new();
        loop {
            let m = ws.recv();
            assert_eq!(m["type"], "change", "{column}={op}.{value}: {m}");
            let id = m["new"]["id"].as_i64().unwrap();
            if id == MARKER {
                break;
            }
            got.insert(id);
        }
        let condition = sql_condition(column, op, value);
        let want: BTreeSet<i64> = db
            .query(
                &format!("SELECT id::int8 FROM ex WHERE {condition} AND id <> {MARKER}"),
                &[],
            )
            .unwrap()
            .iter()
            .map(|r| r.get(0))
            .collect();
        assert!(!want.is_empty(), "{condition} selects nothing");
        assert_eq!(
            got, want,
            "filter {column}={op}.{value} vs WHERE {condition}"
        );
    }
}

#[test]
fn filters_on_types_that_do_not_compare_as_text_are_refused() {
    let cluster = Cluster::start("filters_refused", &[]);
    let mut db = cluster.client();
    db.batch_execute(
        "CREATE EXTENSION citext;
         CREATE TABLE odd (id int, ci citext, m money, iv interval, js json, ba bytea,
                           arr int[], r int4range, t text COLLATE \"en_US.utf8\", j jsonb);
         SELECT realtime_watch('odd');",
    )
    .unwrap();
    let mut ws = cluster.ws();
    for (filter, code) in [
        ("ci=eq.abc", "invalid_filter"),
        ("m=gt.100", "invalid_filter"),
        ("iv=eq.1 day", "invalid_filter"),
        ("js=eq.{}", "invalid_filter"),
        ("ba=eq.\\x00", "invalid_filter"),
        ("arr=eq.{1}", "invalid_filter"),
        ("r=eq.[1,2)", "invalid_filter"),
        ("t=lt.m", "invalid_filter"),
        ("j=neq.{}", "invalid_filter"),
        ("j=in.({},null)", "invalid_filter"),
        ("n=eq.1", "unknown_column"),
    ] {
        let reply = ws.try_subscribe("x", "odd", Some(filter));
        assert_eq!(reply["code"], code, "{filter}: {reply}");
        assert!(
            reply["message"].as_str().unwrap().contains("column"),
            "{reply}"
        );
    }
    // Operators that need what a type or collation does not give.
    for (filter, why) in [
        ("id=like.1", "like and ilike take text"),
        ("id=is.true", "takes a boolean column"),
        ("j=is.null", "jsonb filters take eq or in"),
        ("j=not.eq.{}", "jsonb filters take eq or in"),
        ("t=match.^m", "regular expressions"),
        ("t=imatch.^m", "regular expressions"),
        ("t=like.m\\", "escape character"),
        ("t=is.maybe", "is takes null, true, false or unknown"),
        ("t=eq.m,t=nope.m,t=eq.x", "t = 'm,t=nope.m,t=eq.x'"),
    ] {
        let reply = ws.try_subscribe("x", "odd", Some(filter));
        if why.starts_with("t = ") {
            // Not a condition after the comma: the comma is part of the value.
            assert_eq!(reply["type"], "subscribed", "{filter}: {reply}");
            ws.send(serde_json::json!({"type": "unsubscribe", "id": "x"}));
            assert_eq!(ws.recv()["type"], "unsubscribed");
            continue;
        }
        assert_eq!(reply["code"], "invalid_filter", "{filter}: {reply}");
        assert!(
            reply["message"].as_str().unwrap().contains(why),
            "{filter}: {reply}"
        );
    }
    // Equality on text in a deterministic non-C collation is still exact, and so is ilike
    // where the collation lowers letters as Unicode does.
    ws.subscribe("t", "odd", Some("t=eq.m"));
    ws.subscribe("ti", "odd", Some("t=ilike.M%"));
}

#[test]
fn rows_that_leave_a_filter_are_reported() {
    let cluster = Cluster::start("filters_leave", &[]);
    let mut db = cluster.client();
    db.batch_execute(
        "CREATE TABLE scores (id int PRIMARY KEY, score numeric); SELECT realtime_watch('scores');",
    )
    .unwrap();
    let mut ws = cluster.ws();
    ws.subscribe("hot", "scores", Some("score=gte.0.5"));
    db.batch_execute(
        "INSERT INTO scores VALUES (1, 0.9), (2, 0.1);
         UPDATE scores SET score = 0.3 WHERE id = 1;
         UPDATE scores SET score = 0.2 WHERE id = 1;
         UPDATE scores SET score = 0.7 WHERE id = 2;",
    )
    .unwrap();
    let m = ws.recv();
    assert_eq!(
        (m["type"].as_str(), m["op"].as_str()),
        (Some("change"), Some("INSERT"))
    );
    let left = ws.recv();
    assert_eq!(left["type"], "leave", "{left}");
    assert_eq!(left["op"], "UPDATE");
    assert_eq!(left["table"], "scores");
    assert_eq!(left["old"]["id"], 1);
    assert!(
        left.get("new").is_none(),
        "a leave carries the old row only: {left}"
    );
    assert!(left["position"].as_u64() > m["position"].as_u64());
    // Already outside: nothing for the second update; row 2 enters as an UPDATE.
    let entered = ws.recv();
    assert_eq!(
        (
            entered["type"].as_str(),
            entered["op"].as_str(),
            entered["new"]["id"].as_i64()
        ),
        (Some("change"), Some("UPDATE"), Some(2))
    );
}

#[test]
fn select_narrows_the_columns_sent() {
    let cluster = Cluster::start("filters_select", &[]);
    let mut db = cluster.client();
    db.batch_execute(
        "CREATE TABLE sel (id int PRIMARY KEY, a text, b text); SELECT realtime_watch('sel');",
    )
    .unwrap();
    let mut ws = cluster.ws();
    let subscribe = |ws: &mut Ws, select: serde_json::Value| {
        ws.send(serde_json::json!({
            "type": "subscribe", "id": "s", "table": "sel", "filter": "b=eq.x", "select": select,
        }));
        ws.recv()
    };
    let refused = subscribe(&mut ws, serde_json::json!(["id", "nope"]));
    assert_eq!(refused["code"], "unknown_column", "{refused}");
    // The filter may name a column the selection leaves out.
    assert_eq!(
        subscribe(&mut ws, serde_json::json!(["id", "a"]))["type"],
        "subscribed"
    );
    db.batch_execute("INSERT INTO sel VALUES (1, 'one', 'x'), (2, 'two', 'y')")
        .unwrap();
    let m = ws.recv();
    assert_eq!(m["new"], serde_json::json!({"id": 1, "a": "one"}), "{m}");
}
