#!/usr/bin/env bash
# Build and install realtime_ext, start a local PostgreSQL ($PG_MAJOR, 15 by default) with it
# preloaded, create the demo table "defects", watch it, and print where to connect.
#   ./demo.sh            start (or restart) the demo cluster
#   ./demo.sh --edges 2  the same, plus a nats-server and 2 edge servers (realtime-edge) that
#                        serve browsers from the stream, on the ports after realtime.port
#   ./demo.sh stop       stop it (edges and nats-server included)
# Each major has its own cluster: /tmp/realtime_ext_demo for 15, /tmp/realtime_ext_demo-N else.
set -euo pipefail
cd "$(dirname "$0")"

. scripts/lib.sh
suffix=$([ "$PG_MAJOR" = 15 ] || echo "-$PG_MAJOR")
DATA=${REALTIME_DEMO_DIR:-/tmp/realtime_ext_demo$suffix}
PGPORT=${PGPORT:-54320}
WSPORT=${REALTIME_PORT:-8080}

EDGES=0
NATS_PORT=${REALTIME_DEMO_NATS_PORT:-54222}

# Edge servers and the nats-server they follow, if a previous run started them.
stop_edges() {
  for pid in "$DATA"/edge-*.pid "$DATA/nats.pid"; do
    [ -f "$pid" ] || continue
    kill "$(cat "$pid")" 2>/dev/null || true
    rm -f "$pid"
  done
}

case "${1:-}" in
  stop)
    stop_edges
    as_pg "$BIN/pg_ctl" -D "$DATA" stop -m fast
    exit 0
    ;;
  --edges)
    EDGES=${2:?usage: ./demo.sh --edges N}
    [[ "$EDGES" =~ ^[1-9][0-9]?$ ]] || { echo "--edges takes a number from 1 to 99" >&2; exit 2; }
    ;;
  "") ;;
  *) echo "usage: ./demo.sh [--edges N | stop]" >&2; exit 2 ;;
esac

bash .ci/prereqs.sh
echo "==> building and installing realtime_ext (release)"
cargo pgrx install --release --pg-config "$PG_CONFIG" >/dev/null

if [ -f "$DATA/postmaster.pid" ]; then as_pg "$BIN/pg_ctl" -D "$DATA" stop -m fast >/dev/null || true; fi
if [ ! -f "$DATA/PG_VERSION" ]; then
  echo "==> creating cluster in $DATA"
  mkdir -p "$DATA"
  [ "$(id -u)" = 0 ] && chown postgres: "$DATA"
  as_pg "$BIN/initdb" -D "$DATA" -U postgres --auth=trust --locale=C.UTF-8 >/dev/null
  cat >> "$DATA/postgresql.conf" <<CONF
port = $PGPORT
listen_addresses = 'localhost'
unix_socket_directories = '$DATA'
shared_preload_libraries = 'realtime_ext'
realtime.port = $WSPORT
realtime.listen_addresses = 'localhost'
max_prepared_transactions = 10
CONF
fi
# The key tokens are signed with (scripts/mint_token.sh reads it), made once per cluster.
if [ ! -s "$DATA/jwt_secret" ]; then
  openssl rand -hex 32 | as_pg tee "$DATA/jwt_secret" >/dev/null
  as_pg chmod 600 "$DATA/jwt_secret"
fi
# pgrx adds a Rust backtrace to the DETAIL of every error when RUST_BACKTRACE is set.
as_pg env -u RUST_BACKTRACE "$BIN/pg_ctl" -D "$DATA" -l "$DATA/server.log" -w start >/dev/null

psql_() { "$BIN/psql" -X -q -v ON_ERROR_STOP=1 -h localhost -p "$PGPORT" -U postgres -d postgres "$@"; }
# The extension's version number does not change with every build while its SQL may: a cluster
# set up by another build gets the extension created again (its watched tables are watched
# again below).
EXT_DIR="$("$PG_CONFIG" --sharedir)/extension"
SCRIPT="$EXT_DIR/realtime_ext--$(sed -n "s/^default_version = '\(.*\)'/\1/p" "$EXT_DIR/realtime_ext.control").sql"
# pgrx writes the script's functions in varying order: compare its lines, sorted.
script_hash=$(sort "$SCRIPT" | sha256sum | cut -d' ' -f1)
installed=$(psql_ -tAc "SELECT count(*) FROM pg_extension WHERE extname = 'realtime_ext'")
if [ "$installed" = 1 ] && [ "$(cat "$DATA/realtime_ext.sql.sha256" 2>/dev/null)" != "$script_hash" ]; then
  echo "==> realtime_ext's SQL changed since this cluster was set up: creating the extension again"
  psql_ -c "DROP EXTENSION realtime_ext CASCADE"
fi
psql_ -c "CREATE EXTENSION IF NOT EXISTS realtime_ext" -f examples/defects/schema.sql \
      -f examples/defects/generator.sql >/dev/null
