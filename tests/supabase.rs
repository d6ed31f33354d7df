//! The Supabase Realtime endpoint (`/realtime/v1/websocket`) against the official clients:
//! @supabase/supabase-js and @supabase/realtime-js from npm, unmodified, in Node's test runner
//! and (supabase-js in a page) headless Chromium (tests/supabase, pinned by its lock file;
//! .ci/prereqs.sh installs them).

mod common;

use common::{node_test, Cluster};

#[test]
fn the_official_supabase_clients_against_the_server() {
    let cluster = Cluster::start("supabase", &[]);
    node_test(
        &cluster,
        &[
            "tests/supabase/realtime.test.mjs",
            "tests/supabase/browser.test.mjs",
        ],
    );
}
