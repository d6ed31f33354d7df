#!/usr/bin/env bash
# What publishing the history to NATS (realtime.nats_url) costs writers, and how fast the stream
# keeps up: writer throughput (bench/writer_tps.sh: pgbench INSERTs into a watched table beside
# the same table unwatched) with publishing off and on, in alternating rounds on one fresh
# cluster (bench/cluster.sh) beside a nats-server with JetStream on loopback; after each "on"
# run, how long the stream took to catch up; then the rate it publishes a backlog at (200,000
# rows committed while publishing was off, published once it is turned on).
#   bench/nats_cost.sh [writers=8] [seconds=10] [rounds=3]
set -euo pipefail
cd "$(dirname "$0")/.."
WRITERS=${1:-8}; SECONDS_PER_RUN=${2:-10}; ROUNDS=${3:-3}
. bench/cluster.sh

NATS_PORT=$(free_port)
mkdir -p "$DATA/nats"
printf 'listen: 127.0.0.1:%s\njetstream { store_dir: "%s" }\n' "$NATS_PORT" "$DATA/nats" > "$DATA/nats.conf"
nats-server -c "$DATA/nats.conf" >"$DATA/nats.log" 2>&1 &
NATS_PID=$!
trap 'kill $NATS_PID 2>/dev/null; as_pg "$BIN/pg_ctl" -D "$DATA/pg" -m fast stop >/dev/null 2>&1; rm -rf "$DATA"' EXIT

stat() { psql_ -c "SELECT value FROM realtime_stats() WHERE name = '$1'"; }
publishing() {
  local url=""
  [ "$1" = on ] && url="nats://127.0.0.1:$NATS_PORT"
  psql_ -c "ALTER SYSTEM SET realtime.nats_url = '$url'" -c "SELECT pg_reload_conf()" >/dev/null
  local want=0; [ "$1" = on ] && want=1
  for _ in $(seq 200); do [ "$(stat nats_connected)" = "$want" ] && return; sleep 0.05; done
  echo "publishing did not turn $1" >&2; exit 1
}
writer() {
  PGPORT=$PGPORT bench/writer_tps.sh "$WRITERS" "$SECONDS_PER_RUN" 1 "$1" 2>/dev/null | tail -n 1
}

for round in $(seq "$ROUNDS"); do
  for mode in off on; do
    publishing $mode
    for sync in on off; do
      before=$(stat nats_messages_total)
      line=$(writer $sync)
      if [ $mode = on ]; then
        ended=$(date +%s.%N)
        # The stream has caught up when it acknowledged the last position published.
        until [ "$(stat nats_position)" -ge "$(stat position)" ]; do sleep 0.01; done
        caught=$(date +%s.%N)
        messages=$(( $(stat nats_messages_total) - before ))
        line="$line  stream: $messages messages, caught up $(printf '%.2f' "$(echo "$caught - $ended" | bc -l)") s after the writers"
      fi
      echo "round $round, publishing $mode: $line"
    done
  done
done

publishing off
psql_ -c "CREATE TABLE backlog (id bigserial PRIMARY KEY, camera text, score numeric(5,4), meta jsonb)" \
      -c "SELECT realtime_watch('backlog')"
for _ in $(seq 20); do
  psql_ -c "INSERT INTO backlog (camera, score, meta) SELECT 'cam-' || g % 8, random(), '{\"line\": 3}' FROM generate_series(1, 10000) g"
done
# The worker has published them all once its position stands still.
previous=-1
until [ "$(stat position)" = "$previous" ]; do previous=$(stat position); sleep 0.3; done
target=$(stat position); before=$(stat nats_messages_total); started=$(date +%s.%N)
publishing on
until [ "$(stat nats_position)" -ge "$target" ]; do sleep 0.01; done
took=$(echo "$(date +%s.%N) - $started" | bc -l)
messages=$(( $(stat nats_messages_total) - before ))
printf 'backlog: %s messages published in %.2f s: %.0f msg/s\n' "$messages" "$took" "$(echo "$messages / $took" | bc -l)"
