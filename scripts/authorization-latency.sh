#!/usr/bin/env bash
# p50/p99 of POST /stripeSubAuthorization (CONTRACT §12) against a running `autorenew run`,
# with its simulator's latency set to LATENCY_MS a call, and the Stripe calls it cost (counted
# by the simulator). Run it with `autorenew run` up (its own prefixes if others share the broker):
#
#   scripts/authorization-latency.sh [INTAKE_URL] [SIM_URL]   # defaults: the run's own ports
#   N=200 CONCURRENCY=4 LATENCY_MS=300 PROFILE=debug scripts/authorization-latency.sh
#
# Two rounds: N new customers (find, create the customer, the SetupIntent: 3 calls each, bound
# 3 × latency + 50 ms), then N more payIds of those same people (the customer is cached: the
# SetupIntent alone, bound 1 × latency + 50 ms). Leaves the simulator's latency at 0.
set -euo pipefail
cd "$(dirname "$0")/.."

INTAKE="${1:-http://127.0.0.1:8080}"
SIM="${2:-http://127.0.0.1:12111}"
N="${N:-200}"
CONCURRENCY="${CONCURRENCY:-4}"
LATENCY_MS="${LATENCY_MS:-300}"
BIN="$PWD/target/${PROFILE:-release}/autorenew"
SECRET="${SECRET:-s3cr3t-P000818}"
RUN="L$(date +%s)"

latency() {
  curl -sf -XPATCH "$SIM/_sim/config" -H 'content-type: application/json' \
    -d "{\"latency_p50_ms\":$1,\"latency_p99_ms\":$1}" >/dev/null
}
calls() { curl -sf "$SIM/_sim/stats" | grep -o '"requests_total":[0-9]*' | cut -d: -f2; }

# One signed authorization; prints "<http status> <seconds>".
one() {
  local pay_id=$1 email=$2
  local body
  body=$(echo "{\"email\":\"$email\",\"partnerCode\":\"P000818\",\"payId\":\"$pay_id\",\"tradeType\":\"stripeSubAuthorization\",\"version\":\"3.0\"}" |
    "$BIN" sign --secret "$SECRET" --fill)
  curl -s -o /dev/null -w '%{http_code} %{time_total}\n' -H 'content-type: application/json' \
    --data "$body" "$INTAKE/stripeSubAuthorization"
}
export -f one
export BIN SECRET INTAKE

# p50 and p99 (nearest rank) of the seconds column, in ms; and the non-200 count.
summary() {
  awk '{ if ($1 != 200) bad++; print $2 * 1000 }' "$1" | sort -n | awk -v n="$(wc -l <"$1")" '
    { v[NR] = $1 }
    END { p50 = v[int(n * 0.50 + 0.999)]; p99 = v[int(n * 0.99 + 0.999)];
          printf "n=%d p50=%.0f ms p99=%.0f ms max=%.0f ms\n", n, p50, p99, v[n] }'
  echo "non-200: $(awk '$1 != 200' "$1" | wc -l)"
}

round() {
  local name=$1 suffix=$2 out
  out=$(mktemp)
  local before after
  before=$(calls)
  seq 1 "$N" | xargs -P "$CONCURRENCY" -I{} bash -c \
    "one ${RUN}-${suffix}-{} auth-${RUN}-{}@example.com" >"$out"
  after=$(calls)
  echo "$name: $(summary "$out" | tr '\n' ' ') Stripe calls/authorization: $(awk -v a="$after" -v b="$before" -v n="$N" 'BEGIN { printf "%.2f", (a - b) / n }')"
  rm -f "$out"
}

trap 'latency 0' EXIT
latency "$LATENCY_MS"
echo "simulator latency ${LATENCY_MS} ms a call, N=$N, concurrency $CONCURRENCY"
round "new customers      (bound $((3 * LATENCY_MS + 50)) ms)" a
round "returning customers (bound $((LATENCY_MS + 50)) ms)" b
