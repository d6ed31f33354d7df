#!/usr/bin/env bash
# A burst the worker cannot keep up with: 4 pgbench writers commit single-row INSERTs into a
# watched table for 10 s with the worker running, then for 20 s with the worker SIGSTOPped,
# so the shared queue fills and overflows to pg_realtime/queue.overflow. Prints the writers'
# commit latency in both phases, the overflow file's peak size, and whether a client that was
# subscribed throughout received every committed row, with no gap. Against the demo cluster
# (./demo.sh), as root (it signals the postgres-owned worker and reads its data directory).
#   bench/queue_overflow.sh [clients=4] [stopped_seconds=20]
set -euo pipefail
CLIENTS=${1:-4}; STOPPED=${2:-20}
PGPORT=${PGPORT:-54320}
. "$(dirname "$0")/../scripts/lib.sh"
export PGHOST=localhost PGPORT PGUSER=postgres PGDATABASE=postgres
dir=$(mktemp -d); chmod 777 "$dir"
"$BIN/psql" -Xq <<'SQL'
DROP TABLE IF EXISTS overflow_probe;
CREATE TABLE overflow_probe (id bigserial PRIMARY KEY, pad text);
SELECT realtime_watch('overflow_probe');
SELECT format('GRANT SELECT ON overflow_probe TO %I', current_setting('realtime.anon_role')) \gexec
SQL
data=$("$BIN/psql" -XAtc "SHOW data_directory")
worker=$("$BIN/psql" -XAtc "SELECT pid FROM pg_stat_activity WHERE backend_type = 'realtime_ext'")
# Reads every change until longer than the stop passes without one, then prints what it got.
"$(dirname "$0")/target/release/realtime_bench" count --ws "ws://127.0.0.1:${WSPORT:-8080}/realtime" \
  --table overflow_probe --events 1000000000 --idle $(( STOPPED + 20 )) >"$dir/reader.json" 2>/dev/null &
reader=$!
trap 'kill -CONT $worker 2>/dev/null || true; kill $reader 2>/dev/null || true; rm -rf "$dir"' EXIT
sleep 1
echo "INSERT INTO overflow_probe (pad) VALUES (repeat('x', 200));" > "$dir/w.sql"
write() { (cd "$dir" && "$BIN/pgbench" -n -c "$CLIENTS" -j 2 -T "$2" -f w.sql --log --log-prefix="$1" >/dev/null 2>&1); }
latency() {
  # pgbench log: client tx_no latency_us script_no epoch epoch_us
  cat "$dir"/"$1".* | awk '{print $3}' | sort -n | awk -v name="$1" '
    { v[NR] = $1 } END { printf "%-8s %7d commits, %6.0f/s; latency p50 %.2f ms, p99 %.2f ms, max %.1f ms\n",
      name, NR, NR / secs, v[int(NR * 0.5)] / 1000, v[int(NR * 0.99)] / 1000, v[NR] / 1000 }' secs="$2"
}
write running 10
kill -STOP "$worker"
write stopped "$STOPPED" &
bench=$!
peak=0
while kill -0 $bench 2>/dev/null; do
  size=$(stat -c %s "$data/pg_realtime/queue.overflow" 2>/dev/null || echo 0)
  [ "$size" -gt "$peak" ] && peak=$size
  sleep 0.5
done
wait $bench
kill -CONT "$worker"
committed=$("$BIN/psql" -XAtc "SELECT count(*) FROM overflow_probe")
latency running 10
latency stopped "$STOPPED"
echo "overflow file peak: $(( peak / 1024 / 1024 )) MiB"
wait $reader || true
echo "committed $committed; the subscribed client: $(cat "$dir/reader.json")"
echo "history/queue: $(curl -s "http://127.0.0.1:${WSPORT:-8080}/health" | python3 -c 'import json,sys; print(json.load(sys.stdin)["queue"])')"
"$BIN/psql" -Xqc "DROP TABLE overflow_probe"
