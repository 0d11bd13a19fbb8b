#!/usr/bin/env bash
# The partner push's figures (docs/performance.md, "The partner push"): `autorenew notifier`
# delivering to `autorenew receiver`, fed by `autorenew loadgen --push` (result events published
# straight to the results exchange, as the worker publishes them). Three runs:
#
#   latency     one partner at $LATENCY_RATE/s (500): p50/p99 from the event's `time` to the 2xx
#   throughput  $THROUGHPUT_PARTNERS partners (4) at $THROUGHPUT_RATE/s each (600), against the
#               raw rate of the notifier's own HTTP client posting the same bodies (--baseline)
#   isolation   10 partners at 50/s each, all healthy; then again with P09's endpoint taking
#               connections and never answering and P10's answering 503: the other eight's p99
#               and throughput against the healthy run, when each breaker opened, and, once
#               both endpoints recover, that every event of theirs is delivered
#   recovery    $RECOVER_EVENTS events (10,000) fail at P01 (503, a one-retry schedule), then
#               P01 answers again and one /recoverNotifications resends the window: how long
#               until all arrived, none twice, none missing
#   crash       P01 at $CRASH_RATE/s (300) while the notifier is killed with SIGKILL twice and
#               restarted: 0 lost, and every repeat carries its event's webhook-id
#
#   scripts/push-bench.sh                    # all three, release build
#   scripts/push-bench.sh latency            # one of them: latency|throughput|isolation|recovery|crash
#   PROFILE=debug DURATION=10 scripts/push-bench.sh isolation
#   BIN=/tmp/autorenew-5032762 scripts/push-bench.sh throughput   # another build, not built here
#
# Needs RabbitMQ and Redis (AUTORENEW__AMQP__URL and AUTORENEW__REDIS__URL override the local
# ones); everything it declares or writes is under a run prefix and removed at the end.
set -euo pipefail
cd "$(dirname "$0")/.."

WHAT="${1:-all}"
PROFILE="${PROFILE:-release}"
DURATION="${DURATION:-30}"
LATENCY_RATE="${LATENCY_RATE:-500}"
THROUGHPUT_PARTNERS="${THROUGHPUT_PARTNERS:-4}"
THROUGHPUT_RATE="${THROUGHPUT_RATE:-600}"
RECOVER_EVENTS="${RECOVER_EVENTS:-10000}"
CRASH_RATE="${CRASH_RATE:-300}"
if [ -z "${BIN:-}" ]; then
  if [ "$PROFILE" = release ]; then cargo build --release --quiet; else cargo build --quiet; fi
fi
BIN="${BIN:-$PWD/target/$PROFILE/autorenew}"
RUN=pushbench$$
dir=$(mktemp -d)

# What the drills share (scripts/lib/drill.sh): the ports, and the tear-down of this run's
# queues, exchanges and keys, and of its scratch folder.
# shellcheck source=lib/drill.sh
source scripts/lib/drill.sh
OUT=$dir
trap drill_cleanup EXIT

receiver_port=$(drill_free_port)
notifier_port=$(drill_free_port)
intake_port=$(drill_free_port)
RECEIVER=http://127.0.0.1:$receiver_port
SECRET="whsec_ZGVtby1wdXNoLXNlY3JldC1vZi1QMDAwODE4LTMyYg=="

# config.toml with partners P01..P10 pushing to the receiver, and a retry schedule short enough
# that the isolation run's failed events come back within it (the default's second retry is
# five minutes on).
config() {
  sed -e 's/^retry_schedule_secs = .*/retry_schedule_secs = [1, 2, 5, 10, 20, 30, 60, 120, 300]/' \
      -e 's/^breaker_cooldown_secs = .*/breaker_cooldown_secs = 10/' config.toml
  for n in 01 02 03 04 05 06 07 08 09 10; do
    cat <<EOF

[[partners]]
code = "P$n"
secret = "s3cr3t-P$n"
[partners.push]
url = "$RECEIVER/P$n"
secrets = ["$SECRET"]
max_in_flight = 16
EOF
  done
}
config > "$dir/config.toml"
# The recovery run's notifier: one quick retry, and a breaker that never opens, so each event
# fails within a second and is kept for recovery.
config | sed -e 's/^retry_schedule_secs = .*/retry_schedule_secs = [0.2]/' \
             -e 's/^breaker_failures = .*/breaker_failures = 100000000/' > "$dir/recovery.toml"

