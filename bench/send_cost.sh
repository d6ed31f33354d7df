#!/usr/bin/env bash
# What a message costs the writer: pgbench single-row INSERTs into a plain table, into one whose
# row trigger calls pg_notify(row_to_json(NEW)) (the trigger the Node bridge in
# bench/baselines listens to; the channel relayed), and into one whose trigger calls
# realtime_send() with the same row, at 1, 8 and 32 writers, in alternating rounds on one
# fresh cluster (bench/cluster.sh), with a client subscribed to both channels throughout.
#   bench/send_cost.sh [seconds=10] [rounds=2] [writers="1 8 32"]
set -euo pipefail
cd "$(dirname "$0")/.."
SECONDS_PER_RUN=${1:-10}; ROUNDS=${2:-2}; WRITERS=${3:-"1 8 32"}
. bench/cluster.sh
psql_ <<'SQL' >/dev/null
CREATE TABLE w_plain (id bigserial PRIMARY KEY, camera text, kind text, score numeric(5,4), meta jsonb, created_at timestamptz DEFAULT now());
CREATE TABLE w_notify (LIKE w_plain INCLUDING ALL);
CREATE TABLE w_send (LIKE w_plain INCLUDING ALL);
CREATE FUNCTION w_notify() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN PERFORM pg_notify('w_notify', row_to_json(NEW)::text); RETURN NULL; END $$;
CREATE FUNCTION w_send() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN PERFORM realtime_send('w_send', 'insert', to_jsonb(NEW)); RETURN NULL; END $$;
CREATE TRIGGER w_notify AFTER INSERT ON w_notify FOR EACH ROW EXECUTE FUNCTION w_notify();
CREATE TRIGGER w_send AFTER INSERT ON w_send FOR EACH ROW EXECUTE FUNCTION w_send();
SELECT realtime_relay('w_notify', as_json => true, readers => '{bench_reader}');
ALTER SYSTEM SET realtime.public_topics = on;
SELECT pg_reload_conf();
SQL
sleep 2   # the worker applies a reload within a second
# One subscriber to both channels, reading everything, for the whole run.
node --experimental-websocket -e '
  const ws = new WebSocket(process.argv[1]);
  ws.onopen = () => ["w_notify", "w_send"].forEach((channel, id) =>
    ws.send(JSON.stringify({ type: "subscribe", id, channel })));
  ws.onmessage = () => {};
' "ws://127.0.0.1:$WSPORT/realtime" 2>/dev/null &
reader=$!
trap 'kill $reader 2>/dev/null; as_pg "$BIN/pg_ctl" -D "$DATA/pg" -m fast stop >/dev/null 2>&1; rm -rf "$DATA"' EXIT
dir=$(mktemp -d)
for t in plain notify send; do
  echo "INSERT INTO w_$t (camera, kind, score, meta) VALUES ('cam-' || (random()*8)::int, 'scratch', random(), '{\"line\": 3}');" > "$dir/$t.sql"
done
for n in $WRITERS; do
  declare -A total=()
  for r in $(seq "$ROUNDS"); do
    for t in plain notify send; do
      tps=$("$BIN/pgbench" -n -h 127.0.0.1 -p "$PGPORT" -U postgres -c "$n" -j 2 -T "$SECONDS_PER_RUN" \
            -f "$dir/$t.sql" postgres 2>/dev/null | awk '/^tps/ {print $3; exit}')
      total[$t]=$(echo "${total[$t]:-0} + $tps" | bc -l)
    done
  done
  plain=$(echo "${total[plain]} / $ROUNDS" | bc -l)
  notify=$(echo "${total[notify]} / $ROUNDS" | bc -l)
  send=$(echo "${total[send]} / $ROUNDS" | bc -l)
  printf 'writers=%-3s plain=%6.0f tps  pg_notify=%6.0f tps (%.2f×)  realtime_send=%6.0f tps (%.2f×)\n' \
    "$n" "$plain" "$notify" "$(echo "$notify / $plain" | bc -l)" "$send" "$(echo "$send / $plain" | bc -l)"
done
delivered=$(psql_ -c "SELECT value FROM realtime_stats() WHERE name = 'changes_published_total'" 2>/dev/null || true)
echo "messages published: ${delivered:-?}"
rm -rf "$dir"
