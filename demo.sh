#!/usr/bin/env bash
# Build and install realtime_ext, start a local PostgreSQL ($PG_MAJOR, 15 by default) with it
# preloaded, create the demo table "defects", watch it, and print where to connect.
#   ./demo.sh          start (or restart) the demo cluster
#   ./demo.sh stop     stop it
# Each major has its own cluster: /tmp/realtime_ext_demo for 15, /tmp/realtime_ext_demo-N else.
set -euo pipefail
cd "$(dirname "$0")"

. scripts/lib.sh
suffix=$([ "$PG_MAJOR" = 15 ] || echo "-$PG_MAJOR")
DATA=${REALTIME_DEMO_DIR:-/tmp/realtime_ext_demo$suffix}
PGPORT=${PGPORT:-54320}
WSPORT=${REALTIME_PORT:-8080}

if [ "${1:-}" = stop ]; then
  as_pg "$BIN/pg_ctl" -D "$DATA" stop -m fast
  exit 0
fi

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
