//! Committed changes reach WebSocket clients complete, exact and in order; nothing else does.
mod common;
use common::{Cluster, Ws};
use serde_json::{json, Value};

fn cluster() -> &'static Cluster {
    common::shared("changes")
}

/// A fresh watched table on the shared cluster and a client subscribed to it.
fn watched(table: &str, ddl: &str) -> Ws {
    cluster().watched(table, ddl)
}

fn j(text: &str) -> Value {
    serde_json::from_str(text).unwrap()
}

/// The row with this `id`, as PostgreSQL's row_to_json renders it in this session.
fn row_to_json(db: &mut impl postgres::GenericClient, table: &str, id: i32) -> Value {
    let sql = format!("SELECT row_to_json({table})::text FROM {table} WHERE id = $1");
    let text: String = db.query_one(&sql, &[&id]).unwrap().get(0);
    j(&text)
}

#[test]
fn all_four_operations_with_exact_old_and_new() {
    let mut ws = watched("ops", "(id int PRIMARY KEY, name text, score numeric)");
    let mut db = cluster().client();
    db.batch_execute("INSERT INTO ops VALUES (1, 'a', 1.50)")
        .unwrap();
    db.batch_execute("UPDATE ops SET name = 'b', score = 2.25 WHERE id = 1")
        .unwrap();
    db.batch_execute("DELETE FROM ops WHERE id = 1").unwrap();
    db.batch_execute("TRUNCATE ops").unwrap();
    let c = ws.changes(4);
    assert_eq!(c[0]["op"], "INSERT");
    assert_eq!(c[0]["schema"], "public");
    assert_eq!(c[0]["table"], "ops");
    assert_eq!(c[0]["new"], j(r#"{"id": 1, "name": "a", "score": 1.50}"#));
    assert_eq!(
        c[0]["new"]["score"].to_string(),
        "1.50",
        "numeric keeps its exact text"
    );
    assert_eq!(c[0]["old"], Value::Null);
    assert_eq!(c[1]["op"], "UPDATE");
    assert_eq!(c[1]["old"], j(r#"{"id": 1, "name": "a", "score": 1.50}"#));
    assert_eq!(c[1]["new"], j(r#"{"id": 1, "name": "b", "score": 2.25}"#));
    assert_eq!(c[2]["op"], "DELETE");
    assert_eq!(c[2]["old"], j(r#"{"id": 1, "name": "b", "score": 2.25}"#));
    assert_eq!(c[2]["new"], Value::Null);
    assert_eq!(c[3]["op"], "TRUNCATE");
    let positions: Vec<u64> = c.iter().map(|m| m["position"].as_u64().unwrap()).collect();
    assert!(
        positions.windows(2).all(|w| w[0] < w[1]),
        "positions increase: {positions:?}"
    );
    for m in &c {
        assert!(m["xid"].as_u64().unwrap() > 0);
        assert!(m["commit_time"].as_str().unwrap().ends_with('Z'));
    }
    assert_ne!(c[0]["xid"], c[1]["xid"], "separate transactions");
}

#[test]
fn every_type_is_rendered_as_postgres_renders_it() {
    let mut db = cluster().client();
    db.batch_execute(
        "CREATE TYPE mood AS ENUM ('sad', 'happy'); CREATE TYPE pair AS (a int, b text)",
    )
    .unwrap();
    let mut ws = watched(
        "typed",
        "(big bigint, num numeric, ts timestamptz, arr int[], doc jsonb, bin bytea, m mood, p pair, u uuid, b bool, f float8, iv interval)",
    );
    let sql = "INSERT INTO typed VALUES (9223372036854775807, 123456789012345678901234567890.000000001,
        '2026-03-04 05:06:07.123456+00', '{1,2,3}', '{\"k\": {\"n\": [1, null]}}', '\\xdeadbeef', 'happy', ROW(1, 'x'),
        'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11', true, 1.5, '1 day 2 hours')";
    db.batch_execute(sql).unwrap();
    let expected: String = db
        .query_one(
            "SELECT row_to_json(t)::text FROM (SELECT 9223372036854775807::bigint AS big, 123456789012345678901234567890.000000001::numeric AS num,
             '2026-03-04 05:06:07.123456+00'::timestamptz AS ts, '{1,2,3}'::int[] AS arr, '{\"k\": {\"n\": [1, null]}}'::jsonb AS doc,
             '\\xdeadbeef'::bytea AS bin, 'happy'::mood AS m, ROW(1, 'x')::pair AS p, 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11'::uuid AS u,
             true AS b, 1.5::float8 AS f, '1 day 2 hours'::interval AS iv) t",
            &[],
        )
        .unwrap()
        .get(0);
    let change = &ws.changes(1)[0];
    let expected: Value = serde_json::from_str(&expected).unwrap();
    assert_eq!(change["new"], expected);
    assert_eq!(
        change["new"]["big"].to_string(),
        "9223372036854775807",
        "bigint exact"
    );
    assert_eq!(
        change["new"]["num"].to_string(),
        "123456789012345678901234567890.000000001",
        "numeric exact"
    );
    assert!(
        change["new"]["doc"].is_object(),
        "jsonb nested as JSON, not a string"
    );
    assert_eq!(change["new"]["p"], json!({"a": 1, "b": "x"}));
}

/// Rows are rendered by the extension's own renderer; it must agree with row_to_json on every
/// value, including the ones JSON cannot hold as numbers, odd column names, domains, dropped and
/// later-added columns, and a cast to json created after rows were already captured.
#[test]
fn rendering_matches_row_to_json_value_for_value() {
    let mut db = cluster().client();
    db.batch_execute(
        r#"CREATE TYPE shade AS ENUM ('dark', 'light');
        CREATE TYPE point3 AS (x float8, y float8, z float8);
        CREATE DOMAIN price AS numeric(10,2) CHECK (VALUE >= 0);
        CREATE DOMAIN label AS text;
        CREATE DOMAIN ints AS int[];"#,
    )
    .unwrap();
    let mut ws = watched(
        "exact",
        r#"(id int, gone text, i2 int2, i8 int8, f4 float4, f8 float8, n numeric, b bool, t text, vc varchar(5), c char(3),
            nm name, d date, ts timestamp, tz timestamptz, tm time, ttz timetz, iv interval, j json, jb jsonb, by bytea,
            u uuid, ip inet, arr int[], tarr text[], grid int[][], p point3, s shade, pr price, lb label, ia ints,
            m money, pt point, tv tsvector, bits bit(4), "we""ird" int, "new
line" int, "ü" int)"#,
    );
    db.batch_execute("ALTER TABLE exact DROP COLUMN gone")
        .unwrap();
    let rows = [
        r#"(1, 1, 1, 1.5, 1.5, 1.50, true, 'plain', 'abc', 'ab', 'nm', '2026-01-02', '2026-01-02 03:04:05.6', '2026-01-02 03:04:05.6+02',
            '03:04:05', '03:04:05+02', '1 year 2 mons 3 days 04:05:06', '{"a" : [1,  2]}', '{"b": {"c": null}}', '\x00ff', 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11',
            '10.0.0.1/8', '{1,NULL,3}', '{"x,y","q\"uote",NULL}', '{{1,2},{3,4}}', ROW(1, 2.5, -0), 'dark', 9.99, 'lab"el', '{5,6}',
            12.34, '(1,2)', 'a fat cat', B'1010', 1, 2, 3)"#,
        r#"(2, -32768, -9223372036854775808, 'NaN', 'Infinity', 'NaN', false, E'tab\there\nline\r\\ \"q\" \b\f \u0001 \u001f é 🦀', '',
            'x  ', 'n', 'infinity', '-infinity', 'infinity', '24:00:00', '00:00:00-12', '-1 day', '"str"', '[1, "x", true]', '',
            '00000000-0000-0000-0000-000000000000', '::1', '{}', '{}', '{}', ROW(NULL, NULL, NULL), 'light', 0, '', '{}',
            -1, '(-1.5,0)', '', B'0000', NULL, NULL, NULL)"#,
        r#"(3, 32767, 9223372036854775807, '-Infinity', '-0', 'Infinity', NULL, NULL, NULL, NULL, NULL, '4713-01-01 BC', '294276-12-31 23:59:59.999999',
            '1999-12-31 23:59:59.999999-08', NULL, NULL, NULL, 'null', 'null', NULL, NULL, NULL, '{NULL}', '{NULL}', NULL, NULL, NULL,
            NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL)"#,
        r#"(4, 0, 0, 1e30, 1.5e-7, '-Infinity', true, repeat('x', 3000), NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL,
            '1e400', '123456789012345678901234567890.123456789', NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL,
            NULL, NULL, NULL, NULL, NULL, NULL, NULL)"#,
    ];
    let mut expected = Vec::new();
    for (i, row) in rows.iter().enumerate() {
        db.batch_execute(&format!("INSERT INTO exact VALUES {row}"))
            .unwrap();
        expected.push(row_to_json(&mut db, "exact", i as i32 + 1));
    }
    // A column added with a default: older tuples do not store it.
    db.batch_execute("ALTER TABLE exact ADD COLUMN late int DEFAULT 7")
        .unwrap();
    let old_image = row_to_json(&mut db, "exact", 1);
    db.batch_execute("UPDATE exact SET i2 = 5 WHERE id = 1")
        .unwrap();
    let new_image = row_to_json(&mut db, "exact", 1);
    // A cast to json for the enum changes how row_to_json renders it from now on.
    db.batch_execute(
        "CREATE FUNCTION shade_json(shade) RETURNS json LANGUAGE sql IMMUTABLE AS $$ SELECT json_build_object('shade', $1::text) $$;
         CREATE CAST (shade AS json) WITH FUNCTION shade_json(shade);
         INSERT INTO exact (id, s) VALUES (5, 'light')",
    )
    .unwrap();
    let with_cast = row_to_json(&mut db, "exact", 5);
    assert_eq!(
        with_cast["s"],
        json!({"shade": "light"}),
        "the cast is in effect"
    );

    let changes = ws.changes(rows.len() + 2);
    for (change, expected) in changes.iter().zip(&expected) {
        assert_eq!(&change["new"], expected);
    }
    assert_eq!(changes[rows.len()]["old"], old_image);
    assert_eq!(changes[rows.len()]["new"], new_image);
    assert_eq!(changes[rows.len() + 1]["new"], with_cast);
    assert_eq!(
        expected[1]["f8"],
        json!("Infinity"),
        "non-finite numbers are strings"
    );
    assert_eq!(expected[0]["we\"ird"], json!(1));
    assert!(expected[0].get("gone").is_none(), "dropped column absent");
}

/// Rows of ordinary tables whose columns print the same anywhere are rendered by the worker,
/// not the writer. The worker must print them as row_to_json did in the writer's session, with
/// that session's time zone, DateStyle, IntervalStyle, extra_float_digits and bytea_output,
/// which may change between two statements of one transaction.
#[test]
fn rows_rendered_by_the_worker_match_row_to_json_in_the_writers_session() {
    let mut db = cluster().client();
    db.batch_execute(
        "CREATE TYPE tone AS ENUM ('low', 'high');
         CREATE DOMAIN amount AS numeric(12,3) CHECK (VALUE >= 0);",
    )
    .unwrap();
    let mut ws = watched(
        "deferred",
        r#"(id int PRIMARY KEY, gone text, i2 int2, i8 int8, f4 float4, f8 float8, n numeric, b bool, t text,
            vc varchar(5), c char(3), nm name, ch "char", o oid, d date, ts timestamp, tz timestamptz, tm time,
            ttz timetz, iv interval, j json, jb jsonb, by bytea, u uuid, ip inet, cidr cidr, mac macaddr,
            mac8 macaddr8, bits bit(4), vb varbit, tn tone, am amount, "odd ""name""" int, big text)"#,
    );
    db.batch_execute("ALTER TABLE deferred DROP COLUMN gone")
        .unwrap();
    let session = [
        ("TimeZone", "Asia/Kathmandu"),
        ("DateStyle", "SQL, DMY"),
        ("IntervalStyle", "sql_standard"),
        ("extra_float_digits", "0"),
        ("bytea_output", "escape"),
    ];
    let values = r#"(1, -32768, 9223372036854775807, 0.1, 0.1, 1.50, true, E'tab\t"q" é 🦀 \u0001', 'abc', 'ab', 'nm',
         'x', 4242, '2026-01-02', '2026-01-02 03:04:05.6', '2026-01-02 03:04:05.6+02', '03:04:05', '03:04:05+02',
         '1 year 2 mons -3 days 04:05:06', '{"a" : [1,  2]}', '{"b": {"c": null}}', '\x00ff41', 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11',
         '10.0.0.1/8', '10.0.0.0/8', '08:00:2b:01:02:03', '08:00:2b:01:02:03:04:05', B'1010', B'101', 'high', 12.5, 7, 'short'),
        (2, NULL, NULL, 'NaN', '-Infinity', 'NaN', false, '', NULL, NULL, NULL, NULL, NULL, 'infinity', '-infinity',
         'infinity', '24:00:00', '00:00:00-12', '-1 day', 'null', '"str"', '', NULL, '::1', NULL, NULL, NULL, B'0000', B'',
         'low', 0, NULL, (SELECT string_agg(md5(g::text), '') FROM generate_series(1, 3000) g))"#;
    let mut tx = db.transaction().unwrap();
    for (name, value) in session {
        tx.batch_execute(&format!("SET LOCAL {name} = '{value}'"))
            .unwrap();
    }
    tx.batch_execute(&format!("INSERT INTO deferred VALUES {values}"))
        .unwrap();
    let inserted = [
        row_to_json(&mut tx, "deferred", 1),
        row_to_json(&mut tx, "deferred", 2),
    ];
    // A second statement of the same transaction, under another time zone.
    tx.batch_execute("SET LOCAL TimeZone = 'America/St_Johns'; UPDATE deferred SET i2 = 5")
        .unwrap();
    let updated = [
        row_to_json(&mut tx, "deferred", 1),
        row_to_json(&mut tx, "deferred", 2),
    ];
    // Rolled back: its rows and shape must go, and what was captured before must stay.
    tx.batch_execute("SAVEPOINT s; SET LOCAL TimeZone = 'UTC'; UPDATE deferred SET i2 = NULL")
        .unwrap();
    assert_eq!(row_to_json(&mut tx, "deferred", 1)["i2"], Value::Null);
    tx.batch_execute("ROLLBACK TO SAVEPOINT s").unwrap();
    tx.commit().unwrap();
    // A column added with a default: the stored tuples do not hold it.
    db.batch_execute("ALTER TABLE deferred ADD COLUMN late int DEFAULT 7")
        .unwrap();
    let before_delete = row_to_json(&mut db, "deferred", 1);
    db.batch_execute("DELETE FROM deferred WHERE id = 1")
        .unwrap();

    let c = ws.changes(5);
    let ops: Vec<&str> = c.iter().map(|m| m["op"].as_str().unwrap()).collect();
    assert_eq!(ops, ["INSERT", "INSERT", "UPDATE", "UPDATE", "DELETE"]);
    assert_eq!(c[0]["new"], inserted[0]);
    assert_eq!(c[1]["new"], inserted[1]);
    // The update's old images are printed as the UPDATE's session printed them.
    assert_ne!(inserted[0]["tz"], updated[0]["tz"], "the time zone changed");
    assert_eq!(c[2]["new"], updated[0]);
    assert_eq!(c[3]["new"], updated[1]);
    assert_eq!(c[2]["old"]["tz"], updated[0]["tz"]);
    assert_eq!(c[2]["old"]["i2"], inserted[0]["i2"]);
    assert_eq!(
        c[3]["old"]["big"], inserted[1]["big"],
        "out-of-line value fetched"
    );
    assert_eq!(c[4]["old"], before_delete);
    assert_eq!(
        before_delete["late"],
        json!(7),
        "a missing column takes its default"
    );
    assert_eq!(
        inserted[0]["f8"].to_string(),
        "0.1",
        "extra_float_digits = 0 applied"
    );
    assert_eq!(
        inserted[0]["by"],
        json!("\\000\\377A"),
        "bytea_output = escape applied"
    );
    assert_eq!(inserted[1]["f4"], json!("NaN"));
    assert_eq!(inserted[1]["big"].as_str().unwrap().len(), 96_000);
    ws.nothing_more();
}

