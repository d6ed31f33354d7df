//! A prepared transaction's changes take their place in commit order at COMMIT PREPARED, like
//! any other commit's, and survive worker and server restarts while prepared.
mod common;
use common::Cluster;

/// Run `statement` in a transaction and prepare it as `gid`.
fn prepare(db: &mut postgres::Client, gid: &str, statement: &str) {
    db.batch_execute(&format!("BEGIN; {statement}; PREPARE TRANSACTION '{gid}'"))
        .unwrap();
}

/// Spill captured changes past 64 kB in this session, so large transactions go to files.
fn spill_early(db: &mut postgres::Client) {
    db.batch_execute("SET realtime.spill_threshold = '64kB'")
        .unwrap();
}

fn prepared_files(cluster: &Cluster) -> usize {
    std::fs::read_dir(cluster.data().join("pg_realtime/prepared"))
        .map(|d| d.count())
        .unwrap_or(0)
}

#[test]
fn commit_prepared_then_update_arrive_in_commit_order() {
    let cluster = Cluster::start("2pc_order", &[]);
    let mut a = cluster.client();
    let mut b = cluster.client();
    let mut ws = cluster.watched("t", "(id int PRIMARY KEY, v text)");
    for i in 0..30 {
        prepare(
            &mut a,
            &format!("g{i}"),
            &format!("INSERT INTO t VALUES ({i}, 'prepared')"),
        );
        b.batch_execute(&format!("COMMIT PREPARED 'g{i}'")).unwrap();
        b.batch_execute(&format!("UPDATE t SET v = 'updated' WHERE id = {i}"))
            .unwrap();
        let c = ws.changes(2);
        assert_eq!(
            (c[0]["op"].as_str(), c[0]["new"]["v"].as_str()),
            (Some("INSERT"), Some("prepared")),
            "round {i}: {c:?}"
        );
        assert_eq!(c[1]["op"], "UPDATE", "round {i}");
        assert!(c[0]["position"].as_u64() < c[1]["position"].as_u64());
    }
    assert_eq!(prepared_files(&cluster), 0);
}

#[test]
fn prepared_and_plain_writers_of_one_row_are_delivered_in_commit_order() {
    let cluster = Cluster::start("2pc_mixed", &[]);
    let mut db = cluster.client();
    db.batch_execute(
        "CREATE TABLE counter (id int PRIMARY KEY, n int); INSERT INTO counter VALUES (1, 0);
         SELECT realtime_watch('counter')",
    )
    .unwrap();
    let mut ws = cluster.ws();
    ws.subscribe("c", "counter", None);
    const WRITERS: usize = 4;
    const ROUNDS: usize = 40;
    std::thread::scope(|s| {
        for w in 0..WRITERS {
            let cluster = &cluster;
            s.spawn(move || {
                let mut db = cluster.client();
                for r in 0..ROUNDS {
                    if w % 2 == 0 {
                        let gid = format!("w{w}r{r}");
                        prepare(&mut db, &gid, "UPDATE counter SET n = n + 1 WHERE id = 1");
                        db.batch_execute(&format!("COMMIT PREPARED 'w{w}r{r}'"))
                            .unwrap();
                    } else {
                        db.batch_execute("UPDATE counter SET n = n + 1 WHERE id = 1")
                            .unwrap();
                    }
                }
            });
        }
    });
    let seen: Vec<i64> = ws
        .changes(WRITERS * ROUNDS)
        .iter()
        .map(|c| c["new"]["n"].as_i64().unwrap())
        .collect();
    assert_eq!(seen, (1..=(WRITERS * ROUNDS) as i64).collect::<Vec<_>>());
}

#[test]
fn a_large_prepared_transaction_is_not_overtaken_by_later_commits() {
    let cluster = Cluster::start("2pc_large", &[]);
    let mut db = cluster.client();
    let mut ws = cluster.watched("big", "(id int)");
    prepare(
        &mut db,
        "large",
        "INSERT INTO big SELECT g FROM generate_series(1, 30000) g",
    );
    db.batch_execute("COMMIT PREPARED 'large'").unwrap();
    db.batch_execute("INSERT INTO big VALUES (30001)").unwrap();
    let ids = ws.change_ids(30001);
    assert_eq!(ids, (1..=30001).collect::<Vec<_>>());
}

