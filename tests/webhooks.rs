//! Webhooks against a real receiver: tests/webhooks/receiver.mjs, which verifies every request
//! with the Standard Webhooks reference library and answers as each path asks (200, 500, 410,
//! 429 with Retry-After, a stall past the timeout, garbage, a redirect to a refused address).
//! Order, retries on the schedule, disabling, row security and column privileges of the role
//! a webhook reads as, the address guard, who may see and change a webhook, and a worker
//! killed and a server restarted in the middle of a stream.

mod common;

use common::{wait_until, Cluster};
use serde_json::Value;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// 24 bytes, as Standard Webhooks' examples have them.
const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

/// Retries come fast here; the default schedule is Standard Webhooks' 28 hours.
const CONF: &[&str] = &[
    "realtime.webhook_allowed_hosts = '127.0.0.1'",
    "realtime.webhook_retry_schedule = '100ms, 200ms, 300ms'",
];

/// One request as the receiver saw it.
#[derive(Debug, Clone)]
struct Request {
    path: String,
    id: String,
    valid: bool,
    /// The how-manieth request with this path and webhook-id.
    n: u64,
    body: Value,
    at: Instant,
    extra: Option<String>,
}

struct Receiver {
    child: Child,
    port: u16,
    seen: Arc<Mutex<Vec<Request>>>,
}

impl Receiver {
    fn start() -> Receiver {
        Receiver::start_with(&[])
    }

    /// With `tls` (a key and a certificate file), over HTTPS.
    fn start_with(tls: &[&str]) -> Receiver {
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/webhooks/receiver.mjs");
        let mut child = Command::new("node")
            .args([script, SECRET])
            .args(tls)
            .stdout(Stdio::piped())
            .spawn()
            .expect("node runs the receiver (.ci/prereqs.sh installs node and its package)");
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let first: Value = serde_json::from_str(&lines.next().unwrap().unwrap()).unwrap();
        let port = first["listening"].as_u64().expect("the receiver's port") as u16;
        let seen = Arc::new(Mutex::new(Vec::new()));
        let into = seen.clone();
        std::thread::spawn(move || {
            for line in lines.map_while(Result::ok) {
                let v: Value = serde_json::from_str(&line).unwrap();
                into.lock().unwrap().push(Request {
                    path: v["path"].as_str().unwrap().into(),
                    id: v["id"].as_str().unwrap().into(),
                    valid: v["valid"].as_bool().unwrap(),
                    n: v["n"].as_u64().unwrap(),
                    body: serde_json::from_str(v["body"].as_str().unwrap()).unwrap_or(Value::Null),
                    at: Instant::now(),
                    extra: v["extra"].as_str().map(str::to_string),
                });
            }
        });
        Receiver { child, port, seen }
    }

    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    /// The requests made to `path` so far.
    fn to(&self, path: &str) -> Vec<Request> {
        let seen = self.seen.lock().unwrap();
        seen.iter().filter(|r| r.path == path).cloned().collect()
    }

