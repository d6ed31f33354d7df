#!/usr/bin/env bash
# Print an HS256 JWT for realtime_ext, signed with the demo cluster's secret (or $SECRET_FILE).
#   scripts/mint_token.sh alice                  role web_user, sub "alice", valid one hour
#   scripts/mint_token.sh alice '"line":"L2"'    extra claims
#   ROLE=web_anon TTL=60 scripts/mint_token.sh bob
# Only openssl is needed; in production your sign-in service mints tokens with the same secret.
set -euo pipefail
SUB=${1:?usage: $0 SUB [EXTRA_CLAIMS]}
EXTRA=${2:+,$2}
# The demo cluster of PG_MAJOR (see demo.sh).
suffix=$([ "${PG_MAJOR:-15}" = 15 ] || echo "-$PG_MAJOR")
SECRET_FILE=${SECRET_FILE:-${REALTIME_DEMO_DIR:-/tmp/realtime_ext_demo$suffix}/jwt_secret}
ROLE=${ROLE:-web_user}
TTL=${TTL:-3600}
b64url() { openssl base64 -A | tr '+/' '-_' | tr -d '='; }
header=$(printf '{"alg":"HS256","typ":"JWT"}' | b64url)
payload=$(printf '{"role":"%s","sub":"%s","exp":%d%s}' "$ROLE" "$SUB" $(( $(date +%s) + TTL )) "$EXTRA" | b64url)
signature=$(printf '%s.%s' "$header" "$payload" | openssl dgst -sha256 -hmac "$(cat "$SECRET_FILE")" -binary | b64url)
echo "$header.$payload.$signature"
