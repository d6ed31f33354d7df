#!/usr/bin/env bash
# Run every test, installing what is missing first: realtime-core's unit and property tests;
# then, on PostgreSQL $PG_MAJOR (15 unless set), the in-process #[pg_test]s and every
# integration test in tests/ (each starts its own cluster and speaks WebSocket); then, on each
# other supported major, the #[pg_test]s and the suites that exercise what differs between
# majors (VERSION_SUITES).
#   ./test.sh                      everything: what CI runs
#   PG_MAJOR=17 ./test.sh --only   the whole suite on one major only
# Other arguments go to cargo pgrx test (a test name filter, say).
set -euo pipefail
cd "$(dirname "$0")"

. scripts/lib.sh
only=false
if [ "${1:-}" = --only ]; then only=true; shift; fi
bash .ci/prereqs.sh

# The SQL surface, capture, commit order and two-phase commit, authorization and row security,
# resume and snapshots, the worker's lifecycle and upgrading: what touches PostgreSQL's internals.
VERSION_SUITES=${VERSION_SUITES:-"sql_surface changes channels two_phase auth authorization security resume snapshot worker lifecycle upgrade webhooks"}

# cargo pgrx test installs the extension into the major's directories (with sudo when not
# root), runs initdb as the postgres user, then runs `cargo test` with that major's feature.
pgdata() {
  local dir=${REALTIME_TEST_PGDATA:-/tmp/realtime_ext_pgrx_test}-$1
  mkdir -p "$dir"
  if [ "$(id -u)" = 0 ]; then chown postgres: "$dir"; fi
  echo "$dir"
}

# realtime-core's own tests, property tests of the parsers included (no PostgreSQL needed).
cargo test -p realtime-core
# The edge server the integration tests start (tests/edge.rs).
cargo build -p realtime-core --bin realtime-edge

started=$SECONDS
cargo pgrx test "pg$PG_MAJOR" --runas postgres --pgdata "$(pgdata "$PG_MAJOR")" "$@"
echo "==> PostgreSQL $PG_MAJOR: whole suite in $((SECONDS - started)) s"
$only && exit 0

for major in $SUPPORTED_MAJORS; do
  [ "$major" = "$PG_MAJOR" ] && continue
  started=$SECONDS
  PG_MAJOR=$major bash .ci/prereqs.sh
  # The #[pg_test]s (the filter matches no integration test), then the version suites against
  # the extension that run installed; same features, so nothing is built twice.
  cargo pgrx test "pg$major" --runas postgres --pgdata "$(pgdata "$major")" sql_tests::
  suites=()
  for suite in $VERSION_SUITES; do suites+=(--test "$suite"); done
  cargo test --no-default-features --features "pg$major pg_test" "${suites[@]}"
  echo "==> PostgreSQL $major: version suites in $((SECONDS - started)) s"
done