export AUTORENEW__AMQP__PREFIX=$RUN AUTORENEW__REDIS__KEY_PREFIX=$RUN
export AUTORENEW__PUSH__LISTEN=127.0.0.1:$notifier_port AUTORENEW__LOG__FILTER=warn
export AUTORENEW__INTAKE__LISTEN=127.0.0.1:$intake_port
ar() { "$BIN" --config "$dir/config.toml" "$@"; }

# The binary itself in the background, not through `ar`: the pid kept must be the process's,
# or the cleanup kills only a subshell and leaves the process running.
"$BIN" --config "$dir/config.toml" receiver --quiet --listen "127.0.0.1:$receiver_port" --secret "$SECRET" >"$dir/receiver.log" 2>&1 &
pids+=($!)
notifier_pid=
# Starts a notifier with the configuration $1 (default: the run's) and waits until it is ready.
start_notifier() {
  "$BIN" --config "${1:-$dir/config.toml}" notifier >>"$dir/notifier.log" 2>&1 &
  notifier_pid=$!
  pids+=($notifier_pid)
  for _ in $(seq 1 100); do
    curl -sf "http://127.0.0.1:$notifier_port/readyz" >/dev/null && break
    sleep 0.2
  done
}
stop_notifier() { kill "$notifier_pid" 2>/dev/null || true; wait "$notifier_pid" 2>/dev/null || true; }
start_notifier
for _ in $(seq 1 100); do
  curl -sf "$RECEIVER/_receiver/stats" >/dev/null && break
  sleep 0.2
done

behave() { curl -sf -X PUT "$RECEIVER/_receiver/behaviour/$1" -H 'content-type: application/json' -d "$2" >/dev/null; }
loadgen() { ar loadgen --push --quiet --receiver "$RECEIVER" "$@"; }
# A JSON report's field, per partner or total.
field() { python3 -c "import json,sys; r=json.load(open(sys.argv[1])); print(eval(sys.argv[2]))" "$@"; }

latency() {
  echo "== latency: P01 at $LATENCY_RATE/s for ${DURATION}s, a receiver answering at once"
  loadgen --push-partners P01 --rate "$LATENCY_RATE" --duration "${DURATION}s" --result-timeout 600s
}

throughput() {
  local partners
  partners=$(seq -f 'P%02g' 1 "$THROUGHPUT_PARTNERS" | paste -sd,)
  echo "== throughput: $partners at $THROUGHPUT_RATE/s each for ${DURATION}s"
  loadgen --push-partners "$partners" --rate "$THROUGHPUT_RATE" --duration "${DURATION}s" --result-timeout 600s --json >"$dir/push.json"
  loadgen --push-partners "$partners" --rate "$THROUGHPUT_RATE" --duration "${DURATION}s" --result-timeout 600s --json --baseline >"$dir/raw.json"
  local push raw
  push=$(field "$dir/push.json" 'r["deliveries_per_second"]')
  raw=$(field "$dir/raw.json" 'r["deliveries_per_second"]')
  python3 - "$push" "$raw" "$dir/push.json" "$dir/raw.json" <<'EOF'
import json, sys
push, raw = float(sys.argv[1]), float(sys.argv[2])
p, r = json.load(open(sys.argv[3])), json.load(open(sys.argv[4]))
print(f"through the notifier: {push:.0f} deliveries/s ({p['delivered']} of {p['published']}), "
      f"p99 {max(x['latency_p99_ms'] or 0 for x in p['partners']):.1f} ms")
print(f"raw client:           {raw:.0f} posts/s ({r['delivered']} of {r['published']}), "
      f"p99 {max(x['latency_p99_ms'] or 0 for x in r['partners']):.1f} ms")
print(f"ratio: {push / raw:.2f}")
EOF
}

