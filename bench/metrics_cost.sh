#!/usr/bin/env bash
# What serving /metrics costs: F (fan-out to CLIENTS clients) and W (writer throughput,
# bench/writer_tps.sh) with /metrics off, and on with a scraper reading it every second, in
# alternating rounds on one fresh cluster (bench/cluster.sh); then how long a scrape takes
# with CLIENTS idle clients connected.
#   bench/metrics_cost.sh [clients=10000] [seconds=10] [rounds=2]
set -euo pipefail
cd "$(dirname "$0")/.."
CLIENTS=${1:-10000}; SECONDS_PER_RUN=${2:-10}; ROUNDS=${3:-2}
. bench/cluster.sh
ulimit -n "$(ulimit -Hn)"

metrics() {
  psql_ -c "ALTER SYSTEM SET realtime.metrics_addresses = '$1'" -c "SELECT pg_reload_conf()" >/dev/null
  sleep 2   # the worker applies a reload within a second
}
scraper() {   # every second: the status and the seconds one scrape took
  while true; do
    curl -s -o /dev/null -w '%{http_code} %{time_total}\n' "http://127.0.0.1:$WSPORT/metrics" >> "$1"
    sleep 1
  done
}
fanout() {
  "$LOADGEN" fanout --pg "$PG" --ws "ws://127.0.0.1:$WSPORT/realtime" --clients "$CLIENTS" \
    --seconds "$SECONDS_PER_RUN" --batch 100 | tail -n 1 |
    python3 -c 'import json,sys; d=json.load(sys.stdin); print(round(d["delivered_per_s"]))'
}
writer() {
  PGPORT=$PGPORT bench/writer_tps.sh 8 "$SECONDS_PER_RUN" 1 on 2>/dev/null | tail -n 1 | grep -o 'watched=.*'
}

scrapes=$DATA/scrapes
for round in $(seq "$ROUNDS"); do
  for mode in off on; do
    if [ $mode = on ]; then metrics 127.0.0.1; scraper "$scrapes" & SCRAPER=$!; else metrics ''; fi
    f=$(fanout); w=$(writer)
    if [ $mode = on ]; then kill "$SCRAPER"; wait "$SCRAPER" 2>/dev/null || true; fi
    echo "round $round, metrics $mode: F $f messages/s to $CLIENTS clients; W $w"
  done
done
summary() {
  awk '$1 == 200 {print $2 * 1000}' "$1" | sort -n | awk -v what="$2" '{v[NR]=$1} END {
    if (NR) printf "%s: %d scrapes, p50 %.1f ms, p90 %.1f ms, max %.1f ms\n", what, NR, v[int((NR+1)/2)], v[int(NR*0.9+0.5)], v[NR] }'
}
summary "$scrapes" "during the F and W rounds (clients connecting, receiving, leaving)"

# CLIENTS idle clients, held while /metrics is scraped 20 times in a row.
metrics 127.0.0.1
"$LOADGEN" idle --pg "$PG" --ws "ws://127.0.0.1:$WSPORT/realtime" --clients "$CLIENTS" --hold 60 >/dev/null &
IDLE=$!
connections() { curl -s "http://127.0.0.1:$WSPORT/health" | python3 -c 'import json,sys; print(json.load(sys.stdin)["connections"])'; }
until [ "$(connections)" -ge "$CLIENTS" ]; do sleep 1; done
held=$DATA/held
for _ in $(seq 20); do
  curl -s -o /dev/null -w '%{http_code} %{time_total}\n' "http://127.0.0.1:$WSPORT/metrics" >> "$held"
done
summary "$held" "with $(connections) clients connected"
wait "$IDLE"
