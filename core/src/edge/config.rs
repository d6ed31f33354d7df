//! An edge server's settings: the worker's own (`realtime.*`) that apply to serving clients,
//! by the same names, from a file of `name = value` lines and from the environment
//! (`REALTIME_EDGE_<NAME>`, which wins). A name nobody knows, or a value that does not read,
//! is refused with its name: a typo never silently leaves a default in force.

use crate::auth::AuthSettings;
use crate::net::nats::Settings as Nats;
use crate::net::shared::{Limits, MetricsAccess};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

/// Every setting with its default (`None`: none).
const KNOWN: &[(&str, Option<&str>)] = &[
    ("nats_url", None),
    ("nats_stream", Some("realtime")),
    ("listen_addresses", Some("localhost")),
    ("port", Some("8080")),
    ("dir", None),
    ("jwt_secret", None),
    ("jwt_secret_is_base64", Some("off")),
    ("jwt_audience", None),
    ("jwt_role_claim_key", Some(".role")),
    ("anon_role", None),
    ("allowed_origins", None),
    ("allowed_hosts", None),
    ("ssl", Some("off")),
    ("ssl_cert_file", None),
    ("ssl_key_file", None),
    ("metrics_addresses", None),
    ("metrics_token", None),
    ("serve_pages", Some("on")),
    ("max_connections", Some("10000")),
    ("max_connections_per_role", Some("0")),
    ("max_anonymous_per_address", Some("1000")),
    ("max_handshakes", Some("4096")),
    ("max_subscriptions", Some("100")),
    ("max_message_size", Some("64kB")),
    ("broadcast_rate", Some("100")),
    ("max_broadcast_size", Some("16kB")),
    ("max_presence_per_channel", Some("10000")),
    ("max_snapshot_workers", Some("2")),
    ("heartbeat_interval", Some("30s")),
    ("handshake_timeout", Some("10s")),
    ("client_backlog", Some("1024")),
    ("client_memory", Some("128MB")),
    ("history_size", Some("256MB")),
    ("history_age", Some("1d")),
];

/// The environment's prefix for a setting's upper-cased name.
pub const ENV_PREFIX: &str = "REALTIME_EDGE_";

pub struct Config {
    values: BTreeMap<&'static str, String>,
}

impl Config {
    /// The settings in `file` (if any), overridden by those in `env`.
    pub fn read(
        file: Option<&std::path::Path>,
        env: impl Iterator<Item = (String, String)>,
    ) -> Result<Config, String> {
        let mut values: BTreeMap<&'static str, String> = KNOWN
            .iter()
            .filter_map(|(name, default)| Some((*name, (*default)?.to_string())))
            .collect();
        if let Some(file) = file {
            let text = std::fs::read_to_string(file)
                .map_err(|e| format!("cannot read {}: {e}", file.display()))?;
            for (n, line) in text.lines().enumerate() {
                let line = line.trim();
                if line.is_empty() || line.starts_with('#') {
                    continue;
                }
                let (name, value) = line.split_once('=').ok_or_else(|| {
                    format!("{}:{}: expected name = value", file.display(), n + 1)
                })?;
                let name = known(name.trim()).ok_or_else(|| {
                    format!(
                        "{}:{}: unknown setting \"{}\"",
                        file.display(),
                        n + 1,
                        name.trim()
                    )
                })?;
                values.insert(name, unquote(value.trim()).to_string());
            }
        }
        for (key, value) in env {
            let Some(name) = key.strip_prefix(ENV_PREFIX) else {
                continue;
            };
            let name = known(&name.to_ascii_lowercase())
                .ok_or_else(|| format!("unknown setting in the environment: {key}"))?;
            values.insert(name, value);
        }
        let config = Config { values };
        // Everything read once now, so that a bad value stops the start, not a later use.
        config.nats()?;
        config.limits()?;
        config.fanout()?;
        config.history()?;
        config.port()?;
        Ok(config)
    }

    fn get(&self, name: &str) -> &str {
        self.values.get(name).map_or("", String::as_str)
    }

    fn number<T: std::str::FromStr>(&self, name: &str) -> Result<T, String> {
        self.get(name)
            .parse()
            .map_err(|_| format!("{name}: \"{}\" is not a number in range", self.get(name)))
    }

    /// A size as postgresql.conf writes one (`64kB`, `128MB`, `1GB`; a bare number is bytes).
    fn bytes(&self, name: &str) -> Result<u64, String> {
        quantity(
            self.get(name),
            &[("B", 1), ("kB", 1 << 10), ("MB", 1 << 20), ("GB", 1 << 30)],
            1,
        )
        .ok_or_else(|| {
            format!(
                "{name}: \"{}\" is not a size (64kB, 128MB, ...)",
                self.get(name)
            )
        })
    }

