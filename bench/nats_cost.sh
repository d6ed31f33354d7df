#!/usr/bin/env bash
# What publishing the history to NATS (realtime.nats_url) costs writers, and how fast the stream
# keeps up, with publishing off and on in alternating rounds on one fresh cluster
# (bench/cluster.sh) beside a nats-server with JetStream on loopback (sharing its cores): commit
# latency at a fixed 2,000 INSERTs a second; writer throughput (bench/writer_tps.sh: pgbench
# INSERTs into a watched table beside the same table unwatched) with the worker's and
# nats-server's CPU and how long the stream took to catch up; then the rate a backlog is
# published at (200,000 rows committed while publishing was off, published once it is on).
#   bench/nats_cost.sh [writers=8] [seconds=10] [rounds=3]
# NATS_STORE=/dev/shm/x puts nats-server's store there (memory) instead of beside the cluster's
# data, so that its writes do not compete with the WAL's for the disk.
set -euo pipefail
cd "$(dirname "$0")/.."
WRITERS=${1:-8}; SECONDS_PER_RUN=${2:-10}; ROUNDS=${3:-3}
. bench/cluster.sh

NATS_PORT=$(free_port)
NATS_STORE=${NATS_STORE:-$DATA/nats}
mkdir -p "$NATS_STORE"
printf 'listen: 127.0.0.1:%s\njetstream { store_dir: "%s" }\n' "$NATS_PORT" "$NATS_STORE" > "$DATA/nats.conf"
nats-server -c "$DATA/nats.conf" >"$DATA/nats.log" 2>&1 &
NATS_PID=$!
trap 'kill $NATS_PID 2>/dev/null; rm -rf "$NATS_STORE"; as_pg "$BIN/pg_ctl" -D "$DATA/pg" -m fast stop >/dev/null 2>&1; rm -rf "$DATA"' EXIT

stat() { psql_ -c "SELECT value FROM realtime_stats() WHERE name = '$1'"; }
publishing() {
  local url=""
  [ "$1" = on ] && url="nats://127.0.0.1:$NATS_PORT"
  psql_ -c "ALTER SYSTEM SET realtime.nats_url = '$url'" -c "SELECT pg_reload_conf()" >/dev/null
  local want=0; [ "$1" = on ] && want=1
  for _ in $(seq 200); do [ "$(stat nats_connected)" = "$want" ] && break; sleep 0.05; done
  [ "$(stat nats_connected)" = "$want" ] || { echo "publishing did not turn $1" >&2; exit 1; }
  # What was written while it was off goes out before anything is measured.
  [ "$1" = on ] && caught_up
  return 0
}
caught_up() { until [ "$(stat nats_position)" -ge "$(stat position)" ]; do sleep 0.01; done; }
# CPU time of a process so far, in clock ticks (100 a second).
ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
share() { printf '%.0f%%' "$(echo "($2 - $1) / (100 * $3) * 100" | bc -l)"; }
# Commit latency of watched INSERTs at a fixed 2,000 a second (8 clients), well below what the
# machine can do: what a writer waits for, apart from competing for CPU.
psql_ -c "CREATE TABLE lat_watched (id bigserial PRIMARY KEY, camera text, score numeric(5,4), meta jsonb)" \
      -c "SELECT realtime_watch('lat_watched')" >/dev/null
echo "INSERT INTO lat_watched (camera, score, meta) VALUES ('cam-1', random(), '{\"line\": 3}');" > "$DATA/lat.sql"
paced() {
  PGOPTIONS="-c synchronous_commit=on" "$BIN/pgbench" -h 127.0.0.1 -p "$PGPORT" -U postgres -n -c 8 -j 2 \
    -T "$SECONDS_PER_RUN" -R 2000 -f "$DATA/lat.sql" postgres 2>/dev/null |
    awk '/^latency average/ {avg=$4} /^latency stddev/ {sd=$4} /^tps/ {tps=$3} END {printf "2,000/s paced: %.0f tps, commit latency %.3f ms (sd %.3f)", tps, avg, sd}'
}
writer() {
  PGPORT=$PGPORT bench/writer_tps.sh "$WRITERS" "$SECONDS_PER_RUN" 1 "$1" 2>/dev/null | tail -n 1
}

for round in $(seq "$ROUNDS"); do
  for mode in off on; do
    publishing $mode
    echo "round $round, publishing $mode: $(paced)"
    for sync in on off; do
      before=$(stat nats_messages_total); worker=$(ticks "$WORKER"); nats=$(ticks $NATS_PID)
      started=$(date +%s.%N)
      line=$(writer $sync)
      ended=$(date +%s.%N)
      # The stream has caught up when it acknowledged the last position published.
      [ $mode = on ] && caught_up
      caught=$(date +%s.%N)
      took=$(echo "$caught - $started" | bc -l)
      line="$line  worker $(share "$worker" "$(ticks "$WORKER")" "$took"), nats-server $(share "$nats" "$(ticks $NATS_PID)" "$took") of a core"
      if [ $mode = on ]; then
        messages=$(( $(stat nats_messages_total) - before ))
        line="$line; stream: $messages messages, caught up $(printf '%.2f' "$(echo "$caught - $ended" | bc -l)") s after the writers"
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
before=$(stat nats_messages_total); worker=$(ticks "$WORKER"); nats=$(ticks $NATS_PID)
started=$(date +%s.%N)
publishing on
took=$(echo "$(date +%s.%N) - $started" | bc -l)
messages=$(( $(stat nats_messages_total) - before ))
printf 'backlog: %s messages published in %.2f s: %.0f msg/s; worker %s, nats-server %s of a core\n' \
  "$messages" "$took" "$(echo "$messages / $took" | bc -l)" \
  "$(share "$worker" "$(ticks "$WORKER")" "$took")" "$(share "$nats" "$(ticks $NATS_PID)" "$took")"
