#!/usr/bin/env bash
# What keeping the change queue in a mapped file ($PGDATA/pg_realtime/queue) costs writers:
# writer throughput (bench/writer_tps.sh: pgbench INSERTs into a watched table beside the same
# table unwatched) with the queue in the file, and in anonymous shared memory (what the server
# falls back to when the file cannot be mapped: here a directory stands in its way), in
# alternating rounds on one fresh cluster (bench/cluster.sh), restarted between modes.
#   bench/queue_file_cost.sh [writers=8] [seconds=10] [rounds=3]
set -euo pipefail
cd "$(dirname "$0")/.."
WRITERS=${1:-8}; SECONDS_PER_RUN=${2:-10}; ROUNDS=${3:-3}
. bench/cluster.sh

mode() {
  as_pg "$BIN/pg_ctl" -D "$DATA/pg" -m fast stop >/dev/null
  rm -rf "$DATA/pg/pg_realtime/queue"
  if [ "$1" = memory ]; then as_pg mkdir -p "$DATA/pg/pg_realtime/queue"; fi
  as_pg "$BIN/pg_ctl" -D "$DATA/pg" -l "$DATA/server.log" -w start >/dev/null
  local mapped
  mapped=$(grep -c "could not map pg_realtime/queue" "$DATA/server.log" || true)
  echo "$mapped"
}
writer() {
  PGPORT=$PGPORT bench/writer_tps.sh "$WRITERS" "$SECONDS_PER_RUN" 1 "$1" 2>/dev/null | tail -n 1
}

warned=0
for round in $(seq "$ROUNDS"); do
  for queue in file memory; do
    now=$(mode $queue)
    # The fallback warns once per start: the memory rounds must have warned, the file ones not.
    if [ $queue = memory ] && [ "$now" -le "$warned" ]; then echo "the queue was not moved out of the file" >&2; exit 1; fi
    if [ $queue = file ] && [ "$now" -ne "$warned" ]; then echo "the queue file could not be mapped" >&2; exit 1; fi
    warned=$now
    for sync in on off; do
      echo "round $round, queue in $queue: $(writer $sync)"
    done
  done
done