/// A change the worker cannot render (here: its enum type was dropped in the same
/// transaction) becomes a gap for the rest of that transaction; the worker carries on. The gap
/// goes to the clients of the table it hit: another table's client receives that table's rows,
/// written before the failure in the same transaction, and nothing else.
#[test]
fn a_row_the_worker_cannot_render_becomes_a_gap_for_its_tables_clients() {
    let mut db = cluster().client();
    db.batch_execute(
        "CREATE TYPE fleeting AS ENUM ('a', 'b');
         CREATE TABLE doomed (id int, f fleeting); SELECT realtime_watch('doomed')",
    )
    .unwrap();
    let mut ws = cluster().ws();
    ws.subscribe("s", "doomed", None);
    let mut bystander = watched("bystander", "(id int)");
    db.batch_execute(
        "BEGIN; INSERT INTO bystander VALUES (1); INSERT INTO doomed VALUES (1, 'a'), (2, 'b');
           DROP TYPE fleeting CASCADE; COMMIT;
         INSERT INTO doomed VALUES (3); INSERT INTO bystander VALUES (2)",
    )
    .unwrap();
    let gap = ws.recv();
    assert_eq!(gap["type"], "gap", "{gap}");
    assert_eq!(gap["reason"], "render_failed");
    let (from, to) = (
        gap["from_position"].as_u64().unwrap(),
        gap["to_position"].as_u64().unwrap(),
    );
    assert_eq!(to - from + 1, 2, "both rows of the transaction: {gap}");
    let next = ws.changes(1);
    assert_eq!(next[0]["new"], json!({"id": 3}));
    assert_eq!(next[0]["position"].as_u64().unwrap(), to + 1);
    ws.nothing_more();

    let seen = bystander.changes(2);
    assert_eq!(seen[0]["new"], json!({"id": 1}));
    assert_eq!(seen[0]["position"].as_u64().unwrap(), from - 1);
    assert_eq!(seen[1]["new"], json!({"id": 2}));
    bystander.nothing_more();
}

