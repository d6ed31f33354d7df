//! The history published to a real nats-server (Debian's `nats-server`, JetStream on): every
//! entry lands once, in position order, across publisher restarts and a killed server; what
//! the history cannot give arrives as a gap; a change the server will not take becomes one.

use realtime_core::change::{Batch, Change, EndReason, GapReason, Topic, Txn};
use realtime_core::history::{History, Limits};
use realtime_core::net::nats::{follow, wire, Nats, Settings};
use realtime_core::ops::Op;
use realtime_core::stats::{Stat, Stats};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

#[path = "../../tests/common/nats_server.rs"]
mod nats_server;
use nats_server::{wait_until, Server};

const ROOMY: Limits = Limits {
    bytes: 1 << 30,
    age: Duration::from_secs(3600),
};

fn history(name: &str) -> (Arc<History>, PathBuf) {
    let dir = std::env::temp_dir().join(format!(
        "realtime_nats_history_{name}_{}",
        std::process::id()
    ));
    let _ = std::fs::remove_dir_all(&dir);
    let (history, _) = History::open(&dir, ROOMY).unwrap();
    (history, dir)
}

fn change(position: u64) -> Batch {
    Batch::Changes(vec![Change::new(
        position,
        Arc::new(Txn::new(
            1000 + position as u32,
            "2026-12-03T10:00:00.000001Z".into(),
        )),
        Topic::Table(16384),
        Arc::new(("public".into(), "defects".into())),
        Op::Insert,
        Some(format!("{{\"id\":{position},\"note\":\"n{position}\"}}").into()),
        None,
    )])
}

fn settings(server: &Server) -> Settings {
    Settings {
        url: server.url(),
        stream: "realtime".into(),
        max_bytes: 1 << 30,
        max_age: Duration::from_secs(3600),
    }
}

/// A publisher on runtime threads of its own, as the worker's network side runs it.
struct Publisher {
    runtime: tokio::runtime::Runtime,
    nats: Nats,
    stats: &'static Stats,
}

impl Publisher {
    fn start(history: &Arc<History>, settings: Settings) -> Publisher {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let stats: &'static Stats = Box::leak(Box::new(Stats::new()));
        let nats = Nats::start(history.clone(), None, stats, &runtime);
        nats.set(Some(settings));
        Publisher {
            runtime,
            nats,
            stats,
        }
    }

    fn stop(self) {
        self.nats.set(None);
        self.runtime.shutdown_timeout(Duration::from_secs(1));
    }
}

/// One message of the stream as read back.
struct Stored {
    subject: String,
    position: u64,
    id: String,
    batch: Batch,
}

/// Everything the stream holds, in stream order, decoded.
fn stream(server: &Server, name: &str) -> Vec<Stored> {
    nats_server::messages(&server.url(), name)
        .into_iter()
        .map(|m| Stored {
            subject: m.subject,
            position: m.position,
            id: m.id,
            batch: wire::decode(&m.payload).unwrap(),
        })
        .collect()
}

/// The positions of the changes in `stored`, in stream order.
fn changes(stored: &[Stored]) -> Vec<u64> {
    stored
        .iter()
        .filter_map(|s| match &s.batch {
            Batch::Changes(c) => Some(c[0].position),
            _ => None,
        })
        .collect()
}

/// The changes in `stored` are exactly `expected`, each once, in order.
fn assert_changes(stored: &[Stored], expected: impl IntoIterator<Item = u64>) {
    let got = changes(stored);
    let expected: Vec<u64> = expected.into_iter().collect();
    if got != expected {
        let missing: Vec<_> = expected
            .iter()
            .filter(|p| !got.contains(p))
            .take(20)
            .collect();
        let extra: Vec<_> = got
            .iter()
            .filter(|p| !expected.contains(p))
            .take(20)
            .collect();
        let first = got.iter().zip(&expected).position(|(a, b)| a != b);
        panic!(
            "{} changes where {} were expected; missing {missing:?}, not expected {extra:?}, first difference at index {first:?}",
            got.len(),
            expected.len()
        );
    }
}

