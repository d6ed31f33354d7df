//! What the worker sets and the network side obeys or counts: the reloadable settings
//! (`Limits`, TLS, token checking), the catalog epoch, the audiences judged apart, and the
//! per-role and per-address connection counts.

use crate::auth::AuthConfig;
use crate::change::AudienceId;
use crate::net::tls::TlsAcceptor;
use crate::stats::{Stat, Stats};
use crate::visibility::ApartSpec;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// The reloadable settings the network side obeys, as the worker last read them.
#[derive(Clone, Debug)]
pub struct Limits {
    pub max_connections: usize,
    /// Most connections one role may hold at once; 0: no limit.
    pub max_connections_per_role: usize,
    /// Most anonymous connections one address may hold at once; 0: no limit.
    pub max_anonymous_per_address: usize,
    pub max_message_size: usize,
    pub max_subscriptions: usize,
    /// Client broadcasts one connection may send a second (realtime.broadcast_rate).
    pub broadcast_rate: u32,
    /// Largest payload of a client broadcast or presence state, in bytes of JSON
    /// (realtime.max_broadcast_size).
    pub max_broadcast_size: usize,
    /// Most members tracked in one channel's presence (realtime.max_presence_per_channel).
    pub max_presence_per_channel: usize,
    pub max_handshakes: usize,
    /// Snapshot readers that may run at once (realtime.max_snapshot_workers).
    pub max_snapshot_workers: usize,
    pub heartbeat_interval: Duration,
    pub handshake_timeout: Duration,
    /// Lower-case origins a WebSocket upgrade may come from; empty: any.
    pub allowed_origins: Vec<String>,
    /// Lower-case host names (no port) requests may name in `Host`; empty: any.
    pub allowed_hosts: Vec<String>,
    /// Serve the inspector and the example pages (realtime.serve_pages).
    pub serve_pages: bool,
    /// Who may read `/metrics`; `None`: nobody (it answers 404).
    pub metrics: Option<MetricsAccess>,
}

/// Who may read `/metrics`: clients from these networks (any, if none are named), and with
/// this bearer token if one is set. Off unless one or the other is set.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MetricsAccess {
    pub networks: Vec<ipnet::IpNet>,
    pub token: Option<String>,
}

impl MetricsAccess {
    /// From realtime.metrics_addresses (comma-separated addresses or CIDR ranges) and
    /// realtime.metrics_token; with the entries that are neither, which are left out.
    pub fn parse(addresses: &str, token: &str) -> (Option<MetricsAccess>, Vec<String>) {
        let (networks, bad) = networks(addresses);
        let token = Some(token.to_string()).filter(|t| !t.is_empty());
        // Every entry refused leaves it off, not open to everyone.
        if networks.is_empty() && (token.is_none() || !bad.is_empty()) {
            return (None, bad);
        }
        (Some(MetricsAccess { networks, token }), bad)
    }

    /// Whether a client at `ip` presenting `authorization` (the header) may read metrics.
    pub fn allows(&self, ip: std::net::IpAddr, authorization: &str) -> Result<(), MetricsRefusal> {
        let ip = ip.to_canonical();
        if !self.networks.is_empty() && !self.networks.iter().any(|n| n.contains(&ip)) {
            return Err(MetricsRefusal::Address);
        }
        if let Some(token) = &self.token {
            let given = authorization
                .strip_prefix("Bearer ")
                .or_else(|| authorization.strip_prefix("bearer "))
                .unwrap_or("")
                .trim();
            if !constant_time_eq::constant_time_eq(given.as_bytes(), token.as_bytes()) {
                return Err(MetricsRefusal::Token);
            }
        }
        Ok(())
    }
}

/// Comma-separated addresses and CIDR ranges, as networks; with the entries that are
/// neither, which are left out.
pub fn networks(list: &str) -> (Vec<ipnet::IpNet>, Vec<String>) {
    let mut networks = Vec::new();
    let mut bad = Vec::new();
    for entry in list.split(',').map(str::trim).filter(|e| !e.is_empty()) {
        match entry.parse::<ipnet::IpNet>() {
            Ok(net) => networks.push(net),
            Err(_) => match entry.parse::<std::net::IpAddr>() {
                Ok(ip) => networks.push(ipnet::IpNet::from(ip)),
                Err(_) => bad.push(entry.to_string()),
            },
        }
    }
    (networks, bad)
}

