#!/usr/bin/env bash
# realtime_ext against the architecture it replaces, side by side, in one run.
#   bench/run.sh            full run (about 40 minutes on 2 cores)
#   bench/run.sh --quick    smaller counts, shorter runs (under 5 minutes once built)
#   BENCH_SCENARIOS=LF bench/run.sh    only the scenarios named (any of W L F C T P R S D N B K Y H)
#   BENCH_AUTOGROUP=0 bench/run.sh     with the kernel's per-session scheduling groups off for
#                                      the run (root; restored after); recorded either way
# Builds what it needs, starts its own PostgreSQL 15 cluster (synchronous_commit on, fsync on)
# and the Node LISTEN/NOTIFY bridge, runs every scenario, prints a markdown table and writes
# the raw results to bench/results/<time>.json.
set -euo pipefail
cd "$(dirname "$0")/.."
QUICK=0; [ "${1:-}" = --quick ] && QUICK=1
# Recorded with the results: which code was measured.
export BENCH_COMMIT=$(git rev-parse HEAD 2>/dev/null || echo unknown)
export BENCH_DIRTY=$([ -z "$(git status --porcelain 2>/dev/null)" ] && echo false || echo true)
. scripts/lib.sh
say() { printf '\n==> %s\n' "$*" >&2; }
SCENARIOS=${BENCH_SCENARIOS:-WLFCTPRDNBKYHS}
export BENCH_SCENARIOS=$SCENARIOS   # recorded with the results
# Linux schedules each session as one group when this is 1; every PostgreSQL process leads a
# session, so the worker's threads share one group's CPU against each backend and the load
# generator (bench/notes/2026-12-02-latency-stages.md). Latency under load depends on it.
AUTOGROUP=/proc/sys/kernel/sched_autogroup_enabled
AUTOGROUP_WAS=$(cat "$AUTOGROUP" 2>/dev/null || echo absent)
if [ -n "${BENCH_AUTOGROUP:-}" ] && [ "$AUTOGROUP_WAS" != absent ]; then
  echo "$BENCH_AUTOGROUP" > "$AUTOGROUP"
fi
export BENCH_AUTOGROUP_SETTING=$(cat "$AUTOGROUP" 2>/dev/null || echo absent)
want() { [[ $SCENARIOS == *$1* ]]; }

if [ $QUICK = 1 ]; then
  W_SECONDS=4; W_ROUNDS=1; L_EVENTS=1000; F_CLIENTS=1000; F_SECONDS=5; F_RATE=3000; C_CLIENTS=5000; T_ROWS=100000; P_EVENTS=20; R_EVENTS=2000; D_CLIENTS=100; H_EVENTS=1000; H_BURST=2000
else
  W_SECONDS=8; W_ROUNDS=4; L_EVENTS=10000; F_CLIENTS=10000; F_SECONDS=15; F_RATE=300; C_CLIENTS=50000; T_ROWS=1000000; P_EVENTS=100; R_EVENTS=20000; D_CLIENTS=1000; H_EVENTS=5000; H_BURST=10000
fi

say "building (extension, load generator, Node bridge)"
bash .ci/prereqs.sh
command -v node >/dev/null || { apt-get update -qq; DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nodejs npm >/dev/null; }
command -v bc >/dev/null || DEBIAN_FRONTEND=noninteractive apt-get install -y -qq bc >/dev/null
cargo pgrx install --release --pg-config "$PG_CONFIG" >/dev/null
(cd bench && cargo build --release -q)
(cd bench/baselines/node-bridge && npm install --silent --no-audit --no-fund >/dev/null)
(cd bench/baselines/webhook-forwarder && npm ci --silent --no-audit --no-fund >/dev/null)
LOADGEN=$PWD/bench/target/release/realtime_bench