fn assert_once_in_order(stored: &[Stored]) {
    let mut ids = std::collections::HashSet::new();
    for pair in stored.windows(2) {
        assert!(
            pair[0].position <= pair[1].position,
            "out of order: {:?} then {:?}",
            pair[0].id,
            pair[1].id
        );
    }
    for s in stored {
        assert!(ids.insert(&s.id), "stored twice: {}", s.id);
    }
}

#[test]
fn every_entry_lands_once_in_order_across_restarts_and_a_killed_server() {
    let mut server = Server::start("order", "");
    let (history, dir) = history("order");
    history.begin(0).unwrap();
    for p in 1..=500 {
        history.append(&change(p)).unwrap();
    }
    // A message on a channel whose name is no subject token, a table that ends after the
    // change at the same position, and a gap.
    history
        .append(&Batch::Changes(vec![Change::message(
            501,
            Arc::new(Txn::new(2000, "2026-12-03T10:00:01Z".into())),
            Arc::new(("room.1 *>".into(), "moved".into())),
            4242,
            "{\"x\":1}".into(),
        )]))
        .unwrap();
    let publisher = Publisher::start(&history, settings(&server));
    wait_until("501 messages", || stream(&server, "realtime").len() == 501);
    // Published alone, after the change at its position went out.
    history
        .append(&Batch::Ended {
            topic: Topic::Table(16384),
            reason: EndReason::Dropped,
            last_position: 501,
        })
        .unwrap();
    history
        .append(&Batch::Gap {
            reason: GapReason::QueueOverflow,
            first_position: 502,
            last_position: 510,
            topics: None,
        })
        .unwrap();
    wait_until("503 messages", || stream(&server, "realtime").len() == 503);
    let stored = stream(&server, "realtime");
    assert_once_in_order(&stored);
    assert_changes(&stored, 1..=501);
    assert_eq!(stored[0].subject, "realtime.table.public.defects");
    assert_eq!(stored[500].subject, "realtime.channel.room%2E1%20%2A%3E");
    assert_eq!(stored[501].subject, "realtime.control");
    match (
        &stored[0].batch,
        &stored[500].batch,
        &stored[501].batch,
        &stored[502].batch,
    ) {
        (
            Batch::Changes(row),
            Batch::Changes(message),
            Batch::Ended {
                topic: Topic::Table(16384),
                reason: EndReason::Dropped,
                last_position: 501,
            },
            Batch::Gap {
                reason: GapReason::QueueOverflow,
                first_position: 502,
                last_position: 510,
                topics: None,
            },
        ) => {
            let row = &row[0];
            assert_eq!(
                (row.op, row.txn.xid, row.txn.commit_time.as_str()),
                (Op::Insert, 1001, "2026-12-03T10:00:00.000001Z")
            );
            assert_eq!(row.new.as_deref(), Some("{\"id\":1,\"note\":\"n1\"}"));
            let message = &message[0];
            assert_eq!(
                (
                    message.op,
                    message.names.0.as_str(),
                    message.names.1.as_str()
                ),
                (Op::Message, "room.1 *>", "moved")
            );
            assert_eq!(
                (message.sender, message.new.as_deref()),
                (4242, Some("{\"x\":1}"))
            );
        }
        _ => panic!("the stream does not hold what the history does"),
    }
    assert_eq!(publisher.stats.get(Stat::NatsPosition), 510);
    assert_eq!(publisher.stats.get(Stat::NatsConnected), 1);

    // The worker restarts: the next publisher goes on from what the stream holds.
    publisher.stop();
    for p in 511..=1000 {
        history.append(&change(p)).unwrap();
    }
    let publisher = Publisher::start(&history, settings(&server));
    wait_until("position 1000", || {
        publisher.stats.get(Stat::NatsPosition) == 1000
    });

    // nats-server killed while changes are appended, then started again on its store.
    let writer = {
        let history = history.clone();
        std::thread::spawn(move || {
            for p in 1001..=6000 {
                history.append(&change(p)).unwrap();
                if p % 100 == 0 {
                    std::thread::sleep(Duration::from_millis(5));
                }
            }
        })
    };
    wait_until("position 2000 published", || {
        publisher.stats.get(Stat::NatsPosition) >= 2000
    });
    server.crash_and_restart();
    writer.join().unwrap();
    wait_until("position 6000 published", || {
        publisher.stats.get(Stat::NatsPosition) == 6000
    });
    let stored = stream(&server, "realtime");
    assert_once_in_order(&stored);
    assert_changes(&stored, (1..=501).chain(511..=6000));
    publisher.stop();
    drop(history);
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn what_the_history_no_longer_holds_is_published_as_a_gap() {
    let server = Server::start("expired", "");
    let (history, dir) = history("expired");
    history.begin(0).unwrap();
    for p in 1..=10 {
        history.append(&change(p)).unwrap();
    }
    let publisher = Publisher::start(&history, settings(&server));
    wait_until("position 10", || {
        publisher.stats.get(Stat::NatsPosition) == 10
    });
    publisher.stop();
    // The history moved on without the publisher: it now begins after position 100.
    drop(history);
    let _ = std::fs::remove_dir_all(&dir);
    let (history, dir) = self::history("expired");
    history.begin(100).unwrap();
    for p in 101..=110 {
        history.append(&change(p)).unwrap();
    }
    let publisher = Publisher::start(&history, settings(&server));
    wait_until("position 110", || {
        publisher.stats.get(Stat::NatsPosition) == 110
    });
    let stored = stream(&server, "realtime");
    assert_once_in_order(&stored);
    assert_eq!(
        changes(&stored),
        (1..=10).chain(101..=110).collect::<Vec<_>>()
    );
    assert!(matches!(
        stored[10].batch,
        Batch::Gap {
            reason: GapReason::HistoryExpired,
            first_position: 11,
            last_position: 100,
            ..
        }
    ));
    publisher.stop();
    drop(history);
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn a_change_larger_than_the_server_takes_is_published_as_a_gap() {
    let server = Server::start("large", "max_payload: 4096");
    let (history, dir) = history("large");
    history.begin(0).unwrap();
    history.append(&change(1)).unwrap();
    let Batch::Changes(mut big) = change(2) else {
        unreachable!()
    };
    big[0].new = Some(format!("{{\"id\":2,\"note\":\"{}\"}}", "x".repeat(10_000)).into());
    history.append(&Batch::Changes(big)).unwrap();
    let publisher = Publisher::start(&history, settings(&server));
    wait_until("position 2", || {
        publisher.stats.get(Stat::NatsPosition) == 2
    });
    // Resumed right after the gap that stands for it: the change is not taken up again.
    publisher.stop();
    history.append(&change(3)).unwrap();
    let publisher = Publisher::start(&history, settings(&server));
    wait_until("position 3", || {
        publisher.stats.get(Stat::NatsPosition) == 3
    });
    let stored = stream(&server, "realtime");
    assert_once_in_order(&stored);
    assert_eq!(stored.len(), 3);
    assert_changes(&stored, [1, 3]);
    assert_eq!(stored[1].subject, "realtime.control");
    assert!(matches!(
        &stored[1].batch,
        Batch::Gap {
            reason: GapReason::TooLarge,
            first_position: 2,
            last_position: 2,
            topics: Some(topics),
        } if topics == &[Topic::Table(16384)]
    ));
    publisher.stop();
    drop(history);
    let _ = std::fs::remove_dir_all(dir);
}

/// What a follower of the stream after a position is sent.
struct Follower {
    runtime: tokio::runtime::Runtime,
    rx: tokio::sync::mpsc::Receiver<Batch>,
}

impl Follower {
    fn start(server: &Server, position: u64) -> Follower {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let (tx, rx) = tokio::sync::mpsc::channel(64);
        runtime.spawn(follow::follow(
            server.url(),
            "realtime".into(),
            position,
            tx,
            |told| {
                if let Err(e) = told {
                    eprintln!("following: {e}")
                }
            },
        ));
        Follower { runtime, rx }
    }

    /// The next `n` batches, as the positions they account for (a gap as `reason first-last`).
    fn next(&mut self, n: usize) -> Vec<String> {
        let rx = &mut self.rx;
        self.runtime.block_on(async {
            let mut got = Vec::new();
            while got.len() < n {
                let batch = tokio::time::timeout(Duration::from_secs(60), rx.recv())
                    .await
                    .unwrap_or_else(|_| panic!("a batch within a minute after {}", got.len()))
                    .expect("following");
                got.push(match batch {
                    Batch::Gap {
                        reason,
                        first_position,
                        last_position,
                        ..
                    } => format!("{reason:?} {first_position}-{last_position}"),
                    Batch::Ended { last_position, .. } => format!("ended {last_position}"),
                    other => other.first_position().to_string(),
                });
            }
            got
        })
    }
}

fn positions(range: std::ops::RangeInclusive<u64>) -> Vec<String> {
    range.map(|p| p.to_string()).collect()
}

#[test]
fn a_follower_gets_everything_after_its_position_once_in_order() {
    let mut server = Server::start("follow", "");
    let (history, dir) = history("follow");
    history.begin(100).unwrap();
    for p in 101..=300 {
        history.append(&change(p)).unwrap();
    }
    history
        .append(&Batch::Ended {
            topic: Topic::Table(16384),
            reason: EndReason::Dropped,
            last_position: 300,
        })
        .unwrap();
    let publisher = Publisher::start(&history, settings(&server));
    wait_until("position 300", || {
        publisher.stats.get(Stat::NatsPosition) == 300
    });

    // From before what the stream holds: told so first.
    let mut from_start = Follower::start(&server, 0);
    let mut expected = vec!["HistoryExpired 1-100".to_string()];
    expected.extend(positions(101..=300));
    expected.push("ended 300".into());
    assert_eq!(from_start.next(202), expected);
    // From the middle, and from the change an end shares its position with.
    assert_eq!(
        Follower::start(&server, 250).next(51)[..50],
        positions(251..=300)[..]
    );
    assert_eq!(Follower::start(&server, 299).next(2), ["300", "ended 300"]);

    // Then live, across a killed nats-server.
    let mut live = Follower::start(&server, 300);
    for p in 301..=400 {
        history.append(&change(p)).unwrap();
    }
    assert_eq!(live.next(100), positions(301..=400));
    server.crash_and_restart();
    for p in 401..=500 {
        history.append(&change(p)).unwrap();
    }
    assert_eq!(live.next(100), positions(401..=500));
    assert_eq!(from_start.next(200), positions(301..=500));
    publisher.stop();
    drop(history);
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn catalog_markers_go_out_each_once_after_the_entries_at_their_position() {
    let server = Server::start("core_markers", "");
    let (history, dir) = history("markers");
    history.begin(0).unwrap();
    history.append(&change(1)).unwrap();
    // Two catalog changes with nothing committed between them: two markers, one position.
    history
        .append(&Batch::Reauthorize { last_position: 1 })
        .unwrap();
    history
        .append(&Batch::Reauthorize { last_position: 1 })
        .unwrap();
    history.append(&change(2)).unwrap();
    let publisher = Publisher::start(&history, settings(&server));
    wait_until("both changes in the stream", || {
        changes(&stream(&server, "realtime")).len() == 2
    });
    // A restart publishes nothing again; a marker after it goes out.
    publisher.stop();
    history
        .append(&Batch::Reauthorize { last_position: 2 })
        .unwrap();
    let publisher = Publisher::start(&history, settings(&server));
    wait_until("the last marker in the stream", || {
        stream(&server, "realtime").len() == 5
    });
    let kinds: Vec<(u64, &str)> = stream(&server, "realtime")
        .iter()
        .map(|s| match s.batch {
            Batch::Changes(_) => (s.position, "change"),
            Batch::Reauthorize { .. } => (s.position, "reauthorize"),
            _ => (s.position, "other"),
        })
        .collect();
    assert_eq!(
        kinds,
        [
            (1, "change"),
            (1, "reauthorize"),
            (1, "reauthorize"),
            (2, "change"),
            (2, "reauthorize"),
        ]
    );
    publisher.stop();
    let _ = std::fs::remove_dir_all(dir);
}
