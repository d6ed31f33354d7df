# Sourced by the single-scenario scripts in bench/: installs the release build and starts a
# throwaway cluster set up as bench/run.sh sets up its own (a reader role for anonymous
# clients, room for many connections), stopped and removed on exit.
# Sets DATA, PGPORT, WSPORT, PG (a conninfo), WORKER (its pid) and psql_.
. "$(dirname "${BASH_SOURCE[0]}")/../scripts/lib.sh"
LOADGEN=$PWD/bench/target/release/realtime_bench
cargo pgrx install --release --pg-config "$PG_CONFIG" >/dev/null
(cd bench && cargo build --release -q)

DATA=$(mktemp -d /tmp/realtime_bench.XXXXXX)
PGPORT=$(free_port); WSPORT=$(free_port)
[ "$(id -u)" = 0 ] && chown postgres: "$DATA"
as_pg "$BIN/initdb" -D "$DATA/pg" -U postgres --auth=trust --locale=C.UTF-8 >/dev/null
cat >> "$DATA/pg/postgresql.conf" <<CONF
port = $PGPORT
listen_addresses = '127.0.0.1'
unix_socket_directories = '$DATA'
shared_buffers = 512MB
shared_preload_libraries = 'realtime_ext'
realtime.port = $WSPORT
realtime.listen_addresses = '127.0.0.1'
realtime.max_connections = 100000
realtime.max_anonymous_per_address = 0
realtime.queue_size = 64MB
realtime.anon_role = 'bench_reader'
CONF
as_pg "$BIN/pg_ctl" -D "$DATA/pg" -l "$DATA/server.log" -w start >/dev/null
trap 'as_pg "$BIN/pg_ctl" -D "$DATA/pg" -m fast stop >/dev/null 2>&1; rm -rf "$DATA"' EXIT
PG="host=127.0.0.1 port=$PGPORT user=postgres dbname=postgres"
psql_() { "$BIN/psql" -XqtA "$PG" "$@"; }
psql_ -c "CREATE ROLE bench_reader NOLOGIN" -c "GRANT pg_read_all_data TO bench_reader" \
      -c "CREATE EXTENSION realtime_ext" -f bench/baselines/node-bridge/notify_trigger.sql
WORKER=$(psql_ -c "SELECT pid FROM pg_stat_activity WHERE backend_type = 'realtime_ext'")
