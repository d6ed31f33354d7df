//! What unit tests of the engine need in place of PostgreSQL: a worker that answers
//! subscriptions from a fixed catalog, changes, and the shared state.

use crate::auth::Principal;
use crate::bridge::{
    request_channel, ChannelRights, Request, ResolveError, Resolved, Target, WorkerHandle,
};
use crate::change::{Batch, Change, Topic, Txn};
use crate::filter::{ResolvedFilter, ValueKind};
use crate::net::shared::{Limits, Shared};
use crate::ops::{Op, OpSet};
use crate::stats::Stats;
use crate::visibility::{RowAccess, Rule};
use std::sync::Arc;
use std::time::Duration;

/// The tables the test worker knows: `t` (OID 7), whose rows alice may see where `owner` is
/// "alice", without its `secret` column; `open` (OID 8), all of whose rows anyone may see.
/// Filters on either compare as text. Channel `news` is open to all.
pub fn worker() -> WorkerHandle {
    let (handle, inbox) = request_channel().unwrap();
    std::thread::spawn(move || {
        while let Ok(request) = inbox.rx.recv() {
            match request {
                Request::Resolve {
                    target,
                    filter,
                    reply,
                    ..
                } => {
                    let filter: Vec<ResolvedFilter> = filter
                        .into_iter()
                        .map(|f| ResolvedFilter {
                            column: f.column,
                            op: f.op,
                            negated: f.negated,
                            kind: ValueKind::Text {
                                ordered: true,
                                blank_padded: false,
                            },
                            values: f.values.into_iter().map(Into::into).collect(),
                            fold: None,
                        })
                        .collect();
                    let table = match target {
                        Target::Table(table) => table,
                        Target::Channel(name) if name == "news" => {
                            let _ = reply.send(Ok(Resolved {
                                topic: Topic::Channel(name.as_str().into()),
                                schema: String::new(),
                                table: name,
                                watched: OpSet::EMPTY.with(Op::Message),
                                filter: Vec::new(),
                                columns: None,
                                rows: RowAccess::All,
                                judged_after: 0,
                                described: "[]".into(),
                                rights: ChannelRights {
                                    send: true,
                                    presence: true,
                                    track: true,
                                },
                            }));
                            continue;
                        }
                        Target::Channel(name) => {
                            let _ = reply.send(Err(ResolveError::UnknownChannel(name)));
                            continue;
                        }
                    };
                    let resolved = match table.as_str() {
                        "t" => Ok(Resolved {
                            topic: Topic::Table(7),
                            schema: "public".into(),
                            table: "t".into(),
                            watched: OpSet::ALL,
                            filter,
                            columns: Some(["id".to_string(), "owner".to_string()].into()),
                            rows: RowAccess::Rule(Arc::new(Rule::In {
                                column: "owner".into(),
                                values: Some(["\"alice\"".to_string()].into()),
                                has_null: false,
                            })),
                            judged_after: 0,
                            described: "[]".into(),
                            rights: ChannelRights::default(),
                        }),
                        "open" => Ok(Resolved {
                            topic: Topic::Table(8),
                            schema: "public".into(),
                            table: "open".into(),
                            watched: OpSet::ALL,
                            filter,
                            columns: None,
                            rows: RowAccess::All,
                            judged_after: 0,
                            described: "[]".into(),
                            rights: ChannelRights::default(),
                        }),
                        other => Err(ResolveError::UnknownTable(other.into())),
                    };
                    let _ = reply.send(resolved);
                }
                Request::Release { .. } => {}
                _ => panic!("not asked in these tests"),
            }
        }
    });
    handle
}

pub fn shared(stats: &'static Stats) -> Arc<Shared> {
    Arc::new(Shared::new(
        Limits {
            max_connections: 10,
            max_connections_per_role: 0,
            max_anonymous_per_address: 0,
            max_message_size: 1 << 20,
            broadcast_rate: 100,
            max_broadcast_size: 16 * 1024,
            max_presence_per_channel: 100,
            max_subscriptions: 10,
            max_handshakes: 10,
            max_snapshot_workers: 1,
            heartbeat_interval: Duration::from_secs(30),
            handshake_timeout: Duration::from_secs(5),
            allowed_origins: Vec::new(),
            allowed_hosts: Vec::new(),
            serve_pages: false,
            metrics: None,
        },
        stats,
    ))
}

pub fn alice() -> Arc<Principal> {
    Arc::new(Principal {
        role: "alice".into(),
        claims: r#"{"role":"alice"}"#.into(),
        expires: None,
        anonymous: false,
    })
}

/// A change of table `relid` at `position`, rows as JSON text.
pub fn change(position: u64, relid: u32, op: Op, new: Option<&str>, old: Option<&str>) -> Change {
    let names = match relid {
        7 => ("public", "t"),
        _ => ("public", "open"),
    };
    Change::new(
        position,
        Arc::new(Txn::new(
            position as u32 + 100,
            "2026-12-02T00:00:00Z".into(),
        )),
        Topic::Table(relid),
        Arc::new((names.0.into(), names.1.into())),
        op,
        new.map(Into::into),
        old.map(Into::into),
    )
}

/// An INSERT into `t` of a row owned by `owner`, with a column alice may not read.
pub fn insert(position: u64, owner: &str) -> Batch {
    let new = format!(r#"{{"id":{position},"owner":"{owner}","secret":"x"}}"#);
    Batch::Changes(vec![change(position, 7, Op::Insert, Some(&new), None)])
}

pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}
