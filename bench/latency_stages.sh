#!/usr/bin/env bash
# Where a change's time goes under scenario L: one latency run against a fresh cluster (set up
# as bench/run.sh sets it up; installs the release build), then the stage timings that
# realtime_stats() keeps (commit -> worker read -> fan-out -> subscriber take -> socket write),
# and the worker's CPU per thread with its context switches over 3 seconds of the run.
#   bench/latency_stages.sh [clients] [events]    RATE=events/s (1000); PERF=1 also records a
#                                                  perf profile of the worker in /tmp/prof.data
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh
CLIENTS=${1:-100}; EVENTS=${2:-10000}; RATE=${RATE:-1000}
LOADGEN=$PWD/bench/target/release/realtime_bench
cargo pgrx install --release --pg-config "$PG_CONFIG" >/dev/null
(cd bench && cargo build --release -q)

DATA=$(mktemp -d /tmp/realtime_stages.XXXXXX)
PGPORT=$(free_port); WSPORT=$(free_port)
[ "$(id -u)" = 0 ] && chown postgres: "$DATA"
as_pg "$BIN/initdb" -D "$DATA/pg" -U postgres --auth=trust --locale=C.UTF-8 >/dev/null
cat >> "$DATA/pg/postgresql.conf" <<CONF
port = $PGPORT
listen_addresses = '127.0.0.1'
unix_socket_directories = '$DATA'
shared_buffers = 512MB
shared_preload_libraries = 'realtime_ext'
realtime.port = $WSPORT
realtime.listen_addresses = '127.0.0.1'
realtime.max_connections = 100000
realtime.max_anonymous_per_address = 0
realtime.queue_size = 64MB
realtime.anon_role = 'bench_reader'
CONF
as_pg "$BIN/pg_ctl" -D "$DATA/pg" -l "$DATA/server.log" -w start >/dev/null
trap 'as_pg "$BIN/pg_ctl" -D "$DATA/pg" -m fast stop >/dev/null 2>&1; rm -rf "$DATA"' EXIT
PG="host=127.0.0.1 port=$PGPORT user=postgres dbname=postgres"
psql_() { "$BIN/psql" -XqtA "$PG" "$@"; }
psql_ -c "CREATE ROLE bench_reader NOLOGIN" -c "GRANT pg_read_all_data TO bench_reader" \
      -c "CREATE EXTENSION realtime_ext"
WORKER=$(psql_ -c "SELECT pid FROM pg_stat_activity WHERE backend_type = 'realtime_ext'")
latency() {
  "$LOADGEN" latency --pg "$PG" --ws "ws://127.0.0.1:$WSPORT/realtime" --clients "$CLIENTS" "$@"
}
latency --events 1000 --rate "$RATE" >/dev/null   # warm-up

# Each thread: id, name, CPU ticks, voluntary and involuntary context switches.
threads() {
  for t in /proc/"$WORKER"/task/*; do
    echo "$(basename "$t") $(cat "$t/comm") $(awk '{print $14+$15}' "$t/stat")" \
         "$(awk '/^voluntary/ {print $2}' "$t/status") $(awk '/^nonvoluntary/ {print $2}' "$t/status")"
  done
}
[ "${PERF:-0}" = 1 ] && { perf record -F 1999 -p "$WORKER" -o /tmp/prof.data -- sleep 6 >/dev/null 2>&1 & }
(sleep 2; threads > "$DATA/t0"; sleep 3; threads > "$DATA/t1") &
SAMPLER=$!
latency --events "$EVENTS" --rate "$RATE" | tail -n 1 | python3 -c '
import json, sys
d = json.load(sys.stdin)
print("clients", d["clients"], "latency ms", d["latency_ms"], "client cpu share", round(d["client_cpu_share"], 2))'
wait "$SAMPLER"
join "$DATA/t0" "$DATA/t1" | awk '{printf "thread %s %s: cpu %.0f%%, switches/s voluntary %.0f, involuntary %.0f\n", $1, $2, ($7-$3)/3, ($8-$4)/3, ($9-$5)/3}'
psql_ -c "SELECT name || ' ' || value FROM realtime_stats() WHERE name ~ '_(p50|p99)_us$'"
wait
