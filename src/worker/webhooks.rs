//! The webhooks the network threads deliver (`realtime_core::net::webhooks`): read from
//! `realtime.webhooks` about once a second and handed over when they change, and what became
//! of each request written back: how far each webhook has acknowledged, its state and last
//! error, its recent deliveries. The write-back is gathered and made at most five times a
//! second, in one transaction that does not wait for its WAL flush: a crash that loses one
//! loses no acknowledgement, which the delivery kept in a file at once
//! (`realtime_core::net::webhooks::acks`).

use crate::gucs;
use crate::pg::xact::in_transaction;
use pgrx::prelude::*;
use realtime_core::auth::Principal;
use realtime_core::net::webhooks::acks;
use realtime_core::net::Server;
use realtime_core::ops::OpSet;
use realtime_core::webhook::{reason_name, Attempt, Outcome, Settings, Webhook};
use std::collections::HashMap;
use std::time::{Duration, Instant, SystemTime};

const RELOAD_EVERY: Duration = Duration::from_secs(1);
const WRITE_EVERY: Duration = Duration::from_millis(200);
/// Deliveries kept per webhook in `realtime.webhook_deliveries`.
const KEPT_DELIVERIES: i64 = 100;
/// Successful requests of one webhook logged per write-back, the latest: at thousands of
/// deliveries a second the rest only move its position. Failures and gaps are all logged.
const LOGGED_PER_WRITE: usize = 20;
/// Reports held for the next write-back before successes are folded into the furthest one.
const MOST_PENDING: usize = 100_000;

#[derive(Default)]
pub struct Webhooks {
    /// What the network threads were last given.
    given: Option<(Vec<Webhook>, Settings)>,
    loaded_at: Option<Instant>,
    pending: Vec<Attempt>,
    written_at: Option<Instant>,
    /// The settings last warned about, so a bad one is logged once.
    warned: Option<String>,
}

impl Webhooks {
    /// A report from the network threads, for the next write-back.
    pub fn record(&mut self, attempt: Attempt) {
        match &attempt.outcome {
            Outcome::Disabled { error } => log!(
                "realtime_ext: webhook \"{}\" disabled: {error}",
                self.name(attempt.webhook)
            ),
            Outcome::Gap { reason } => warning!(
                "realtime_ext: webhook \"{}\" will not receive positions {} to {}: {}",
                self.name(attempt.webhook),
                attempt.first,
                attempt.last,
                reason_name(reason)
            ),
            _ => {}
        }
        if self.pending.len() >= MOST_PENDING {
            self.fold_successes();
        }
        self.pending.push(attempt);
    }

    /// Keep, of the successes and idle reports waiting, only the furthest of each webhook: the
    /// position is all they still have to say (the write-back is behind; their log lines go).
    fn fold_successes(&mut self) {
        let mut furthest: HashMap<(i64, i64), u64> = HashMap::new();
        for a in &self.pending {
            if matches!(a.outcome, Outcome::Delivered | Outcome::Idle) {
                let last = furthest.entry((a.webhook, a.generation)).or_default();
                *last = (*last).max(a.last);
            }
        }
        self.pending.retain(|a| {
            !matches!(a.outcome, Outcome::Delivered | Outcome::Idle)
                || furthest.get(&(a.webhook, a.generation)) == Some(&a.last)
        });
    }

    /// Between passes: write back what was reported and read the webhooks again, as due.
    pub fn tick(&mut self, server: &Server) {
        if !self.pending.is_empty() && self.written_at.is_none_or(|t| t.elapsed() >= WRITE_EVERY) {
            self.write_back();
            self.written_at = Some(Instant::now());
        }
        if self.loaded_at.is_none_or(|t| t.elapsed() >= RELOAD_EVERY) {
            self.reload(server);
            self.loaded_at = Some(Instant::now());
        }
    }

