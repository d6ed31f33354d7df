//! Operators see each connection: `realtime_clients()` (for pg_monitor) and totals in
//! `/health`; clients acknowledge what they handled with `ack`.

mod common;

use common::Cluster;
use serde_json::{json, Value};
use std::time::{Duration, Instant};

type Row = (i64, Option<String>, Vec<String>, i64, Option<i64>, i64);

/// `realtime_clients()` as `user`, once `ready` accepts it (the report is rewritten every
/// second).
fn clients_until(cluster: &Cluster, user: &str, ready: impl Fn(&[Row]) -> bool) -> Vec<Row> {
    let mut db = cluster.client_as(user);
    let deadline = Instant::now() + common::PATIENCE;
    loop {
        let rows: Vec<Row> = db
            .query(
                "SELECT connection, role, subscriptions, delivered_position, acknowledged_position,
                        backlog_batches
                   FROM realtime_clients() ORDER BY connection",
                &[],
            )
            .unwrap()
            .iter()
            .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3), r.get(4), r.get(5)))
            .collect();
        if ready(&rows) || Instant::now() > deadline {
            return rows;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A watched table `t`, a member of pg_monitor (`watcher`) and a role that is not (`nobody`).
fn setup(db: &mut postgres::Client) {
    db.batch_execute(
        "CREATE TABLE t (id int); SELECT realtime_watch('t');
         CREATE ROLE watcher LOGIN; GRANT pg_monitor TO watcher;
         CREATE ROLE nobody LOGIN;",
    )
    .unwrap();
}

#[test]
fn operators_see_each_connection_and_clients_acknowledge() {
    let cluster = Cluster::start("clients", &[]);
    let mut db = cluster.client();
    setup(&mut db);
    let mut acking = cluster.ws();
    acking.subscribe("a", "t", None);
    acking.subscribe("b", "t", Some("id=eq.1"));
    let mut silent = cluster.ws();
    silent.subscribe("s", "t", None);
    db.execute("INSERT INTO t VALUES (1)", &[]).unwrap();
    let position = acking.changes(1)[0]["position"].as_i64().unwrap();
    silent.changes(1);
    acking.send(json!({"type": "ack", "position": position}));

    let rows = clients_until(&cluster, "watcher", |rows| {
        rows.len() == 2 && rows[0].4 == Some(position)
    });
    assert_eq!(rows.len(), 2, "{rows:?}");
    let (_, role, subscriptions, delivered, acknowledged, backlog) = &rows[0];
    assert_eq!(role.as_deref(), Some("realtime_reader"));
    assert_eq!(
        subscriptions,
        &["\"a\": public.t".to_string(), "\"b\": public.t".to_string()]
    );
    assert_eq!(
        (*delivered, *acknowledged, *backlog),
        (position, Some(position), 0)
    );
    assert_eq!(rows[1].2, ["\"s\": public.t".to_string()]);
    assert_eq!(rows[1].4, None, "never acknowledged");

    // Others may not look.
    let refused = cluster
        .client_as("nobody")
        .query("SELECT * FROM realtime_clients()", &[])
        .unwrap_err();
    assert_eq!(refused.code().unwrap().code(), "42501");

    // /health counts, live: the acknowledging client is now behind by one change.
    db.execute("INSERT INTO t VALUES (2)", &[]).unwrap();
    acking.changes(1);
    acking.send(json!({"type": "ping", "ref": 1}));
    assert_eq!(acking.recv()["type"], "pong");
    let health: Value = cluster.health().unwrap();
    assert_eq!(health["clients_unacknowledged"], 1, "{health}");
    assert_eq!(health["clients_backlogged"], 0, "{health}");
    // An acknowledgement past what was sent counts for what was sent.
    acking.send(json!({"type": "ack", "position": u64::MAX / 2}));
    let rows = clients_until(&cluster, "watcher", |rows| {
        rows[0].3 > position && rows[0].4 == Some(rows[0].3)
    });
    assert_eq!(rows[0].4, Some(rows[0].3), "{rows:?}");
    assert!(rows[0].3 > position);

    // A closed connection leaves the report.
    drop(silent);
    let rows = clients_until(&cluster, "watcher", |rows| rows.len() == 1);
    assert_eq!(rows.len(), 1, "{rows:?}");
}

/// `realtime_stats()` reads the numbers the worker keeps in shared memory: the same that
/// `/health` shows, at once (no report file in between), for pg_monitor only.
#[test]
fn totals_are_read_from_shared_memory_by_sql_and_health_alike() {
    let cluster = Cluster::start("stats", &[]);
    let mut db = cluster.client();
    setup(&mut db);
    let mut ws = cluster.ws();
    ws.subscribe("a", "t", None);
    db.execute("INSERT INTO t SELECT generate_series(1, 3)", &[])
        .unwrap();
    let position = ws.changes(3)[2]["position"].as_u64().unwrap();
    let mut watcher = cluster.client_as("watcher");
    let mut stat = |name: &str| -> u64 {
        let value: i64 = watcher
            .query_one(
                "SELECT value FROM realtime_stats() WHERE name = $1",
                &[&name],
            )
            .unwrap()
            .get(0);
        value as u64
    };
    assert_eq!(stat("position"), position);
    assert_eq!(stat("changes_published_total"), 3);
    let native = |name: &str| format!("{name}{{protocol=\"native\"}}");
    assert_eq!(
        (stat(&native("connections")), stat(&native("subscriptions"))),
        (1, 1)
    );
    assert!(stat(&native("messages_sent_total")) >= 3);
    assert!(stat("batches_handed_total") >= 1);
    assert!(
        stat("read_to_dispatch_total") >= 1,
        "stage timings are kept"
    );
    let health = cluster.health().unwrap();
    assert_eq!(health["position"].as_u64(), Some(position));
    assert_eq!(health["connections"].as_u64(), Some(1));
    drop(ws);
    common::wait_until("the connection to leave", common::PATIENCE, || {
        stat(&native("connections")) == 0
    });
    // The view names them as /metrics does, for postgres_exporter.
    let row = watcher
        .query_one(
            "SELECT labels, value FROM realtime_metrics WHERE metric = 'realtime_changes_published_total'",
            &[],
        )
        .unwrap();
    assert_eq!(
        (row.get::<_, String>(0), row.get::<_, i64>(1)),
        (String::new(), 3)
    );
    let labels: Vec<String> = watcher
        .query(
            "SELECT labels FROM realtime_metrics WHERE metric = 'realtime_gaps_total' ORDER BY 1",
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert!(
        labels.contains(&"reason=\"slow_client\"".to_string()),
        "{labels:?}"
    );
    // The example custom queries for postgres_exporter run as a pg_monitor member.
    let queries = std::fs::read_to_string("docs/postgres_exporter.yaml").unwrap();
    let queries: Vec<&str> = queries
        .lines()
        .filter_map(|l| l.trim().strip_prefix("query: "))
        .map(|q| q.trim_matches('"'))
        .collect();
    assert_eq!(queries.len(), 2);
    for query in queries {
        let rows = watcher.query(query, &[]).unwrap();
        assert!(rows.len() > 5, "{query}: {} rows", rows.len());
    }
    let refused = cluster
        .client_as("nobody")
        .query("SELECT * FROM realtime_stats()", &[])
        .unwrap_err();
    assert_eq!(refused.code().unwrap().code(), "42501");
}