say "starting PostgreSQL 15 with realtime_ext"
DATA=$(mktemp -d /tmp/realtime_bench.XXXXXX)
JWT_SECRET=$(openssl rand -hex 32)
PGPORT=$(free_port); WSPORT=$(free_port); BRIDGE_PORT=$(free_port)
[ "$(id -u)" = 0 ] && chown postgres: "$DATA"
as_pg "$BIN/initdb" -D "$DATA/pg" -U postgres --auth=trust --locale=C.UTF-8 >/dev/null
cat >> "$DATA/pg/postgresql.conf" <<CONF
port = $PGPORT
listen_addresses = '127.0.0.1'
unix_socket_directories = '$DATA'
max_connections = 200
shared_buffers = 512MB
max_wal_size = 4GB
shared_preload_libraries = 'realtime_ext'
realtime.port = $WSPORT
realtime.listen_addresses = '127.0.0.1'
realtime.max_connections = 100000
realtime.max_anonymous_per_address = 0
realtime.queue_size = 64MB
# Load clients connect without a token, as a role that may read every table; R's clients
# present tokens for bench_user.
realtime.anon_role = 'bench_reader'
realtime.authenticator = 'bench_authenticator'
realtime.jwt_secret = '$JWT_SECRET'
# K and Y: channels open to the load clients, and one sender as fast as K asks.
realtime.public_topics = on
realtime.broadcast_rate = 100000
# H: the receivers are on loopback.
realtime.webhook_allowed_hosts = '127.0.0.1'
CONF
as_pg "$BIN/pg_ctl" -D "$DATA/pg" -l "$DATA/server.log" -w start >/dev/null
BRIDGE_PID= FLOOR_PID=
cleanup() {
  [ -n "$BRIDGE_PID" ] && kill "$BRIDGE_PID" 2>/dev/null || true
  [ -n "$FLOOR_PID" ] && kill "$FLOOR_PID" 2>/dev/null || true
  as_pg "$BIN/pg_ctl" -D "$DATA/pg" -m fast stop >/dev/null 2>&1 || true
  rm -rf "$DATA"
  [ "$AUTOGROUP_WAS" != absent ] && echo "$AUTOGROUP_WAS" > "$AUTOGROUP" || true
}
trap cleanup EXIT
export PGHOST=127.0.0.1 PGPORT PGUSER=postgres PGDATABASE=postgres
PG="host=127.0.0.1 port=$PGPORT user=postgres dbname=postgres"
psql_() { "$BIN/psql" -Xq -v ON_ERROR_STOP=1 "$@"; }
psql_ -c "CREATE ROLE bench_reader NOLOGIN" -c "GRANT pg_read_all_data TO bench_reader" \
      -c "CREATE ROLE bench_user NOLOGIN" -c "CREATE ROLE bench_authenticator NOLOGIN NOINHERIT" \
      -c "GRANT bench_user TO bench_authenticator" \
      -c "CREATE EXTENSION realtime_ext" -f bench/baselines/node-bridge/notify_trigger.sql
start_bridge() {
  node bench/baselines/node-bridge/bridge.js "postgres://postgres@127.0.0.1:$PGPORT/postgres" "$BRIDGE_PORT" bench >>"$DATA/bridge.log" 2>&1 &
  BRIDGE_PID=$!
  sleep 1
}
# The bridge can die under load; record that and start a new one for the next scenario.
ensure_bridge() {
  if ! kill -0 "$BRIDGE_PID" 2>/dev/null; then
    echo "{\"scenario\":\"bridge_crashed\",\"before\":\"$1\",\"log\":$(tail -c 300 "$DATA/bridge.log" | python3 -c 'import json,sys; print(json.dumps(sys.stdin.read()))')}" | record
    start_bridge
  fi
}
start_bridge
RT_URL=ws://127.0.0.1:$WSPORT/realtime
# The same server through the Supabase Realtime endpoint, as supabase-js joins it.
SUPA_URL="ws://127.0.0.1:$WSPORT/realtime/v1/websocket?vsn=2.0.0"
BRIDGE_URL=ws://127.0.0.1:$BRIDGE_PORT/
mkdir -p bench/results
SUFFIX=; [ $QUICK = 1 ] && SUFFIX=-quick
OUT=bench/results/$(date -u +%Y%m%dT%H%M%SZ)$SUFFIX
RESULTS=$OUT.jsonl
: > "$RESULTS"
record() { tail -n 1 | tee -a "$RESULTS" | cut -c1-160 >&2; }