    fn reload(&mut self, server: &Server) {
        let hooks = match in_transaction(|| load().map_err(|e| e.to_string()), |e| e) {
            Ok((hooks, all)) => {
                acks::retain(&all);
                hooks
            }
            Err(e) => {
                warning!("realtime_ext: could not read realtime.webhooks: {e}");
                return;
            }
        };
        let settings = self.settings();
        let now = Some((hooks, settings));
        if now != self.given {
            let (hooks, settings) = now.clone().expect("just made");
            server.set_webhooks(hooks, settings);
            self.given = now;
        }
    }

    /// The webhook settings as they are now; a bad entry is logged (once) and left out.
    fn settings(&mut self) -> Settings {
        use realtime_core::net::webhooks::retry;
        let (allowed, schedule, concurrency) = gucs::webhook_settings();
        let (allowed, bad) = realtime_core::net::shared::networks(&allowed);
        let schedule = retry::parse_schedule(&schedule);
        let mut problems: Vec<String> = bad
            .iter()
            .map(|entry| format!("realtime.webhook_allowed_hosts: \"{entry}\" is neither an IP address nor a CIDR range; left out"))
            .collect();
        if let Err(e) = &schedule {
            problems.push(format!(
                "realtime.webhook_retry_schedule: {e}; using \"{}\"",
                retry::DEFAULT_SCHEDULE
            ));
        }
        let said = problems.join("; ");
        if !problems.is_empty() && self.warned.as_deref() != Some(said.as_str()) {
            warning!("realtime_ext: {said}");
        }
        self.warned = Some(said);
        Settings {
            schedule: schedule.unwrap_or_else(|_| {
                retry::parse_schedule(retry::DEFAULT_SCHEDULE).expect("the default parses")
            }),
            allowed,
            concurrency,
        }
    }

    fn name(&self, id: i64) -> String {
        self.given
            .as_ref()
            .and_then(|(hooks, _)| hooks.iter().find(|h| h.id == id))
            .map_or_else(|| id.to_string(), |h| h.name.clone())
    }

    fn write_back(&mut self) {
        let pending = std::mem::take(&mut self.pending);
        let mut by_webhook: HashMap<(i64, i64), Vec<Attempt>> = HashMap::new();
        for attempt in pending {
            by_webhook
                .entry((attempt.webhook, attempt.generation))
                .or_default()
                .push(attempt);
        }
        let written = in_transaction(
            || {
                Spi::run("SET LOCAL synchronous_commit = off").map_err(|e| e.to_string())?;
                let mut busy = Vec::new();
                for ((webhook, generation), attempts) in by_webhook {
                    if !write(webhook, generation, &attempts).map_err(|e| e.to_string())? {
                        busy.extend(attempts);
                    }
                }
                Ok(busy)
            },
            |e| e,
        );
        match written {
            // Those of webhooks a session is changing right now: next time.
            Ok(mut busy) => {
                busy.append(&mut self.pending);
                self.pending = busy;
            }
            Err(e) => warning!("realtime_ext: could not record webhook deliveries (they are sent again after a restart): {e}"),
        }
    }
}

