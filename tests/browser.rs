//! The JavaScript side against a real server: realtime.js's own tests in Node's test runner
//! (clients/js/test), and the pages the worker serves in headless Chromium (tests/browser).
//! Node, Chromium and playwright-core are installed by .ci/prereqs.sh; a missing one fails
//! these tests rather than skipping them.

mod common;

use common::{node_test, Cluster};

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
