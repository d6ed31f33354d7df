#!/usr/bin/env bash
# Writers while the worker is frozen: SIGSTOP the realtime worker for 20 ms, 100 times at random
# moments, while pgbench commits single-row INSERTs into a watched table that a client reads.
# A writer waits only if a stop lands while the worker holds the queue lock, so the count of
# slow commits shows how long the worker's critical sections are. Against the demo cluster
# (./demo.sh), as root (signals the postgres-owned worker). Commits do not wait for WAL flushes
# (synchronous_commit = off), whose own stalls would hide the signal.
#   bench/worker_stop.sh [clients=4] [stops=100]
set -euo pipefail
CLIENTS=${1:-4}; STOPS=${2:-100}
PGPORT=${PGPORT:-54320}
. "$(dirname "$0")/../scripts/lib.sh"
export PGHOST=localhost PGPORT PGUSER=postgres PGDATABASE=postgres
dir=$(mktemp -d); chmod 777 "$dir"
"$BIN/psql" -Xq <<'SQL'
DROP TABLE IF EXISTS stop_probe;
CREATE TABLE stop_probe (id bigserial PRIMARY KEY, pad text);
SELECT realtime_watch('stop_probe');
SQL
"$(dirname "$0")/target/release/realtime_bench" count --ws "ws://127.0.0.1:${WSPORT:-8080}/realtime" \
  --table stop_probe --events 1000000000 >/dev/null 2>&1 &
reader=$!
trap 'kill $reader 2>/dev/null; rm -rf "$dir"' EXIT
sleep 1
worker=$("$BIN/psql" -XAtc "SELECT pid FROM pg_stat_activity WHERE backend_type = 'realtime_ext'")
echo "INSERT INTO stop_probe (pad) VALUES (repeat('x', 200));" > "$dir/w.sql"
seconds=$(( STOPS / 10 + 2 ))
(cd "$dir" && PGOPTIONS="-c synchronous_commit=off" "$BIN/pgbench" -n -c "$CLIENTS" -j 2 -T "$seconds" -f w.sql --log --log-prefix=tx >/dev/null 2>&1) &
bench=$!
sleep 0.5
for _ in $(seq "$STOPS"); do
  sleep "0.0$(( RANDOM % 6 + 4 ))"
  kill -STOP "$worker"; sleep 0.02; kill -CONT "$worker"
done
wait $bench
# pgbench log: client tx_no latency_us script_no epoch epoch_us
cat "$dir"/tx.* | awk -v stops="$STOPS" '
  { n++; if ($3 > max) max = $3; if ($3 >= 15000) slow++ }
  END { printf "stops=%d transactions=%d slow(>=15ms)=%d max_latency=%.1f ms\n", stops, n, slow, max / 1000 }'
"$BIN/psql" -Xqc "DROP TABLE stop_probe"