# The second at which each of P09 and P10's breakers first reads open (1), from the notifier's
# metrics, polled every 0.5 s for the length of the run.
watch_breakers() {
  local start=$1 out=$2
  : >"$out"
  while kill -0 "$3" 2>/dev/null; do
    curl -s "http://127.0.0.1:$notifier_port/metrics" |
      awk -v t="$(($(date +%s%N) / 1000000 - start))" '/^autorenew_push_breaker_state\{/ && $2 == 1 { match($0, /partner="[^"]+"/); print substr($0, RSTART + 9, RLENGTH - 10), t }' >>"$out"
    sleep 0.5
  done
}

isolation() {
  local all
  all=$(seq -f 'P%02g' 1 10 | paste -sd,)
  echo "== isolation, healthy: 10 partners at 50/s each for ${DURATION}s"
  loadgen --push-partners "$all" --rate 50 --duration "${DURATION}s" --result-timeout 600s --json >"$dir/healthy.json"
  echo "== isolation, P09 never answers and P10 answers 503"
  behave P09 '{"never": true}'
  behave P10 '{"status": 503}'
  local start
  start=$(($(date +%s%N) / 1000000))
  # The failing partners' events are followed after recovery, below: this run waits only for
  # the other eight.
  loadgen --push-partners "$all" --rate 50 --duration "${DURATION}s" --result-timeout 60s --json >"$dir/failing.json" &
  local lg=$!
  watch_breakers "$start" "$dir/breakers.txt" "$lg" &
  wait "$lg" || true
  echo "== recovery: both endpoints answer 200 again"
  behave P09 '{}'
  behave P10 '{}'
  local recovered_at=$(($(date +%s%N) / 1000000))
  local want
  want=$(field "$dir/failing.json" 'sum(p["published"] for p in r["partners"] if p["partner"] in ("P09","P10"))')
  local got=0
  for _ in $(seq 1 1200); do
    got=$(curl -s "$RECEIVER/_receiver/stats" | python3 -c 'import json,sys; s=json.load(sys.stdin); print(sum(s.get(p, {}).get("delivered", 0) for p in ("P09","P10")))')
    [ "$got" -ge "$want" ] && break
    sleep 0.5
  done
  local took=$((($(date +%s%N) / 1000000 - recovered_at) / 1000))
  python3 - "$dir/healthy.json" "$dir/failing.json" "$dir/breakers.txt" "$want" "$got" "$took" <<'EOF'
import json, sys
healthy, failing = json.load(open(sys.argv[1])), json.load(open(sys.argv[2]))
want, got, took = int(sys.argv[4]), int(sys.argv[5]), sys.argv[6]
by = lambda r: {p["partner"]: p for p in r["partners"]}
h, f = by(healthy), by(failing)
print("partner   healthy p99   with two failing p99   delta ms   delivered (healthy / failing)")
worst_delta, worst_share = 0.0, 1.0
for code in sorted(h):
    if code in ("P09", "P10"):
        continue
    a, b = h[code]["latency_p99_ms"] or 0, f[code]["latency_p99_ms"] or 0
    share = f[code]["delivered"] / max(h[code]["delivered"], 1)
    worst_delta, worst_share = max(worst_delta, b - a), min(worst_share, share)
    print(f"{code}       {a:9.1f}   {b:20.1f}   {b - a:8.1f}   {h[code]['delivered']} / {f[code]['delivered']}")
print(f"the eight healthy partners: worst p99 delta {worst_delta:.1f} ms, worst throughput share {worst_share:.3f}")
opened = {}
for line in open(sys.argv[3]):
    partner, at = line.split()
    opened.setdefault(partner, int(at))
for code in ("P09", "P10"):
    at = opened.get(code)
    print(f"{code} breaker opened {'after %.1f s' % (at / 1000) if at is not None else 'never (within the run)'}")
print(f"after recovery: {got} of {want} events of P09 and P10 delivered, {want - got} lost, in {took} s")
EOF
}

