//! The history published to a real nats-server: with realtime.nats_url set, every committed
//! change lands in the stream once, in commit order, as the JSON any NATS client reads, across
//! the worker's restarts (terminated, killed) and the server's; the settings reload.

mod common;
#[path = "common/nats_server.rs"]
mod nats_server;

use common::{wait_until, Cluster};
use serde_json::Value;
use std::time::Duration;

/// The stream's messages as JSON, with their subjects and positions.
fn bodies(nats: &nats_server::Server, stream: &str) -> Vec<(String, u64, Value)> {
    nats_server::messages(&nats.url(), stream)
        .into_iter()
        .map(|m| {
            (
                m.subject,
                m.position,
                serde_json::from_slice(&m.payload).unwrap(),
            )
        })
        .collect()
}

/// The ids of the rows the stream's changes carry, in stream order.
/// The stream's changes, without the catalog markers on its control subject.
fn changes(messages: &[(String, u64, Value)]) -> impl Iterator<Item = &(String, u64, Value)> {
    messages.iter().filter(|(_, _, b)| b["kind"] == "change")
}

fn row_ids(messages: &[(String, u64, Value)]) -> Vec<i64> {
    changes(messages)
        .map(|(_, _, b)| b["record"]["id"].as_i64().unwrap())
        .collect()
}

fn table_ids(cluster: &Cluster) -> Vec<i64> {
    cluster
        .client()
        .query("SELECT id::int8 FROM defects ORDER BY id", &[])
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect()
}

fn insert(db: &mut postgres::Client, rows: i32) {
    db.batch_execute(&format!(
        "INSERT INTO defects (line, note) SELECT 'A', 'n' || g FROM generate_series(1, {rows}) g"
    ))
    .unwrap();
}

fn set_stream(db: &mut postgres::Client, name: &str) {
    db.batch_execute(&format!("ALTER SYSTEM SET realtime.nats_stream = '{name}'"))
        .unwrap();
    db.batch_execute("SELECT pg_reload_conf()").unwrap();
}

#[test]
fn committed_changes_land_in_the_stream_once_in_order_across_restarts() {
    let nats = nats_server::Server::start("pg", "");
    let url = format!("realtime.nats_url = '{}'", nats.url());
    let cluster = Cluster::start("nats", &[&url]);
    let mut db = cluster.client();
    db.batch_execute(
        "CREATE TABLE defects (id bigserial PRIMARY KEY, line text, note text);
         SELECT realtime_watch('defects');",
    )
    .unwrap();
    for _ in 0..10 {
        insert(&mut db, 10);
    }
    wait_until("100 rows in the stream", Duration::from_secs(60), || {
        row_ids(&bodies(&nats, "realtime")).len() == 100
    });
    let messages = bodies(&nats, "realtime");
    // Catalog markers (creating and watching the table) come first, on the control subject.
    let (subject, _, first) = changes(&messages).next().unwrap();
    assert_eq!(subject, "realtime.table.public.defects");
    assert_eq!(first["type"], "INSERT");
    assert_eq!(first["schema"], "public");
    assert_eq!(first["record"]["note"], "n1");
    assert!(first["commit_time"].as_str().unwrap().ends_with('Z'));
    assert_eq!(row_ids(&messages), table_ids(&cluster));
    assert_eq!(cluster.stat("nats_connected"), 1);

    // The worker terminated, killed, and the server restarted, each while rows are written.
    let worker = cluster.worker_pid();
    db.execute("SELECT pg_terminate_backend($1)", &[&worker])
        .unwrap();
    insert(&mut db, 50);
    cluster.wait_for_new_worker(worker);
    insert(&mut db, 50);
    cluster.kill_worker();
    let mut db = cluster.client();
    insert(&mut db, 50);
    cluster.restart();
    let mut db = cluster.client();
    insert(&mut db, 50);
    let rows = table_ids(&cluster);
    wait_until("every row in the stream", Duration::from_secs(60), || {
        row_ids(&bodies(&nats, "realtime")).len() >= rows.len()
    });
    let messages = bodies(&nats, "realtime");
    assert_eq!(row_ids(&messages), rows, "each row once, in commit order");
    let positions: Vec<u64> = messages.iter().map(|(_, p, _)| *p).collect();
    assert!(
        positions.windows(2).all(|w| w[0] <= w[1]),
        "in position order"
    );
    let gaps: Vec<&Value> = messages
        .iter()
        .map(|(_, _, b)| b)
        .filter(|b| b["kind"] == "gap")
        .collect();
    assert!(gaps.is_empty(), "gaps: {gaps:?}");

    // Another stream on reload: it is given the history from its start.
    set_stream(&mut db, "plant_2");
    insert(&mut db, 1);
    let rows = table_ids(&cluster);
    wait_until(
        "the history in the new stream",
        Duration::from_secs(60),
        || row_ids(&bodies(&nats, "plant_2")) == rows,
    );
    let messages = bodies(&nats, "plant_2");
    let first = changes(&messages).next().unwrap();
    assert_eq!(first.0, "plant_2.table.public.defects");

    // A name that is no stream name is refused, and publishing goes on as it was.
    set_stream(&mut db, "a.b");
    wait_until("the refusal logged", Duration::from_secs(30), || {
        cluster
            .log()
            .contains("realtime.nats_stream: \"a.b\" is not a stream name")
    });
    insert(&mut db, 1);
    let rows = table_ids(&cluster);
    wait_until("the row in the stream", Duration::from_secs(60), || {
        row_ids(&bodies(&nats, "plant_2")) == rows
    });
    assert!(cluster.log().contains("publishing to NATS as before"));
}

#[test]
fn an_unreachable_nats_server_changes_nothing_else() {
    // Nothing listens there: the worker logs why and serves its clients as ever.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let url = format!("realtime.nats_url = 'nats://realtime:secret@127.0.0.1:{port}'");
    let cluster = Cluster::start("nats_unreachable", &[&url]);
    let mut ws = cluster.watched(
        "defects",
        "(id bigserial PRIMARY KEY, line text, note text)",
    );
    let mut db = cluster.client();
    insert(&mut db, 3);
    assert_eq!(ws.change_ids(3).len(), 3);
    wait_until("the failure logged", Duration::from_secs(30), || {
        cluster.log().contains("publishing to NATS at nats://")
    });
    let log = cluster.log();
    assert!(!log.contains("secret"), "the password is not logged");
    assert!(log.contains("cannot connect"));
    assert_eq!(cluster.stat("nats_connected"), 0);
}
