//! Upgrading in place: a database created with the previous release's SQL (0.1.0, kept in
//! `sql/` as released), served by this release's library after the restart a new library
//! needs, is brought up to date with `ALTER EXTENSION realtime_ext UPDATE`; watching, the
//! history and connected clients carry on, and its schema is then a fresh install's.

mod common;

use common::{pg_run, Cluster};
use serde_json::json;
use std::path::PathBuf;

const PREVIOUS: &str = "0.1.0";

/// The previous release's install script, where CREATE EXTENSION looks for it.
struct PreviousScript(PathBuf);

impl PreviousScript {
    fn install() -> PreviousScript {
        let dir = PathBuf::from(pg_run("pg_config", &["--sharedir"]).trim()).join("extension");
        let name = format!("realtime_ext--{PREVIOUS}.sql");
        let to = dir.join(&name);
        std::fs::copy(PathBuf::from("sql").join(&name), &to)
            .unwrap_or_else(|e| panic!("copy {name} to {}: {e}", dir.display()));
        PreviousScript(to)
    }
}

impl Drop for PreviousScript {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

const TABLE: &str = "CREATE TABLE orders (id int PRIMARY KEY, status text);
                     SELECT realtime_watch('orders');";

/// The schema as pg_upgrade would recreate it: the extension's member objects one by one,
/// less what differs between any two clusters (object ids, transaction ids, the dump's
/// random restrict key).
fn schema(cluster: &Cluster) -> String {
    let port = cluster.port.to_string();
    let host = cluster.dir.to_str().unwrap();
    let dump = pg_run(
        "pg_dump",
        &[
            "--schema-only",
            "--binary-upgrade",
            "-h",
            host,
            "-p",
            &port,
            "-U",
            "postgres",
            "postgres",
        ],
    );
    // pg_dump heads each object with "--\n-- Name: ...; Type: ...; Schema: ...". A build
    // for `cargo pgrx test` adds a `tests` schema of in-process tests: not the extension's.
    dump.split("\n--\n-- ")
        .filter(|object| {
            let head = object.lines().next().unwrap_or("");
            !(head.starts_with("Name: tests; Type: SCHEMA") || head.contains("; Schema: tests;"))
        })
        .flat_map(|object| object.lines())
        .filter(|l| {
            !(l.trim().is_empty()
                || *l == "--"
                || l.contains("binary_upgrade_set_next")
                || l.contains("relfrozenxid")
                || l.contains("WHERE oid = '")
                || l.starts_with("\\restrict")
                || l.starts_with("\\unrestrict")
                || l.starts_with("-- Dumped")
                // Session settings pg_dump emits once, before the first object needing them.
                || l.starts_with("SET default_tablespace")
                || l.starts_with("SET default_table_access_method"))
        })
        .map(|l| {
            // The empty extension's list of configuration tables names them by oid.
            if l.contains("binary_upgrade_create_empty_extension") {
                // (`NULL`, `ARRAY[...]` or `'{16432}'`, as pg_dump versions write it).
                l.split(['{', '[']).next().unwrap_or(l).to_string()
            } else {
                l.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn the_previous_release_upgrades_in_place() {
    let script = PreviousScript::install();
    let cluster = Cluster::start_plain("upgrade", &[]);
    let mut db = cluster.client();
    db.batch_execute(&format!(
        "CREATE EXTENSION realtime_ext VERSION '{PREVIOUS}'; {TABLE}"
    ))
    .unwrap();
    cluster.wait_healthy();
    let mut ws = cluster.ws();
    ws.subscribe("o", "orders", None);
    db.batch_execute("INSERT INTO orders VALUES (1, 'new')")
        .unwrap();
    let first = ws.changes(1)[0]["position"].as_u64().unwrap();

    // The new release takes over at a restart; clients come back and resume.
    cluster.restart();
    let mut ws = cluster.ws();
    ws.send(json!({"type": "subscribe", "id": "o", "table": "orders", "since": first}));
    let reply = ws.recv();
    assert_eq!(reply["resume"], "complete", "{reply}");
    db = cluster.client();
    db.batch_execute("INSERT INTO orders VALUES (2, 'new')")
        .unwrap();
    assert_eq!(ws.change_ids(1), vec![2]);

    db.batch_execute("ALTER EXTENSION realtime_ext UPDATE")
        .unwrap();
    let version: String = db
        .query_one(
            "SELECT extversion FROM pg_extension WHERE extname = 'realtime_ext'",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(version, env!("CARGO_PKG_VERSION"));
    // The connected client goes on receiving, the table is still watched, the history still
    // holds what came before, and what the update added works.
    db.batch_execute("UPDATE orders SET status = 'paid' WHERE id = 1")
        .unwrap();
    assert_eq!(ws.change_ids(1), vec![1]);
    let watched: i64 = db
        .query_one(
            "SELECT count(*) FROM realtime_watched() WHERE tbl = 'orders'::regclass",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(watched, 1);
    let mut again = cluster.ws();
    again.send(json!({"type": "subscribe", "id": "h", "table": "orders", "since": first - 1}));
    assert_eq!(again.recv()["type"], "subscribed");
    let replayed: Vec<String> = (0..3)
        .map(|_| {
            let m = again.recv();
            match m["type"].as_str() {
                Some("change") => format!("{} {}", m["op"], m["new"]["id"]),
                _ => format!("{} {}", m["type"], m["reason"]),
            }
        })
        .collect();
    assert_eq!(
        replayed,
        [r#""INSERT" 1"#, r#""INSERT" 2"#, r#""UPDATE" 1"#]
    );
    let metrics: i64 = db
        .query_one("SELECT count(*) FROM realtime_metrics", &[])
        .unwrap()
        .get(0);
    assert!(metrics > 10);

    // The same schema as a fresh install of this release with the same table.
    let fresh = Cluster::start("upgrade_fresh", &[]);
    fresh.client().batch_execute(TABLE).unwrap();
    let (upgraded, installed) = (schema(&cluster), schema(&fresh));
    assert!(
        upgraded.contains("ALTER EXTENSION realtime_ext ADD"),
        "{upgraded}"
    );
    if upgraded != installed {
        let diff: Vec<String> = upgraded
            .lines()
            .zip(installed.lines())
            .filter(|(a, b)| a != b)
            .take(10)
            .map(|(a, b)| format!("upgraded: {a}\ninstalled: {b}"))
            .collect();
        panic!(
            "the upgraded schema differs from a fresh install's:\n{}",
            diff.join("\n")
        );
    }
    drop(script);
}
