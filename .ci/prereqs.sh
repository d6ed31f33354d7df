#!/usr/bin/env bash
# Installs what building and testing realtime_ext needs, skipping whatever is already there:
# PostgreSQL 15 with server headers, clang, sudo, OpenSSL headers (cargo-pgrx links OpenSSL) and
# the openssl command (the TLS test makes its certificate with it),
# cargo-pgrx 0.18.0 and its pg15 configuration, and Node, Chromium and playwright-core for the
# JavaScript tests.
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

# The JavaScript tests (tests/browser.rs): Node with a WebSocket (20.10+; 22+ unflagged),
# Debian's Chromium, and playwright-core and TypeScript at the versions tests/browser/package-lock.json pins.
if ! command -v node >/dev/null || ! command -v npm >/dev/null; then
  echo "==> installing nodejs npm"
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nodejs npm >/dev/null
fi
if [ ! -x /usr/bin/chromium ]; then
  echo "==> installing chromium"
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
fi
browser_tests="$(dirname "$0")/../tests/browser"
if [ ! -d "$browser_tests/node_modules/playwright-core" ] || [ ! -d "$browser_tests/node_modules/typescript" ]; then
  echo "==> npm ci in tests/browser (playwright-core, typescript)"
  (cd "$browser_tests" && npm ci --no-audit --no-fund --loglevel=error)
fi

# The lint gate (.ci/lint.sh) needs these toolchain components.
for component in rustfmt clippy; do
  if ! rustup component list --installed 2>/dev/null | grep -q "^$component"; then
    echo "==> rustup component add $component"
    rustup component add "$component"
  fi
done