if want W; then
say "W: writer throughput (pgbench single-row INSERT; plain / pg_notify trigger / realtime_ext / realtime_send trigger)"
psql_ <<'SQL'
CREATE TABLE w_plain (id bigserial PRIMARY KEY, camera text, kind text, score numeric(5,4), meta jsonb, created_at timestamptz DEFAULT now());
CREATE TABLE w_notify (LIKE w_plain INCLUDING ALL);
CREATE TABLE w_realtime (LIKE w_plain INCLUDING ALL);
CREATE TABLE w_send (LIKE w_plain INCLUDING ALL);
CREATE TRIGGER notify AFTER INSERT ON w_notify FOR EACH ROW EXECUTE FUNCTION bench_notify('bench_w');
SELECT realtime_watch('w_realtime');
-- send: a message per row from the application's own trigger, beside pg_notify's.
CREATE FUNCTION w_send() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN PERFORM realtime_send('bench_w', 'insert', to_jsonb(NEW)); RETURN NULL; END $$;
CREATE TRIGGER send AFTER INSERT ON w_send FOR EACH ROW EXECUTE FUNCTION w_send();
SQL
for t in plain notify realtime send; do
  echo "INSERT INTO w_$t (camera, kind, score, meta) VALUES ('cam-' || (random()*8)::int, 'scratch', random(), '{\"line\": 3}');" > "$DATA/w_$t.sql"