    /// A duration as postgresql.conf writes one (`500ms`, `30s`, `5min`, `1h`, `1d`; a bare
    /// number is in `unit` milliseconds).
    fn duration(&self, name: &str, unit: u64) -> Result<Duration, String> {
        let units = [
            ("ms", 1),
            ("s", 1000),
            ("min", 60_000),
            ("h", 3_600_000),
            ("d", 86_400_000),
        ];
        quantity(self.get(name), &units, unit)
            .map(Duration::from_millis)
            .ok_or_else(|| {
                format!(
                    "{name}: \"{}\" is not a duration (30s, 5min, ...)",
                    self.get(name)
                )
            })
    }

    fn flag(&self, name: &str) -> Result<bool, String> {
        match self.get(name).to_ascii_lowercase().as_str() {
            "on" | "true" | "yes" | "1" => Ok(true),
            "off" | "false" | "no" | "0" => Ok(false),
            other => Err(format!("{name}: \"{other}\" is not on or off")),
        }
    }

    fn list(&self, name: &str) -> Vec<String> {
        self.get(name)
            .split(',')
            .map(|s| s.trim().to_ascii_lowercase())
            .filter(|s| !s.is_empty())
            .collect()
    }

    pub fn nats(&self) -> Result<Nats, String> {
        let url = self.get("nats_url");
        if url.is_empty() {
            return Err(
                "nats_url is not set: the edge reads the database's changes from NATS".into(),
            );
        }
        let stream = self.get("nats_stream").to_string();
        Nats::check_stream(&stream).map_err(|e| format!("nats_stream: {e}"))?;
        Ok(Nats {
            url: url.to_string(),
            stream,
            max_bytes: 0,
            max_age: Duration::ZERO,
        })
    }

    pub fn hosts(&self) -> String {
        self.get("listen_addresses").to_string()
    }

    pub fn port(&self) -> Result<u16, String> {
        self.number("port")
    }

    /// Where the edge keeps what it reads of the stream and its sockets; emptied at start.
    pub fn dir(&self) -> Result<PathBuf, String> {
        Ok(match self.get("dir") {
            "" => std::env::temp_dir().join(format!("realtime-edge-{}", self.port()?)),
            dir => PathBuf::from(dir),
        })
    }

    pub fn auth(&self) -> Result<AuthSettings, String> {
        Ok(AuthSettings {
            secret: self.get("jwt_secret").to_string(),
            secret_is_base64: self.flag("jwt_secret_is_base64")?,
            audience: self.get("jwt_audience").to_string(),
            role_claim_key: self.get("jwt_role_claim_key").to_string(),
            anon_role: self.get("anon_role").to_string(),
        })
    }

    /// The certificate and key, when both are set (TLS on).
    /// With `ssl` on, the certificate and key.
    pub fn tls(&self) -> Result<Option<(String, String)>, String> {
        if !self.flag("ssl")? {
            return Ok(None);
        }
        match (self.get("ssl_cert_file"), self.get("ssl_key_file")) {
            ("", _) | (_, "") => Err("ssl is on: set ssl_cert_file and ssl_key_file".into()),
            (cert, key) => Ok(Some((cert.to_string(), key.to_string()))),
        }
    }

    pub fn limits(&self) -> Result<Limits, String> {
        let (metrics, bad) =
            MetricsAccess::parse(self.get("metrics_addresses"), self.get("metrics_token"));
        if let Some(entry) = bad.first() {
            return Err(format!(
                "metrics_addresses: \"{entry}\" is neither an IP address nor a CIDR range"
            ));
        }
        Ok(Limits {
            max_connections: self.number("max_connections")?,
            max_connections_per_role: self.number("max_connections_per_role")?,
            max_anonymous_per_address: self.number("max_anonymous_per_address")?,
            max_message_size: self.bytes("max_message_size")? as usize,
            max_subscriptions: self.number("max_subscriptions")?,
            broadcast_rate: self.number("broadcast_rate")?,
            max_broadcast_size: self.bytes("max_broadcast_size")? as usize,
            max_presence_per_channel: self.number("max_presence_per_channel")?,
            max_handshakes: self.number("max_handshakes")?,
            max_snapshot_workers: self.number("max_snapshot_workers")?,
            heartbeat_interval: self.duration("heartbeat_interval", 1000)?,
            handshake_timeout: self.duration("handshake_timeout", 1)?,
            allowed_origins: self.list("allowed_origins"),
            allowed_hosts: self.list("allowed_hosts"),
            serve_pages: self.flag("serve_pages")?,
            metrics,
        })
    }

