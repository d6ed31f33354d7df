//! `GET /metrics`: every number of `Stats` in Prometheus' text format, for whoever
//! realtime.metrics_addresses and realtime.metrics_token let in (nobody by default).
//!
//! Names follow Prometheus' conventions: one `realtime_` prefix, base units (seconds, bytes),
//! counters ending in `_total`, durations as histograms. Labels only ever hold values fixed
//! in `stats` (a protocol, a reason, a stage): never a table, a role or a client.

use super::head::Head;
use super::response::Response;
use crate::net::context::Context;
use crate::net::shared::MetricsRefusal;
use crate::stats::{Histogram, Kind, Size, Stats, Timing, BUCKETS_COUNT, BUCKETS_US};
use std::fmt::Write;
use std::net::IpAddr;

const PREFIX: &str = "realtime_";
const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

pub fn metrics(head: &Head, ip: IpAddr, context: &Context) -> Response {
    let Some(access) = context.shared.limits().metrics.clone() else {
        return Response::error(
            "404 Not Found",
            "not_found",
            "metrics are off; set realtime.metrics_addresses (or realtime.metrics_token) to serve them",
        );
    };
    match access.allows(ip, head.header("authorization")) {
        Ok(()) => {}
        Err(MetricsRefusal::Address) => {
            return Response::error(
                "403 Forbidden",
                "address_not_allowed",
                "this address is not in realtime.metrics_addresses",
            )
        }
        Err(MetricsRefusal::Token) => {
            return Response::error(
                "401 Unauthorized",
                "unauthorized",
                "metrics need the token of realtime.metrics_token (Authorization: Bearer ...)",
            )
            .header("WWW-Authenticate: Bearer realm=\"realtime_ext metrics\"")
        }
    }
    let (unacknowledged, backlogged) = context.clients.behind();
    let mut text = render(context.shared.stats);
    gauge(
        &mut text,
        "clients_unacknowledged",
        "connections whose client has not acknowledged everything it was sent",
        unacknowledged as u64,
    );
    gauge(
        &mut text,
        "clients_backlogged",
        "connections with batches waiting to be written",
        backlogged as u64,
    );
    Response::text("200 OK", CONTENT_TYPE, text)
}

/// The exposition of `stats`.
pub fn render(stats: &Stats) -> String {
    let mut out = String::with_capacity(16 * 1024);
    let mut family = "";
    for (stat, value) in stats.all() {
        // The numbers of a family are next to each other in `Stat::ALL`.
        if stat.name() != family {
            family = stat.name();
            let kind = match stat.kind() {
                Kind::Counter => "counter",
                Kind::Gauge => "gauge",
            };
            let _ = writeln!(out, "# HELP {PREFIX}{family} {}", stat.help());
            let _ = writeln!(out, "# TYPE {PREFIX}{family} {kind}");
        }
        match stat.label() {
            Some((key, label)) => {
                let _ = writeln!(out, "{PREFIX}{family}{{{key}=\"{label}\"}} {value}");
            }
            None => {
                let _ = writeln!(out, "{PREFIX}{family} {value}");
            }
        }
    }

    header(
        &mut out,
        "stage_seconds",
        "a change's time in each stage from its commit to a subscriber's socket",
    );
    for &stage in Timing::ALL.iter().filter(|t| t.is_stage()) {
        let label = format!("stage=\"{}\"", stage.name());
        seconds(&mut out, "stage_seconds", &label, stats.timing(stage));
    }
    for (timing, help) in [
        (
            Timing::CommitToSent,
            "from a change's commit to its write to a subscriber's socket",
        ),
        (
            Timing::PolicyJudging,
            "the worker judging one batch by row security, for every audience",
        ),
    ] {
        let name = format!("{}_seconds", timing.name());
        header(&mut out, &name, help);
        seconds(&mut out, &name, "", stats.timing(timing));
    }
    for size in Size::ALL {
        let name = size.name();
        header(&mut out, name, "changes in each batch the worker publishes");
        histogram(&mut out, name, "", stats.size(*size), &BUCKETS_COUNT, 0);
    }
    out
}

fn header(out: &mut String, name: &str, help: &str) {
    let _ = writeln!(out, "# HELP {PREFIX}{name} {help}");
    let _ = writeln!(out, "# TYPE {PREFIX}{name} histogram");
}