psql_ <<'SQL'
-- Identity as in PostgREST: browsers without a token act as web_anon; a token's "role" claim
-- may name web_user, which realtime_authenticator may become.
DO $$ BEGIN
  IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'web_anon') THEN CREATE ROLE web_anon NOLOGIN; END IF;
  IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'web_user') THEN CREATE ROLE web_user NOLOGIN; END IF;
  IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'realtime_authenticator') THEN
    CREATE ROLE realtime_authenticator NOLOGIN NOINHERIT;
  END IF;
END $$;
GRANT SELECT ON defects TO web_anon, web_user;
-- Signed-in users may also read the tables postgres creates later (bench tables, examples).
ALTER DEFAULT PRIVILEGES FOR ROLE postgres IN SCHEMA public GRANT SELECT ON TABLES TO web_user;
GRANT web_anon, web_user TO realtime_authenticator;
SQL
psql_ -c "ALTER SYSTEM SET realtime.anon_role = 'web_anon'" \
      -c "ALTER SYSTEM SET realtime.authenticator = 'realtime_authenticator'" \
      -c "ALTER SYSTEM SET realtime.jwt_secret = '@$DATA/jwt_secret'" \
      -c "SELECT pg_reload_conf()" >/dev/null
# The orders app: its trigger already calls pg_notify('orders', ...); one line relays it.
psql_ -f examples/orders/schema.sql >/dev/null
echo "$script_hash" | as_pg tee "$DATA/realtime_ext.sql.sha256" >/dev/null

stop_edges
if [ "$EDGES" -gt 0 ]; then
  echo "==> starting nats-server on port $NATS_PORT and $EDGES edge server(s)"
  cargo build --release -p realtime-core --bin realtime-edge >/dev/null
  mkdir -p "$DATA/nats"
  nohup nats-server -a 127.0.0.1 -p "$NATS_PORT" -js -sd "$DATA/nats" >"$DATA/nats.log" 2>&1 &
  echo $! >"$DATA/nats.pid"
  psql_ -c "ALTER SYSTEM SET realtime.nats_url = 'nats://127.0.0.1:$NATS_PORT'" \
        -c "SELECT pg_reload_conf()" >/dev/null
  for n in $(seq 1 "$EDGES"); do
    REALTIME_EDGE_NATS_URL="nats://127.0.0.1:$NATS_PORT" REALTIME_EDGE_PORT=$((WSPORT + n)) \
    REALTIME_EDGE_DIR="$DATA/edge-$n" REALTIME_EDGE_JWT_SECRET="@$DATA/jwt_secret" \
    REALTIME_EDGE_ANON_ROLE=web_anon \
      nohup target/release/realtime-edge >"$DATA/edge-$n.log" 2>&1 &
    echo $! >"$DATA/edge-$n.pid"
  done
  for n in $(seq 1 "$EDGES"); do
    for _ in $(seq 1 100); do
      curl -fs "http://localhost:$((WSPORT + n))/health" >/dev/null && break
      sleep 0.1
    done
    curl -fs "http://localhost:$((WSPORT + n))/health" >/dev/null \
      || { echo "edge $n did not become ready; see $DATA/edge-$n.log" >&2; exit 1; }
  done
fi

cat <<MSG

realtime_ext is running.
  Dashboard:  http://localhost:$WSPORT/examples/defects/
  Orders:     http://localhost:$WSPORT/examples/orders/   (NOTIFY 'orders', relayed)
  Inspector:  http://localhost:$WSPORT/
  SQL:        psql -h localhost -p $PGPORT -U postgres
  WebSocket:  ws://localhost:$WSPORT/realtime
  Health:     curl http://localhost:$WSPORT/health

Make defects appear (5 a second, until Ctrl-C):
  examples/defects/generate.sh
or one at a time:
  psql -h localhost -p $PGPORT -U postgres -c "INSERT INTO defects (camera, kind, score) VALUES ('weld-1', 'scratch', 0.93)"
Each defect POSTed to a local receiver that verifies its signature: README, "Posting each
change to a function?".
An order (its trigger's pg_notify reaches the orders page):
  psql -h localhost -p $PGPORT -U postgres -c "INSERT INTO orders (customer, total) VALUES ('ada', 42.50)"
In your own page:
  import { connect } from 'http://localhost:$WSPORT/realtime.js';
  connect('ws://localhost:$WSPORT/realtime').subscribe('defects', { snapshot: true }, (m) => console.log(m));
Without a token the browser acts as role web_anon (SELECT on defects only). As a signed-in user:
  new WebSocket('ws://localhost:$WSPORT/realtime?token=' + TOKEN)   # TOKEN from scripts/mint_token.sh alice
Stop with: ./demo.sh stop
MSG
for n in $(seq 1 "$EDGES"); do
  echo "Edge $n:     http://localhost:$((WSPORT + n))/examples/defects/   (the same page, served from the stream)"
done