#[test]
fn rolled_back_prepared_transactions_are_never_delivered() {
    let cluster = Cluster::start("2pc_rollback", &[]);
    let mut db = cluster.client();
    let mut ws = cluster.watched("r", "(id int)");
    prepare(&mut db, "no", "INSERT INTO r VALUES (1)");
    spill_early(&mut db);
    prepare(
        &mut db,
        "no_big",
        "INSERT INTO r SELECT g FROM generate_series(2, 20000) g",
    );
    assert!(
        prepared_files(&cluster) >= 3,
        "state files and a spill file"
    );
    // A failed COMMIT PREPARED (unknown gid) publishes nothing and blocks nobody.
    assert!(db.batch_execute("COMMIT PREPARED 'nope'").is_err());
    db.batch_execute("ROLLBACK PREPARED 'no'").unwrap();
    db.batch_execute("ROLLBACK PREPARED 'no_big'").unwrap();
    db.batch_execute("INSERT INTO r VALUES (0)").unwrap();
    assert_eq!(ws.change_ids(1), vec![0]);
    ws.nothing_more();
    assert_eq!(prepared_files(&cluster), 0);
}

#[test]
fn prepared_transactions_survive_worker_and_server_restarts() {
    let cluster = Cluster::start("2pc_restart", &[]);
    let mut db = cluster.client();
    db.batch_execute("CREATE TABLE p (id int); SELECT realtime_watch('p')")
        .unwrap();
    prepare(&mut db, "across_worker", "INSERT INTO p VALUES (1)");
    spill_early(&mut db);
    prepare(
        &mut db,
        "across_server",
        "INSERT INTO p SELECT g FROM generate_series(100, 10099) g",
    );
    cluster.restart_worker();
    let mut ws = cluster.ws();
    ws.subscribe("p", "p", None);
    db.batch_execute("COMMIT PREPARED 'across_worker'").unwrap();
    assert_eq!(ws.change_ids(1), vec![1]);

    drop(ws);
    drop(db);
    cluster.restart();
    let mut db = cluster.client();
    let mut ws = cluster.ws();
    ws.subscribe("p", "p", None);
    db.batch_execute("COMMIT PREPARED 'across_server'").unwrap();
    assert_eq!(ws.change_ids(10000), (100..10100).collect::<Vec<_>>());
    assert_eq!(prepared_files(&cluster), 0);
}

#[test]
fn spill_files_orphaned_by_a_crash_are_removed_at_start() {
    let cluster = Cluster::start("2pc_orphans", &[]);
    cluster.pg_ctl(&["stop", "-m", "immediate"]);
    let dir = cluster.data().join("pg_realtime/prepared");
    std::fs::create_dir_all(&dir).unwrap();
    // What a crash after COMMIT PREPARED leaves when the worker had not read the spill file
    // yet, beside a transaction still prepared (its state file and spill file).
    let orphan = dir.join("00000000000000aa-5.spill");
    let kept = [
        dir.join("00000000000000bb-6"),
        dir.join("00000000000000bb-6.spill"),
    ];
    for f in std::iter::once(&orphan).chain(&kept) {
        std::fs::write(f, b"x").unwrap();
    }
    // As root the server runs as postgres; otherwise as us, who already own them.
    let _ = std::process::Command::new("chown")
        .args([
            "-R",
            "postgres:",
            cluster.data().join("pg_realtime").to_str().unwrap(),
        ])
        .status();
    cluster.pg_ctl(&[
        "start",
        "-w",
        "-l",
        cluster.dir.join("server.log").to_str().unwrap(),
    ]);
    cluster.wait_healthy();
    assert!(!orphan.exists(), "the orphaned spill file is removed");
    assert!(
        kept.iter().all(|f| f.exists()),
        "a prepared transaction's files stay"
    );
}