    /// Wait until `path` has had `n` requests; them.
    fn wait(&self, path: &str, n: usize) -> Vec<Request> {
        wait_until(
            &format!("{n} requests to {path}"),
            Duration::from_secs(30),
            || self.to(path).len() >= n,
        );
        self.to(path)
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A cluster (as `CONF` sets it) with table defects watched and role hooks, and a receiver.
fn started(name: &str) -> (Cluster, Receiver) {
    let cluster = Cluster::start(name, CONF);
    setup(&cluster);
    (cluster, Receiver::start())
}

fn setup(cluster: &Cluster) {
    cluster
        .client()
        .batch_execute(
            "CREATE TABLE defects (id serial PRIMARY KEY, line text, note text, cost int);
             SELECT realtime_watch('defects');
             CREATE ROLE hooks NOLOGIN;
             GRANT SELECT ON defects TO hooks;
             GRANT hooks TO realtime_authenticator;",
        )
        .unwrap();
}

/// Create webhook `name` on table defects, reading as role hooks unless `extra` says.
fn create(cluster: &Cluster, name: &str, url: &str, extra: &str) {
    let role = if extra.contains("acts_as") {
        ""
    } else {
        ", acts_as => 'hooks'"
    };
    cluster
        .client()
        .execute(
            &format!(
                "SELECT realtime_webhook_create($1, $2, tables => '{{defects}}', secret => $3{role}{extra})"
            ),
            &[&name, &url, &SECRET],
        )
        .unwrap();
}

/// A webhook's row in `realtime_webhooks`, one column as text.
fn field(cluster: &Cluster, name: &str, column: &str) -> Option<String> {
    cluster
        .client()
        .query_one(
            &format!("SELECT {column}::text FROM realtime_webhooks WHERE name = $1"),
            &[&name],
        )
        .unwrap()
        .get(0)
}

fn positions(requests: &[Request]) -> Vec<i64> {
    requests
        .iter()
        .map(|r| r.body["position"].as_i64().unwrap())
        .collect()
}

#[test]
fn changes_arrive_signed_once_and_in_commit_order() {
    let (cluster, receiver) = started("webhooks_order");
    create(
        &cluster,
        "feed",
        &receiver.url("/ok"),
        ", headers => '{\"x-extra\": \"kept\"}'",
    );
    let mut db = cluster.client();
    for i in 0..50 {
        // Some transactions of one row, some of three: 70 rows.
        let rows = if i % 5 == 0 { 3 } else { 1 };
        db.batch_execute(&format!(
            "INSERT INTO defects (line, note, cost) SELECT 'A', 'n{i}', g FROM generate_series(1, {rows}) g"
        ))
        .unwrap();
    }
    db.batch_execute(
        "UPDATE defects SET cost = cost + 1 WHERE id = 1; DELETE FROM defects WHERE id = 2",
    )
    .unwrap();
    let got = receiver.wait("/ok", 72);
    assert!(got.iter().all(|r| r.valid), "a signature did not verify");
    assert!(got.iter().all(|r| r.n == 1), "something was sent twice");
    assert!(got.iter().all(|r| r.extra.as_deref() == Some("kept")));
    let p = positions(&got);
    assert!(
        p.windows(2).all(|w| w[0] < w[1]),
        "not in commit order: {p:?}"
    );
    let ids: Vec<i64> = got[..70]
        .iter()
        .map(|r| r.body["record"]["id"].as_i64().unwrap())
        .collect();
    assert_eq!(ids, (1..=70).collect::<Vec<_>>());
    assert_eq!(got[0].body["type"], "INSERT");
    assert_eq!(got[0].body["table"], "defects");
    assert_eq!(got[0].body["record"]["note"], "n0");
    assert_eq!(got[70].body["type"], "UPDATE");
    assert_eq!(got[70].body["old_record"]["cost"], 1);
    assert_eq!(got[70].body["record"]["cost"], 2);
    assert_eq!(got[71].body["type"], "DELETE");
    assert_eq!(got[71].body["old_record"]["id"], 2);
    // The id is the position: the same for every attempt, unique per change.
    assert_eq!(got[0].id, format!("msg_1_{}", p[0]));
    // Acknowledged, as the DBA sees it.
    let last = p[71].to_string();
    wait_until("the position kept", Duration::from_secs(10), || {
        field(&cluster, "feed", "position").as_deref() == Some(last.as_str())
    });
    assert_eq!(field(&cluster, "feed", "state").as_deref(), Some("active"));
    let delivered: i64 = db
        .query_one(
            "SELECT count(*) FROM realtime_webhook_deliveries WHERE webhook = 'feed' AND outcome = 'delivered' AND status = 200",
            &[],
        )
        .unwrap()
        .get(0);
    assert!(delivered > 0);
}

/// The requests to `path` with webhook-id `id`, in order.
fn tries(requests: &[Request], id: &str) -> Vec<Request> {
    requests.iter().filter(|r| r.id == id).cloned().collect()
}

/// Recent deliveries of `name` with `outcome`: (status, error, whether a retry time is set).
fn deliveries(
    cluster: &Cluster,
    name: &str,
    outcome: &str,
) -> Vec<(Option<i32>, Option<String>, bool)> {
    cluster
        .client()
        .query(
            "SELECT status, error, retry_at IS NOT NULL FROM realtime_webhook_deliveries
              WHERE webhook = $1 AND outcome = $2 ORDER BY at",
            &[&name, &outcome],
        )
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect()
}

fn insert(cluster: &Cluster, note: &str) {
    cluster
        .client()
        .execute(
            "INSERT INTO defects (line, note) VALUES ('A', $1)",
            &[&note],
        )
        .unwrap();
}

#[test]
fn failures_are_retried_on_the_schedule_and_nothing_overtakes_them() {
    let (cluster, receiver) = started("webhooks_retries");
    create(&cluster, "flaky", &receiver.url("/fail/2"), "");
    for i in 0..5 {
        insert(&cluster, &format!("r{i}"));
    }
    // Each change refused twice, then taken; the next is sent only after.
    let got = receiver.wait("/fail/2", 15);
    let ids: Vec<&str> = got.iter().map(|r| r.id.as_str()).collect();
    for (i, chunk) in ids.chunks(3).enumerate() {
        assert!(
            chunk.iter().all(|id| *id == chunk[0]),
            "interleaved: {ids:?}"
        );
        assert_eq!(got[i * 3].body["record"]["note"], format!("r{i}"));
    }
    // The schedule's waits (100 ms, then 200 ms), give or take a fifth.
    let first = tries(&got, ids[0]);
    assert!(
        first[1].at - first[0].at >= Duration::from_millis(75),
        "{:?}",
        first[1].at - first[0].at
    );
    assert!(
        first[2].at - first[1].at >= Duration::from_millis(155),
        "{:?}",
        first[2].at - first[1].at
    );
    wait_until("the failures logged", Duration::from_secs(10), || {
        deliveries(&cluster, "flaky", "failed").len() == 10
            && deliveries(&cluster, "flaky", "delivered").len() == 5
    });
    let failed = deliveries(&cluster, "flaky", "failed");
    assert!(failed
        .iter()
        .all(|(status, error, retry)| *status == Some(500)
            && error.as_deref() == Some("HTTP 500: answered 500")
            && *retry));
    wait_until("the webhook active again", Duration::from_secs(10), || {
        field(&cluster, "flaky", "state").as_deref() == Some("active")
            && field(&cluster, "flaky", "last_error").is_none()
    });
}

#[test]
fn retry_after_is_honoured() {
    let (cluster, receiver) = started("webhooks_retry_after");
    create(&cluster, "busy", &receiver.url("/retry-after/1"), "");
    insert(&cluster, "r");
    let got = receiver.wait("/retry-after/1", 2);
    assert_eq!(got[0].id, got[1].id);
    // 1 s, not the schedule's 100 ms.
    assert!(
        got[1].at - got[0].at >= Duration::from_millis(950),
        "{:?}",
        got[1].at - got[0].at
    );
    assert_eq!(deliveries(&cluster, "busy", "failed")[0].0, Some(429));
}

#[test]
fn gone_disables_a_webhook_until_it_is_resumed() {
    let (cluster, receiver) = started("webhooks_gone");
    create(&cluster, "gone", &receiver.url("/status/410"), "");
    create(&cluster, "control", &receiver.url("/ok?control"), "");
    insert(&cluster, "first");
    receiver.wait("/status/410", 1);
    wait_until("disabled", Duration::from_secs(10), || {
        field(&cluster, "gone", "state").as_deref() == Some("disabled")
    });
    let reason = field(&cluster, "gone", "disabled_reason").unwrap();
    assert!(reason.contains("410"), "{reason}");
    insert(&cluster, "second");
    receiver.wait("/ok?control", 2);
    assert_eq!(
        receiver.to("/status/410").len(),
        1,
        "a disabled webhook was sent to"
    );
    // Resumed at another address: what it never acknowledged comes first, then the rest.
    cluster
        .client()
        .batch_execute(&format!(
            "SELECT realtime_webhook_alter('gone', url => '{}'); SELECT realtime_webhook_resume('gone');",
            receiver.url("/ok?gone")
        ))
        .unwrap();
    let got = receiver.wait("/ok?gone", 2);
    let notes: Vec<&Value> = got.iter().map(|r| &r.body["record"]["note"]).collect();
    assert_eq!(notes, ["first", "second"]);
    wait_until("active", Duration::from_secs(10), || {
        field(&cluster, "gone", "state").as_deref() == Some("active")
    });
}

#[test]
fn a_webhook_is_disabled_when_the_schedule_runs_out() {
    let (cluster, receiver) = started("webhooks_schedule");
    create(&cluster, "down", &receiver.url("/status/500"), "");
    insert(&cluster, "r");
    // The first try and the schedule's three retries.
    receiver.wait("/status/500", 4);
    wait_until("disabled", Duration::from_secs(10), || {
        field(&cluster, "down", "state").as_deref() == Some("disabled")
    });
    let reason = field(&cluster, "down", "disabled_reason").unwrap();
    assert!(
        reason.contains("attempt 4, the last the retry schedule allows"),
        "{reason}"
    );
    assert!(cluster.log().contains("webhook \"down\" disabled"));
    assert_eq!(receiver.to("/status/500").len(), 4);
}

#[test]
fn timeouts_garbage_and_redirects_are_failures() {
    let (cluster, receiver) = started("webhooks_bad_receivers");
    create(
        &cluster,
        "slow",
        &receiver.url("/stall-first/3000"),
        ", timeout => '300ms'",
    );
    create(&cluster, "garbage", &receiver.url("/garbage"), "");
    create(&cluster, "redirect", &receiver.url("/redirect"), "");
    insert(&cluster, "r");
    // The stalled first try timed out; the second was taken.
    let slow = receiver.wait("/stall-first/3000", 2);
    assert_eq!(slow[1].n, 2);
    wait_until("every outcome logged", Duration::from_secs(20), || {
        !deliveries(&cluster, "slow", "delivered").is_empty()
            && field(&cluster, "garbage", "state").as_deref() == Some("disabled")
            && field(&cluster, "redirect", "state").as_deref() == Some("disabled")
    });
    let timed_out = deliveries(&cluster, "slow", "failed");
    assert!(
        timed_out[0].1.as_deref().unwrap().contains("timed out"),
        "{timed_out:?}"
    );
    let garbage = deliveries(&cluster, "garbage", "failed");
    assert!(
        garbage
            .iter()
            .all(|(status, error, _)| status.is_none() && error.is_some()),
        "{garbage:?}"
    );
    let redirect = deliveries(&cluster, "redirect", "failed");
    assert!(
        redirect
            .iter()
            .all(|(status, error, _)| *status == Some(302)
                && error
                    .as_deref()
                    .unwrap()
                    .contains("redirects are not followed")),
        "{redirect:?}"
    );
    // The worker is still there for everyone else.
    create(&cluster, "fine", &receiver.url("/ok?fine"), "");
    insert(&cluster, "after");
    receiver.wait("/ok?fine", 1);
}

#[test]
fn receivers_at_refused_addresses_are_not_contacted() {
    let (cluster, receiver) = started("webhooks_guard");
    // 127.0.0.2 is not among realtime.webhook_allowed_hosts; localhost resolves to 127.0.0.1,
    // which is.
    let refused = format!("http://127.0.0.2:{}/ok?refused", receiver.port);
    create(&cluster, "refused", &refused, "");
    let named = format!("http://localhost:{}/ok?named", receiver.port);
    create(&cluster, "named", &named, "");
    insert(&cluster, "r");
    receiver.wait("/ok?named", 1);
    wait_until("refused logged", Duration::from_secs(10), || {
        !deliveries(&cluster, "refused", "failed").is_empty()
    });
    let error = deliveries(&cluster, "refused", "failed")[0]
        .1
        .clone()
        .unwrap();
    assert!(
        error.contains("127.0.0.2 is not a public address"),
        "{error}"
    );
    assert!(receiver.to("/ok?refused").is_empty());
    // With no address allowed, the name is refused on what it resolves to.
    let mut db = cluster.client();
    db.execute("ALTER SYSTEM SET realtime.webhook_allowed_hosts = ''", &[])
        .unwrap();
    db.execute("SELECT pg_reload_conf()", &[]).unwrap();
    // The worker takes the setting in at its next pass: rows written before may still go out.
    let refused_by_name = common::poll(Duration::from_secs(10), || {
        insert(&cluster, "s");
        field(&cluster, "named", "last_error").is_some_and(|e| {
            e.contains("localhost resolves to") && e.contains("not a public address")
        })
    });
    assert!(
        refused_by_name,
        "{:?} {:?}",
        field(&cluster, "named", "last_error"),
        deliveries(&cluster, "named", "failed")
    );
    let sent = receiver.to("/ok?named").len();
    insert(&cluster, "t");
    wait_until("another refusal", Duration::from_secs(10), || {
        deliveries(&cluster, "named", "failed").len() >= 2
    });
    assert_eq!(receiver.to("/ok?named").len(), sent);
}

/// A webhook reads as its role with its claims: the rows and columns SQL would give that role
/// in a session with those claims, and nothing else.
#[test]
fn a_webhook_sees_rows_and_columns_as_its_role_would() {
    let cluster = Cluster::start("webhooks_rls", CONF);
    setup(&cluster);
    cluster
        .client()
        .batch_execute(
            "CREATE ROLE line_lead NOLOGIN;
             GRANT line_lead TO realtime_authenticator;
             GRANT SELECT (id, line, note) ON defects TO line_lead;
             ALTER TABLE defects ENABLE ROW LEVEL SECURITY;
             CREATE POLICY own_line ON defects FOR SELECT TO line_lead
                 USING (line = current_setting('request.jwt.claims', true)::jsonb ->> 'line');",
        )
        .unwrap();
    let receiver = Receiver::start();
    create(
        &cluster,
        "line_b",
        &receiver.url("/ok"),
        ", acts_as => 'line_lead', claims => '{\"line\": \"B\"}'",
    );
    let mut db = cluster.client();
    db.batch_execute(
        "INSERT INTO defects (line, note, cost) SELECT (ARRAY['A','B','C'])[g % 3 + 1], 'n' || g, g
           FROM generate_series(1, 30) g;
         UPDATE defects SET line = 'B' WHERE id = 3;
         INSERT INTO defects (line, note, cost) VALUES ('B', 'last', 99);",
    )
    .unwrap();
    // What SQL gives the role with the claims, as JSON rows.
    let expected: Vec<Value> = {
        let mut tx = db.transaction().unwrap();
        tx.batch_execute(
            "SET LOCAL ROLE line_lead; SET LOCAL request.jwt.claims = '{\"line\": \"B\"}'",
        )
        .unwrap();
        let rows = tx
            .query("SELECT row_to_json(d)::text FROM (SELECT id, line, note FROM defects ORDER BY id) d", &[])
            .unwrap();
        rows.iter()
            .map(|r| serde_json::from_str(r.get(0)).unwrap())
            .collect()
    };
    let got = receiver.wait("/ok", 12);
    let last = got.last().unwrap();
    assert_eq!(last.body["record"]["note"], "last");
    // Row 3 moved into line B: an UPDATE it now sees, without the old row it could not.
    let moved = got
        .iter()
        .find(|r| r.body["type"] == "UPDATE")
        .expect("the update");
    assert_eq!(moved.body["record"]["id"], 3);
    assert_eq!(moved.body["old_record"], Value::Null);
    let mut rows: Vec<Value> = got.iter().map(|r| r.body["record"].clone()).collect();
    rows.sort_by_key(|r| r["id"].as_i64());
    rows.dedup_by_key(|r| r["id"].as_i64());
    assert_eq!(rows, expected);
    assert!(
        got.iter().all(|r| r.body["record"].get("cost").is_none()),
        "a column it may not read"
    );
}

fn sql_error(result: Result<impl Sized, postgres::Error>) -> (String, String, String) {
    let e = result.err().expect("refused");
    let db = e
        .as_db_error()
        .unwrap_or_else(|| panic!("not an error from the server: {e}"));
    (
        db.code().code().to_string(),
        db.message().to_string(),
        db.hint().unwrap_or_default().to_string(),
    )
}

/// Only roles a superuser allowed may have webhooks; each sees and changes only its own, its
/// secret included; bad arguments are refused with a SQLSTATE and a hint, changing nothing.
#[test]
fn webhooks_belong_to_their_owners() {
    let cluster = Cluster::start("webhooks_owners", CONF);
    setup(&cluster);
    cluster
        .client()
        .batch_execute(
            "CREATE ROLE alice LOGIN; CREATE ROLE bob LOGIN; CREATE ROLE carol LOGIN;
             GRANT USAGE ON SCHEMA realtime TO alice, bob;
             GRANT SELECT, INSERT, UPDATE, DELETE ON realtime.webhooks TO alice, bob;
             GRANT SELECT ON realtime.webhook_deliveries TO alice, bob;
             GRANT SELECT ON defects TO alice, bob;",
        )
        .unwrap();
    let mut alice = cluster.client_as("alice");
    let mut bob = cluster.client_as("bob");
    let mut carol = cluster.client_as("carol");
    let create =
        "SELECT realtime_webhook_create($1, 'https://example.com/hook', tables => '{defects}')";

    let (code, message, hint) = sql_error(carol.query_one(create, &[&"c1"]));
    assert_eq!(code, "42501", "{message}");
    assert!(hint.contains("ON realtime.webhooks TO carol"), "{hint}");

    let secret: String = alice.query_one(create, &[&"a1"]).unwrap().get(0);
    assert!(
        secret.starts_with("whsec_") && secret.len() >= 38,
        "{secret}"
    );
    let seen: String = alice
        .query_one(
            "SELECT secret FROM realtime_webhooks WHERE name = 'a1'",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(seen, secret);

    // Bob sees nothing of it, and cannot change it, directly or through the functions.
    let count = |client: &mut postgres::Client, sql: &str| -> i64 {
        client.query_one(sql, &[]).unwrap().get(0)
    };
    assert_eq!(count(&mut bob, "SELECT count(*) FROM realtime_webhooks"), 0);
    assert_eq!(count(&mut bob, "SELECT count(*) FROM realtime.webhooks"), 0);
    let (code, _, _) = sql_error(bob.execute(
        "SELECT realtime_webhook_alter('a1', url => 'https://bob.example/')",
        &[],
    ));
    assert_eq!(code, "42704");
    assert!(!bob
        .query_one("SELECT realtime_webhook_drop('a1')", &[])
        .unwrap()
        .get::<_, bool>(0));
    assert_eq!(
        bob.execute(
            "UPDATE realtime.webhooks SET url = 'https://bob.example/'",
            &[]
        )
        .unwrap(),
        0
    );
    let (code, _, _) = sql_error(bob.execute(
        "INSERT INTO realtime.webhooks (name, owner, url, tables, acts_as, secret, position)
         VALUES ('b1', 'alice', 'https://bob.example/', '{defects}', 'alice', 'whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw', 0)",
        &[],
    ));
    assert_eq!(code, "42501", "an owner it is not a member of");
    assert_eq!(
        count(
            &mut alice,
            "SELECT count(*) FROM realtime_webhooks WHERE url = 'https://example.com/hook'"
        ),
        1
    );

    // A webhook reads only as a role its owner could SET ROLE to, never a privileged one.
    let as_role = "SELECT realtime_webhook_create('a2', 'https://example.com/', tables => '{defects}', acts_as => $1::text::regrole)";
    let (code, _, hint) = sql_error(alice.query_one(as_role, &[&"bob"]));
    assert_eq!(code, "42501");
    assert!(hint.contains("member"), "{hint}");
    let (code, _, _) = sql_error(cluster.client().query_one(as_role, &[&"postgres"]));
    assert_eq!(code, "42501");

    // Bad arguments: a clear error each, nothing made.
    for (args, expected) in [
        ("'x', 'ftp://example.com/', tables => '{defects}'", "22023"),
        ("'x', 'https://example.com/', tables => '{nope}'", "42P01"),
        ("'x', 'https://example.com/'", "22023"),
        ("'x', 'https://example.com/', tables => '{defects}', events => '{insert,upsert}'", "22023"),
        ("'x', 'https://example.com/', tables => '{defects}', filter => 'cost=between.1'", "22023"),
        ("'x', 'https://example.com/', tables => '{defects}', headers => '{\"webhook-id\": \"1\"}'", "22023"),
        ("'x', 'https://example.com/', tables => '{defects}', headers => '{\"bad name\": \"1\"}'", "22023"),
        ("'x', 'https://example.com/', tables => '{defects}', secret => 'whsec_short'", "22023"),
        ("'x', 'https://example.com/', tables => '{defects}', headers => (SELECT jsonb_object_agg('x-' || g, 'v') FROM generate_series(1, 33) g)", "22023"),
        ("'bad name!', 'https://example.com/', tables => '{defects}'", "22023"),
        ("'a1', 'https://example.com/', tables => '{defects}'", "42710"),
    ] {
        let (code, message, hint) = sql_error(alice.query_one(&format!("SELECT realtime_webhook_create({args})"), &[]));
        assert_eq!(code, expected, "{args}: {message}");
        assert!(!hint.is_empty(), "{args}: no hint for {message}");
    }
    cluster
        .client()
        .batch_execute("CREATE TABLE unwatched (id int); GRANT SELECT ON unwatched TO alice")
        .unwrap();
    let (code, _, hint) = sql_error(alice.query_one(
        "SELECT realtime_webhook_create('x', 'https://example.com/', tables => '{unwatched}')",
        &[],
    ));
    assert_eq!(
        (code.as_str(), hint.contains("realtime_watch")),
        ("55000", true)
    );
    assert_eq!(
        count(&mut alice, "SELECT count(*) FROM realtime_webhooks"),
        1
    );

    // Its owner changes and removes it.
    alice
        .execute("SELECT realtime_webhook_pause('a1')", &[])
        .unwrap();
    assert_eq!(field(&cluster, "a1", "state").as_deref(), Some("paused"));
    assert!(alice
        .query_one("SELECT realtime_webhook_drop('a1')", &[])
        .unwrap()
        .get::<_, bool>(0));
    // The worker is unaffected by all of it.
    cluster.wait_healthy();
}

/// A writer's connection, made again after the server restarts.
fn connect_retrying(cluster: &Cluster) -> postgres::Client {
    let mut client = None;
    wait_until("a connection", Duration::from_secs(60), || {
        client = postgres::Client::connect(&cluster.conninfo("postgres"), postgres::NoTls).ok();
        client.is_some()
    });
    client.expect("connected")
}

fn rows(cluster: &Cluster) -> i64 {
    connect_retrying(cluster)
        .query_one("SELECT count(*) FROM defects", &[])
        .map(|r| r.get(0))
        .unwrap_or(0)
}

/// 10,000 rows written in transactions of 10 while the worker is killed (kill -9: the server
/// restarts every process) and then the server restarted immediately. The receiver ends with
/// every row in the table, in order, sent twice only around the two crashes: at most the
/// request each crash cut off (50 rows), whose answer the worker never heard.
#[test]
fn a_killed_worker_and_an_immediate_restart_lose_nothing() {
    let (cluster, receiver) = started("webhooks_crash");
    create(
        &cluster,
        "stream",
        &receiver.url("/ok?stream"),
        ", batch_size => 50",
    );
    let writer = {
        let conninfo = cluster.conninfo("postgres");
        std::thread::spawn(move || {
            let mut client = None;
            for t in 0..1000 {
                for _ in 0..600 {
                    if client.is_none() {
                        client = postgres::Client::connect(&conninfo, postgres::NoTls).ok();
                    }
                    let insert = format!(
                        "INSERT INTO defects (line, note) SELECT 'A', 't{t}' FROM generate_series(1, 10)"
                    );
                    match client.as_mut().map(|c| c.batch_execute(&insert)) {
                        Some(Ok(())) => break,
                        // The server is restarting: whether it committed, the table will say.
                        _ => {
                            client = None;
                            std::thread::sleep(Duration::from_millis(100));
                        }
                    }
                }
            }
        })
    };
    wait_until("2,500 rows", Duration::from_secs(120), || {
        rows(&cluster) >= 2500
    });
    cluster.kill_worker();
    wait_until("6,000 rows", Duration::from_secs(120), || {
        rows(&cluster) >= 6000
    });
    cluster.pg_ctl(&[
        "restart",
        "-w",
        "-m",
        "immediate",
        "-l",
        cluster.dir.join("server.log").to_str().unwrap(),
    ]);
    writer.join().unwrap();
    cluster.wait_healthy();
    insert(&cluster, "end");
    let ends = |r: &Request| {
        r.body["events"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["record"]["note"] == "end")
    };
    wait_until("the last row sent", Duration::from_secs(120), || {
        receiver.to("/ok?stream").iter().any(ends)
    });

    let got = receiver.to("/ok?stream");
    assert!(got.iter().all(|r| r.valid));
    let sent: Vec<i64> = got
        .iter()
        .flat_map(|r| r.body["events"].as_array().unwrap().clone())
        .map(|e| e["record"]["id"].as_i64().unwrap())
        .collect();
    let backwards = sent.windows(2).filter(|w| w[1] <= w[0]).count();
    assert!(
        backwards <= 2,
        "sent out of order {backwards} times, not only at the two crashes"
    );
    let table: Vec<i64> = cluster
        .client()
        .query("SELECT id::int8 FROM defects ORDER BY id", &[])
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    let received: std::collections::HashSet<i64> = sent.iter().copied().collect();
    let missing: Vec<i64> = table
        .iter()
        .copied()
        .filter(|id| !received.contains(id))
        .collect();
    let gaps = deliveries(&cluster, "stream", "gap");
    eprintln!(
        "{} rows, {} sent ({} twice), {} missing, {} gaps",
        table.len(),
        sent.len(),
        sent.len() - received.len(),
        missing.len(),
        gaps.len()
    );
    assert!(missing.is_empty(), "rows never sent: {missing:?}");
    assert!(
        sent.len() - received.len() <= 2 * 50,
        "more sent twice than the two requests in flight at the crashes"
    );
    assert!(gaps.is_empty(), "gaps: {gaps:?}");
    assert!(
        received.iter().all(|id| table.binary_search(id).is_ok()),
        "a row that is not in the table"
    );
}

/// A table and a topic in one webhook: rows and messages in the order their transactions
/// committed, a transaction's together.
#[test]
fn tables_and_topics_arrive_in_one_commit_order() {
    let conf = [CONF, &["realtime.public_topics = on"]].concat();
    let cluster = Cluster::start("webhooks_topics", &conf);
    setup(&cluster);
    let receiver = Receiver::start();
    create(
        &cluster,
        "both",
        &receiver.url("/ok"),
        ", topics => '{alerts}'",
    );
    let mut db = cluster.client();
    for i in 0..10 {
        db.batch_execute(&format!(
            "BEGIN;
             INSERT INTO defects (line, note) VALUES ('A', 'row{i}');
             SELECT realtime_send('alerts', 'raised', jsonb_build_object('n', {i}));
             COMMIT;
             SELECT realtime_send('elsewhere', 'ignored', '{{}}');"
        ))
        .unwrap();
    }
    let got = receiver.wait("/ok", 20);
    let order: Vec<String> = got
        .iter()
        .map(|r| match r.body["type"].as_str().unwrap() {
            "MESSAGE" => {
                assert_eq!(
                    (&r.body["topic"], &r.body["event"]),
                    (&"alerts".into(), &"raised".into())
                );
                format!("message{}", r.body["payload"]["n"])
            }
            _ => r.body["record"]["note"].as_str().unwrap().to_string(),
        })
        .collect();
    let expected: Vec<String> = (0..10)
        .flat_map(|i| [format!("row{i}"), format!("message{i}")])
        .collect();
    assert_eq!(order, expected);
    assert!(positions(&got).windows(2).all(|w| w[0] < w[1]));
}

/// The README's webhook, as written there, to the demo's receiver (which verifies with the
/// reference library) on the demo's table.
#[test]
fn the_readme_s_webhook_reaches_the_demo_s_receiver() {
    let root = env!("CARGO_MANIFEST_DIR");
    let readme = std::fs::read_to_string(format!("{root}/README.md")).unwrap();
    let section = readme
        .split("### Posting each change to a function?")
        .nth(1)
        .expect("the README's webhook section");
    let sql = section
        .split("```sql")
        .nth(1)
        .unwrap()
        .split("```")
        .next()
        .unwrap();
    let cluster = Cluster::start("webhooks_readme", &[]);
    let mut db = cluster.client();
    db.batch_execute(
        &std::fs::read_to_string(format!("{root}/examples/defects/schema.sql")).unwrap(),
    )
    .unwrap();
    db.batch_execute(
        "CREATE ROLE web_user NOLOGIN; GRANT SELECT ON defects TO web_user;
         GRANT web_user TO realtime_authenticator;",
    )
    .unwrap();
    let port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    };
    let mut secret = String::new();
    for line in sql.lines().map(str::trim).filter(|l| !l.is_empty()) {
        let line = line.replace("127.0.0.1:9000", &format!("127.0.0.1:{port}"));
        for message in db.simple_query(&line).unwrap() {
            if let postgres::SimpleQueryMessage::Row(row) = message {
                secret = row.get(0).unwrap_or_default().to_string();
            }
        }
    }
    assert!(
        secret.starts_with("whsec_"),
        "the last line returns the secret"
    );
    let mut receiver = Command::new("node")
        .arg(format!("{root}/examples/defects/webhook-receiver.mjs"))
        .env("WEBHOOK_SECRET", &secret)
        .env("PORT", port.to_string())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(receiver.stdout.take().unwrap()).lines();
    assert!(lines.next().unwrap().unwrap().starts_with("listening"));
    db.execute(
        "INSERT INTO defects (camera, kind, score) VALUES ('weld-1', 'scratch', 0.93)",
        &[],
    )
    .unwrap();
    // The first try may have come before the receiver listened: the retry 5 s later finds it.
    let line = lines.next().unwrap().unwrap();
    let _ = receiver.kill();
    let _ = receiver.wait();
    assert!(
        line.starts_with("verified INSERT defect 1 at weld-1: scratch (0.93)"),
        "{line}"
    );
}

/// Paused, a webhook receives nothing; resumed, what was committed meanwhile comes from the
/// history; replayed, everything after a position again, with a gap (logged) where the history
/// holds nothing.
#[test]
fn paused_resumed_and_replayed_from_the_history() {
    let (cluster, receiver) = started("webhooks_replay");
    create(&cluster, "later", &receiver.url("/ok?later"), "");
    create(&cluster, "control", &receiver.url("/ok?control"), "");
    insert(&cluster, "before");
    receiver.wait("/ok?later", 1);
    let mut db = cluster.client();
    db.execute("SELECT realtime_webhook_pause('later')", &[])
        .unwrap();
    wait_until("paused", Duration::from_secs(10), || {
        field(&cluster, "later", "state").as_deref() == Some("paused")
    });
    // The worker reads the webhooks once a second: once it has, only the control webhook's
    // subscription is left.
    wait_until("the pause taken in", Duration::from_secs(10), || {
        cluster.stat("subscriptions{protocol=\"webhook\"}") == 1
    });
    insert(&cluster, "while paused");
    receiver.wait("/ok?control", 2);
    assert_eq!(
        receiver.to("/ok?later").len(),
        1,
        "a paused webhook was sent to"
    );
    db.execute("SELECT realtime_webhook_resume('later')", &[])
        .unwrap();
    let got = receiver.wait("/ok?later", 2);
    assert_eq!(got[1].body["record"]["note"], "while paused");

    // Everything after position 0: the history begins after the cluster's first position, so
    // what comes before it is a gap; then both rows again, with the ids they had.
    db.execute("SELECT realtime_webhook_replay('later', 0)", &[])
        .unwrap();
    let again = receiver.wait("/ok?later", 4);
    assert_eq!(
        (again[2].id.as_str(), again[3].id.as_str()),
        (got[0].id.as_str(), got[1].id.as_str())
    );
    assert_eq!((again[2].n, again[3].n), (2, 2));
    wait_until("the gap logged", Duration::from_secs(10), || {
        !deliveries(&cluster, "later", "gap").is_empty()
    });
    assert!(cluster
        .log()
        .contains("webhook \"later\" will not receive positions 1 to"));
}

/// A session that holds a webhook's row (altering it, say) holds up neither the worker nor
/// the other webhooks: what it cannot write back now it writes once the row is free.
#[test]
fn a_locked_webhook_row_holds_up_nobody() {
    let (cluster, receiver) = started("webhooks_locked");
    create(&cluster, "held", &receiver.url("/ok?held"), "");
    create(&cluster, "free", &receiver.url("/ok?free"), "");
    insert(&cluster, "first");
    receiver.wait("/ok?held", 1);
    let mut session = cluster.client();
    let mut tx = session.transaction().unwrap();
    tx.execute(
        "SELECT FROM realtime.webhooks WHERE name = 'held' FOR UPDATE",
        &[],
    )
    .unwrap();
    insert(&cluster, "second");
    receiver.wait("/ok?held", 2);
    let free_position = receiver.wait("/ok?free", 2)[1].body["position"].to_string();
    // The other webhook's state is written back, and changes still flow to WebSocket clients.
    wait_until(
        "the free webhook's position kept",
        Duration::from_secs(10),
        || field(&cluster, "free", "position").as_deref() == Some(free_position.as_str()),
    );
    let mut ws = cluster.ws();
    ws.subscribe("s", "defects", None);
    insert(&cluster, "third");
    assert_eq!(ws.changes(1)[0]["new"]["note"], "third");
    tx.rollback().unwrap();
    let held_position = receiver.wait("/ok?held", 3)[2].body["position"].to_string();
    wait_until(
        "the held webhook's position kept",
        Duration::from_secs(10),
        || field(&cluster, "held", "position").as_deref() == Some(held_position.as_str()),
    );
}

/// A webhook's filter and events narrow what it is sent, as a client's do.
#[test]
fn filters_and_events_narrow_what_is_sent() {
    let (cluster, receiver) = started("webhooks_filters");
    create(
        &cluster,
        "costly",
        &receiver.url("/ok?costly"),
        ", filter => 'cost=gte.10'",
    );
    create(
        &cluster,
        "updates",
        &receiver.url("/ok?updates"),
        ", events => '{update}'",
    );
    cluster
        .client()
        .batch_execute(
            "INSERT INTO defects (line, note, cost) SELECT 'A', 'n' || g, g FROM generate_series(1, 20) g;
             UPDATE defects SET note = 'changed' WHERE id = 3;",
        )
        .unwrap();
    let costly = receiver.wait("/ok?costly", 11);
    let costs: Vec<i64> = costly
        .iter()
        .map(|r| r.body["record"]["cost"].as_i64().unwrap())
        .collect();
    assert_eq!(costs, (10..=20).collect::<Vec<_>>());
    let updates = receiver.wait("/ok?updates", 1);
    assert_eq!(
        (
            updates[0].body["type"].as_str(),
            updates[0].body["record"]["id"].as_i64()
        ),
        (Some("UPDATE"), Some(3))
    );
    // Nothing else came: an update both take arrives next, alone.
    cluster
        .client()
        .batch_execute("UPDATE defects SET cost = 30 WHERE id = 4")
        .unwrap();
    assert_eq!(receiver.wait("/ok?costly", 12)[11].body["record"]["id"], 4);
    assert_eq!(receiver.wait("/ok?updates", 2)[1].body["record"]["id"], 4);
    assert_eq!(receiver.to("/ok?costly").len(), 12);
    assert_eq!(receiver.to("/ok?updates").len(), 2);
}

/// TLS certificates are verified: a receiver whose certificate no public authority signed is
/// not sent a byte.
#[test]
fn receivers_certificates_are_verified() {
    let (cluster, _) = started("webhooks_tls");
    let (key, cert) = (
        cluster.dir.join("receiver.key"),
        cluster.dir.join("receiver.crt"),
    );
    let made = Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=127.0.0.1",
        ])
        .args(["-addext", "subjectAltName=IP:127.0.0.1", "-keyout"])
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .stderr(Stdio::null())
        .status()
        .expect("openssl runs");
    assert!(made.success());
    let receiver = Receiver::start_with(&[key.to_str().unwrap(), cert.to_str().unwrap()]);
    let url = format!("https://127.0.0.1:{}/ok", receiver.port);
    create(&cluster, "self-signed", &url, "");
    insert(&cluster, "r");
    wait_until("the certificate refused", Duration::from_secs(10), || {
        field(&cluster, "self-signed", "last_error").is_some_and(|e| e.contains("certificate"))
    });
    assert!(receiver.to("/ok").is_empty());
}
