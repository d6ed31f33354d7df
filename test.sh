#!/usr/bin/env bash
# Run every test: realtime-core's unit and property tests, in-process #[pg_test]s, and the integration tests in tests/ that
# start their own PostgreSQL 15 clusters and speak WebSocket. Installs what is missing first.
set -euo pipefail
cd "$(dirname "$0")"

. scripts/lib.sh
bash .ci/prereqs.sh

# realtime-core's own tests, property tests of the parsers included (no PostgreSQL needed).
cargo test -p realtime-core

# cargo pgrx test installs the extension into PostgreSQL 15's directories (with sudo when not
# root), runs initdb as the postgres user, then runs `cargo test`, which includes tests/.
PGDATA_DIR=${REALTIME_TEST_PGDATA:-/tmp/realtime_ext_pgrx_test}
mkdir -p "$PGDATA_DIR"
if [ "$(id -u)" = 0 ]; then chown postgres: "$PGDATA_DIR"; fi
exec cargo pgrx test "pg$PG_MAJOR" --runas postgres --pgdata "$PGDATA_DIR" "$@"