/// The capture trigger reads the statement's transition tables with a read pointer of its own:
/// the user's statement triggers on the same table, firing before and after it, still see
/// every row.
#[test]
fn other_transition_table_triggers_still_see_every_row() {
    let mut db = cluster().client();
    db.batch_execute(
        "CREATE TABLE seen (trigger text, n bigint);
         CREATE FUNCTION count_rows() RETURNS trigger LANGUAGE plpgsql AS $$
         BEGIN INSERT INTO seen SELECT TG_NAME, count(*) FROM inserted; RETURN NULL; END $$;",
    )
    .unwrap();
    let mut ws = watched("shared_rows", "(id int)");
    db.batch_execute(
        "CREATE TRIGGER a_first AFTER INSERT ON shared_rows REFERENCING NEW TABLE AS inserted
             FOR EACH STATEMENT EXECUTE FUNCTION count_rows();
         CREATE TRIGGER z_last AFTER INSERT ON shared_rows REFERENCING NEW TABLE AS inserted
             FOR EACH STATEMENT EXECUTE FUNCTION count_rows();
         INSERT INTO shared_rows SELECT g FROM generate_series(1, 5000) g",
    )
    .unwrap();
    assert_eq!(ws.change_ids(5000), (1..=5000).collect::<Vec<i64>>());
    let seen: Vec<(String, i64)> = db
        .query("SELECT trigger, n FROM seen ORDER BY trigger", &[])
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert_eq!(
        seen,
        [("a_first".to_string(), 5000), ("z_last".to_string(), 5000)]
    );
}

