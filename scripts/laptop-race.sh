#!/usr/bin/env bash
# The README's laptop story, step 3, measured: against a running `autorenew run`, create a
# subscription, move the simulator's clock a month, and send the query already signed the moment
# the advance answers. Prints how often the query still said "renewals":0. The README's figures
# came from this (debug build, 2 cores): 2 in 50 with the advance's wait, 12 in 20 with
# ADVANCE_WAIT=false.
#
#   scripts/laptop-race.sh [N]                        # against 127.0.0.1:8080 and :12111
#   INTAKE=http://127.0.0.1:28480 SIM=http://127.0.0.1:32111 scripts/laptop-race.sh 50
set -euo pipefail
cd "$(dirname "$0")/.."

N="${1:-20}"
INTAKE="${INTAKE:-http://127.0.0.1:8080}"
SIM="${SIM:-http://127.0.0.1:12111}"
WAIT="${ADVANCE_WAIT:-true}"
BIN="${BIN:-target/debug/autorenew}"
[ -x "$BIN" ] || cargo build -q

sign() { "$BIN" sign --secret s3cr3t-P000818 --fill; }
missed=0
for i in $(seq 1 "$N"); do
  pay_id="RACE$(date +%s%N)"
  echo "{\"email\":\"race$i@example.com\",\"partnerCode\":\"P000818\",\"payAmount\":\"19.99\",\"payCurrency\":\"usd\",\"payId\":\"$pay_id\",\"plan_id\":\"PLAN_MONTHLY_1GB\",\"pm_id\":\"pm_card_visa\",\"tradeType\":\"stripeSubDirectly\",\"version\":\"3.0\"}" \
    | sign | curl -s -o /dev/null -H 'content-type: application/json' -H 'Prefer: wait=10' \
      --data @- "$INTAKE/stripeSubDirectly"
  # Signed before the advance, so the query leaves the moment the advance answers.
  query=$(echo "{\"partnerCode\":\"P000818\",\"payId\":\"$pay_id\",\"tradeType\":\"queryAutoRenewalRecord\",\"version\":\"3.0\"}" | sign)
  curl -s -o /dev/null -XPOST "$SIM/_sim/advance" -d seconds=2678400 -d "wait=$WAIT"
  answer=$(curl -s -H 'content-type: application/json' --data "$query" "$INTAKE/queryAutoRenewalRecord")
  case "$answer" in *'"renewals":0'*) missed=$((missed + 1)) ;; esac
done
echo "the query missed the renewal $missed times in $N (advance wait=$WAIT)"