now_rfc3339() { date -u +%Y-%m-%dT%H:%M:%S.%3NZ; }
ms_now() { echo $(($(date +%s%N) / 1000000)); }
# A partner's count from the receiver: delivered (distinct ids answered 2xx), answered_2xx, …
received() { curl -s "$RECEIVER/_receiver/stats" | python3 -c "import json,sys; print(json.load(sys.stdin).get('$1', {}).get('$2', 0))"; }
# A notifier gauge or counter for one partner.
push_metric() { curl -s "http://127.0.0.1:$notifier_port/metrics" | awk -v m="$1" -v p="partner=\"$2\"" 'index($0, m "{") == 1 && index($0, p) { n += $2 } END { print n + 0 }'; }

recovery() {
  echo "== recovery: $RECOVER_EVENTS events fail at P01 (503), then one /recoverNotifications"
  stop_notifier
  start_notifier "$dir/recovery.toml"
  "$BIN" --config "$dir/config.toml" intake >"$dir/intake.log" 2>&1 &
  pids+=($!)
  for _ in $(seq 1 100); do curl -sf "http://127.0.0.1:$intake_port/readyz" >/dev/null && break; sleep 0.2; done
  behave P01 '{"status": 503}'
  local since
  since=$(now_rfc3339)
  loadgen --push-partners P01 --rate 1000 --requests "$RECOVER_EVENTS" --result-timeout 1s --json >/dev/null || true
  local failed=0
  for _ in $(seq 1 1200); do
    failed=$(push_metric autorenew_push_failed P01)
    [ "$failed" -ge "$RECOVER_EVENTS" ] && break
    sleep 0.5
  done
  echo "failed and kept for recovery: $failed"
  behave P01 '{}'
  curl -sf -X DELETE "$RECEIVER/_receiver/stats" >/dev/null
  local body answer started took got answered
  body=$(printf '{"partnerCode":"P01","since":"%s","tradeType":"recoverNotifications","version":"3.0"}' "$since" |
    AUTORENEW_SIGN_SECRET=s3cr3t-P01 ar sign --fill)
  started=$(ms_now)
  answer=$(curl -s -X POST "http://127.0.0.1:$intake_port/recoverNotifications" -H 'content-type: application/json' -d "$body")
  echo "recoverNotifications: $answer"
  got=0
  for _ in $(seq 1 2400); do
    got=$(received P01 delivered)
    [ "$got" -ge "$RECOVER_EVENTS" ] && break
    sleep 0.25
  done
  took=$(($(ms_now) - started))
  sleep 2
  answered=$(received P01 answered_2xx)
  echo "recovered: $got of $RECOVER_EVENTS delivered in $((took / 1000)).$(((took % 1000) / 100)) s, $((answered - got)) twice, $((RECOVER_EVENTS - got)) missing"
  stop_notifier
  start_notifier
}

crash() {
  echo "== crash: P01 at $CRASH_RATE/s for ${DURATION}s, the notifier SIGKILLed twice"
  loadgen --push-partners P01 --rate "$CRASH_RATE" --duration "${DURATION}s" --result-timeout 120s --json >"$dir/crash.json" &
  local lg=$!
  for at in 1 2; do
    sleep $((DURATION / 3))
    kill -9 "$notifier_pid" 2>/dev/null || true
    wait "$notifier_pid" 2>/dev/null || true
    echo "notifier killed (SIGKILL) at about $((at * DURATION / 3)) s; restarting"
    start_notifier
  done
  wait "$lg" || true
  python3 - "$dir/crash.json" <<'EOF'
import json, sys
r = json.load(open(sys.argv[1]))
p = r["partners"][0]
print(f"published {p['published']}, delivered {p['delivered']}, lost {p['published'] - p['delivered']}, "
      f"repeats {p['repeats']} (each under its event's webhook-id: the receiver counts distinct ids)")
EOF
}

case "$WHAT" in
  latency) latency ;;
  throughput) throughput ;;
  isolation) isolation ;;
  recovery) recovery ;;
  crash) crash ;;
  all) latency; throughput; isolation; recovery; crash ;;
  *) echo "usage: $0 [latency|throughput|isolation|recovery|crash|all]" >&2; exit 2 ;;
esac