#[test]
fn rolled_back_work_is_never_delivered() {
    let mut ws = watched("rb", "(id int, note text)");
    let mut db = cluster().client();
    db.batch_execute("BEGIN; INSERT INTO rb VALUES (1, 'rolled back'); ROLLBACK")
        .unwrap();
    db.batch_execute(
        "BEGIN; INSERT INTO rb VALUES (2, 'kept');
         SAVEPOINT a; INSERT INTO rb VALUES (3, 'savepoint rolled back');
           SAVEPOINT b; INSERT INTO rb VALUES (4, 'nested, rolled back with a'); RELEASE b;
         ROLLBACK TO a;
         INSERT INTO rb VALUES (5, 'kept after rollback to');
         SAVEPOINT c; INSERT INTO rb VALUES (6, 'released savepoint'); RELEASE c;
         COMMIT",
    )
    .unwrap();
    assert_eq!(ws.change_ids(3), vec![2, 5, 6]);
    ws.nothing_more();
}

#[test]
fn a_transaction_arrives_together_in_statement_order() {
    let mut ws = watched("grp", "(id int PRIMARY KEY, v int)");
    let mut db = cluster().client();
    db.batch_execute(
        "BEGIN; INSERT INTO grp VALUES (1, 0), (2, 0); UPDATE grp SET v = 1 WHERE id = 2; DELETE FROM grp WHERE id = 1; INSERT INTO grp VALUES (3, 0); COMMIT",
    )
    .unwrap();
    let c = ws.changes(5);
    let ops: Vec<&str> = c.iter().map(|m| m["op"].as_str().unwrap()).collect();
    assert_eq!(ops, ["INSERT", "INSERT", "UPDATE", "DELETE", "INSERT"]);
    assert!(c
        .iter()
        .all(|m| m["xid"] == c[0]["xid"] && m["commit_time"] == c[0]["commit_time"]));
    let p: Vec<u64> = c.iter().map(|m| m["position"].as_u64().unwrap()).collect();
    assert!(
        p.windows(2).all(|w| w[1] == w[0] + 1),
        "consecutive positions: {p:?}"
    );
}

