#!/usr/bin/env bash
# A rolling restart under load, as Kubernetes does on every deploy: three worker
# processes, the simulator at 200 ms a call, a steady open-loop load; each worker in turn gets
# SIGTERM, is waited for, and is replaced by a new one. Afterwards every promise is checked and
# printed: 0 lost, 0 duplicate subscriptions, every job final, the simulator's subscription
# creates equal to the jobs (no job's Stripe steps ran twice), and no worker handed a job back.
# Exits 1 when a check fails. Needs RabbitMQ and Redis on localhost (as .ci/run leaves them).
#
#   scripts/rolling-restart.sh                          # 60 s at 300 requests/s
#   ROLLING_SECONDS=20 ROLLING_RATE=200 scripts/rolling-restart.sh   # the CI slice
set -euo pipefail
cd "$(dirname "$0")/.."

SECONDS_OF_LOAD="${ROLLING_SECONDS:-60}"
RATE="${ROLLING_RATE:-300}"
# Jobs in flight per worker: a job is about five calls of 200 ms, so at RATE/s about RATE jobs
# are in flight, and two workers (while the third restarts) must hold them all.
CONCURRENCY="${ROLLING_CONCURRENCY:-256}"
# PROFILE=debug runs the debug build (quicker to build, slower to run); NO_BUILD=1 runs the
# binary as it is.
PROFILE="${PROFILE:-release}"
if [ -n "${NO_BUILD:-}" ]; then :
elif [ "$PROFILE" = release ]; then cargo build --release --quiet; else cargo build --quiet; fi
BIN=$PWD/target/$PROFILE/autorenew
RUN=rolling$$
OUT=$(mktemp -d)
# shellcheck source=scripts/lib/drill.sh
. scripts/lib/drill.sh
trap drill_cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

export AUTORENEW__AMQP__PREFIX=$RUN AUTORENEW__REDIS__KEY_PREFIX=$RUN
export AUTORENEW__INTAKE__PARTNER_RATE_LIMIT_PER_SECOND=0
AUTORENEW__INTAKE__LISTEN="127.0.0.1:$(drill_free_port)"
export AUTORENEW__INTAKE__LISTEN
export AUTORENEW__WORKER__CONCURRENCY=$CONCURRENCY
export AUTORENEW__STRIPE__MAX_REQUESTS_PER_SECOND=1000000
export RUST_LOG=warn
INTAKE="http://$AUTORENEW__INTAKE__LISTEN"

port=$(drill_free_port)
"$BIN" stripe-sim --listen "127.0.0.1:$port" --latency 200 >"$OUT/sim.log" 2>&1 & pids+=($!)
SIM="http://127.0.0.1:$port"; drill_wait_http "$SIM/_sim/stats"
export AUTORENEW__STRIPE__SECRET_KEY=sk_test_rolling AUTORENEW__STRIPE__API_BASE="$SIM"
export AUTORENEW__STRIPE__HTTP2_PRIOR_KNOWLEDGE=true
"$BIN" intake >"$OUT/intake.log" 2>&1 & pids+=($!)
drill_wait_http "$INTAKE/readyz"

# worker N → WORKER[N] is its pid; its log is $OUT/worker-N.log
declare -A WORKER
generation=0
start_worker() { # slot
  local port; port=$(drill_free_port); generation=$((generation + 1))
  AUTORENEW__WORKER__LISTEN="127.0.0.1:$port" "$BIN" worker \
    >/dev/null 2>"$OUT/worker-$generation.log" & pids+=($!)
  WORKER[$1]=$!
  drill_wait_http "http://127.0.0.1:$port/readyz"
}
for slot in 1 2 3; do start_worker "$slot"; done

"$BIN" loadgen --quiet --json --target "$INTAKE" --rate "$RATE" --duration "${SECONDS_OF_LOAD}s" \
  --record "$OUT/record.jsonl" --result-timeout 120s >"$OUT/report.json" 2>"$OUT/loadgen.log" &
LOADGEN=$!; pids+=("$LOADGEN")

# Restart the three in turn at a quarter, half and three quarters of the load (counted from its
# start, so slow drains do not push the last restart past its end): SIGTERM, wait for the exit,
# start a new one.
load_start=$(date +%s.%N)
drains=()
for slot in 1 2 3; do
  drill_sleep_until "$load_start" "$SECONDS_OF_LOAD" "$slot / 4"
  drill_stop "${WORKER[$slot]}"
  start_worker "$slot"
done

wait "$LOADGEN" || true
# Let the last jobs settle before counting what the simulator did.
sleep 2
curl -fs "$SIM/_sim/stats" >"$OUT/stats.json"

drill_checks --report "$OUT/report.json" --stats "$OUT/stats.json" \
  --queued "$(drill_queued)" --handed-back "$(drill_handed_back "$OUT"/worker-*.log)" \
  --title "Rolling restart: 3 workers, $RATE/s for $SECONDS_OF_LOAD s, simulator at 200 ms a call" \
  --line "drains: ${drains[*]}"
