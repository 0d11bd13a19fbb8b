#!/usr/bin/env bash
# What one push delivery costs (docs/performance.md, "The partner push"): `autorenew notifier`
# delivers $EVENTS events per partner ($PARTNERS partners, at $RATE/s each, below saturation so
# the figures do not depend on a backlog) to `autorenew receiver`, and this prints, per delivery:
#
#   - the CPU time of the notifier, the receiver, Redis and RabbitMQ (from /proc: a shared Redis
#     or RabbitMQ also counts what others do meanwhile, so read those two on a quiet machine);
#   - the Raft commands RabbitMQ wrote to the partners' quorum queues (their log index): an
#     enqueue per event, a settle per ack frame, the consumers' credit;
#   - with MONITOR=1, the Redis commands under the run's prefix, from MONITOR: round trips (what
#     the notifier sends) and the commands its scripts run inside Redis (MONITOR slows Redis
#     down: read the CPU figures from a run without it);
#   - with PERF=1, `perf record -g` of the notifier (the report is left in $OUT/perf.data);
#   - with CALLGRIND=1, the notifier under valgrind's callgrind, zeroed once ready and dumped
#     once every event arrived: instructions per delivery, deterministic (slow: keep RATE low).
#
#   scripts/push-cost.sh                               # 4 partners × 5,000 events at 250/s
#   MONITOR=1 EVENTS=1000 scripts/push-cost.sh          # the Redis commands per delivery
#   CALLGRIND=1 PARTNERS=1 EVENTS=1000 RATE=40 scripts/push-cost.sh
#   BIN=/path/to/autorenew scripts/push-cost.sh        # another build
#
# Everything it declares or writes is under a run prefix and removed at the end.
set -euo pipefail
cd "$(dirname "$0")/.."

PARTNERS="${PARTNERS:-4}"
EVENTS="${EVENTS:-5000}"
RATE="${RATE:-250}"
BIN="${BIN:-$PWD/target/release/autorenew}"
OUT="${OUT:-$PWD/target/push-cost-$$}"
RUN=pushcost$$
mkdir -p "$OUT"
dir=$(mktemp -d)
monitor_pid=

# What the drills share (scripts/lib/drill.sh): the ports, and the tear-down of this run's
# queues, exchanges and keys. The scratch folder is `dir`; the report folder OUT stays.
# shellcheck source=lib/drill.sh
source scripts/lib/drill.sh
cleanup() {
  [ -n "$monitor_pid" ] && kill "$monitor_pid" 2>/dev/null || true
  OUT="$dir" drill_cleanup
}
trap cleanup EXIT

receiver_port=$(drill_free_port)
notifier_port=$(drill_free_port)
RECEIVER=http://127.0.0.1:$receiver_port
SECRET="whsec_ZGVtby1wdXNoLXNlY3JldC1vZi1QMDAwODE4LTMyYg=="
{
  cat config.toml
  for n in $(seq -f '%02g' 1 "$PARTNERS"); do
    printf '\n[[partners]]\ncode = "P%s"\nsecret = "s3cr3t-P%s"\n[partners.push]\nurl = "%s/P%s"\nsecrets = ["%s"]\nmax_in_flight = 16\n' \
      "$n" "$n" "$RECEIVER" "$n" "$SECRET"
  done
} >"$dir/config.toml"
export AUTORENEW__AMQP__PREFIX=$RUN AUTORENEW__REDIS__KEY_PREFIX=$RUN
export AUTORENEW__PUSH__LISTEN=127.0.0.1:$notifier_port AUTORENEW__LOG__FILTER=warn
ar() { "$BIN" --config "$dir/config.toml" "$@"; }

"$BIN" --config "$dir/config.toml" receiver --quiet --listen "127.0.0.1:$receiver_port" --secret "$SECRET" >"$dir/receiver.log" 2>&1 &
receiver_pid=$!
pids+=("$receiver_pid")
wrap=()
if [ "${CALLGRIND:-0}" = 1 ]; then
  wrap=(valgrind --tool=callgrind --callgrind-out-file="$OUT/callgrind.out" --dump-instr=no)
fi
"${wrap[@]}" "$BIN" --config "$dir/config.toml" notifier >"$OUT/notifier.log" 2>&1 &
notifier_pid=$!
pids+=("$notifier_pid")
for _ in $(seq 1 600); do
  curl -sf "http://127.0.0.1:$notifier_port/readyz" >/dev/null && curl -sf "$RECEIVER/_receiver/stats" >/dev/null && break
  sleep 0.2
done
# The lanes take their consumers once ready; let them settle before counting.
sleep 2

