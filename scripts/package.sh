#!/usr/bin/env bash
# Build what a DBA installs without Rust: for each PostgreSQL major named (every supported one
# by default), a Debian package and a plain tarball of the files `cargo pgrx package` lays
# out for that major's pg_config, in target/packages/.
#   scripts/package.sh [major...]
#   scripts/package.sh --check      build 15's, install it in place of the files a build
#                                   installed, and run the SQL-surface and change suites
#                                   against it (CI does); the package stays installed
# 15 is Debian's PostgreSQL (the .deb depends on postgresql-15); 16 to 18 are the builds
# .ci/prereqs.sh puts under /opt/postgresql, so their packages install there: to package for
# another server of those majors, build on a machine where PG_MAJOR's pg_config is that
# server's (see scripts/lib.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh
check=false
if [ "${1:-}" = --check ]; then check=true; set -- 15; fi
VERSION=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -n 1)
ARCH=$(dpkg --print-architecture)
OUT=$PWD/target/packages
mkdir -p "$OUT"

package() {
  local major=$1 pg_config stage deb
  pg_config=$(pg_bin "$major")/pg_config
  [ -x "$pg_config" ] || PG_MAJOR=$major bash .ci/prereqs.sh
  stage=$PWD/target/release/realtime_ext-pg$major
  rm -rf "$stage"
  cargo pgrx package --pg-config "$pg_config" --out-dir "$stage" >/dev/null
  tar -C "$stage" --owner=0 --group=0 -czf "$OUT/realtime_ext-$VERSION-pg$major-linux-$ARCH.tar.gz" .
  mkdir -p "$stage/DEBIAN"
  {
    echo "Package: postgresql-$major-realtime-ext"
    echo "Version: $VERSION"
    echo "Architecture: $ARCH"
    echo "Maintainer: realtime_ext <realtime_ext@localhost>"
    if [ "$major" = 15 ]; then echo "Depends: postgresql-15, libc6 (>= 2.34)"; else echo "Depends: libc6 (>= 2.34)"; fi
    echo "Section: database"
    echo "Priority: optional"
    echo "Description: stream committed table changes over WebSocket from PostgreSQL $major"
    echo " realtime_ext's background worker serves every committed change of the tables"
    echo " it watches to WebSocket clients, authorized per subscriber by row-level security."
    echo " Add realtime_ext to shared_preload_libraries, restart the server, then run"
    echo " CREATE EXTENSION realtime_ext."
  } > "$stage/DEBIAN/control"
  deb=$OUT/postgresql-$major-realtime-ext_${VERSION}_$ARCH.deb
  dpkg-deb --root-owner-group --build "$stage" "$deb" >/dev/null
  echo "$deb"
  echo "$OUT/realtime_ext-$VERSION-pg$major-linux-$ARCH.tar.gz"
}

majors=("$@")
[ ${#majors[@]} -gt 0 ] || read -r -a majors <<< "$SUPPORTED_MAJORS"
for major in "${majors[@]}"; do package "$major"; done

if $check; then
  deb=$OUT/postgresql-15-realtime-ext_${VERSION}_$ARCH.deb
  # What a build installed goes first, so that only the package's files can pass.
  lib=$("$PG_CONFIG" --pkglibdir); share=$("$PG_CONFIG" --sharedir)/extension
  as_root rm -f "$lib/realtime_ext.so" "$share"/realtime_ext.control "$share"/realtime_ext--*.sql
  as_root dpkg -i "$deb" >/dev/null
  dpkg -L postgresql-15-realtime-ext | grep -q "$lib/realtime_ext.so"
  cargo test --test sql_surface --test changes
fi