/// Why a request for `/metrics` is refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MetricsRefusal {
    /// Not from realtime.metrics_addresses.
    Address,
    /// Without realtime.metrics_token.
    Token,
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

fn take<K: std::hash::Hash + Eq>(
    counts: &Mutex<std::collections::HashMap<K, usize>>,
    key: K,
    max: usize,
) -> bool {
    let mut counts = lock(counts);
    let n = counts.entry(key).or_default();
    if max > 0 && *n >= max {
        return false;
    }
    *n += 1;
    true
}

fn release<K: std::hash::Hash + Eq>(counts: &Mutex<std::collections::HashMap<K, usize>>, key: &K) {
    let mut counts = lock(counts);
    if let Some(n) = counts.get_mut(key) {
        *n -= 1;
        if *n == 0 {
            counts.remove(key);
        }
    }
}

/// Roles remembered as authorized; past it the memory starts over.
const MAX_AUTHORIZED_ROLES: usize = 10_000;

/// Numbers both sides read; written by the side named in each comment.
pub struct Shared {
    /// Both: the engine's numbers (in shared memory, for SQL to read too).
    pub stats: &'static Stats,
    /// Worker, from reloadable settings (`set_limits`).
    limits: Mutex<Arc<Limits>>,
    /// Worker: how new connections are accepted over TLS (realtime.ssl), or `None`.
    tls: Mutex<Option<TlsAcceptor>>,
    /// Worker: how tokens are checked (realtime.jwt_*, realtime.anon_role).
    auth: Mutex<Arc<AuthConfig>>,
    /// Worker: bumped when a catalog change may alter what a principal may see (GRANT,
    /// REVOKE, policies, row security, roles); sessions then authorize again.
    pub catalog_epoch: tokio::sync::watch::Sender<u64>,
    /// Network: connections per role, for realtime.max_connections_per_role, and anonymous
    /// ones per address, for realtime.max_anonymous_per_address.
    roles: Mutex<std::collections::HashMap<String, usize>>,
    anonymous: Mutex<std::collections::HashMap<std::net::IpAddr, usize>>,
    /// Worker: the audiences it judges apart, and how (`net::apart`).
    apart: Mutex<std::collections::HashMap<AudienceId, Arc<ApartSpec>>>,
    /// Network: roles the worker accepted, with the catalog epoch it did so in (a connection
    /// of a known role then needs no question).
    authorized: Mutex<std::collections::HashMap<String, u64>>,
    /// An edge server: why it should not be sent clients now, by what is wrong (the stream,
    /// the worker); `/health` says it.
    unready: Mutex<std::collections::BTreeMap<&'static str, String>>,
}

