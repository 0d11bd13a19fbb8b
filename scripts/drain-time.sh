#!/usr/bin/env bash
# How long a worker takes to stop (SIGTERM) with a full hand of jobs, against a slow simulator:
# starts the simulator (LATENCY ms a call), an intake and one worker (its own names), sends JOBS
# requests of new customers, waits until the worker holds them all, sends SIGTERM and prints
# the seconds to its exit. The figures in docs/operations.md ("What an operator sees") came from
# this. Needs RabbitMQ and Redis on localhost. Extra VAR=value arguments go to the worker.
#
#   scripts/drain-time.sh 500 32
#   scripts/drain-time.sh 500 32 AUTORENEW__STRIPE__MAX_REQUESTS_PER_SECOND=100000
set -euo pipefail
cd "$(dirname "$0")/.."

LATENCY="${1:-500}"
JOBS="${2:-32}"
shift $(($# < 2 ? $# : 2))
BIN="${BIN:-target/debug/autorenew}"
[ -x "$BIN" ] || cargo build -q
INTAKE_PORT="${INTAKE_PORT:-28481}"
WORKER_PORT="${WORKER_PORT:-29491}"
SIM_PORT="${SIM_PORT:-32112}"
LOGS="$(mktemp -d)"

export AUTORENEW__AMQP__PREFIX="drain-time-$$" AUTORENEW__REDIS__KEY_PREFIX="drain-time-$$"
export AUTORENEW__INTAKE__LISTEN="127.0.0.1:$INTAKE_PORT"
export AUTORENEW__WORKER__LISTEN="127.0.0.1:$WORKER_PORT"
export AUTORENEW__STRIPE__API_BASE="http://127.0.0.1:$SIM_PORT" RUST_LOG=info
"$BIN" stripe-sim --listen "127.0.0.1:$SIM_PORT" --latency "$LATENCY" >"$LOGS/sim.log" 2>&1 &
sim=$!
"$BIN" intake >"$LOGS/intake.log" 2>&1 &
intake=$!
env "$@" AUTORENEW__STRIPE__SECRET_KEY=sk_test_drain_time "$BIN" worker >"$LOGS/worker.log" 2>&1 &
worker=$!
trap 'kill $sim $intake $worker 2>/dev/null || true' EXIT
for _ in $(seq 1 100); do
  curl -sf "http://127.0.0.1:$WORKER_PORT/readyz" >/dev/null && break
  sleep 0.1
done

in_hand() {
  curl -s "http://127.0.0.1:$WORKER_PORT/metrics" | awk '/^autorenew_worker_jobs_in_hand /{print int($2)}'
}
for i in $(seq 1 "$JOBS"); do
  echo "{\"email\":\"drain$i-$$@example.com\",\"partnerCode\":\"P000818\",\"payAmount\":\"19.99\",\"payCurrency\":\"usd\",\"payId\":\"DRAIN$$-$i\",\"plan_id\":\"PLAN_MONTHLY_1GB\",\"pm_id\":\"pm_card_visa\",\"tradeType\":\"stripeSubDirectly\",\"version\":\"3.0\"}" \
    | "$BIN" sign --secret s3cr3t-P000818 --fill \
    | curl -s -o /dev/null -H 'content-type: application/json' --data @- \
      "http://127.0.0.1:$INTAKE_PORT/stripeSubDirectly" &
done
for _ in $(seq 1 100); do
  [ "$(in_hand || echo 0)" -ge "$JOBS" ] && break
  sleep 0.1
done
echo "jobs in hand at SIGTERM: $(in_hand)"
started=$(date +%s.%N)
kill -TERM "$worker"
status=0
wait "$worker" || status=$?
ended=$(date +%s.%N)
echo "the worker exited ($status) $(echo "$ended - $started" | bc) s after SIGTERM (logs: $LOGS)"
