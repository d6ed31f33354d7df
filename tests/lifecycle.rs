//! The worker as one backend among others: it answers ProcSignalBarriers whatever it is doing,
//! says 1012 when it goes away, and ends subscriptions whose table goes away.
mod common;
use common::Cluster;
use std::time::{Duration, Instant};

/// Statements that wait for every backend to absorb a ProcSignalBarrier.
fn run_barrier_statements(cluster: &Cluster, round: &str) {
    let space = cluster.dir.join(format!("space_{round}"));
    std::fs::create_dir_all(&space).unwrap();
    assert!(std::process::Command::new("chown")
        .args(["postgres:", space.to_str().unwrap()])
        .status()
        .unwrap()
        .success());
    let mut db = cluster.client();
    // Each statement waits until every backend has absorbed the barrier: a worker that never
    // answers makes one of them hit this limit. How long they take on a loaded machine is a
    // matter for benchmarks, so it is only reported.
    db.batch_execute("SET statement_timeout = '60s'").unwrap();
    let started = Instant::now();
    db.batch_execute(&format!("CREATE DATABASE x_{round}"))
        .unwrap();
    db.batch_execute(&format!(
        "CREATE TABLESPACE ts_{round} LOCATION '{}'",
        space.display()
    ))
    .unwrap();
    db.batch_execute(&format!(
        "ALTER DATABASE x_{round} SET TABLESPACE ts_{round}"
    ))
    .unwrap();
    db.batch_execute(&format!("DROP DATABASE x_{round}"))
        .unwrap();
    db.batch_execute(&format!("DROP TABLESPACE ts_{round}"))
        .unwrap();
    eprintln!("barrier statements ({round}): {:?}", started.elapsed());
}

#[test]
fn barriers_are_answered_idle_busy_and_with_clients() {
    let cluster = Cluster::start("barriers", &[]);
    run_barrier_statements(&cluster, "idle");

    let mut ws = cluster.watched("b", "(id int, pad text)");
    run_barrier_statements(&cluster, "clients");
    let reader = std::thread::spawn(move || ws.change_ids(200_000).len());

    // Busy: a large transaction being drained and delivered while the barriers run.
    let writer = {
        let conninfo = cluster.conninfo("postgres");
        std::thread::spawn(move || {
            let mut db = postgres::Client::connect(&conninfo, postgres::NoTls).unwrap();
            db.batch_execute(
                "INSERT INTO b SELECT g, repeat('x', 200) FROM generate_series(1, 200000) g",
            )
            .unwrap();
        })
    };
    let mut db = cluster.client();
    common::wait_until("the insert is running", Duration::from_secs(30), || {
        db.query_one(
            "SELECT count(*) FROM pg_stat_activity WHERE query LIKE 'INSERT INTO b %'",
            &[],
        )
        .unwrap()
        .get::<_, i64>(0)
            > 0
    });
    run_barrier_statements(&cluster, "busy");
    writer.join().unwrap();
    assert_eq!(reader.join().unwrap(), 200_000);
}

#[test]
fn clients_get_1012_when_the_worker_stops_or_the_server_restarts() {
    let cluster = Cluster::start("close_1012", &[]);
    let mut db = cluster.client();
    let mut ws = cluster.ws();
    let pid = cluster.worker_pid();
    db.execute("SELECT pg_terminate_backend($1)", &[&pid])
        .unwrap();
    let (code, reason) = ws.close_frame();
    assert_eq!(code, 1012, "{reason}");
    cluster.wait_for_new_worker(pid);

    let mut ws = cluster.ws();
    drop(db);
    let restart = std::thread::spawn({
        let data = cluster.data();
        let log = cluster.dir.join("server.log");
        move || {
            common::pg_run(
                "pg_ctl",
                &[
                    "-D",
                    data.to_str().unwrap(),
                    "restart",
                    "-w",
                    "-m",
                    "fast",
                    "-l",
                    log.to_str().unwrap(),
                ],
            )
        }
    });
    let (code, _) = ws.close_frame();
    assert_eq!(code, 1012);
    restart.join().unwrap();
    cluster.wait_healthy();
}

#[test]
fn subscriptions_end_when_their_table_is_dropped_unwatched_or_renamed() {
    let cluster = Cluster::start("ended", &[]);
    let mut db = cluster.client();
    db.batch_execute(
        "CREATE TABLE gone (id int); SELECT realtime_watch('gone');
         CREATE TABLE moved (id int); SELECT realtime_watch('moved');
         CREATE TABLE kept (id int); SELECT realtime_watch('kept');",
    )
    .unwrap();
    let mut ws = cluster.ws();
    ws.subscribe("gone", "gone", None);
    ws.subscribe(r#"moved"#, "moved", None);
    ws.subscribe("kept", "kept", None);

    // A rolled-back DROP ends nothing.
    db.batch_execute("BEGIN; DROP TABLE gone; ROLLBACK")
        .unwrap();
    db.batch_execute("INSERT INTO gone VALUES (1)").unwrap();
    assert_eq!(ws.change_ids(1), vec![1]);

    // Changes committed before the DROP arrive first, then the subscription ends.
    db.batch_execute("INSERT INTO gone VALUES (2)").unwrap();
    db.batch_execute("DROP TABLE gone").unwrap();
    assert_eq!(ws.change_ids(1), vec![2]);
    ws.expect_ended("gone", "table_dropped");
    // A new table of the same name is not the old subscription's.
    db.batch_execute(
        "CREATE TABLE gone (id int); SELECT realtime_watch('gone'); INSERT INTO gone VALUES (3)",
    )
    .unwrap();
    ws.nothing_more();

    // A rename ends the subscription at the table's next change, which it does not receive.
    db.batch_execute("ALTER TABLE moved RENAME TO moved_away; INSERT INTO moved_away VALUES (4)")
        .unwrap();
    ws.expect_ended("moved", "table_renamed");
    db.batch_execute("INSERT INTO kept VALUES (5)").unwrap();
    assert_eq!(ws.change_ids(1), vec![5]);
    ws.nothing_more();
}
