#!/usr/bin/env bash
# The performance figures of docs/performance.md, all in one run on this machine, each as a
# ratio against a baseline measured in the same run. Needs RabbitMQ and Redis on localhost (as
# .ci/run leaves them). Writes the table to stdout and to bench-results.md; a CPU profile of the
# worker (when `perf` works here) to bench-profile.txt.
#
#   scripts/bench.sh            # all figures (about 7 minutes)
#   scripts/bench.sh intake     # one of: intake e2e budget latency calls (= calls-count + calls-rate)
#                               #   webhooks renewals
#   PROFILE=debug scripts/bench.sh calls   # the debug build (the Stripe-bound figures hold in it)
#   scripts/bench.sh fairness [solo|burst|both|ci]   # partners A and B at once: scripts/fairness-bench.sh
set -euo pipefail
cd "$(dirname "$0")/.."

only="${1:-all}"
if [ "$only" = fairness ]; then exec scripts/fairness-bench.sh "${@:2}"; fi
PROFILE="${PROFILE:-release}"
if [ "$PROFILE" = release ]; then cargo build --release --quiet; else cargo build --quiet; fi
BIN=$PWD/target/$PROFILE/autorenew
RUN=bench$$
pids=()
results=()

cleanup() {
  for pid in "${pids[@]:-}"; do [ -n "$pid" ] && kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  # Every queue and key of this run's prefixes.
  # (rabbitmqctl reads stdin: without </dev/null the first delete ate the rest of the list,
  # and every run left its queues, full of jobs, on the shared broker.)
  rabbitmqctl -q list_queues --no-table-headers name </dev/null 2>/dev/null | grep "^$RUN" |
    while read -r q; do
      rabbitmqctl -q delete_queue "$q" </dev/null >/dev/null 2>&1 || true
    done
  # Exchanges have no rabbitmqctl command of their own.
  rabbitmqctl -q eval "[rabbit_exchange:delete(element(2, X), false, <<\"bench\">>)
    || X <- rabbit_exchange:list(<<\"/\">>),
       re:run(element(4, element(2, X)), \"^$RUN\") =/= nomatch], ok." </dev/null >/dev/null 2>&1 || true
  redis-cli --scan --pattern "$RUN*" 2>/dev/null | xargs -r -n 500 redis-cli del >/dev/null 2>&1 || true
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_http() { # url
  for _ in $(seq 1 100); do curl -fs "$1" >/dev/null 2>&1 && return 0; sleep 0.1; done
  echo "not ready: $1" >&2; return 1
}
json() { python3 -c "import json,sys; r=json.load(open('$1')); print($2)"; }
row() { results+=("$1"); printf '%s\n' "$1"; }

# A fresh deployment prefix per scenario, so no scenario sees another's queues or keys.
scenario_env() { # name
  export AUTORENEW__AMQP__PREFIX="$RUN-$1" AUTORENEW__REDIS__KEY_PREFIX="$RUN-$1"
  export AUTORENEW__INTAKE__PARTNER_RATE_LIMIT_PER_SECOND=0
  export AUTORENEW__INTAKE__LISTEN="127.0.0.1:$(free_port)"
  export RUST_LOG=warn
  INTAKE="http://$AUTORENEW__INTAKE__LISTEN"
}
start_intake() { "$BIN" intake >/dev/null 2>&1 & pids+=($!); wait_http "$INTAKE/readyz"; }
start_sim() { # flags…
  local port; port=$(free_port)
  "$BIN" stripe-sim --listen "127.0.0.1:$port" "$@" >/dev/null 2>&1 & pids+=($!)
  SIM="http://127.0.0.1:$port"; wait_http "$SIM/_sim/stats"
  export AUTORENEW__STRIPE__SECRET_KEY=sk_test_bench AUTORENEW__STRIPE__API_BASE="$SIM"
  # The simulator speaks HTTP/2 without negotiation, as `autorenew run` configures it.
  export AUTORENEW__STRIPE__HTTP2_PRIOR_KNOWLEDGE=true
}
start_worker() { # concurrency budget → sets WORKER_PID, WORKER_URL
  local port; port=$(free_port)
  AUTORENEW__WORKER__CONCURRENCY="$1" AUTORENEW__STRIPE__MAX_REQUESTS_PER_SECOND="$2" \
    AUTORENEW__WORKER__LISTEN="127.0.0.1:$port" "$BIN" worker >/dev/null 2>&1 & pids+=($!)
  WORKER_PID=$!; WORKER_URL="http://127.0.0.1:$port"; wait_http "$WORKER_URL/readyz"
}
stop_all() { for pid in "${pids[@]:-}"; do [ -n "$pid" ] && kill "$pid" 2>/dev/null || true; done; wait 2>/dev/null || true; pids=(); }
loadgen() { "$BIN" loadgen --quiet --json --target "$INTAKE" "$@"; }

row "| figure | measured | target |"
row "|---|---|---|"

if [ "$only" = all ] || [ "$only" = intake ]; then
  # 1. The intake alone (no worker): accepted requests/s against the raw broker baseline, then
  #    p99 at half that rate, open loop.
  scenario_env intake; start_intake
  loadgen --no-follow --concurrency 64 --requests 3000 >/dev/null   # warm-up
  "$BIN" loadgen --quiet --json --baseline --concurrency 64 --requests 20000 > /tmp/$RUN-base.json
  loadgen --no-follow --concurrency 64 --requests 20000 > /tmp/$RUN-intake.json
  base=$(json /tmp/$RUN-base.json "round(r['throughput']['accepted_per_s'])")
  intake=$(json /tmp/$RUN-intake.json "round(r['throughput']['accepted_per_s'])")
  half=$(( intake / 2 ))
  loadgen --no-follow --rate "$half" --duration 15s > /tmp/$RUN-half.json
  p99=$(json /tmp/$RUN-half.json "r['latency_ms']['accepted']['p99']")
  ratio=$(python3 -c "print(f'{$intake/$base:.0%}')")
  row "| intake accepted/s, closed loop 64 (raw confirm baseline $base/s) | $intake/s = $ratio of baseline | ≥ 60 % |"
  row "| intake p99 at half that rate ($half/s, open loop, 15 s) | ${p99} ms | ≤ 25 ms |"
  stop_all
fi

if [ "$only" = all ] || [ "$only" = e2e ]; then
  # 2. End to end, simulator without latency or limits: jobs/s with 1 and 2 worker processes.
  for workers in 1 2; do
    scenario_env "e2e$workers"; start_sim; start_intake
    for _ in $(seq 1 "$workers"); do start_worker 64 1000000; done
    profile=""
    if [ "$workers" = 1 ] && perf stat -e task-clock true >/dev/null 2>&1; then
      perf record -q -F 199 -g -o /tmp/$RUN-perf.data -p "$WORKER_PID" -- sleep 12 >/dev/null 2>&1 &
      profile=$!
    fi
    loadgen --concurrency 64 --requests 4000 > /tmp/$RUN-e2e$workers.json
    jobs=$(json /tmp/$RUN-e2e$workers.json "round(r['results']['completed_per_s'])")
    p99=$(json /tmp/$RUN-e2e$workers.json "r['results']['completion_ms']['p99']")
    row "| end to end, $workers worker process(es), 4000 jobs | $jobs jobs/s (completion p99 ${p99} ms) | |"
    if [ -n "$profile" ]; then
      wait "$profile" || true
      perf report -q -i /tmp/$RUN-perf.data --no-children --stdio --percent-limit 2 --sort dso,symbol \
        2>/dev/null | grep -v '^$' | head -60 > bench-profile.txt || true
    fi
    stop_all
  done
fi

if [ "$only" = all ] || [ "$only" = budget ]; then
  # 3. Stripe's budget: simulator at live mode's 100/s, workers' budget 100/s, 4 workers (2
  #    processes × 2 concurrent jobs), 3000 jobs: calls/s against the budget, 429s, duplicates.
  scenario_env budget; start_sim --rate-limit live --rate-limit-burst 100; start_intake
  start_worker 2 100; start_worker 2 100
  loadgen --concurrency 32 --requests 3000 --result-timeout 400s > /tmp/$RUN-budget.json
  curl -fs "$SIM/_sim/stats" > /tmp/$RUN-budget-stats.json
  python3 - /tmp/$RUN-budget-stats.json /tmp/$RUN-budget.json > /tmp/$RUN-budget.row <<'PY'
import json, sys
stats, report = json.load(open(sys.argv[1])), json.load(open(sys.argv[2]))
calls = stats["requests_total"]
# From the first request to the last result, as loadgen measures it; a wall clock around loadgen
# also counted its 2 s listen for a second event of any payId.
elapsed = report["results"]["received"] / report["results"]["completed_per_s"]
limited = stats["faults"]["rate_limited"] + stats["faults"]["spurious_429"]
twice = sum(1 for n in stats["subscriptions_by_pay_id"].values() if n > 1)
results = report["results"]["received"]
print(f"| Stripe budget: 3000 jobs, budget 100/s, simulator limited to 100/s | {calls/elapsed:.1f} calls/s = {calls/elapsed/100:.1%} of budget; 429s {limited} of {calls} = {limited/calls:.2%}; payIds twice {twice}; results {results} | ≥ 95 %, ≤ 0.5 %, 0 |")
PY
  row "$(cat /tmp/$RUN-budget.row)"
  stop_all
fi

if [ "$only" = all ] || [ "$only" = latency ]; then
  # 4. Latency-bound: simulator at 300 ms a call, 2000 jobs in flight in one worker process
  #    (8000 jobs, so most of the run is at full flight, not ramping up or draining).
  scenario_env latency; start_sim --latency 300; start_intake
  start_worker "${LATENCY_FLIGHT:-2000}" 1000000
  loadgen --concurrency 256 --requests 8000 > /tmp/$RUN-latency.json
  # From the first request to the last result. 8000 jobs are four full flights of 2000, each
  # slot taking its next job as soon as it is done: ideally four job latencies end to end.
  jobs=$(json /tmp/$RUN-latency.json "r['results']['completed_per_s']")
  metrics=$(curl -fs "$WORKER_URL/metrics")
  job_s=$(printf '%s\n' "$metrics" | python3 -c "
import sys
v={}
for l in sys.stdin:
    if l.startswith('autorenew_worker_job_duration_seconds_sum') or l.startswith('autorenew_worker_job_duration_seconds_count'):
        k,n=l.split()[0],float(l.split()[-1]); v[k.split('_')[-1]]=n
print(v['sum']/v['count'])")
  rss=$(awk '/VmHWM/ {print int($2/1024)}' /proc/"$WORKER_PID"/status)
  python3 - "$jobs" "$job_s" "$rss" > /tmp/$RUN-latency.row <<'PY'
import sys
jobs, job_s, rss = float(sys.argv[1]), float(sys.argv[2]), int(sys.argv[3])
ideal = 2000 / job_s
print(f"| latency-bound: 300 ms a call, 2000 jobs in flight, 8000 jobs | {jobs:.0f} jobs/s = {jobs/ideal:.0%} of 2000 ÷ {job_s:.2f} s ({ideal:.0f}/s); worker peak RSS {rss} MB | ≥ 90 %, ≤ 100 MB |")
PY
  row "$(cat /tmp/$RUN-latency.row)"
  stop_all
fi

if [ "$only" = all ] || [ "$only" = calls ] || [ "$only" = calls-count ]; then
  # 5. Stripe calls per job: the simulator's own request counts. A price is made once
  #    per plan and process start, so each figure is given with and without the price's calls.
  calls_row() { # label target stats.json jobs [extra python]
    python3 - "$@" <<'PY'
import json, sys
label, target, stats, jobs = sys.argv[1], sys.argv[2], json.load(open(sys.argv[3])), int(sys.argv[4])
routes = stats["requests_by_route"]
total = stats["requests_total"]
price = sum(n for r, n in routes.items() if "/v1/prices" in r or "/v1/products" in r)
by = ", ".join(f"{r} {n}" for r, n in sorted(routes.items()) if "/v1/prices" not in r and "/v1/products" not in r)
print(f"| {label} | {total/jobs:.3f} calls/job ({total} calls for {jobs} jobs; without the price's {price}: {(total-price)/jobs:.3f}; {by}) | {target} |")
PY
  }
  # New customers, then 100 returning ones: one worker process, 16 jobs at once, no limits.
  for kind in new returning; do
    scenario_env "calls-$kind"; start_sim; start_intake; start_worker 16 1000000
    flags=(); label="calls per job, 1,000 jobs with new customers"; target="≤ 3.0"
    if [ "$kind" = returning ]; then
      flags=(--customers 100); label="calls per job, 1,000 jobs from 100 customers (the first 100 new)"; target="≤ 2.1"
    fi
    loadgen --concurrency 16 --requests 1000 "${flags[@]}" > /tmp/$RUN-calls-$kind.json
    curl -fs "$SIM/_sim/stats" > /tmp/$RUN-calls-$kind-stats.json
    row "$(calls_row "$label" "$target" /tmp/$RUN-calls-$kind-stats.json \
      "$(json /tmp/$RUN-calls-$kind.json "r['results']['received']")")"
    stop_all
  done

  # A new plan's cold start: 2 worker processes, 32 jobs at once each, 50 jobs sent at once.
  scenario_env calls-price; start_sim; start_intake; start_worker 32 1000000; start_worker 32 1000000
  loadgen --concurrency 50 --requests 50 --plan-id "PLAN_BENCH_$RUN" > /tmp/$RUN-price.json
  curl -fs "$SIM/_sim/stats" > /tmp/$RUN-price-stats.json
  row "$(python3 - /tmp/$RUN-price-stats.json /tmp/$RUN-price.json <<'PY'
import json, sys
stats, report = json.load(open(sys.argv[1])), json.load(open(sys.argv[2]))
posts = stats["requests"].get("POST /v1/prices", {})
answers = ", ".join(f"{s}: {n}" for s, n in sorted(posts.items()))
gets = stats["requests_by_route"].get("GET /v1/prices", 0)
print(f"| price creates, 50 jobs of a new plan at once, 2 worker processes | {sum(posts.values())} `POST /v1/prices` ({answers or 'none'}); {gets} lookups; {report['results']['received']} results | 1 |")
PY
)"
  stop_all

fi

if [ "$only" = all ] || [ "$only" = calls ] || [ "$only" = calls-rate ]; then
  # 6. Jobs/s at Stripe's live budget: as the budget figure (4 workers: 2 processes × 2 jobs at
  #    once, budget 100/s, simulator limited to 100/s), 1,000 jobs of new customers, then 1,000
  #    from 100 customers. From the first request to the last result, as loadgen measures it
  #    (loadgen itself runs 2 s longer: it listens for a second event of any payId).
  for kind in new returning; do
    scenario_env "rate-$kind"; start_sim --rate-limit live --rate-limit-burst 100; start_intake
    start_worker 2 100; start_worker 2 100
    flags=(); label="jobs/s at a 100/s budget, simulator limited to 100/s, 4 workers (2 processes), 1,000 jobs, new customers"; target="≥ 32 jobs/s, ≤ 0.5 % 429s"
    if [ "$kind" = returning ]; then
      flags=(--customers 100); label="the same, 1,000 jobs from 100 customers"; target="≥ 47 jobs/s, ≤ 0.5 % 429s"
    fi
    loadgen --concurrency 32 --requests 1000 --result-timeout 200s "${flags[@]}" > /tmp/$RUN-rate-$kind.json
    curl -fs "$SIM/_sim/stats" > /tmp/$RUN-rate-$kind-stats.json
    row "$(python3 - /tmp/$RUN-rate-$kind-stats.json /tmp/$RUN-rate-$kind.json "$label" "$target" <<'PY'
import json, sys
stats, report = json.load(open(sys.argv[1])), json.load(open(sys.argv[2]))
label, target = sys.argv[3], sys.argv[4]
calls = stats["requests_total"]
limited = stats["faults"]["rate_limited"] + stats["faults"]["spurious_429"]
results = report["results"]["received"]
elapsed = results / report["results"]["completed_per_s"]
print(f"| {label} | {results/elapsed:.1f} jobs/s ({results} results in {elapsed:.1f} s; {calls/elapsed:.1f} calls/s, {calls/results:.2f} calls/job); 429s {limited} of {calls} = {limited/calls:.2%} | {target} |")
PY
)"
    stop_all
  done
fi

if [ "$only" = all ] || [ "$only" = webhooks ]; then
  # 7. Stripe's webhooks at the intake alone: signed events, each of its own id, taken with its
  #    confirm (and its Redis claim and mark), closed loop 64.
  scenario_env webhooks; export AUTORENEW__STRIPE__WEBHOOK_SECRETS=whsec_bench; start_intake
  loadgen --webhooks --concurrency 64 --requests 3000 >/dev/null   # warm-up
  loadgen --webhooks --concurrency 64 --requests 20000 > /tmp/$RUN-webhooks.json
  taken=$(json /tmp/$RUN-webhooks.json "round(r['throughput']['accepted_per_s'])")
  p99=$(json /tmp/$RUN-webhooks.json "r['latency_ms']['accepted']['p99']")
  row "| webhook events taken/s (signed, each confirmed), closed loop 64, 20000 events | $taken/s (p99 ${p99} ms) | |"
  unset AUTORENEW__STRIPE__WEBHOOK_SECRETS
  stop_all
fi

if [ "$only" = all ] || [ "$only" = renewals ]; then
  # 8. Renewals end to end on `autorenew run` (its simulator's webhooks come to its intake):
  #    1000 subscriptions created, the clock moved one period, every renewal announced; the
  #    worker's budget unlimited, then 100 calls/s. The Stripe calls a renewal costs are the
  #    worker's `subscriptions.retrieve` calls (creations make none).
  # No Stripe key: `run` starts its own simulator (an earlier scenario exported one).
  unset AUTORENEW__STRIPE__SECRET_KEY AUTORENEW__STRIPE__API_BASE AUTORENEW__STRIPE__HTTP2_PRIOR_KNOWLEDGE
  for budget in 1000000 100; do
    scenario_env "renew$budget"
    sim_port=$(free_port); worker_port=$(free_port)
    AUTORENEW__STRIPE__MAX_REQUESTS_PER_SECOND=$budget AUTORENEW__WORKER__LISTEN="127.0.0.1:$worker_port" \
      "$BIN" run --sim-listen "127.0.0.1:$sim_port" >/dev/null 2>&1 & pids+=($!)
    wait_http "$INTAKE/readyz"
    loadgen --concurrency 64 --requests 1000 --renewals 1 --sim "http://127.0.0.1:$sim_port" \
      --result-timeout 400s > /tmp/$RUN-renew$budget.json
    retrieves=$(curl -fs "http://127.0.0.1:$worker_port/metrics" |
      awk '/^autorenew_stripe_requests_total/ && /subscriptions.retrieve/ {n += $NF} END {print n + 0}')
    python3 - /tmp/$RUN-renew$budget.json "$budget" "$retrieves" > /tmp/$RUN-renew$budget.row <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))["results"]["renewals"]
budget = "unlimited" if sys.argv[2] == "1000000" else f"{sys.argv[2]}/s"
events = r["renewed_events"] + r["renewal_failed_events"]
print(f"| renewals end to end, {r['subscriptions']} subscriptions, 1 period, budget {budget} | "
      f"{r['renewals_per_s']:.0f} renewals/s ({events} in {r['to_last_event_ms']/1000:.2f} s from the advance, "
      f"of which the advance {r['advance_ms']/1000:.2f} s); missing {r['missing']}; "
      f"Stripe calls a renewal {int(sys.argv[3]) / max(events, 1):.2f} | 0 calls |")
PY
    row "$(cat /tmp/$RUN-renew$budget.row)"
    stop_all
  done
fi

{
  echo "Machine: $(nproc) cores, $(free -g | awk '/Mem:/ {print $2}') GiB; $(date -u +%Y-%m-%d)."
  echo
  printf '%s\n' "${results[@]}"
} > bench-results.md