    /// The fan-out's batches and bytes (client_backlog, client_memory).
    pub fn fanout(&self) -> Result<(usize, usize), String> {
        Ok((
            self.number("client_backlog")?,
            self.bytes("client_memory")? as usize,
        ))
    }

    pub fn history(&self) -> Result<crate::history::Limits, String> {
        let bytes = self.bytes("history_size")?;
        if bytes < 1 << 20 {
            return Err(
                "history_size: an edge keeps what it reads to serve resumes; at least 1MB".into(),
            );
        }
        Ok(crate::history::Limits {
            bytes,
            age: self.duration("history_age", 1000)?,
        })
    }
}

/// `text` as a number with one of `units` (`(suffix, multiplier)`), or bare (times `bare`).
fn quantity(text: &str, units: &[(&str, u64)], bare: u64) -> Option<u64> {
    let text = text.trim();
    let digits = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(digits);
    let number: u64 = number.parse().ok()?;
    let multiplier = match unit.trim() {
        "" => bare,
        unit => units.iter().find(|(u, _)| *u == unit)?.1,
    };
    number.checked_mul(multiplier)
}

fn known(name: &str) -> Option<&'static str> {
    let name = name.strip_prefix("realtime.").unwrap_or(name);
    KNOWN.iter().map(|(n, _)| *n).find(|n| *n == name)
}

/// A value as postgresql.conf may quote it.
fn unquote(value: &str) -> &str {
    value
        .strip_prefix('\'')
        .and_then(|v| v.strip_suffix('\''))
        .unwrap_or(value)
}

#[cfg(test)]
mod unit {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> impl Iterator<Item = (String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect::<Vec<_>>()
            .into_iter()
    }

    #[test]
    fn the_environment_overrides_the_file_and_unknown_names_are_refused() {
        let dir = std::env::temp_dir().join(format!("edge-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("edge.conf");
        std::fs::write(
            &file,
            "# an edge\nnats_url = nats://127.0.0.1:4222\nrealtime.port = 9001\nmax_subscriptions = '7'\n",
        )
        .unwrap();
        let config = Config::read(Some(&file), env(&[("REALTIME_EDGE_PORT", "9002")])).unwrap();
        assert_eq!(config.port().unwrap(), 9002);
        assert_eq!(config.limits().unwrap().max_subscriptions, 7);
        assert_eq!(config.nats().unwrap().stream, "realtime");

        std::fs::write(&file, "nats_url = nats://x\nmax_subscription = 7\n").unwrap();
        let refused = Config::read(Some(&file), env(&[])).err().unwrap();
        assert!(
            refused.contains("unknown setting \"max_subscription\""),
            "{refused}"
        );
        let refused = Config::read(
            None,
            env(&[
                ("REALTIME_EDGE_NATS_URL", "nats://x"),
                ("REALTIME_EDGE_PORT", "eighty"),
            ]),
        )
        .err()
        .unwrap();
        assert!(refused.starts_with("port:"), "{refused}");
        let config = Config::read(
            None,
            env(&[
                ("REALTIME_EDGE_NATS_URL", "nats://x"),
                ("REALTIME_EDGE_CLIENT_MEMORY", "2MB"),
                ("REALTIME_EDGE_HEARTBEAT_INTERVAL", "500ms"),
            ]),
        )
        .unwrap();
        assert_eq!(config.fanout().unwrap().1, 2 << 20);
        assert_eq!(
            config.limits().unwrap().heartbeat_interval,
            Duration::from_millis(500)
        );
        let refused = Config::read(
            None,
            env(&[
                ("REALTIME_EDGE_NATS_URL", "nats://x"),
                ("REALTIME_EDGE_HISTORY_AGE", "soon"),
            ]),
        )
        .err()
        .unwrap();
        assert!(refused.starts_with("history_age:"), "{refused}");
        let refused = Config::read(None, env(&[])).err().unwrap();
        assert!(refused.starts_with("nats_url is not set"), "{refused}");
        let refused = Config::read(
            None,
            env(&[
                ("REALTIME_EDGE_NATS_URL", "nats://x"),
                ("REALTIME_EDGE_NATS_STREAM", "a.b"),
            ]),
        )
        .err()
        .unwrap();
        assert!(refused.starts_with("nats_stream:"), "{refused}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
