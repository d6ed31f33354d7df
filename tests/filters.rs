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
