#!/usr/bin/env bash
# Where a change's time goes under scenario L: one latency run against a fresh cluster (set up
# as bench/run.sh sets it up; installs the release build), then the stage timings that
# realtime_stats() keeps (commit -> worker read -> fan-out -> subscriber take -> socket write),
# the times subscribers were made to authorize again, and the worker's CPU per thread with its
# context switches over 3 seconds of the run.
#   bench/latency_stages.sh [clients] [events]    RATE=events/s (1000); PERF=1 also records a
#                                                  perf profile of the worker in /tmp/prof.data;
#                                                  TARGET=relay: a relayed pg_notify channel
set -euo pipefail
cd "$(dirname "$0")/.."
CLIENTS=${1:-100}; EVENTS=${2:-10000}; RATE=${RATE:-1000}
. bench/cluster.sh
latency() {
  "$LOADGEN" latency --target "${TARGET:-realtime}" --pg "$PG" --ws "ws://127.0.0.1:$WSPORT/realtime" --clients "$CLIENTS" "$@"
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
print("clients", d["clients"], "latency ms", d["latency_ms"], "written/s", round(d["written_per_s"]),
      "client cpu share", round(d["client_cpu_share"], 2))'
wait "$SAMPLER"
join "$DATA/t0" "$DATA/t1" | awk '{printf "thread %s %s: cpu %.0f%%, switches/s voluntary %.0f, involuntary %.0f\n", $1, $2, ($7-$3)/3, ($8-$4)/3, ($9-$5)/3}'
psql_ -c "SELECT name || ' ' || value FROM realtime_stats() WHERE name ~ '_(p50|p99)_us$' OR name = 'reauthorizations_total'"
wait
