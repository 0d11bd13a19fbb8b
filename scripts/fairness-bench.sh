#!/usr/bin/env bash
# Fairness between partners (docs/performance.md, "Fairness between partners"): does one
# partner's burst hold another back, and how do two backlogged partners share Stripe's budget?
# Needs RabbitMQ and Redis on localhost. Each scenario starts its own stack under a private
# prefix: `autorenew stripe-sim` limited to 100 calls/s, 4 `autorenew worker` processes with a
# budget of 100 calls/s, one `autorenew intake`, partners A and B from a temporary configuration;
# `autorenew loadgen --pace …` drives them and reads the workers' /metrics.
#
#   scripts/fairness-bench.sh            # solo, burst and both (about 6 minutes)
#   scripts/fairness-bench.sh solo       # B alone at 2 jobs/s for 60 s
#   scripts/fairness-bench.sh burst      # A: 3000 jobs at once; B: 2 jobs/s until A has all its results
#   scripts/fairness-bench.sh alone      # A: 3000 jobs at once, nobody else: A's use of the budget
#   scripts/fairness-bench.sh both       # A and B: 1500 jobs at once each; the split of Stripe calls
#   scripts/fairness-bench.sh many       # B…J at 1 job/s each for 60 s; then the same while A sends
#                                        # 3000 jobs at once: each of the nine against its solo p99
#   scripts/fairness-bench.sh ci         # the debug build, a short slice of each (under 2 minutes)
#   scripts/bench.sh fairness [mode]     # the same
#
# Environment: PROFILE (release; ci: debug), B_RATE (2), MANY_RATE (1), SOLO_SECS (60), BURST (3000),
# BOTH (1500), WORKERS (4), WORKER_CONCURRENCY (the configuration's), BUDGET (100),
# WEIGHT_A / WEIGHT_B (written to each partner's `weight` when set; the service must know the
# key), BIN (a binary to bench instead of building this tree's), SCENARIO_TIMEOUT (900 s a scenario), BUILD_NICE (0: the build's niceness), OUT (the
# directory for logs, reports and the summary; default target/fairness-<run>).
set -euo pipefail
cd "$(dirname "$0")/.."

mode="${1:-all}"
case "$mode" in
  all | solo | burst | alone | both | many) PROFILE="${PROFILE:-release}" ;;
  ci)
    PROFILE="${PROFILE:-debug}"
    SOLO_SECS="${SOLO_SECS:-10}" BURST="${BURST:-300}" BOTH="${BOTH:-150}"
    SCENARIO_TIMEOUT="${SCENARIO_TIMEOUT:-100}"
    ;;
  *) echo "usage: $0 [all|solo|burst|alone|both|many|ci]" >&2; exit 2 ;;
esac
B_RATE="${B_RATE:-2}" MANY_RATE="${MANY_RATE:-1}" SOLO_SECS="${SOLO_SECS:-60}" BURST="${BURST:-3000}" BOTH="${BOTH:-1500}"
WORKERS="${WORKERS:-4}" BUDGET="${BUDGET:-100}" SCENARIO_TIMEOUT="${SCENARIO_TIMEOUT:-900}"

if [ -n "${BIN:-}" ]; then
  : # a binary given: another build to compare against (an earlier commit's, say)
elif [ "$PROFILE" = release ]; then
  nice -n "${BUILD_NICE:-0}" cargo build --release --quiet
else
  nice -n "${BUILD_NICE:-0}" cargo build --quiet
fi
BIN="${BIN:-$PWD/target/$PROFILE/autorenew}"
RUN=fair$$
OUT="${OUT:-$PWD/target/fairness-$RUN}"
mkdir -p "$OUT"
pids=()