/// The webhooks to deliver now (none before CREATE EXTENSION), and the ids of all of them.
fn load() -> Result<(Vec<Webhook>, Vec<i64>), pgrx::spi::Error> {
    Spi::connect(|client| {
        let exists = client
            .select(
                "SELECT to_regclass('realtime.webhooks') IS NOT NULL",
                None,
                &[],
            )?
            .first()
            .get_one::<bool>()?;
        if exists != Some(true) {
            return Ok((Vec::new(), Vec::new()));
        }
        let all = client
            .select(
                "SELECT coalesce(array_agg(id), '{}') FROM realtime.webhooks",
                None,
                &[],
            )?
            .first()
            .get_one::<Vec<i64>>()?
            .unwrap_or_default();
        let rows = client.select(
            "SELECT w.id, w.generation, w.name, w.url, w.tables, w.topics, w.events, w.filter,
                    w.acts_as::text,
                    coalesce(w.claims, jsonb_build_object('role', w.acts_as::text))::text,
                    decode(substr(w.secret, 7), 'base64'), w.headers::text, w.batch_size,
                    (extract(epoch FROM w.timeout) * 1000)::int8, w.position,
                    w.replayed_generation
               FROM realtime.webhooks w
              WHERE NOT w.paused AND w.disabled_at IS NULL
              ORDER BY w.id",
            None,
            &[],
        )?;
        let mut hooks = Vec::new();
        for row in rows {
            let tables = row.get::<Vec<String>>(5)?.unwrap_or_default();
            let topics = row.get::<Vec<String>>(6)?.unwrap_or_default();
            let events = row
                .get::<Vec<String>>(7)?
                .and_then(|names| OpSet::parse(&names).ok());
            let role = row.get::<String>(9)?.unwrap_or_default();
            let headers: serde_json::Map<String, serde_json::Value> = row
                .get::<String>(12)?
                .and_then(|text| serde_json::from_str(&text).ok())
                .unwrap_or_default();
            let id = row.get::<i64>(1)?.unwrap_or_default();
            let written_back = row.get::<i64>(15)?.unwrap_or_default().max(0) as u64;
            let acknowledged = acks::read(id, row.get::<i64>(16)?.unwrap_or_default());
            hooks.push(Webhook {
                id,
                generation: row.get::<i64>(2)?.unwrap_or_default(),
                name: row.get::<String>(3)?.unwrap_or_default(),
                url: row.get::<String>(4)?.unwrap_or_default(),
                tables,
                topics,
                events,
                filter: row.get::<String>(8)?,
                principal: Principal {
                    role,
                    claims: row.get::<String>(10)?.unwrap_or_default(),
                    expires: None,
                    anonymous: false,
                },
                secret: row.get::<Vec<u8>>(11)?.unwrap_or_default(),
                headers: headers
                    .into_iter()
                    .filter_map(|(name, value)| Some((name, value.as_str()?.to_string())))
                    .collect(),
                batch_size: row.get::<i32>(13)?.unwrap_or(1).max(1) as usize,
                timeout: Duration::from_millis(row.get::<i64>(14)?.unwrap_or(10_000).max(1) as u64),
                position: written_back.max(acknowledged.unwrap_or(0)),
            });
        }
        Ok((hooks, all))
    })
}