cpu_ms() { awk -v hz="$(getconf CLK_TCK)" '{ print ($14 + $15) * 1000 / hz }' "/proc/$1/stat"; }
redis_pid=$(pgrep -x redis-server | head -1 || true)
beam_pid=$(pgrep -f beam.smp | head -1 || true)
# The Raft log index of the partners' quorum queues: every command RabbitMQ wrote for them
# (an enqueue per publish, a settle per ack frame, a return per nack, the consumers' credit).
raft_index() {
  for n in $(seq -f '%02g' 1 "$PARTNERS"); do
    timeout 60 rabbitmq-queues quorum_status "$RUN.push.P$n" --formatter json </dev/null 2>/dev/null |
      python3 -c 'import json,sys; print(sum(int(r["Log Index"]) for r in json.load(sys.stdin)))' 2>/dev/null || echo 0
  done | paste -sd+ | bc
}
snapshot() {
  for pid in "$notifier_pid" "$receiver_pid" "$redis_pid" "$beam_pid"; do
    if [ -n "$pid" ] && [ -r "/proc/$pid/stat" ]; then cpu_ms "$pid"; else echo 0; fi
  done | paste -sd' '
}

if [ "${MONITOR:-0}" = 1 ]; then
  redis-cli monitor 2>/dev/null | grep --line-buffered "\"$RUN" >"$OUT/monitor.txt" &
  monitor_pid=$!
  sleep 0.5
fi
[ "${CALLGRIND:-0}" = 1 ] && callgrind_control -z "$notifier_pid" >/dev/null
perf_pid=
if [ "${PERF:-0}" = 1 ]; then
  perf record -g --call-graph dwarf,16384 -F 499 -p "$notifier_pid" -o "$OUT/perf.data" >/dev/null 2>&1 &
  perf_pid=$!
fi
raft_before=$(raft_index)
before=$(snapshot)
partners=$(seq -f 'P%02g' 1 "$PARTNERS" | paste -sd,)
ar loadgen --push --quiet --receiver "$RECEIVER" --push-partners "$partners" --rate "$RATE" \
  --requests "$EVENTS" --result-timeout 600s --json >"$OUT/loadgen.json"
# The last acks and attempt logs follow the last 2xx by a moment.
sleep 1
after=$(snapshot)
raft_after=$(raft_index)
[ -n "$perf_pid" ] && { kill -INT "$perf_pid"; wait "$perf_pid" 2>/dev/null || true; }
[ "${CALLGRIND:-0}" = 1 ] && callgrind_control -d "$notifier_pid" >/dev/null
[ -n "$monitor_pid" ] && { sleep 0.5; kill "$monitor_pid" 2>/dev/null || true; }

python3 - "$OUT" "$before" "$after" "$raft_before" "$raft_after" <<'EOF'
import glob, json, os, re, sys
out, before, after = sys.argv[1], sys.argv[2].split(), sys.argv[3].split()
raft = int(sys.argv[5]) - int(sys.argv[4])
r = json.load(open(f"{out}/loadgen.json"))
n = r["delivered"]
print(f"{n} of {r['published']} delivered, {r['deliveries_per_second']:.0f}/s, "
      f"{sum(p['repeats'] for p in r['partners'])} repeats")
for name, b, a in zip(["notifier", "receiver", "redis", "rabbitmq"], before, after):
    print(f"  CPU {name:9} {(float(a) - float(b)) * 1000 / max(n, 1):8.1f} µs/delivery")
print(f"  RabbitMQ Raft commands on the partners' queues: {raft / max(n, 1):.2f}/delivery")
path = f"{out}/monitor.txt"
if os.path.exists(path):
    top, inside = {}, {}
    for line in open(path):
        m = re.match(r'^\S+ \[(\d+) ([^\]]+)\] "([^"]+)"', line)
        if not m:
            continue
        cmd = m.group(3).upper()
        (inside if m.group(2) == "lua" else top)[cmd] = (inside if m.group(2) == "lua" else top).get(cmd, 0) + 1
    fmt = lambda d: ", ".join(f"{k} {v / max(n, 1):.2f}" for k, v in sorted(d.items(), key=lambda kv: -kv[1]))
    print(f"  Redis round trips/delivery {sum(top.values()) / max(n, 1):.2f}: {fmt(top)}")
    print(f"  Redis commands in scripts/delivery {sum(inside.values()) / max(n, 1):.2f}: {fmt(inside)}")
for f in glob.glob(f"{out}/callgrind.out*"):
    for line in open(f):
        if line.startswith("summary:") or line.startswith("totals:"):
            ir = int(line.split()[1])
            print(f"  instructions ({os.path.basename(f)}): {ir:,} = {ir / max(n, 1):,.0f}/delivery")
            break
EOF
echo "(files in $OUT)"