fn gauge(out: &mut String, name: &str, help: &str, value: u64) {
    let _ = writeln!(out, "# HELP {PREFIX}{name} {help}");
    let _ = writeln!(out, "# TYPE {PREFIX}{name} gauge");
    let _ = writeln!(out, "{PREFIX}{name} {value}");
}

/// A histogram kept in microseconds, in seconds.
fn seconds(out: &mut String, name: &str, labels: &str, h: &Histogram) {
    histogram(out, name, labels, h, &BUCKETS_US, 6)
}

/// `value` divided by 10^`decimals`, exactly, as a decimal number.
fn decimal(value: u64, decimals: u32) -> String {
    let unit = 10u64.pow(decimals);
    let fraction = format!("{:0width$}", value % unit, width = decimals as usize);
    let fraction = fraction.trim_end_matches('0');
    match fraction {
        "" => (value / unit).to_string(),
        _ => format!("{}.{fraction}", value / unit),
    }
}

/// `h`'s cumulative buckets, sum and count; bounds and sum divided by 10^`decimals`.
fn histogram(
    out: &mut String,
    name: &str,
    labels: &str,
    h: &Histogram,
    bounds: &[u64; 16],
    decimals: u32,
) {
    let sep = if labels.is_empty() { "" } else { "," };
    let counts = h.buckets();
    let mut cumulative = 0;
    for (i, n) in counts.iter().enumerate() {
        cumulative += n;
        let le = bounds
            .get(i)
            .map_or("+Inf".to_string(), |b| decimal(*b, decimals));
        let _ = writeln!(
            out,
            "{PREFIX}{name}_bucket{{{labels}{sep}le=\"{le}\"}} {cumulative}"
        );
    }
    let braces = |s: &str| {
        if s.is_empty() {
            String::new()
        } else {
            format!("{{{s}}}")
        }
    };
    let sum = decimal(h.sum(), decimals);
    let _ = writeln!(out, "{PREFIX}{name}_sum{} {sum}", braces(labels));
    let _ = writeln!(out, "{PREFIX}{name}_count{} {cumulative}", braces(labels));
}

#[cfg(test)]
mod unit {
    use super::*;
    use crate::stats::Stat;
    use std::time::Duration;

    #[test]
    fn every_family_is_typed_once_and_histograms_are_cumulative() {
        let stats = Stats::new();
        stats.add(Stat::GapsSlowClient, 2);
        stats.add(Stat::Connections, 3);
        for us in [10, 400, 400, 3_000_000] {
            stats.observe(Timing::CommitToSent, Duration::from_micros(us));
        }
        stats.observe_size(Size::BatchChanges, 100);
        let text = render(&stats);
        let lines: Vec<&str> = text.lines().collect();
        assert!(lines.contains(&"realtime_gaps_total{reason=\"slow_client\"} 2"));
        assert!(lines.contains(&"realtime_connections{protocol=\"native\"} 3"));
        assert!(lines.contains(&"realtime_commit_to_sent_seconds_bucket{le=\"0.000025\"} 1"));
        assert!(lines.contains(&"realtime_commit_to_sent_seconds_bucket{le=\"0.0005\"} 3"));
        assert!(lines.contains(&"realtime_commit_to_sent_seconds_bucket{le=\"+Inf\"} 4"));
        assert!(lines.contains(&"realtime_commit_to_sent_seconds_count 4"));
        assert!(lines.contains(&"realtime_commit_to_sent_seconds_sum 3.00081"));
        assert!(lines.contains(&"realtime_batch_changes_bucket{le=\"128\"} 1"));
        assert!(lines
            .iter()
            .any(|l| l.starts_with("realtime_stage_seconds_bucket{stage=\"commit_to_read\",le=")));

        // One TYPE per family, before its samples; every sample's family has one.
        let mut typed = Vec::new();
        for line in &lines {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                let name = rest.split(' ').next().unwrap();
                assert!(!typed.contains(&name), "{name} typed twice");
                typed.push(name);
            } else if !line.starts_with('#') {
                let name = line.split(['{', ' ']).next().unwrap();
                let family = ["_bucket", "_sum", "_count"]
                    .iter()
                    .find_map(|s| name.strip_suffix(s).filter(|f| typed.contains(f)))
                    .unwrap_or(name);
                assert_eq!(typed.last(), Some(&family), "{line} outside its family");
            }
        }
        // Counters end in _total; nothing names a table or a role.
        for line in lines.iter().filter(|l| l.starts_with("# TYPE")) {
            if line.ends_with(" counter") {
                assert!(line.contains("_total "), "{line}");
            }
        }
    }
}