#[test]
fn two_phase_commit_is_delivered_only_when_committed() {
    let mut ws = watched("twopc", "(id int)");
    let mut db = cluster().client();
    db.batch_execute("BEGIN; INSERT INTO twopc VALUES (1); PREPARE TRANSACTION 'p_abort'")
        .unwrap();
    db.batch_execute("BEGIN; INSERT INTO twopc VALUES (2); PREPARE TRANSACTION 'p_commit'")
        .unwrap();
    db.batch_execute("INSERT INTO twopc VALUES (3)").unwrap();
    // Unrelated commits are not held up by the prepared transactions.
    assert_eq!(ws.changes(1)[0]["new"]["id"], 3);
    ws.nothing_more();
    db.batch_execute("ROLLBACK PREPARED 'p_abort'").unwrap();
    db.batch_execute("COMMIT PREPARED 'p_commit'").unwrap();
    let c = ws.changes(1);
    assert_eq!(c[0]["new"]["id"], 2);
    ws.nothing_more();
}

#[test]
fn a_5_mb_row_arrives_complete() {
    let mut ws = watched("big_row", "(id int, body text)");
    let mut db = cluster().client();
    db.batch_execute("INSERT INTO big_row SELECT 1, repeat('x', 5 * 1024 * 1024)")
        .unwrap();
    let c = ws.changes(1);
    assert_eq!(c[0]["new"]["body"].as_str().unwrap().len(), 5 * 1024 * 1024);
}

