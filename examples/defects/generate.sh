#!/usr/bin/env bash
# Insert realistic defects into the demo cluster at a steady rate, until stopped:
#   examples/defects/generate.sh [per_second] [seconds]
set -euo pipefail
cd "$(dirname "$0")/../.."
. scripts/lib.sh
"$BIN/psql" -X -q -v ON_ERROR_STOP=1 -h localhost -p "${PGPORT:-54320}" -U postgres -d postgres \
  -f examples/defects/generator.sql -c "CALL defects_generate(${1:-5}, ${2:-3600})"
