#!/usr/bin/env bash
# The Supabase endpoint beside the native one on the same fresh cluster, taking turns:
# scenario L (commit -> client latency at 1,000 changes/s) at 1, 100 and 1,000 clients, and
# scenario F (fan-out, 100-row transactions) at F_CLIENTS clients, flat out and with the writer
# held to F_RATE rows/s (the same load for both), and scenario R (1,000 clients each a distinct
# user under an owner policy, R_RATES changes/s, each for one of them). Each line also gives the
# worker's CPU per million messages and the bytes per message it wrote (realtime_stats() counts
# messages and bytes per protocol), so the Phoenix envelope's cost reads off directly.
#   bench/supabase_endpoint.sh [rounds]     L_EVENTS (10000), F_CLIENTS (10000), F_SECONDS (15),
#                                           F_RATE (50), R_EVENTS (20000), R_RATES ("1000": changes/s,
#                                           one run each), SCENARIOS (LFR: any of them)
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${1:-1}; L_EVENTS=${L_EVENTS:-10000}; F_CLIENTS=${F_CLIENTS:-10000}; F_SECONDS=${F_SECONDS:-15}
F_RATE=${F_RATE:-50}; R_EVENTS=${R_EVENTS:-20000}; R_RATES=${R_RATES:-1000}; SCENARIOS=${SCENARIOS:-LFR}
. bench/cluster.sh
# R's clients present tokens for bench_user.
JWT_SECRET=$(openssl rand -hex 32)
psql_ -c "CREATE ROLE bench_user NOLOGIN" -c "CREATE ROLE bench_authenticator NOLOGIN NOINHERIT" \
      -c "GRANT bench_user TO bench_authenticator" \
      -c "ALTER SYSTEM SET realtime.authenticator = 'bench_authenticator'" \
      -c "ALTER SYSTEM SET realtime.jwt_secret = '$JWT_SECRET'" -c "SELECT pg_reload_conf()" >/dev/null
declare -A URL=(
  [native]="ws://127.0.0.1:$WSPORT/realtime"
  [supabase]="ws://127.0.0.1:$WSPORT/realtime/v1/websocket?vsn=2.0.0"
)
counter() { psql_ -c "SELECT value FROM realtime_stats() WHERE name = '$1{protocol=\"$2\"}'"; }
ticks() { awk '{print $14 + $15}' "/proc/$WORKER/stat"; }

# One run of the load generator ($2...) through endpoint $1: its result, then the worker's cost.
run() {
  local endpoint=$1; shift
  local m0 b0 t0 result m1 b1 t1
  m0=$(counter messages_sent_total "$endpoint"); b0=$(counter sent_bytes_total "$endpoint"); t0=$(ticks)
  result=$("$LOADGEN" "$@" --pg "$PG" --ws "${URL[$endpoint]}" | tail -n 1)
  m1=$(counter messages_sent_total "$endpoint"); b1=$(counter sent_bytes_total "$endpoint"); t1=$(ticks)
  python3 - "$endpoint" "$result" $((m1 - m0)) $((b1 - b0)) $((t1 - t0)) <<'PY'
import json, sys
endpoint, result, messages, sent, ticks = sys.argv[1], json.loads(sys.argv[2]), *map(int, sys.argv[3:])
what = {"latency": lambda d: "L %5d clients: p50 %8.2f ms, p99 %8.2f ms, %d/%d delivered" % (
            d["clients"], d["latency_ms"]["p50"], d["latency_ms"]["p99"], d["delivered"], d["expected"]),
        "fanout": lambda d: "F %5d clients: %.2f M messages/s, writer %.0f rows/s, %d/%d delivered, %d gaps" % (
            d["clients"], d["delivered_per_s"] / 1e6, d["writer_rows_per_s"],
            d["delivered_messages"], d["expected_messages"], d["gap_messages"]),
        "rls": lambda d: "R %5d users:   p50 %8.2f ms, p99 %8.2f ms, %d/%d delivered, %d wrong, %.0f changes/s" % (
            d["clients"], d["latency_ms"]["p50"], d["latency_ms"]["p99"], d["delivered"], d["events"],
            d["wrong_rows"], d["delivered_per_s"])}
line = what[result["scenario"]](result) if "error" not in result else "failed: %s" % result["error"]
cost = "worker %.2f CPU s per million messages, %.0f bytes a message" % (
    ticks / 100 / max(messages, 1) * 1e6, sent / max(messages, 1))
print("%-8s %s; %s" % (endpoint, line, cost))
PY
}

"$LOADGEN" latency --pg "$PG" --ws "${URL[native]}" --clients 10 --events 1000 >/dev/null   # warm-up
want() { [[ $SCENARIOS == *$1* ]]; }
for round in $(seq "$ROUNDS"); do
  if want L; then
    for clients in 1 100 1000; do
      for endpoint in native supabase; do
        run "$endpoint" latency --clients "$clients" --events "$L_EVENTS" --rate 1000
      done
    done
  fi
  if want F; then
    for endpoint in native supabase; do
      run "$endpoint" fanout --clients "$F_CLIENTS" --seconds "$F_SECONDS" --batch 100
    done
    for endpoint in native supabase; do
      run "$endpoint" fanout --clients "$F_CLIENTS" --seconds "$F_SECONDS" --batch 100 --rate "$F_RATE"
    done
  fi
  if want R; then
    for rate in $R_RATES; do
      for endpoint in native supabase; do
        run "$endpoint" rls --clients 1000 --events "$R_EVENTS" --rate "$rate" --mode policy \
          --secret "$JWT_SECRET" --worker-pid "$WORKER"
      done
    done
  fi
done
