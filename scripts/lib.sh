# Sourced by demo.sh, test.sh, .ci/ and bench/: what every script agrees on.
# (The tests read the same pg_config from cargo-pgrx's configuration, written by .ci/prereqs.sh.)

PG_MAJOR=15
BIN=/usr/lib/postgresql/$PG_MAJOR/bin
PG_CONFIG=$BIN/pg_config

# Root runs PostgreSQL as the postgres user; anyone else runs it as themselves.
as_pg() { if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }
as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
