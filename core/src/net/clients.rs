//! What each connection is doing, for operators: its role, subscriptions, the last position
//! it was sent and the last it acknowledged, and the batches waiting for it. The network side
//! rewrites a file with all of them every second; `realtime_clients()` in SQL reads it (the
//! worker's threads share no memory with the backend that runs the query). `/health` shows
//! totals only: it answers anyone.

use super::fanout::Registrar;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// How often the file is rewritten.
pub const REPORT_EVERY: Duration = Duration::from_secs(1);
/// The file, relative to the data directory (the worker's and every backend's working
/// directory).
pub const REPORT_FILE: &str = "pg_realtime/clients.json";

/// One connection, as the report shows it.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct Row {
    pub connection: u64,
    pub address: String,
    pub role: Option<String>,
    /// `id: schema.table` of each subscription.
    pub subscriptions: Vec<String>,
    pub delivered_position: u64,
    /// 0 when the client never sent an `ack`.
    pub acknowledged_position: u64,
    /// Batches handed to the connection and not yet sent.
    pub backlog_batches: u64,
    /// Unix microseconds.
    pub connected_at: u64,
}

/// The file's content.
#[derive(Serialize, Deserialize, Debug)]
pub struct Report {
    /// Unix microseconds when it was written.
    pub as_of: u64,
    pub clients: Vec<Row>,
}

/// A connection's entry, updated by its session.
pub struct Client {
    id: u64,
    address: IpAddr,
    connected_at: u64,
    role: Mutex<Option<String>>,
    subscriptions: Mutex<Vec<String>>,
    pub delivered: AtomicU64,
    pub acknowledged: AtomicU64,
    batches: Mutex<Option<Registrar>>,
    /// The registry it leaves when its connection ends.
    registry: Weak<Clients>,
}

impl Drop for Client {
    fn drop(&mut self) {
        if let Some(clients) = self.registry.upgrade() {
            lock(&clients.all).remove(&self.id);
        }
    }
}

impl Client {
    pub fn set_role(&self, role: Option<&str>) {
        *lock(&self.role) = role.map(str::to_string);
    }
    pub fn set_subscriptions(&self, subscriptions: Vec<String>) {
        *lock(&self.subscriptions) = subscriptions;
    }
    /// Where the backlog is counted: the session's place in the fan-out.
    pub fn set_batches(&self, registrar: Registrar) {
        *lock(&self.batches) = Some(registrar);
    }

    fn backlog(&self) -> u64 {
        lock(&self.batches)
            .as_ref()
            .map_or(0, |r| r.waiting() as u64)
    }

    fn row(&self) -> Row {
        Row {
            connection: self.id,
            address: self.address.to_string(),
            role: lock(&self.role).clone(),
            subscriptions: lock(&self.subscriptions).clone(),
            delivered_position: self.delivered.load(Relaxed),
            acknowledged_position: self.acknowledged.load(Relaxed),
            backlog_batches: self.backlog(),
            connected_at: self.connected_at,
        }
    }
}

/// Every open connection's entry.
#[derive(Default)]
pub struct Clients {
    next: AtomicU64,
    all: Mutex<HashMap<u64, Weak<Client>>>,
}

impl Clients {
    /// An entry for a new connection from `address`; it leaves the report when dropped.
    pub fn join(self: &Arc<Clients>, address: IpAddr) -> Arc<Client> {
        let id = self.next.fetch_add(1, Relaxed) + 1;
        let client = Arc::new(Client {
            id,
            address,
            connected_at: unix_micros(SystemTime::now()),
            role: Mutex::default(),
            subscriptions: Mutex::default(),
            delivered: AtomicU64::new(0),
            acknowledged: AtomicU64::new(0),
            batches: Mutex::default(),
            registry: Arc::downgrade(self),
        });
        lock(&self.all).insert(id, Arc::downgrade(&client));
        client
    }

    /// The entries alive now. (Taken out of the lock first: the last reference to an entry,
    /// dropped here, removes it from the registry, which takes the lock.)
    fn alive(&self) -> Vec<Arc<Client>> {
        lock(&self.all).values().filter_map(Weak::upgrade).collect()
    }

    pub fn report(&self) -> Report {
        let mut clients: Vec<Row> = self.alive().iter().map(|c| c.row()).collect();
        clients.sort_by_key(|r| r.connection);
        Report {
            as_of: unix_micros(SystemTime::now()),
            clients,
        }
    }

    /// Connections whose client has not acknowledged everything it was sent (of those that
    /// acknowledge at all), and connections with batches waiting. (For /health, which anyone
    /// may ask often: counts only, nothing copied.)
    pub fn behind(&self) -> (usize, usize) {
        let (mut unacknowledged, mut backlogged) = (0, 0);
        for client in self.alive() {
            let acknowledged = client.acknowledged.load(Relaxed);
            unacknowledged +=
                (acknowledged > 0 && acknowledged < client.delivered.load(Relaxed)) as usize;
            backlogged += (client.backlog() > 0) as usize;
        }
        (unacknowledged, backlogged)
    }
}

/// Rewrite `path` with `report`, whole or not at all (a reader never sees half a file).
pub fn write(path: &Path, report: &Report) -> std::io::Result<()> {
    let text = serde_json::to_vec(report).map_err(std::io::Error::other)?;
    let tmp = PathBuf::from(format!("{}.tmp", path.display()));
    std::fs::write(&tmp, text)?;
    std::fs::rename(&tmp, path)
}

fn unix_micros(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod unit {
    use super::*;

    #[test]
    fn an_entry_leaves_when_its_connection_ends_even_while_reported() {
        let clients = Arc::new(Clients::default());
        let a = clients.join(IpAddr::from([127, 0, 0, 1]));
        let b = clients.join(IpAddr::from([127, 0, 0, 2]));
        a.acknowledged.store(1, Relaxed);
        a.delivered.store(2, Relaxed);
        assert_eq!(clients.behind(), (1, 0));
        let alive = clients.alive();
        drop((a, b));
        // The report's references were the last ones: dropping them must not deadlock.
        drop(alive);
        assert!(clients.report().clients.is_empty());
        assert!(lock(&clients.all).is_empty());
    }
}