cleanup() {
  for pid in "${pids[@]:-}"; do [ -n "$pid" ] && kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  # Every queue, exchange and key of this run's prefixes, and nothing else on the shared
  # broker and Redis. (rabbitmqctl reads stdin: without </dev/null the first delete eats the
  # rest of the list.)
  rabbitmqctl -q list_queues --no-table-headers name </dev/null 2>/dev/null | grep "^$RUN-" |
    while read -r q; do
      rabbitmqctl -q delete_queue "$q" </dev/null >/dev/null 2>&1 || true
    done
  rabbitmqctl -q eval "[rabbit_exchange:delete(element(2, X), false, <<\"bench\">>)
    || X <- rabbit_exchange:list(<<\"/\">>),
       re:run(element(4, element(2, X)), \"^$RUN-\") =/= nomatch], ok." </dev/null >/dev/null 2>&1 || true
  redis-cli --scan --pattern "$RUN-*" 2>/dev/null | xargs -r -n 500 redis-cli del >/dev/null 2>&1 || true
  echo "logs and reports: $OUT" >&2
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_http() { # url
  for _ in $(seq 1 300); do curl -fs "$1" >/dev/null 2>&1 && return 0; sleep 0.1; done
  echo "not ready: $1" >&2; return 1
}

# Partners A to J, and nothing else: the file replaces config.toml (the environment still
# overrides it). `weight` only when asked for (WEIGHT_A, WEIGHT_B, …).
CONFIG="$OUT/config.toml"
NINE=(B C D E F G H I J)
{
  for p in A "${NINE[@]}"; do
    echo "[[partners]]"
    echo "code = \"$p\""
    echo "secret = \"fairness-bench-secret-$p\""
    w="WEIGHT_$p"
    if [ -n "${!w:-}" ]; then echo "weight = ${!w}"; fi
    echo
  done
} > "$CONFIG"

# Starts the stack of one scenario under its own prefix; sets INTAKE, SIM and METRICS.
start_stack() { # scenario
  local dir="$OUT/$1" port
  mkdir -p "$dir"
  export AUTORENEW__AMQP__PREFIX="$RUN-$1" AUTORENEW__REDIS__KEY_PREFIX="$RUN-$1"
  export AUTORENEW__INTAKE__PARTNER_RATE_LIMIT_PER_SECOND=0
  export AUTORENEW__INTAKE__LISTEN="127.0.0.1:$(free_port)"
  export AUTORENEW__STRIPE__MAX_REQUESTS_PER_SECOND="$BUDGET"
  export RUST_LOG="${RUST_LOG:-info}"
  if [ -n "${WORKER_CONCURRENCY:-}" ]; then export AUTORENEW__WORKER__CONCURRENCY="$WORKER_CONCURRENCY"; fi
  INTAKE="http://$AUTORENEW__INTAKE__LISTEN"
  port=$(free_port)
  "$BIN" --config "$CONFIG" stripe-sim --listen "127.0.0.1:$port" \
    --rate-limit "$BUDGET" --rate-limit-burst "$BUDGET" >"$dir/stripe-sim.log" 2>&1 &
  pids+=($!)
  SIM="http://127.0.0.1:$port"; wait_http "$SIM/_sim/stats"
  export AUTORENEW__STRIPE__SECRET_KEY=sk_test_fairness AUTORENEW__STRIPE__API_BASE="$SIM"
  # The simulator speaks HTTP/2 without negotiation, as `autorenew run` configures it.
  export AUTORENEW__STRIPE__HTTP2_PRIOR_KNOWLEDGE=true
  "$BIN" --config "$CONFIG" intake >"$dir/intake.log" 2>&1 & pids+=($!)
  wait_http "$INTAKE/readyz"
  METRICS=""
  local workers=()
  for n in $(seq 1 "$WORKERS"); do
    port=$(free_port)
    AUTORENEW__WORKER__LISTEN="127.0.0.1:$port" "$BIN" --config "$CONFIG" worker \
      >"$dir/worker-$n.log" 2>&1 & pids+=($!)
    workers+=("http://127.0.0.1:$port")
  done
  # Started together, then each waited for: every worker consumes before the first request.
  for url in "${workers[@]}"; do
    wait_http "$url/readyz"
    METRICS="${METRICS:+$METRICS,}$url"
  done
}

# Lua script runs Redis has done (EVAL and EVALSHA), from INFO commandstats.
redis_scripts() {
  redis-cli info commandstats 2>/dev/null | tr -d '\r' |
    awk -F'[=,:]' '/^cmdstat_eval(sha)?:/ { n += $3 } END { print n + 0 }'
}

stop_stack() {
  for pid in "${pids[@]:-}"; do [ -n "$pid" ] && kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  pids=()
}

# Runs loadgen for one scenario (bounded by SCENARIO_TIMEOUT: SIGINT first, so it prints its
# partial figures), keeps its JSON report and the simulator's counts, prints the figures.
scenario() { # name, loadgen flags…
  local name="$1" status=0; shift
  echo "== $name: $*" >&2
  start_stack "$name"
  local began; began=$(date +%s.%N)
  # Redis's scripts run while the scenario does: what the budget's turns cost Redis (the
  # shared Redis: other users count too, so this is an upper bound).
  local scripts_before; scripts_before=$(redis_scripts)
  timeout --signal=INT --kill-after=30 "$SCENARIO_TIMEOUT" \
    "$BIN" --config "$CONFIG" loadgen --quiet --json --target "$INTAKE" \
      --worker-metrics "$METRICS" --result-timeout 600s "$@" \
      >"$OUT/$name.json" 2>"$OUT/$name/loadgen.log" || status=$?
  curl -fs "$SIM/_sim/stats" >"$OUT/$name/stripe-sim-stats.json" || echo '{}' >"$OUT/$name/stripe-sim-stats.json"
  echo $(( $(redis_scripts) - scripts_before )) >"$OUT/$name/redis-scripts"
  stop_stack
  if [ "$status" != 0 ]; then
    echo "!! $name: loadgen exited $status (124/130: timed out after ${SCENARIO_TIMEOUT}s); see $OUT/$name/loadgen.log" >&2
    FAILED=1
  fi
  python3 - "$name" "$OUT/$name.json" "$OUT/$name/stripe-sim-stats.json" "$began" "$OUT/$name/redis-scripts" <<'PY' | tee -a "$OUT/summary.md"
import json, sys
name, report_path, stats_path = sys.argv[1:4]
scripts = int(open(sys.argv[5]).read().strip() or 0)
try:
    r = json.load(open(report_path))
except Exception as e:
    print(f"| {name} | no report ({e}) |"); sys.exit(0)
stats = json.load(open(stats_path))
ms = lambda p, k: f"{p[k]/1000:.2f}" if p else "-"
for p in r["partners"]:
    pace = f"burst {p['count']}" if p["pace"] == "burst" else f"{p['rate']}/s" + (f" × {p['count']}" if p.get("count") else "")
    res = p["result_ms"]
    calls = "n/a" if p["stripe_calls"] is None else str(p["stripe_calls"])
    print(f"| {name} | {p['partner']} | {pace} | {p['sent']} | {p['accepted']} | {p['succeeded']} | {p['failed']} | {p['no_result']} "
          f"| {ms(res,'p50')} | {ms(res,'p90')} | {ms(res,'p99')} | {ms(res,'max')} | {calls} |")
calls = stats.get("requests_total", 0)
faults = stats.get("faults", {})
limited = faults.get("rate_limited", 0) + faults.get("spurious_429", 0)
elapsed = r.get("elapsed_s") or 0
rate = f"{calls/elapsed:.1f} calls/s" if elapsed else "-"
share = f"{limited/calls:.2%}" if calls else "-"
redis = f"{scripts/elapsed:.0f}/s" if elapsed else "-"
line = f"| {name} | all | simulator: {calls} calls in {elapsed:.1f} s = {rate}; 429s {limited} ({share}); Redis scripts {redis} |"
w = r.get("shared_window")
if w:
    tot = sum(w["results"].values()) or 1
    split = ", ".join(f"{k} {v} ({v/tot:.0%})" for k, v in sorted(w["results"].items()))
    sc = w.get("stripe_calls")
    sc = ", ".join(f"{k} {v}" for k, v in sorted(sc.items())) if sc else "n/a"
    line += f" until {w['ended_by']} was done ({w['seconds']:.1f} s): results {split}; Stripe calls {sc} |"
print(line)
if r.get("failures"):
    print(f"| {name} | FAILED | {'; '.join(r['failures'])} |")
PY
}

FAILED=0
{
  echo "Fairness bench $(date -u '+%Y-%m-%d %H:%M UTC'), $(git rev-parse --short HEAD), $PROFILE build;"
  echo "load average before: $(cut -d' ' -f1-3 /proc/loadavg); $WORKERS workers, budget $BUDGET/s, simulator limited to $BUDGET/s."
  echo
  echo "| scenario | partner | pace | sent | accepted | succeeded | failed | no result | result p50 s | p90 s | p99 s | max s | Stripe calls |"
  echo "|---|---|---|---|---|---|---|---|---|---|---|---|---|"
} | tee "$OUT/summary.md"

if [ "$mode" = all ] || [ "$mode" = solo ] || [ "$mode" = ci ]; then
  scenario solo --pace "B:$B_RATE" --duration "${SOLO_SECS}s"
fi
if [ "$mode" = all ] || [ "$mode" = burst ] || [ "$mode" = ci ]; then
  # B's rate has no count: it sends until A has all its results.
  scenario burst --pace "A:burst:$BURST" --pace "B:$B_RATE"
fi
if [ "$mode" = all ] || [ "$mode" = alone ]; then
  scenario alone --pace "A:burst:$BURST"
fi
if [ "$mode" = all ] || [ "$mode" = both ] || [ "$mode" = ci ]; then
  scenario both --pace "A:burst:$BOTH" --pace "B:burst:$BOTH"
fi
if [ "$mode" = all ] || [ "$mode" = many ] || [ "$mode" = ci ]; then
  paces=()
  for p in "${NINE[@]}"; do paces+=(--pace "$p:$MANY_RATE"); done
  scenario many-solo "${paces[@]}" --duration "${SOLO_SECS}s"
  scenario many --pace "A:burst:$BURST" "${paces[@]}"
fi

# Each partner's p99 behind the flood against its p99 alone, the figure the targets name.
python3 - "$OUT" <<'PY' | tee -a "$OUT/summary.md"
import json, os, sys
out = sys.argv[1]
def p99s(name):
    try:
        report = json.load(open(os.path.join(out, name + ".json")))
    except Exception:
        return {}
    return {p["partner"]: p["result_ms"]["p99"] / 1000 for p in report["partners"] if p["result_ms"]}
for flood, solo in (("burst", "solo"), ("many", "many-solo")):
    behind, alone = p99s(flood), p99s(solo)
    pairs = [(p, behind[p] - alone[p]) for p in alone if p in behind]
    if pairs:
        worst = max(pairs, key=lambda pair: pair[1])
        each = ", ".join(f"{p} {d:+.2f}" for p, d in sorted(pairs))
        print(f"\n{flood} vs {solo}: p99 over solo, s: {each}; worst {worst[0]} {worst[1]:+.2f} s")
PY
echo "load average after: $(cut -d' ' -f1-3 /proc/loadavg)" | tee -a "$OUT/summary.md"
exit "$FAILED"
