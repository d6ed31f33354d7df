//! The JavaScript side against a real server: realtime.js's own tests in Node's test runner
//! (clients/js/test), and the pages the worker serves in headless Chromium (tests/browser).
//! Node, Chromium and playwright-core are installed by .ci/prereqs.sh; a missing one fails
//! these tests rather than skipping them.

mod common;

use common::{Cluster, JWT_SECRET};
use std::path::Path;
use std::process::Command;

/// Node's test runner on `tests` (paths from the repository root), with the server described
/// in the environment (clients/js/test/server.mjs reads it).
fn node_test(cluster: &Cluster, tests: &[&str]) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let shots = root.join("target/browser-screenshots");
    std::fs::create_dir_all(&shots).unwrap();
    let bin = String::from_utf8(
        common::pg_command("pg_config")
            .arg("--bindir")
            .output()
            .unwrap()
            .stdout,
    )
    .unwrap();
    let mut node = Command::new("node");
    // Node 20 and 21 have WebSocket behind a flag; 22 and later have it on.
    if !Command::new("node")
        .args([
            "-e",
            "process.exit(typeof WebSocket === 'function' ? 0 : 1)",
        ])
        .status()
        .expect("node is installed (.ci/prereqs.sh installs it)")
        .success()
    {
        node.arg("--experimental-websocket");
    }
    let status = node
        .args(["--test", "--test-concurrency=1", "--test-force-exit"])
        .args(tests)
        .current_dir(root)
        .env(
            "REALTIME_WS_URL",
            format!("ws://127.0.0.1:{}/realtime", cluster.ws_port),
        )
        .env(
            "REALTIME_HTTP_URL",
            format!("http://127.0.0.1:{}", cluster.ws_port),
        )
        .env("REALTIME_PSQL", format!("{}/psql", bin.trim()))
        .env("REALTIME_PGPORT", cluster.port.to_string())
        .env("REALTIME_JWT_SECRET", JWT_SECRET)
        .env("REALTIME_SCREENSHOTS", &shots)
        .status()
        .expect("run node");
    assert!(
        status.success(),
        "node --test {tests:?} failed (its report is above); server log:\n{}",
        cluster.log()
    );
}

#[test]
fn the_javascript_client_against_the_server() {
    let cluster = Cluster::start("js_client", &[]);
    node_test(&cluster, &["clients/js/test/client.test.mjs"]);
}

#[test]
fn the_pages_in_headless_chromium() {
    let cluster = Cluster::start("pages", &[]);
    node_test(&cluster, &["tests/browser/pages.test.mjs"]);
}
