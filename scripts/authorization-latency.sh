#!/usr/bin/env bash
# p50/p99 of POST /stripeSubAuthorization (docs/partners.md#before-the-request-stripesubauthorization) against a running `autorenew run`,
# with its simulator's latency set to LATENCY_MS a call, and the Stripe calls it cost (counted
# by the simulator). Run it with `autorenew run` up (its own prefixes if others share the broker):
#
#   scripts/authorization-latency.sh [INTAKE_URL] [SIM_URL]   # defaults: the run's own ports
#   N=200 CONCURRENCY=4 LATENCY_MS=300 PROFILE=debug scripts/authorization-latency.sh
#   FLOWS=50 N=0 scripts/authorization-latency.sh                # the call counts only
#
# Two rounds: N new customers (find, create the customer, the SetupIntent: 3 calls each, bound
# 3 × latency + 50 ms), then N more payIds of those same people (the customer is cached: the
# SetupIntent alone, bound 1 × latency + 50 ms). Before them, FLOWS (50) whole flows per kind of
# customer, authorize → confirm → create, for the Stripe calls per subscription. Leaves the
# simulator's latency at 0.
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

# Stripe calls per subscription through the whole flow: authorize, the app's confirm (under the
# publishable key; not ours, so not counted), create with the confirmed pm_id and wait for it.
field() { grep -o "\"$1\":\"[^\"]*\"" | cut -d'"' -f4; }
flow() {
  local pay_id=$1 email=$2 answer pm body
  answer=$(echo "{\"email\":\"$email\",\"partnerCode\":\"P000818\",\"payId\":\"$pay_id\",\"tradeType\":\"stripeSubAuthorization\",\"version\":\"3.0\"}" |
    "$BIN" sign --secret "$SECRET" --fill |
    curl -s -H 'content-type: application/json' --data @- "$INTAKE/stripeSubAuthorization")
  pm=$(curl -s -u "$(echo "$answer" | field publishable_key):" \
    "$SIM/v1/setup_intents/$(echo "$answer" | field setup_intent_id)/confirm" \
    -d payment_method=pm_card_visa -d client_secret="$(echo "$answer" | field client_secret)" |
    field payment_method)
  body=$(echo "{\"email\":\"$email\",\"partnerCode\":\"P000818\",\"payAmount\":\"19.99\",\"payCurrency\":\"usd\",\"payId\":\"$pay_id\",\"plan_id\":\"PLAN_MONTHLY_1GB\",\"pm_id\":\"$pm\",\"tradeType\":\"stripeSubDirectly\",\"version\":\"3.0\"}" |
    "$BIN" sign --secret "$SECRET" --fill)
  curl -s -H 'content-type: application/json' -H 'Prefer: wait=10' --data "$body" \
    "$INTAKE/stripeSubDirectly" | field status
}
ours() {
  curl -sf "$SIM/_sim/stats" | python3 -c 'import json, sys
d = json.load(sys.stdin)
print(d["requests_total"] - d["requests_by_route"].get("POST /v1/setup_intents/{id}/confirm", 0))'
}
flows() {
  local name=$1 suffix=$2 before after active
  before=$(ours)
  active=$(for i in $(seq 1 "$FLOWS"); do flow "${RUN}-${suffix}-$i" "flow-${RUN}-$i@example.com"; done | grep -c '^active$' || true)
  after=$(ours)
  echo "$name: $FLOWS flows, $active active, Stripe calls/subscription (ours, the app's confirm left out): $(awk -v a="$after" -v b="$before" -v n="$FLOWS" 'BEGIN { printf "%.2f", (a - b) / n }')"
}
# The intake takes jobs once it reaches RabbitMQ and Redis.
for _ in $(seq 1 60); do
  curl -sf -o /dev/null "$INTAKE/readyz" && break
  sleep 1
done
FLOWS="${FLOWS:-50}"
if [ "$FLOWS" -gt 0 ]; then
  latency 0
  flow "${RUN}-warm" "warm-${RUN}@example.com" >/dev/null # the plan's price, made once
  flows "whole flow, new customers" f
  flows "whole flow, returning customers" g
fi

[ "$N" -gt 0 ] || exit 0
trap 'latency 0' EXIT
latency "$LATENCY_MS"
echo "simulator latency ${LATENCY_MS} ms a call, N=$N, concurrency $CONCURRENCY"
round "new customers      (bound $((3 * LATENCY_MS + 50)) ms)" a
round "returning customers (bound $((LATENCY_MS + 50)) ms)" b
