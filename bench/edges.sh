#!/usr/bin/env bash
# Serving through edge servers (realtime-edge) beside serving from the database host, on one
# fresh cluster (bench/cluster.sh) publishing to a nats-server on loopback, with two edges
# following it, all sharing the machine's cores:
# - commit->client latency (p50/p99) at 1, 100 and 1,000 clients, direct and through an edge;
# - fan-out to CLIENTS clients (10,000 by default) flat out, direct and split over the two
#   edges, paced (the same load both ways) and flat out, with the worker's CPU during each (the point of edges: it must not grow with
#   clients) and the edges' and nats-server's;
# - how long a REVOKE takes to end a subscription, direct and through an edge.
#   bench/edges.sh [clients=10000] [seconds=15] [events=2000]
#   PARTS="fanout" bench/edges.sh     only some of: catalog latency fanout
set -euo pipefail
cd "$(dirname "$0")/.."
CLIENTS=${1:-10000}; SECONDS_PER_RUN=${2:-15}; EVENTS=${3:-2000}
PARTS=${PARTS:-catalog latency fanout}
part() { [[ " $PARTS " == *" $1 "* ]]; }
. bench/cluster.sh
cargo build --release -q -p realtime-core --bin realtime-edge
EDGE=$PWD/target/release/realtime-edge

NATS_PORT=$(free_port)
mkdir -p "$DATA/nats"
nats-server -a 127.0.0.1 -p "$NATS_PORT" -js -sd "$DATA/nats" >"$DATA/nats.log" 2>&1 &
NATS_PID=$!
PIDS=($NATS_PID)
trap 'kill "${PIDS[@]}" 2>/dev/null; as_pg "$BIN/pg_ctl" -D "$DATA/pg" -m fast stop >/dev/null 2>&1; rm -rf "$DATA"' EXIT
psql_ -c "ALTER SYSTEM SET realtime.nats_url = 'nats://127.0.0.1:$NATS_PORT'" -c "SELECT pg_reload_conf()" >/dev/null
stat() { psql_ -c "SELECT value FROM realtime_stats() WHERE name = '$1'"; }
for _ in $(seq 200); do [ "$(stat nats_connected)" = 1 ] && break; sleep 0.05; done

EDGE_PORTS=()
for n in 1 2; do
  port=$(free_port)
  REALTIME_EDGE_NATS_URL="nats://127.0.0.1:$NATS_PORT" REALTIME_EDGE_PORT=$port \
  REALTIME_EDGE_LISTEN_ADDRESSES=127.0.0.1 REALTIME_EDGE_DIR="$DATA/edge-$n" \
  REALTIME_EDGE_ANON_ROLE=bench_reader REALTIME_EDGE_MAX_CONNECTIONS=100000 \
  REALTIME_EDGE_MAX_ANONYMOUS_PER_ADDRESS=0 \
    "$EDGE" >"$DATA/edge-$n.log" 2>&1 &
  PIDS+=($!); EDGE_PORTS+=($port)
  for _ in $(seq 200); do curl -fs "http://127.0.0.1:$port/health" >/dev/null && break; sleep 0.05; done
done
EDGE_PIDS=("${PIDS[1]}" "${PIDS[2]}")
ws() { echo "ws://127.0.0.1:$1/realtime"; }
DIRECT=$(ws "$WSPORT"); EDGE1=$(ws "${EDGE_PORTS[0]}"); BOTH="$(ws "${EDGE_PORTS[0]}"),$(ws "${EDGE_PORTS[1]}")"

ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
ticks_of() { local t=0; for p in "$@"; do t=$((t + $(ticks "$p"))); done; echo $t; }
share() { printf '%.0f%%' "$(echo "($2 - $1) / (100 * $3) * 100" | bc -l)"; }
field() { python3 -c "import json,sys; d=json.load(open(sys.argv[1])); print(d$2)" "$1"; }

if part catalog; then
echo "## a REVOKE reaching a subscription (5 rounds)"
PATH="$BIN:$PATH" node --experimental-websocket bench/edge_catalog.mjs 5 "$PG" "$DIRECT" "$EDGE1"
fi

part latency && echo "## latency, commit -> client ($EVENTS events at 200/s)"
part latency && for clients in 1 100 1000; do
  for where in direct edge; do
    url=$DIRECT; [ $where = edge ] && url=$EDGE1
    "$LOADGEN" latency --target realtime --pg "$PG" --ws "$url" --clients "$clients" --events "$EVENTS" --rate 200 \
      --json "$DATA/lat.json" >/dev/null 2>&1
    echo "$clients clients, $where: p50 $(field "$DATA/lat.json" "['latency_ms']['p50']") ms, p99 $(field "$DATA/lat.json" "['latency_ms']['p99']") ms, $(field "$DATA/lat.json" "['delivered']") of $(field "$DATA/lat.json" "['expected']") delivered"
  done
done

# Everything committed so far is in the stream (its acknowledged position holds still for a
# second), and every edge has read it: a run starts with nobody behind.
caught_up() {
  local before=-2 after=-1
  until [ "$before" = "$after" ]; do before=$after; sleep 1; after=$(stat nats_position); done
  for port in "${EDGE_PORTS[@]}"; do
    until [ "$(curl -fs "http://127.0.0.1:$port/health" | python3 -c 'import json,sys; print(json.load(sys.stdin)["position"])')" -ge "$after" ]; do sleep 0.1; done
  done
}
fanout() { # where rate label
  local url=$DIRECT; [ "$1" = edges ] && url=$BOTH
  caught_up
  w0=$(ticks "$WORKER"); e0=$(ticks_of "${EDGE_PIDS[@]}"); n0=$(ticks $NATS_PID); t0=$(date +%s.%N)
  "$LOADGEN" fanout --target realtime --pg "$PG" --ws "$url" --clients "$CLIENTS" --seconds "$SECONDS_PER_RUN" \
    --rate "$2" --json "$DATA/fan.json" >/dev/null 2>&1
  t=$(echo "$(date +%s.%N) - $t0" | bc -l)
  if ! grep -q delivered_per_s "$DATA/fan.json"; then echo "$3, $1: failed: $(cat "$DATA/fan.json")"; return; fi
  echo "$3, $1: $(printf %.0f "$(field "$DATA/fan.json" "['delivered_per_s']")") messages/s delivered ($(field "$DATA/fan.json" "['delivered_messages']") of $(field "$DATA/fan.json" "['expected_messages']"), gap messages $(field "$DATA/fan.json" "['gap_messages']")); CPU over $(printf %.0f "$t") s: worker $(share "$w0" "$(ticks "$WORKER")" "$t"), edges $(share "$e0" "$(ticks_of "${EDGE_PIDS[@]}")" "$t"), nats-server $(share "$n0" "$(ticks $NATS_PID)" "$t")"
}
if part fanout; then
echo "## fan-out to $CLIENTS clients for ${SECONDS_PER_RUN} s: paced at 50 rows/s, then flat out"
for where in edges direct; do fanout $where 50 "50 rows/s"; done
for where in edges direct; do fanout $where 0 "flat out"; done
fi
