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
pids=()

cleanup() {
  for pid in "${pids[@]:-}"; do [ -n "$pid" ] && kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  # Every queue, exchange and key of this run's prefix (rabbitmqctl reads stdin: </dev/null).
  rabbitmqctl -q list_queues --no-table-headers name </dev/null 2>/dev/null | grep "^$RUN" |
    while read -r q; do rabbitmqctl -q delete_queue "$q" </dev/null >/dev/null 2>&1 || true; done
  rabbitmqctl -q eval "[rabbit_exchange:delete(element(2, X), false, <<\"rolling\">>)
    || X <- rabbit_exchange:list(<<\"/\">>),
       re:run(element(4, element(2, X)), \"^$RUN\") =/= nomatch], ok." </dev/null >/dev/null 2>&1 || true
  redis-cli --scan --pattern "$RUN*" 2>/dev/null | xargs -r -n 500 redis-cli del >/dev/null 2>&1 || true
  rm -rf "$OUT"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_http() { # url
  for _ in $(seq 1 100); do curl -fs "$1" >/dev/null 2>&1 && return 0; sleep 0.1; done
  echo "not ready: $1" >&2; return 1
}

export AUTORENEW__AMQP__PREFIX=$RUN AUTORENEW__REDIS__KEY_PREFIX=$RUN
export AUTORENEW__INTAKE__PARTNER_RATE_LIMIT_PER_SECOND=0
export AUTORENEW__INTAKE__LISTEN="127.0.0.1:$(free_port)"
export AUTORENEW__WORKER__CONCURRENCY=$CONCURRENCY
export AUTORENEW__STRIPE__MAX_REQUESTS_PER_SECOND=1000000
export RUST_LOG=warn
INTAKE="http://$AUTORENEW__INTAKE__LISTEN"

port=$(free_port)
"$BIN" stripe-sim --listen "127.0.0.1:$port" --latency 200 >"$OUT/sim.log" 2>&1 & pids+=($!)
SIM="http://127.0.0.1:$port"; wait_http "$SIM/_sim/stats"
export AUTORENEW__STRIPE__SECRET_KEY=sk_test_rolling AUTORENEW__STRIPE__API_BASE="$SIM"
export AUTORENEW__STRIPE__HTTP2_PRIOR_KNOWLEDGE=true
"$BIN" intake >"$OUT/intake.log" 2>&1 & pids+=($!)
wait_http "$INTAKE/readyz"

# worker N → WORKER[N] is its pid; its log is $OUT/worker-N.log
declare -A WORKER
generation=0
start_worker() { # slot
  local port; port=$(free_port); generation=$((generation + 1))
  AUTORENEW__WORKER__LISTEN="127.0.0.1:$port" "$BIN" worker \
    >/dev/null 2>"$OUT/worker-$generation.log" & pids+=($!)
  WORKER[$1]=$!
  wait_http "http://127.0.0.1:$port/readyz"
}
for slot in 1 2 3; do start_worker "$slot"; done

"$BIN" loadgen --quiet --json --target "$INTAKE" --rate "$RATE" --duration "${SECONDS_OF_LOAD}s" \
  --record "$OUT/record.jsonl" --result-timeout 120s >"$OUT/report.json" 2>"$OUT/loadgen.log" &
LOADGEN=$!

# Restart the three in turn at a quarter, half and three quarters of the load (counted from its
# start, so slow drains do not push the last restart past its end): SIGTERM, wait for the exit,
# start a new one.
load_start=$(date +%s.%N)
drains=()
for slot in 1 2 3; do
  python3 -c "import time; time.sleep(max(0, $load_start + $SECONDS_OF_LOAD * $slot / 4 - time.time()))"
  pid=${WORKER[$slot]}
  began=$(date +%s.%N)
  kill -TERM "$pid"
  status=0; wait "$pid" || status=$?
  ended=$(date +%s.%N)
  drains+=("$(python3 -c "print(f'{$ended - $began:.1f}')") s (exit $status)")
  start_worker "$slot"
done

wait "$LOADGEN" || true
# Let the last jobs settle before counting what the simulator did.
sleep 2
curl -fs "$SIM/_sim/stats" >"$OUT/stats.json"
queued=$(rabbitmqctl -q list_queues --no-table-headers name messages </dev/null 2>/dev/null |
  awk -v run="$RUN" '$1 ~ "^"run"\\.(jobs|delay|retry)" {n += $2} END {print n + 0}')
handed_back=$(cat "$OUT"/worker-*.log | grep -c "handing it back\|not connected\|ack/nack" || true)

python3 - "$OUT/report.json" "$OUT/stats.json" "$queued" "$handed_back" "$RATE" \
  "$SECONDS_OF_LOAD" "${drains[*]}" <<'PY'
import json, sys
report, stats = json.load(open(sys.argv[1])), json.load(open(sys.argv[2]))
queued, handed_back, rate, seconds, drains = int(sys.argv[3]), int(sys.argv[4]), sys.argv[5], sys.argv[6], sys.argv[7]
results = report["results"] or {}
jobs = results.get("followed", 0)
lost = results.get("no_result", 0)
twice = sum(1 for n in stats["subscriptions_by_pay_id"].values() if n > 1)
creates = sum(stats["requests"].get("POST /v1/subscriptions", {}).values())
outcomes = results.get("outcomes", {})
different = results.get("duplicate_events", {}).get("different_id", 0)
same = results.get("duplicate_events", {}).get("same_id", 0)
refused = {k: v for k, v in report["answers"].items() if not k.startswith("200")}
p99 = report["latency_ms"]["accepted"]["p99"] if report["latency_ms"].get("accepted") else None
checks = [
    ("requests accepted (jobs)", jobs, jobs > 0),
    ("lost (accepted, no result event)", lost, lost == 0),
    ("jobs with a final result", f"{results.get('received', 0)} of {jobs} {dict(outcomes)}", results.get("received", 0) == jobs),
    ("payIds with two subscriptions", twice, twice == 0),
    ("simulator subscription creates", f"{creates} for {jobs} jobs", creates == jobs),
    ("second outcome for a payId", different, different == 0),
    ("event published twice (same id)", same, same == 0),
    ("jobs handed back by a stopping worker", handed_back, handed_back == 0),
    ("messages left in jobs/retry queues", queued, queued == 0),
]
print(f"Rolling restart: 3 workers, {rate}/s for {seconds} s, simulator at 200 ms a call")
print(f"  drains: {drains}")
print(f"  answers other than 200: {refused or 'none'}; accepted p99 {p99} ms")
print("| check | measured | ok |")
print("|---|---|---|")
failed = False
for name, value, ok in checks:
    failed |= not ok
    print(f"| {name} | {value} | {'yes' if ok else 'NO'} |")
sys.exit(1 if failed else 0)
PY