#[test]
fn a_100_000_row_transaction_arrives_complete_and_in_order() {
    let mut ws = watched("bulk", "(id int, note text)");
    let mut db = cluster().client();
    db.batch_execute("INSERT INTO bulk SELECT g, 'row ' || g FROM generate_series(1, 100000) g")
        .unwrap();
    let c = ws.changes(100_000);
    for (i, m) in c.iter().enumerate() {
        assert_eq!(m["new"]["id"].as_u64().unwrap(), i as u64 + 1);
    }
    assert!(c.iter().all(|m| m["xid"] == c[0]["xid"]));
    // The spill file is gone once streamed.
    let spill = cluster().data().join("pg_realtime");
    let left = std::fs::read_dir(&spill)
        .map(|d| {
            d.filter(|e| {
                e.as_ref()
                    .is_ok_and(|e| e.path().extension().is_some_and(|x| x == "spill"))
            })
            .count()
        })
        .unwrap_or(0);
    assert_eq!(left, 0, "spill files left in {spill:?}");
}

#[test]
fn partitioned_tables_report_the_watched_parent() {
    let mut db = cluster().client();
    db.batch_execute(
        "CREATE TABLE parts (id int, region text) PARTITION BY LIST (region);
         CREATE TABLE parts_eu PARTITION OF parts FOR VALUES IN ('eu');
         SELECT realtime_watch('parts');
         CREATE TABLE parts_us PARTITION OF parts FOR VALUES IN ('us');",
    )
    .unwrap();
    let mut ws = cluster().ws();
    ws.subscribe("p", "parts", None);
    db.batch_execute(
        "INSERT INTO parts VALUES (1, 'eu'), (2, 'us'); UPDATE parts SET id = 3 WHERE id = 1",
    )
    .unwrap();
    let c = ws.changes(3);
    assert!(c.iter().all(|m| m["table"] == "parts"), "{c:?}");
    assert_eq!(
        c[1]["new"],
        json!({"id": 2, "region": "us"}),
        "partition created after watching"
    );
    assert_eq!(c[2]["old"]["id"], 1);
}

