#!/usr/bin/env bash
# Installs what building and testing realtime_ext needs, skipping whatever is already there:
# PostgreSQL 15 with server headers, clang, sudo, OpenSSL headers (cargo-pgrx links OpenSSL) and
# the openssl command (the TLS test makes its certificate with it),
# cargo-pgrx 0.18.0 and its pg15 configuration.
set -euo pipefail
. "$(dirname "$0")/../scripts/lib.sh"

PGRX_VERSION=0.18.0

missing=()
for pkg in postgresql-$PG_MAJOR postgresql-server-dev-$PG_MAJOR libclang-dev clang sudo libssl-dev pkg-config openssl; do
  dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "==> installing ${missing[*]}"
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi

if ! cargo pgrx --version 2>/dev/null | grep -q "$PGRX_VERSION"; then
  echo "==> installing cargo-pgrx $PGRX_VERSION (takes several minutes)"
  cargo install cargo-pgrx --version "$PGRX_VERSION" --locked
fi

if ! grep -qs "pg$PG_MAJOR" "${PGRX_HOME:-$HOME/.pgrx}/config.toml"; then
  echo "==> cargo pgrx init (pg$PG_MAJOR = $PG_CONFIG)"
  cargo pgrx init --pg$PG_MAJOR="$PG_CONFIG" >/dev/null
fi

# The lint gate (.ci/lint.sh) needs these toolchain components.
for component in rustfmt clippy; do
  if ! rustup component list --installed 2>/dev/null | grep -q "^$component"; then
    echo "==> rustup component add $component"
    rustup component add "$component"
  fi
done
