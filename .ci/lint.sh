#!/usr/bin/env bash
# The lint gate: no import cycle, formatting and clippy (warnings are errors) for the
# extension, realtime-core and the load generator. Needs what .ci/prereqs.sh installs.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 scripts/import_cycles.py
cargo fmt --all --check
(cd bench && cargo fmt --check)
cargo clippy --workspace --all-targets -- -D warnings
(cd bench && cargo clippy --all-targets -- -D warnings)
echo "==> lint: ok"