/// Write back one webhook's reports (all of one generation): its position, its state, the
/// latest of its requests; deliveries beyond the last `KEPT_DELIVERIES` are removed. False
/// when a session holds its row: nothing was written. Reports
/// of a generation before the last replay are logged but move nothing: the replay moved the
/// position back on purpose.
fn write(webhook: i64, generation: i64, attempts: &[Attempt]) -> Result<bool, pgrx::spi::Error> {
    // The worker never waits for a row lock: a session altering or dropping this webhook
    // holds it, and waiting could deadlock with a statement that changes several.
    let (locked, exists) = Spi::get_two_with_args::<bool, bool>(
        "SELECT EXISTS (SELECT FROM realtime.webhooks WHERE id = $1 FOR UPDATE SKIP LOCKED),
                EXISTS (SELECT FROM realtime.webhooks WHERE id = $1)",
        &[webhook.into()],
    )?;
    if locked != Some(true) {
        // Dropped: nothing to keep. Busy: kept for the next write-back.
        return Ok(exists != Some(true));
    }
    let seconds = |t: SystemTime| {
        t.duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs_f64()
    };
    let position = attempts
        .iter()
        .filter(|a| {
            matches!(
                a.outcome,
                Outcome::Delivered | Outcome::Idle | Outcome::Gap { .. }
            )
        })
        .map(|a| a.last as i64)
        .max();
    let last_success = attempts
        .iter()
        .rposition(|a| a.outcome == Outcome::Delivered);
    let after_success = &attempts[last_success.map_or(0, |i| i + 1)..];
    let first_failure = after_success
        .iter()
        .find(|a| matches!(a.outcome, Outcome::Failed { .. } | Outcome::Disabled { .. }));
    let last_error = after_success.iter().rev().find_map(|a| match &a.outcome {
        Outcome::Failed { error, .. } | Outcome::Disabled { error } => Some(error.clone()),
        _ => None,
    });
    let disabled = attempts.iter().find_map(|a| match &a.outcome {
        Outcome::Disabled { error } => Some((seconds(a.at), error.clone())),
        _ => None,
    });
    Spi::run_with_args(
        "UPDATE realtime.webhooks SET
            position = greatest(position, coalesce($3, position)),
            delivered_at = coalesce(to_timestamp($4), delivered_at),
            failing_since = CASE WHEN $4 IS NOT NULL THEN to_timestamp($5)
                                 ELSE coalesce(failing_since, to_timestamp($5)) END,
            last_error = CASE WHEN $4 IS NOT NULL THEN $6 ELSE coalesce($6, last_error) END,
            disabled_at = coalesce(to_timestamp($7), disabled_at),
            disabled_reason = coalesce($8, disabled_reason)
          WHERE id = $1 AND $2 >= replayed_generation",
        &[
            webhook.into(),
            generation.into(),
            position.into(),
            last_success.map(|i| seconds(attempts[i].at)).into(),
            first_failure.map(|a| seconds(a.at)).into(),
            last_error.into(),
            disabled.as_ref().map(|(at, _)| *at).into(),
            disabled.map(|(_, why)| why).into(),
        ],
    )?;
    // Every failure, gap and disabling is logged; of the successes, the latest.
    let delivered = attempts
        .iter()
        .filter(|a| a.outcome == Outcome::Delivered)
        .count();
    let skipped = delivered.saturating_sub(LOGGED_PER_WRITE);
    let logged: Vec<&Attempt> = attempts
        .iter()
        .filter(|a| a.outcome != Outcome::Idle)
        .scan(0, |successes, a| {
            *successes += usize::from(a.outcome == Outcome::Delivered);
            Some((a, *successes))
        })
        .filter(|(a, successes)| a.outcome != Outcome::Delivered || *successes > skipped)
        .map(|(a, _)| a)
        .collect();
    for a in &logged {
        let (outcome, error, retry_at) = match &a.outcome {
            Outcome::Delivered => ("delivered", None, None),
            Outcome::Failed { error, retry_in } => (
                "failed",
                Some(error.clone()),
                Some(seconds(a.at + *retry_in)),
            ),
            Outcome::Disabled { error } => ("disabled", Some(error.clone()), None),
            Outcome::Gap { reason } => ("gap", Some(reason_name(reason)), None),
            Outcome::Idle => continue,
        };
        Spi::run_with_args(
            "INSERT INTO realtime.webhook_deliveries
                    (webhook, at, first_position, last_position, attempt, outcome, status,
                     latency_ms, error, retry_at)
             VALUES ($1, to_timestamp($2), $3, $4, $5, $6, $7, $8, $9, to_timestamp($10))",
            &[
                webhook.into(),
                seconds(a.at).into(),
                (a.first as i64).into(),
                (a.last as i64).into(),
                (a.number as i32).into(),
                outcome.into(),
                a.status.map(i32::from).into(),
                (a.took.as_secs_f64() * 1000.0).into(),
                error.into(),
                retry_at.into(),
            ],
        )?;
    }
    if !logged.is_empty() {
        Spi::run_with_args(
            "DELETE FROM realtime.webhook_deliveries
              WHERE webhook = $1 AND id <= (SELECT id FROM realtime.webhook_deliveries
                                             WHERE webhook = $1 ORDER BY id DESC
                                            OFFSET $2 LIMIT 1)",
            &[webhook.into(), KEPT_DELIVERIES.into()],
        )?;
    }
    Ok(true)
}
