#!/usr/bin/env bash
# Writer throughput: pgbench single-row INSERTs into a watched table vs the same table unwatched.
# Runs against the demo cluster (./demo.sh). Rounds alternate plain/watched to cancel drift.
#   bench/writer_tps.sh [clients=8] [seconds=20] [rounds=2] [synchronous_commit=on]
# With SUBSCRIBER=1, one WebSocket client (bench/target/release/realtime_bench) stays subscribed
# to the watched table throughout, so every commit is delivered while it is measured.
set -euo pipefail
CLIENTS=${1:-8}; SECONDS_PER_RUN=${2:-20}; ROUNDS=${3:-2}; SYNC=${4:-on}
PGPORT=${PGPORT:-54320}
. "$(dirname "$0")/../scripts/lib.sh"
export PGHOST=localhost PGPORT PGUSER=postgres PGDATABASE=postgres
dir=$(mktemp -d)
"$BIN/psql" -Xq <<'SQL'
DROP TABLE IF EXISTS tps_plain, tps_watched;
CREATE TABLE tps_plain (id bigserial PRIMARY KEY, camera text, kind text, score numeric(5,4), meta jsonb, created_at timestamptz DEFAULT now());
CREATE TABLE tps_watched (LIKE tps_plain INCLUDING ALL);
SELECT realtime_watch('tps_watched');
-- The demo's clients without a token act as web_anon.
DO $$ BEGIN
  IF EXISTS (SELECT FROM pg_roles WHERE rolname = 'web_anon') THEN GRANT SELECT ON tps_watched TO web_anon; END IF;
END $$;
SQL
if [ "${SUBSCRIBER:-0}" = 1 ]; then
  "$(dirname "$0")/target/release/realtime_bench" count --ws "ws://127.0.0.1:${WSPORT:-8080}/realtime" \
    --table tps_watched --events 1000000000 >/dev/null 2>&1 &
  trap 'kill $! 2>/dev/null' EXIT
  sleep 1
fi
for t in plain watched; do
  echo "INSERT INTO tps_$t (camera, kind, score, meta) VALUES ('cam-' || (random()*8)::int, 'scratch', random(), '{\"line\": 3}');" > "$dir/$t.sql"
done
declare -A total
for r in $(seq "$ROUNDS"); do
  for t in plain watched; do
    tps=$(PGOPTIONS="-c synchronous_commit=$SYNC" "$BIN/pgbench" -n -c "$CLIENTS" -j 2 -T "$SECONDS_PER_RUN" -f "$dir/$t.sql" 2>/dev/null \
          | awk '/^tps/ {print $3; exit}')
    echo "round $r  $t  tps=$tps"
    total[$t]=$(echo "${total[$t]:-0} + $tps" | bc -l)
  done
done
ratio=$(echo "${total[watched]} / ${total[plain]}" | bc -l)
printf 'clients=%s synchronous_commit=%s  plain=%.0f tps  watched=%.0f tps  ratio=%.3f\n' \
  "$CLIENTS" "$SYNC" "$(echo "${total[plain]} / $ROUNDS" | bc -l)" "$(echo "${total[watched]} / $ROUNDS" | bc -l)" "$ratio"
"$BIN/psql" -Xqc "DROP TABLE tps_plain, tps_watched"
rm -rf "$dir"