impl Shared {
    pub fn new(limits: Limits, stats: &'static Stats) -> Shared {
        Shared {
            stats,
            limits: Mutex::new(Arc::new(limits)),
            tls: Mutex::new(None),
            auth: Mutex::new(Arc::new(AuthConfig::closed())),
            catalog_epoch: tokio::sync::watch::Sender::new(0),
            roles: Mutex::default(),
            anonymous: Mutex::default(),
            apart: Mutex::default(),
            authorized: Mutex::default(),
            unready: Mutex::default(),
        }
    }
    /// The last position published.
    pub fn position(&self) -> u64 {
        self.stats.get(Stat::Position)
    }
    pub fn limits(&self) -> Arc<Limits> {
        self.limits
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
    pub fn set_limits(&self, limits: Limits) {
        *self.limits.lock().unwrap_or_else(|e| e.into_inner()) = Arc::new(limits);
    }
    pub fn tls(&self) -> Option<TlsAcceptor> {
        self.tls.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
    pub fn set_tls(&self, tls: Option<TlsAcceptor>) {
        *self.tls.lock().unwrap_or_else(|e| e.into_inner()) = tls;
    }
    /// Count a connection for `role` unless it already has `max` (0: no limit).
    pub fn take_role(&self, role: &str, max: usize) -> bool {
        take(&self.roles, role.to_string(), max)
    }
    pub fn release_role(&self, role: &str) {
        release(&self.roles, &role.to_string());
    }
    /// Count an anonymous connection from `address` unless it already has `max` (0: no limit).
    pub fn take_anonymous(&self, address: std::net::IpAddr, max: usize) -> bool {
        take(&self.anonymous, address, max)
    }
    pub fn release_anonymous(&self, address: std::net::IpAddr) {
        release(&self.anonymous, &address);
    }
    /// How audience `id` is judged apart, if it is.
    pub fn apart(&self, id: AudienceId) -> Option<Arc<ApartSpec>> {
        lock(&self.apart).get(&id).cloned()
    }
    /// Judge `id` apart as `spec` says (`None`: not apart any more).
    pub fn set_apart(&self, id: AudienceId, spec: Option<ApartSpec>) {
        let mut apart = lock(&self.apart);
        match spec {
            Some(spec) => apart.insert(id, Arc::new(spec)),
            None => apart.remove(&id),
        };
    }
    /// Whether the worker accepted `role` since the catalogs last changed.
    pub fn recently_authorized(&self, role: &str) -> bool {
        let epoch = *self.catalog_epoch.borrow();
        let authorized = self.authorized.lock().unwrap_or_else(|e| e.into_inner());
        authorized.get(role) == Some(&epoch)
    }
    pub fn note_authorized(&self, role: &str, epoch: u64) {
        let mut authorized = self.authorized.lock().unwrap_or_else(|e| e.into_inner());
        if authorized.len() >= MAX_AUTHORIZED_ROLES {
            authorized.clear();
        }
        authorized.insert(role.to_string(), epoch);
    }
    /// Say what about `part` keeps the server from serving (`None`: nothing any more).
    pub fn set_unready(&self, part: &'static str, why: Option<String>) {
        let mut unready = lock(&self.unready);
        match why {
            Some(why) => unready.insert(part, why),
            None => unready.remove(part),
        };
    }
    /// Why the server should not be sent clients now, if anything says so.
    pub fn unready(&self) -> Vec<String> {
        lock(&self.unready).values().cloned().collect()
    }
    pub fn auth(&self) -> Arc<AuthConfig> {
        self.auth.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
    pub fn set_auth(&self, auth: AuthConfig) {
        *self.auth.lock().unwrap_or_else(|e| e.into_inner()) = Arc::new(auth);
    }
}

#[cfg(test)]
mod unit {
    use super::{MetricsAccess, MetricsRefusal};

    #[test]
    fn metrics_are_off_unless_addresses_or_a_token_are_named() {
        assert_eq!(MetricsAccess::parse("", ""), (None, vec![]));
        let (off, bad) = MetricsAccess::parse("localhost, 10.0.0.0/33", "token");
        assert_eq!((off, bad.len()), (None, 2), "refused entries leave it off");

        let (access, bad) = MetricsAccess::parse(" 127.0.0.1, 10.0.0.0/8 ,::1, bogus", "");
        let access = access.unwrap();
        assert_eq!(bad, ["bogus"]);
        let ip = |s: &str| s.parse().unwrap();
        assert_eq!(access.allows(ip("127.0.0.1"), ""), Ok(()));
        assert_eq!(access.allows(ip("10.20.30.40"), ""), Ok(()));
        assert_eq!(access.allows(ip("::ffff:10.1.1.1"), ""), Ok(()));
        assert_eq!(access.allows(ip("::1"), ""), Ok(()));
        assert_eq!(
            access.allows(ip("192.168.1.1"), ""),
            Err(MetricsRefusal::Address)
        );

        let (access, _) = MetricsAccess::parse("", "s3cret");
        let access = access.unwrap();
        let anywhere = ip("192.168.1.1");
        assert_eq!(access.allows(anywhere, "Bearer s3cret"), Ok(()));
        assert_eq!(
            access.allows(anywhere, "Bearer s3cre"),
            Err(MetricsRefusal::Token)
        );
        assert_eq!(
            access.allows(anywhere, "s3cret"),
            Err(MetricsRefusal::Token)
        );
        assert_eq!(access.allows(anywhere, ""), Err(MetricsRefusal::Token));
    }
}
