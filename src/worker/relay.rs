//! The NOTIFY channels the worker relays: it listens on each channel `realtime.relays` names,
//! inside PostgreSQL, and hands what arrives to the publisher as messages, in commit order.
//! PostgreSQL has already done what NOTIFY promises: only committed notifications arrive,
//! none from rolled-back subtransactions, duplicates within a transaction collapsed.

use crate::pg::notify;
use crate::pg::xact::in_transaction;
use pgrx::prelude::*;
use std::collections::HashMap;

/// A notification ready to publish: its channel, the sender's pid, its payload as JSON text.
pub struct Relayed {
    pub channel: String,
    pub pid: u32,
    pub payload: String,
}

#[derive(Default)]
pub struct Relay {
    /// Channels listened on, and whether their payloads are sent as JSON when they parse.
    channels: HashMap<String, bool>,
}

impl Relay {
    /// Listen on exactly the channels `realtime.relays` names now. In a transaction of its
    /// own: LISTEN and UNLISTEN take effect when it commits.
    pub fn reload(&mut self) {
        let listening = &self.channels;
        let read = in_transaction(
            || {
                let wanted = relays().map_err(|e| e.to_string())?;
                for channel in wanted.keys().filter(|c| !listening.contains_key(*c)) {
                    notify::listen(channel);
                }
                for channel in listening.keys().filter(|c| !wanted.contains_key(*c)) {
                    notify::unlisten(channel);
                }
                Ok(wanted)
            },
            |e| e,
        );
        match read {
            Ok(wanted) => {
                for channel in wanted.keys().filter(|c| !self.channels.contains_key(*c)) {
                    log!("realtime_ext: relaying NOTIFY channel \"{channel}\"");
                }
                self.channels = wanted;
            }
            Err(e) => warning!("realtime_ext: could not read the relayed channels: {e}"),
        }
    }

    /// What arrived since the last call, in commit order.
    pub fn take(&mut self) -> Vec<Relayed> {
        let received = match notify::received() {
            Ok(received) => received,
            Err(e) => {
                warning!("realtime_ext: could not read notifications: {e}");
                return Vec::new();
            }
        };
        received
            .into_iter()
            .filter_map(|n| {
                // Sent before an unrelay's commit, read after it: nobody subscribes now.
                let as_json = *self.channels.get(&n.channel)?;
                let payload = if as_json && is_json(&n.payload) {
                    n.payload
                } else {
                    serde_json::Value::String(n.payload).to_string()
                };
                Some(Relayed {
                    channel: n.channel,
                    pid: n.pid,
                    payload,
                })
            })
            .collect()
    }
}

/// The channels `realtime.relays` names, and whether each is relayed as JSON (none before
/// CREATE EXTENSION).
fn relays() -> Result<HashMap<String, bool>, pgrx::spi::Error> {
    Spi::connect(|client| {
        let exists = client
            .select(
                "SELECT to_regclass('realtime.relays') IS NOT NULL",
                None,
                &[],
            )?
            .first()
            .get_one::<bool>()?;
        if exists != Some(true) {
            return Ok(HashMap::new());
        }
        let rows = client.select("SELECT channel, as_json FROM realtime.relays", None, &[])?;
        rows.map(|row| {
            Ok((
                row.get::<String>(1)?.unwrap_or_default(),
                row.get::<bool>(2)?.unwrap_or(false),
            ))
        })
        .collect()
    })
}

fn is_json(text: &str) -> bool {
    serde_json::from_str::<&serde_json::value::RawValue>(text).is_ok()
}
