//! `GET /metrics`: off until a DBA names who may read it, then Prometheus' text format with the
//! numbers moving as clients connect, receive changes and are refused.

mod common;

use common::{wait_until, Cluster};
use std::time::Duration;

/// GET /metrics with `headers`; status and the whole response.
fn scrape(cluster: &Cluster, headers: &str) -> (u16, String) {
    cluster.http_get_with("/metrics", headers)
}

/// The value of the sample `series` (name with its labels) in an exposition.
fn sample(exposition: &str, series: &str) -> Option<f64> {
    exposition.lines().find_map(|l| {
        let (name, value) = l.rsplit_once(' ')?;
        (name == series).then(|| value.parse().ok())?
    })
}

fn reload(cluster: &Cluster, settings: &[&str]) {
    let mut db = cluster.client();
    for setting in settings {
        db.batch_execute(&format!("ALTER SYSTEM SET {setting}"))
            .unwrap();
    }
    db.batch_execute("SELECT pg_reload_conf()").unwrap();
}

#[test]
fn metrics_are_off_until_allowed_then_follow_what_happens() {
    let cluster = Cluster::start("metrics", &[]);
    let (status, body) = scrape(&cluster, "");
    assert_eq!(status, 404, "off by default: {body}");
    assert!(body.contains("realtime.metrics_addresses"), "{body}");

    // Only entries that are not addresses: still off, and the log says why.
    reload(
        &cluster,
        &["realtime.metrics_addresses = 'localhost, 10.0.0.0/33'"],
    );
    wait_until("the bad entries to be logged", common::PATIENCE, || {
        cluster
            .log()
            .contains("\"10.0.0.0/33\" is neither an IP address nor a CIDR range")
    });
    assert_eq!(scrape(&cluster, "").0, 404);

    // Another network only: refused from here.
    reload(&cluster, &["realtime.metrics_addresses = '10.0.0.0/8'"]);
    wait_until("the address check", common::PATIENCE, || {
        scrape(&cluster, "").0 == 403
    });

    reload(
        &cluster,
        &["realtime.metrics_addresses = '10.0.0.0/8, 127.0.0.1'"],
    );
    wait_until("metrics to be served", common::PATIENCE, || {
        scrape(&cluster, "").0 == 200
    });
    let (_, out) = scrape(&cluster, "");
    assert!(
        out.contains("Content-Type: text/plain; version=0.0.4"),
        "{out}"
    );
    let before = |series: &str| sample(&out, series).unwrap_or_else(|| panic!("{series} in {out}"));
    let sent = before("realtime_messages_sent_total{protocol=\"native\"}");
    let refused = before("realtime_handshake_refusals_total{reason=\"not_websocket\"}");
    let timed = before("realtime_commit_to_sent_seconds_count");

    // A subscriber receiving changes, and a request for the WebSocket that is not one.
    let mut db = cluster.client();
    db.batch_execute("CREATE TABLE m (id int); SELECT realtime_watch('m')")
        .unwrap();
    let mut ws = cluster.ws();
    ws.subscribe("m", "m", None);
    db.batch_execute("INSERT INTO m SELECT generate_series(1, 5)")
        .unwrap();
    ws.changes(5);
    assert_eq!(cluster.http_get("/realtime").0, 426);
    // The history's numbers are brought up to date every second; a delivery is timed once
    // its write finished, a moment after the client may have read it. The limit is generous:
    // 10 s once ran out on a loaded CI machine where this takes about 1 s alone.
    // Waited for one at a time, so that running out of time says which was late.
    let mut out = String::new();
    wait_until("the history's numbers", Duration::from_secs(30), || {
        out = scrape(&cluster, "").1;
        sample(&out, "realtime_history_first_position").is_some_and(|p| p >= 1.0)
    });
    wait_until("deliveries timed", Duration::from_secs(30), || {
        out = scrape(&cluster, "").1;
        sample(&out, "realtime_commit_to_sent_seconds_count").is_some_and(|n| n > timed)
    });
    let now = |series: &str| sample(&out, series).unwrap_or_else(|| panic!("{series} in {out}"));
    assert_eq!(now("realtime_connections{protocol=\"native\"}"), 1.0);
    assert_eq!(now("realtime_subscriptions{protocol=\"native\"}"), 1.0);
    assert!(now("realtime_messages_sent_total{protocol=\"native\"}") >= sent + 5.0);
    assert!(now("realtime_sent_bytes_total{protocol=\"native\"}") > 0.0);
    assert_eq!(
        now("realtime_handshake_refusals_total{reason=\"not_websocket\"}"),
        refused + 1.0
    );
    assert!(now("realtime_commit_to_sent_seconds_count") > timed);
    assert!(now("realtime_batch_changes_count") >= 1.0);
    // The Supabase endpoint's connections are counted apart.
    assert_eq!(now("realtime_connections{protocol=\"supabase\"}"), 0.0);
    let (mut supa, _) = tungstenite::connect(format!(
        "ws://127.0.0.1:{}/realtime/v1/websocket?vsn=2.0.0",
        cluster.ws_port
    ))
    .unwrap();
    let join = r#"["1","1","realtime:m","phx_join",{"config":{"postgres_changes":[{"event":"*","schema":"public","table":"m"}]}}]"#;
    supa.send(tungstenite::Message::text(join)).unwrap();
    while !supa
        .read()
        .unwrap()
        .to_text()
        .unwrap()
        .contains("Subscribed to PostgreSQL")
    {}
    db.batch_execute("INSERT INTO m VALUES (6)").unwrap();
    while !supa
        .read()
        .unwrap()
        .to_text()
        .unwrap()
        .contains("postgres_changes")
    {}
    wait_until(
        "the Supabase message counted",
        Duration::from_secs(30),
        || {
            out = scrape(&cluster, "").1;
            sample(&out, "realtime_messages_sent_total{protocol=\"supabase\"}")
                .is_some_and(|n| n >= 1.0)
        },
    );
    let now = |series: &str| sample(&out, series).unwrap_or_else(|| panic!("{series} in {out}"));
    assert_eq!(now("realtime_connections{protocol=\"supabase\"}"), 1.0);
    // Its binding, and its seat in the topic's room (refused here: no policy grants it).
    assert_eq!(now("realtime_subscriptions{protocol=\"supabase\"}"), 1.0);
    assert_eq!(now("realtime_connections{protocol=\"native\"}"), 1.0);
    assert!(now("realtime_sent_bytes_total{protocol=\"supabase\"}") > 0.0);
    assert!(now("realtime_history_bytes") > 0.0);
    assert!(now("realtime_history_first_position") >= 1.0);
    assert!(now("realtime_history_oldest_timestamp_seconds") > 1.7e9);
    // Nothing names a table or a role.
    assert!(
        !out.contains("\"m\"") && !out.contains("postgres\""),
        "{out}"
    );

    // A token as well: without it, or with another, 401.
    reload(&cluster, &["realtime.metrics_token = 'scrape-me-please'"]);
    wait_until("the token to be asked for", common::PATIENCE, || {
        scrape(&cluster, "").0 == 401
    });
    let (status, out) = scrape(&cluster, "Authorization: Bearer scrape-me-not\r\n");
    assert_eq!(status, 401, "{out}");
    assert!(out.contains("WWW-Authenticate: Bearer"), "{out}");
    let (status, out) = scrape(&cluster, "Authorization: Bearer scrape-me-please\r\n");
    assert_eq!(status, 200, "{out}");
    assert!(sample(&out, "realtime_position").unwrap() >= 5.0);
}

#[test]
fn gaps_are_counted_by_reason() {
    let cluster = Cluster::start(
        "metrics_gaps",
        &[
            "realtime.history_size = 0",
            "realtime.metrics_addresses = '127.0.0.1'",
        ],
    );
    let mut db = cluster.client();
    db.batch_execute("CREATE TABLE g (id int); SELECT realtime_watch('g')")
        .unwrap();
    db.batch_execute("INSERT INTO g SELECT generate_series(1, 3)")
        .unwrap();
    // Resuming from the start with no history: a history_expired gap.
    let mut ws = cluster.ws();
    ws.send(serde_json::json!({"type": "subscribe", "id": "g", "table": "g", "since": 0}));
    while ws.recv()["type"] != "gap" {}
    let (_, out) = scrape(&cluster, "");
    assert_eq!(
        sample(&out, "realtime_gaps_total{reason=\"history_expired\"}"),
        Some(1.0),
        "{out}"
    );
    assert_eq!(
        sample(&out, "realtime_gaps_total{reason=\"slow_client\"}"),
        Some(0.0)
    );
    assert_eq!(sample(&out, "realtime_resumes_total"), Some(1.0));
}