#[test]
fn copy_is_captured() {
    let mut ws = watched("copied", "(id int, v text)");
    let mut db = cluster().client();
    let mut w = db.copy_in("COPY copied FROM STDIN").unwrap();
    use std::io::Write;
    for i in 0..50 {
        writeln!(w, "{i}\tv{i}").unwrap();
    }
    w.finish().unwrap();
    let c = ws.changes(50);
    assert_eq!(c[49]["new"], json!({"id": 49, "v": "v49"}));
}

/// INSERT ... ON CONFLICT DO UPDATE, MERGE and cascaded deletes fire the statement triggers of
/// every operation they perform.
#[test]
fn upserts_merges_and_cascades_report_each_row_once_with_its_operation() {
    let mut ws = watched("stock", "(sku text PRIMARY KEY, qty int)");
    let mut db = cluster().client();
    db.batch_execute(
        "CREATE TABLE stock_note (sku text REFERENCES stock ON DELETE CASCADE, note text);
         SELECT realtime_watch('stock_note');
         INSERT INTO stock VALUES ('a', 1);
         INSERT INTO stock VALUES ('a', 5), ('b', 2) ON CONFLICT (sku) DO UPDATE SET qty = stock.qty + excluded.qty;
         MERGE INTO stock s USING (VALUES ('b', 0), ('c', 9)) v(sku, qty) ON s.sku = v.sku
           WHEN MATCHED THEN DELETE WHEN NOT MATCHED THEN INSERT VALUES (v.sku, v.qty);
         INSERT INTO stock_note VALUES ('c', 'fragile');",
    )
    .unwrap();
    let mut notes = cluster().ws();
    notes.subscribe("n", "stock_note", None);
    db.batch_execute("DELETE FROM stock WHERE sku = 'c'")
        .unwrap();
    let summary = |c: &Value| format!("{} {} {}", c["op"].as_str().unwrap(), c["new"], c["old"]);
    let got: Vec<String> = ws.changes(6).iter().map(summary).collect();
    let mut upsert = got[1..3].to_vec();
    upsert.sort();
    assert_eq!(
        got[0],
        format!("INSERT {} null", j(r#"{"sku":"a","qty":1}"#))
    );
    assert_eq!(
        upsert,
        [
            format!("INSERT {} null", j(r#"{"sku":"b","qty":2}"#)),
            format!(
                "UPDATE {} {}",
                j(r#"{"sku":"a","qty":6}"#),
                j(r#"{"sku":"a","qty":1}"#)
            ),
        ]
    );
    let mut merge = got[3..5].to_vec();
    merge.sort();
    assert_eq!(
        merge,
        [
            format!("DELETE null {}", j(r#"{"sku":"b","qty":2}"#)),
            format!("INSERT {} null", j(r#"{"sku":"c","qty":9}"#)),
        ]
    );
    assert_eq!(
        got[5],
        format!("DELETE null {}", j(r#"{"sku":"c","qty":9}"#))
    );
    assert_eq!(
        notes.changes(1)[0]["old"],
        j(r#"{"sku":"c","note":"fragile"}"#)
    );
    ws.nothing_more();
}

#[test]
fn columns_added_after_watching_appear() {
    let mut ws = watched("evolving", "(id int)");
    let mut db = cluster().client();
    db.batch_execute("INSERT INTO evolving VALUES (1); ALTER TABLE evolving ADD COLUMN label text DEFAULT 'new'; INSERT INTO evolving VALUES (2)").unwrap();
    let c = ws.changes(2);
    assert_eq!(c[0]["new"], json!({"id": 1}));
    assert_eq!(c[1]["new"], json!({"id": 2, "label": "new"}));
}

#[test]
fn events_can_be_narrowed_and_unwatched() {
    let mut ws = watched("narrow", "(id int)");
    let mut db = cluster().client();
    db.batch_execute("SELECT realtime_watch('narrow', ARRAY['DELETE'])")
        .unwrap();
    db.batch_execute("INSERT INTO narrow VALUES (1); DELETE FROM narrow")
        .unwrap();
    let c = ws.changes(1);
    assert_eq!(c[0]["op"], "DELETE");
    db.batch_execute("SELECT realtime_unwatch('narrow'); SELECT realtime_unwatch('narrow'); INSERT INTO narrow VALUES (2)").unwrap();
    // The subscription is told it ended, once (the second unwatch had nothing to drop).
    ws.expect_ended("s", "table_unwatched");
    ws.nothing_more();
}