done
for writers in 1 8 32; do
  for sync in on off; do
    for round in $(seq $W_ROUNDS); do
      # realtime_subscribed: the same table while one WebSocket client receives every change.
      # Each round starts with a different target, so none always runs first or right after
      # another. Each run starts from empty tables and a checkpoint, so none inherits another's
      # dirty buffers or a bigger table (w_realtime serves two targets).
      targets=(plain notify realtime realtime_subscribed send)
      shift_by=$(( (round - 1) % ${#targets[@]} ))
      for t in "${targets[@]:$shift_by}" "${targets[@]:0:$shift_by}"; do
        psql_ -c "TRUNCATE w_plain, w_notify, w_realtime, w_send" -c CHECKPOINT >/dev/null
        SUB_PID=
        if [ $t = realtime_subscribed ]; then
          "$LOADGEN" count --ws "$RT_URL" --table w_realtime --events 1000000000 >/dev/null 2>&1 &
          SUB_PID=$!
          sleep 1
        fi
        tps=$(PGOPTIONS="-c synchronous_commit=$sync" "$BIN/pgbench" -n -c $writers -j 2 -T $W_SECONDS -f "$DATA/w_${t%_subscribed}.sql" 2>/dev/null | awk '/^tps/ {print $3; exit}')
        [ -n "$SUB_PID" ] && kill $SUB_PID && wait $SUB_PID 2>/dev/null || true
        echo "{\"scenario\":\"writers\",\"target\":\"$t\",\"writers\":$writers,\"synchronous_commit\":\"$sync\",\"round\":$round,\"tps\":$tps}" | record
      done
    done
  done
done
fi

if want L; then
say "L: commit->client latency at 1,000 events/s"
# The floor: the same load generator against a broadcaster with no database (bench/src/floor.rs);
# the committed floor adds PostgreSQL's durable commit of each row and nothing else.
FLOOR_PORT=$(free_port)
"$LOADGEN" floor-server --port "$FLOOR_PORT" &
FLOOR_PID=$!
sleep 1
for clients in 1 100 1000; do
  "$LOADGEN" latency --target floor --ws "ws://127.0.0.1:$FLOOR_PORT/" --clients $clients --events $L_EVENTS --rate 1000 | record
  # The committed floor: the same broadcaster, told of each row once its INSERT has committed.
  "$LOADGEN" latency --target committed-floor --pg "$PG" --ws "ws://127.0.0.1:$FLOOR_PORT/" --clients $clients --events $L_EVENTS --rate 1000 | record
  "$LOADGEN" latency --pg "$PG" --ws "$RT_URL" --clients $clients --events $L_EVENTS --rate 1000 | record
  "$LOADGEN" latency --pg "$PG" --ws "$SUPA_URL" --clients $clients --events $L_EVENTS --rate 1000 | record
  ensure_bridge "latency $clients"
  "$LOADGEN" latency --target bridge --pg "$PG" --ws "$BRIDGE_URL" --clients $clients --events $L_EVENTS --rate 1000 | record
  # N: the bridge's own trigger, its channel relayed by realtime_ext instead.
  "$LOADGEN" latency --target relay --pg "$PG" --ws "$RT_URL" --clients $clients --events $L_EVENTS --rate 1000 | record
done
kill "$FLOOR_PID"; FLOOR_PID=
fi

if want F; then
say "F: fan-out to $F_CLIENTS clients"
"$LOADGEN" fanout --pg "$PG" --ws "$RT_URL" --clients $F_CLIENTS --seconds $F_SECONDS --batch 100 | record
"$LOADGEN" fanout --pg "$PG" --ws "$SUPA_URL" --clients $F_CLIENTS --seconds $F_SECONDS --batch 100 | record
# Flat out, the writer commits far more than two cores can write to sockets, and sessions read
# on from the history; held to F_RATE rows/s, what the fan-out sustains from memory.
"$LOADGEN" fanout --pg "$PG" --ws "$RT_URL" --clients $F_CLIENTS --seconds $F_SECONDS --batch 100 --rate $F_RATE | record
"$LOADGEN" fanout --pg "$PG" --ws "$SUPA_URL" --clients $F_CLIENTS --seconds $F_SECONDS --batch 100 --rate $F_RATE | record
ensure_bridge fanout
"$LOADGEN" fanout --target bridge --pg "$PG" --ws "$BRIDGE_URL" --clients $F_CLIENTS --seconds $F_SECONDS --batch 100 | record
fi

if want C; then
say "C: idle connections held (file descriptor limit here: $(ulimit -Hn))"
# Every connection is a descriptor on both ends; neither process may exceed the hard limit.
c_clients=$(( C_CLIENTS < $(ulimit -Hn) - 1000 ? C_CLIENTS : $(ulimit -Hn) - 1000 ))
"$LOADGEN" idle --pg "$PG" --ws "$RT_URL" --clients $c_clients | record
echo "{\"scenario\":\"idle_target\",\"requested_clients\":$C_CLIENTS,\"held_clients\":$c_clients,\"fd_hard_limit\":$(ulimit -Hn)}" | record
fi

if want T; then
say "T: one transaction inserting $T_ROWS rows"
WORKER=$(psql_ -tAc "SELECT pid FROM pg_stat_activity WHERE backend_type = 'realtime_ext'")
insert_bulk() { psql_ -c "INSERT INTO $1 SELECT g, 'cam-' || g % 8, g / 1000.0, jsonb_build_object('g', g) FROM generate_series(1, $T_ROWS) g"; }
time_it() { local s e; s=$(date +%s.%N); "$@" >/dev/null; e=$(date +%s.%N); printf '%.3f' "$(echo "$e - $s" | bc -l)"; }
fresh_table() { psql_ -c "DROP TABLE IF EXISTS $1" -c "CREATE TABLE $1 (id bigint, camera text, score numeric, meta jsonb)" >/dev/null; }
rss_before=$(awk '/VmRSS/ {print $2}' /proc/$WORKER/status)
# Peak RSS (VmHWM) is kept for the life of the process; reset it so it covers T alone.
echo 5 > /proc/$WORKER/clear_refs
# A single timing is as exposed to this machine's drift as a single W round: alternate rounds.
for round in 1 2 3; do
  fresh_table bulk_plain
  psql_ -c CHECKPOINT >/dev/null
  plain_s=$(time_it insert_bulk bulk_plain)
  fresh_table bulk_watched
  psql_ -c "SELECT realtime_watch('bulk_watched')" >/dev/null
  "$LOADGEN" count --ws "$RT_URL" --table bulk_watched --events $T_ROWS > "$DATA/count.out" &
  COUNT_PID=$!
  psql_ -c CHECKPOINT >/dev/null
  sleep 1
  watched_s=$(time_it insert_bulk bulk_watched)
  wait $COUNT_PID
  tail -n 1 "$DATA/count.out" | record
  hwm=$(awk '/VmHWM/ {print $2}' /proc/$WORKER/status)
  echo "{\"scenario\":\"bulk\",\"round\":$round,\"rows\":$T_ROWS,\"plain_seconds\":$plain_s,\"watched_seconds\":$watched_s,\"worker_rss_kib_before\":$rss_before,\"worker_peak_rss_kib\":$hwm,\"queue_size_kib\":65536}" | record
done
fi

if want P; then
say "P: payload sizes"
# A fresh bridge, so that P measures payload sizes and not what the fan-out flood left behind.
kill "$BRIDGE_PID" 2>/dev/null && wait "$BRIDGE_PID" 2>/dev/null || true
start_bridge
for size in 1000 10000 100000 1000000; do
  "$LOADGEN" latency --pg "$PG" --ws "$RT_URL" --clients 1 --events $P_EVENTS --rate 50 --payload $size | record
  ensure_bridge "payload $size"
  "$LOADGEN" latency --target bridge --pg "$PG" --ws "$BRIDGE_URL" --clients 1 --events $P_EVENTS --rate 50 --payload $size | record
done
fi

if want R; then
say "R: row-level security, 1,000 clients each a distinct user, 1,000 changes/s each for one of them"
worker_pid=$(psql_ -tAc "SELECT pid FROM pg_stat_activity WHERE backend_type = 'realtime_ext'")
for mode in filter policy subselect perquery; do
  events=$R_EVENTS; [ $mode = perquery ] && events=$(( R_EVENTS / 10 ))
  "$LOADGEN" rls --pg "$PG" --ws "$RT_URL" --clients 1000 --events $events --rate 1000 --mode $mode \
    --secret "$JWT_SECRET" --worker-pid "$worker_pid" | record
done
# The owner policy again, through the Supabase endpoint (its tokens as apikey).
"$LOADGEN" rls --pg "$PG" --ws "$SUPA_URL" --clients 1000 --events $R_EVENTS --rate 1000 --mode policy \
  --secret "$JWT_SECRET" --worker-pid "$worker_pid" | record
fi

if want D; then
say "D: $D_CLIENTS clients away for 10 s at 1,000 changes/s resume with since; 100 stay connected"
"$LOADGEN" resume --pg "$PG" --ws "$RT_URL" --clients $D_CLIENTS --steady 100 --rate 1000 \
  --before 5 --away 10 --after 15 | record
fi

if want N; then
say "N: a 1,000,000-row snapshot while 100 other clients receive 1,000 changes/s"
"$LOADGEN" snapshot --pg "$PG" --ws "$RT_URL" --rows 1000000 --steady 100 --rate 1000 --baseline 10 | record
fi

if want B; then
say "B: commit to DOM in headless Chromium, 1,000 changes at 100/s; recovery after the worker is terminated"
psql_ -f examples/defects/schema.sql >/dev/null
node bench/browser.mjs "http://127.0.0.1:$WSPORT" "$BIN/psql" "$PGPORT" 1000 100 5 | record
fi

if want K; then
say "K: client broadcast, one sender to $F_CLIENTS subscribers of a channel"
"$LOADGEN" shout --ws "$RT_URL" --clients $F_CLIENTS --seconds $F_SECONDS --rate 200 | record
fi

if want Y; then
say "Y: $F_CLIENTS clients join one channel's presence"
"$LOADGEN" presence --ws "$RT_URL" --clients $F_CLIENTS --seconds 120 | record
fi

if want H; then
say "H: webhooks to local receivers; beside a pg_notify trigger and a Node LISTEN -> fetch forwarder"
node bench/webhooks.mjs "postgres://postgres@127.0.0.1:$PGPORT/postgres" "$BIN/pgbench" $H_EVENTS 500 $H_BURST $W_SECONDS | record
fi

if want S; then
say "S: fan-out to $F_CLIENTS clients over TLS (wss://), beside the same over ws://"
# Last: it restarts the server with realtime.ssl on.
openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj /CN=localhost \
  -addext subjectAltName=DNS:localhost -addext basicConstraints=critical,CA:FALSE \
  -keyout "$DATA/tls.key" -out "$DATA/tls.crt" 2>/dev/null
chown postgres: "$DATA/tls.key" "$DATA/tls.crt" 2>/dev/null || true
"$LOADGEN" fanout --pg "$PG" --ws "$RT_URL" --clients $F_CLIENTS --seconds $F_SECONDS --batch 100 | record
psql_ -c "ALTER SYSTEM SET realtime.ssl = on" -c "ALTER SYSTEM SET realtime.ssl_cert_file = '$DATA/tls.crt'" \
      -c "ALTER SYSTEM SET realtime.ssl_key_file = '$DATA/tls.key'"
as_pg "$BIN/pg_ctl" -D "$DATA/pg" -l "$DATA/server.log" -w restart >/dev/null
sleep 2
"$LOADGEN" fanout --pg "$PG" --ws "wss://localhost:$WSPORT/realtime" --ca "$DATA/tls.crt" --clients $F_CLIENTS --seconds $F_SECONDS --batch 100 | record
fi

python3 bench/report.py "$RESULTS" "$OUT.json" "$QUICK" | tee "$OUT.md"
rm -f "$RESULTS"
