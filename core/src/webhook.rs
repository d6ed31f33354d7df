//! Webhooks as the worker hands them to the network threads (`Webhook`, `Settings`), and what
//! the network threads report back about each request (`Attempt`). The delivery itself is
//! `net::webhooks`.

use crate::auth::Principal;
use crate::change::GapReason;
use crate::ops::OpSet;
use std::time::{Duration, SystemTime};

/// A webhook to deliver to, as its row in `realtime.webhooks` says.
#[derive(Clone, Debug, PartialEq)]
pub struct Webhook {
    pub id: i64,
    /// Bumped by every change made through SQL (delivery starts again). Reports of a
    /// generation before the last replay move nothing: the replay moved the position back.
    pub generation: i64,
    pub name: String,
    pub url: String,
    /// Tables as SQL names them (schema-qualified, quoted where needed).
    pub tables: Vec<String>,
    /// Topics `realtime_send()` sends to, and relayed NOTIFY channels.
    pub topics: Vec<String>,
    /// `None`: every event each table is watched for.
    pub events: Option<OpSet>,
    /// A native filter (`column=op.value`, several joined by commas).
    pub filter: Option<String>,
    /// The role and claims it reads as: it receives what a client with such a token would.
    pub principal: Principal,
    /// The HMAC key its requests are signed with (decoded from `whsec_<base64>`).
    pub secret: Vec<u8>,
    /// Headers sent with every request, besides the ones the worker sets.
    pub headers: Vec<(String, String)>,
    /// Most changes in one request; 1 sends each change on its own, not in a list.
    pub batch_size: usize,
    /// Longest a request may take, from connecting to the response's status.
    pub timeout: Duration,
    /// Everything up to this position was acknowledged by the receiver (or skipped as a gap):
    /// delivery resumes after it.
    pub position: u64,
}

impl Webhook {
    /// Whether `other` is the same webhook delivering the same way: only its acknowledged
    /// position may differ (it moves on as deliveries succeed).
    pub fn same_delivery(&self, other: &Webhook) -> bool {
        Webhook {
            position: other.position,
            ..self.clone()
        } == *other
    }
}

/// What every webhook obeys, from the settings.
#[derive(Clone, Debug, PartialEq)]
pub struct Settings {
    /// Waits before the 2nd, 3rd, ... attempt of a request; after the last one fails, the
    /// webhook is disabled (`realtime.webhook_retry_schedule`).
    pub schedule: Vec<Duration>,
    /// Address ranges a receiver may resolve to even if private, loopback or link-local
    /// (`realtime.webhook_allowed_hosts`).
    pub allowed: Vec<ipnet::IpNet>,
    /// Requests in flight at once, over all webhooks (`realtime.webhook_max_concurrency`).
    pub concurrency: usize,
}

/// What became of one request, or of a stretch a webhook had to skip.
#[derive(Clone, Debug, PartialEq)]
pub struct Attempt {
    pub webhook: i64,
    pub generation: i64,
    /// Positions of the first and last change it carried (of the stretch skipped, for a gap).
    pub first: u64,
    pub last: u64,
    /// 1 for the first try of these changes, 2 for the first retry, ...
    pub number: u32,
    /// The receiver's HTTP status, if it answered.
    pub status: Option<u16>,
    /// From sending the request to its status (zero when none was sent).
    pub took: Duration,
    pub at: SystemTime,
    pub outcome: Outcome,
}

#[derive(Clone, Debug, PartialEq)]
pub enum Outcome {
    /// Acknowledged (a 2xx): delivery goes on after `last`.
    Delivered,
    /// Not acknowledged; tried again after `retry_in`.
    Failed { error: String, retry_in: Duration },
    /// Given up on: the receiver answered 410, or every attempt of the schedule failed. The
    /// webhook is disabled until resumed.
    Disabled { error: String },
    /// Nothing up to `last` was for it: its position moves on (no request was made).
    Idle,
    /// Positions `first..=last` will never reach this webhook (the history no longer held
    /// them, say): it goes on after them.
    Gap { reason: GapReason },
}

/// A gap's or an end's reason as the protocol names it (`server_restart`, `table_dropped`).
pub fn reason_name(reason: &impl serde::Serialize) -> String {
    match serde_json::to_value(reason) {
        Ok(serde_json::Value::String(name)) => name,
        _ => "unknown".into(),
    }
}
