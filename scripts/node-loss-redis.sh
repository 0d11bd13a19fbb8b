#!/usr/bin/env bash
# Losing a Redis master under load, on a private Redis Cluster of 3 masters and 3
# replicas on this machine (the shared Redis on 6379 is never touched). The intake and two workers
# get the masters in `redis.url`; under a steady open-loop load the master that holds the shared
# Stripe budget key (every job's every call asks it) is killed with kill -9; its replica takes
# over. Afterwards: 0 accepted requests lost, 0 duplicate subscriptions, every job final; the window
# in which partners saw 503, and the p99 of accepted requests after the failover against before.
# Exits 1 when a promise is broken.
#
#   scripts/node-loss-redis.sh     # 60 s at 100 requests/s (NODE_LOSS_SECONDS, NODE_LOSS_RATE)
#
# REDIS_NODE_TIMEOUT_MS (default 2000) is the cluster's `cluster-node-timeout`: how long the
# others wait before they call a master failed. The failover, and so the 503 window, follows it.
set -euo pipefail
cd "$(dirname "$0")/.."

LOAD_SECONDS="${NODE_LOSS_SECONDS:-60}"
RATE="${NODE_LOSS_RATE:-100}"
NODE_TIMEOUT="${REDIS_NODE_TIMEOUT_MS:-2000}"
# PROFILE=debug runs the debug build (quicker to build, slower to run); NO_BUILD=1 runs the
# binary as it is.
PROFILE="${PROFILE:-release}"
if [ -n "${NO_BUILD:-}" ]; then :
elif [ "$PROFILE" = release ]; then cargo build --release --quiet; else cargo build --quiet; fi
BIN=$PWD/target/$PROFILE/autorenew
RUN=redisloss$$
BASE=$(mktemp -d)
pids=()

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_http() { # url
  for _ in $(seq 1 100); do curl -fs "$1" >/dev/null 2>&1 && return 0; sleep 0.1; done
  echo "not ready: $1" >&2; return 1
}
now() { date +%s.%N; }

# A cluster node also listens on its port + 10000 (the cluster bus): both must be free.
cluster_port() { python3 -c '
import random, socket
def free(p):
    s = socket.socket()
    try:
        s.bind(("127.0.0.1", p)); return True
    except OSError:
        return False
    finally:
        s.close()
while True:
    p = random.randint(20000, 40000)
    if free(p) and free(p + 10000):
        print(p); break'; }
PORTS=()
for i in 1 2 3 4 5 6; do
  port=$(cluster_port); PORTS+=("$port"); mkdir -p "$BASE/$port"
  redis-server --port "$port" --bind 127.0.0.1 --save "" --appendonly no --daemonize yes \
    --cluster-enabled yes --cluster-config-file "$BASE/$port/nodes.conf" \
    --cluster-node-timeout "$NODE_TIMEOUT" --dir "$BASE/$port" \
    --pidfile "$BASE/$port/redis.pid" --logfile "$BASE/$port/redis.log"
done

cleanup() {
  for pid in "${pids[@]:-}"; do [ -n "$pid" ] && kill "$pid" 2>/dev/null || true; done
  wait "${pids[@]:-}" 2>/dev/null || true
  # Each by its own port (a killed one has nothing to answer).
  for port in "${PORTS[@]}"; do redis-cli -p "$port" shutdown nosave >/dev/null 2>&1 || true; done
  # This run's queues and exchanges on the shared broker (rabbitmqctl reads stdin: </dev/null).
  rabbitmqctl -q list_queues --no-table-headers name </dev/null 2>/dev/null | grep "^$RUN" |
    while read -r q; do rabbitmqctl -q delete_queue "$q" </dev/null >/dev/null 2>&1 || true; done
  rabbitmqctl -q eval "[rabbit_exchange:delete(element(2, X), false, <<\"redisloss\">>)
    || X <- rabbit_exchange:list(<<\"/\">>),
       re:run(element(4, element(2, X)), \"^$RUN\") =/= nomatch], ok." </dev/null >/dev/null 2>&1 || true
  [ -n "${KEEP_LOGS:-}" ] && cp -r "$BASE" "$KEEP_LOGS" 2>/dev/null; rm -rf "$BASE"
}
trap cleanup EXIT

for port in "${PORTS[@]}"; do
  for _ in $(seq 1 50); do redis-cli -p "$port" ping >/dev/null 2>&1 && break; sleep 0.1; done
done
nodes=$(printf '127.0.0.1:%s ' "${PORTS[@]}")
# shellcheck disable=SC2086
redis-cli --cluster create $nodes --cluster-replicas 1 --cluster-yes >"$BASE/create.log"
for _ in $(seq 1 100); do
  redis-cli -p "${PORTS[0]}" cluster info | grep -q 'cluster_state:ok' && break; sleep 0.2
done
redis-cli -p "${PORTS[0]}" cluster info | grep -q 'cluster_state:ok'

masters=$(redis-cli -p "${PORTS[0]}" cluster nodes | awk '$3 ~ /master/ && NF >= 9 {split($2, a, "@"); print "redis://" a[1]}' | paste -sd, -)
# REDIS_SEEDS=all lists every node, replicas too, as an operator might.
if [ "${REDIS_SEEDS:-masters}" = all ]; then masters=$(printf 'redis://127.0.0.1:%s,' "${PORTS[@]}"); masters=${masters%,}; fi
echo "cluster: 3 masters, 3 replicas (cluster-node-timeout $NODE_TIMEOUT ms); redis.url = $masters"

export AUTORENEW__REDIS__URL="$masters"
export AUTORENEW__AMQP__PREFIX=$RUN AUTORENEW__REDIS__KEY_PREFIX=$RUN
export AUTORENEW__INTAKE__PARTNER_RATE_LIMIT_PER_SECOND=0
export AUTORENEW__INTAKE__LISTEN="127.0.0.1:$(free_port)"
export AUTORENEW__WORKER__CONCURRENCY=64
export AUTORENEW__STRIPE__MAX_REQUESTS_PER_SECOND=1000000
export RUST_LOG=warn
INTAKE="http://$AUTORENEW__INTAKE__LISTEN"

port=$(free_port)
"$BIN" stripe-sim --listen "127.0.0.1:$port" --latency 20 >"$BASE/sim.log" 2>&1 & pids+=($!)
SIM="http://127.0.0.1:$port"; wait_http "$SIM/_sim/stats"
export AUTORENEW__STRIPE__SECRET_KEY=sk_test_redisloss AUTORENEW__STRIPE__API_BASE="$SIM"
export AUTORENEW__STRIPE__HTTP2_PRIOR_KNOWLEDGE=true
"$BIN" intake >/dev/null 2>"$BASE/intake.log" & pids+=($!)
wait_http "$INTAKE/readyz"
for w in 1 2; do
  port=$(free_port)
  AUTORENEW__WORKER__LISTEN="127.0.0.1:$port" "$BIN" worker >/dev/null 2>"$BASE/worker-$w.log" & pids+=($!)
  wait_http "http://127.0.0.1:$port/readyz"
done

# The master that serves the Stripe budget key.
slot=$(redis-cli -p "${PORTS[0]}" cluster keyslot "$RUN:stripe-budget")
victim=$(redis-cli -p "${PORTS[0]}" cluster nodes | awk -v slot="$slot" '/master/ {
  for (i = 9; i <= NF; i++) { split($i, r, "-"); if (slot >= r[1] && slot <= (r[2] == "" ? r[1] : r[2])) { split($2, a, "[:@]"); print a[2] } } }')

start=$(now)
"$BIN" loadgen --quiet --json --target "$INTAKE" --rate "$RATE" --duration "${LOAD_SECONDS}s" \
  --record "$BASE/record.jsonl" --result-timeout 180s >"$BASE/report.json" 2>"$BASE/loadgen.log" &
LOADGEN=$!

phase=$((LOAD_SECONDS / 3))
sleep "$phase"
t_kill=$(python3 -c "print($(now) - $start)")
kill -9 "$(cat "$BASE/$victim/redis.pid")"
echo "t=$(printf '%.1f' "$t_kill") s: master on port $victim killed (kill -9; it holds slot $slot, the Stripe budget)"
survivor=${PORTS[0]}; [ "$survivor" = "$victim" ] && survivor=${PORTS[1]}
owner() { # the port of the master that serves $slot, as the survivor sees it
  redis-cli -p "$survivor" cluster nodes 2>/dev/null | awk -v slot="$slot" '$3 ~ /master/ && $3 !~ /fail/ {
    for (i = 9; i <= NF; i++) { split($i, r, "-"); if (slot >= r[1] && slot <= (r[2] == "" ? r[1] : r[2])) { split($2, a, "[:@]"); print a[2] } } }'
}
for _ in $(seq 1 300); do
  o=$(owner)
  [ -n "$o" ] && [ "$o" != "$victim" ] &&
    redis-cli -p "$survivor" cluster info 2>/dev/null | grep -q 'cluster_state:ok' && break
  sleep 0.1
done
echo "t=$(python3 -c "print(f'{$(now) - $start:.1f}')") s: a replica (port $(owner)) serves the slot, cluster state ok"

wait "$LOADGEN" || true
sleep 2
curl -fs "$SIM/_sim/stats" >"$BASE/stats.json"
# Copies of settled jobs (redeliveries, retries queued before a result was stored) come back
# from the delayed-retry queues and are dropped by the workers: wait (bounded) for them to drain.
left() {
  rabbitmqctl -q list_queues --no-table-headers name messages </dev/null 2>/dev/null |
    awk -v run="$RUN" '$1 ~ "^"run"\\.(jobs|retry)" {n += $2} END {print n + 0}'
}
for _ in $(seq 1 60); do queued=$(left); [ "$queued" -eq 0 ] && break; sleep 1; done

python3 - "$BASE/report.json" "$BASE/stats.json" "$BASE/record.jsonl" "$queued" "$t_kill" \
  "$phase" "$RATE" "$LOAD_SECONDS" <<'PY'
import json, sys
report, stats = json.load(open(sys.argv[1])), json.load(open(sys.argv[2]))
record = [json.loads(line) for line in open(sys.argv[3])]
queued, t_kill, phase = int(sys.argv[4]), float(sys.argv[5]) * 1000, float(sys.argv[6]) * 1000
rate, seconds = sys.argv[7], sys.argv[8]
results = report["results"] or {}
jobs, lost = results.get("followed", 0), results.get("no_result", 0)
twice = sum(1 for n in stats["subscriptions_by_pay_id"].values() if n > 1)
fresh = [r for r in record if r["kind"] == "fresh"]
bad = [r for r in fresh if r["status"] != 200 and r["at_ms"] >= t_kill - 1000]
kinds = sorted({f"{r['status']} {r['code']}" for r in bad})
span = (max(r["at_ms"] for r in bad) - t_kill) / 1000 if bad else 0.0
window = f"{span:.1f} s ({len(bad)} refused: {kinds})" if bad else "0 s (no 503)"

def p99(rows):
    lat = sorted(r["latency_ms"] for r in rows if r["status"] == 200)
    return f"{lat[min(len(lat) - 1, int(len(lat) * 0.99))]:.1f} ms" if lat else "n/a"

print(f"Node loss (Redis Cluster): 3 masters + 3 replicas, {rate}/s for {seconds} s, intake + 2 workers")
print("| figure | measured | ok |")
print("|---|---|---|")
rows = [
    ("requests accepted (jobs)", jobs, jobs > 0),
    ("lost (accepted, no result event)", lost, lost == 0),
    ("jobs with a final result", f"{results.get('received', 0)} of {jobs}", results.get("received", 0) == jobs),
    ("payIds with two subscriptions", twice, twice == 0),
    ("second outcome for a payId", results.get("duplicate_events", {}).get("different_id", 0),
     results.get("duplicate_events", {}).get("different_id", 0) == 0),
    ("messages left in jobs/retry queues", queued, queued == 0),
    ("503 window, master killed (kill -9); goal <= 5 s", window, span <= 5),
    ("accepted p99 before the loss", p99([r for r in fresh if r["at_ms"] < t_kill]), True),
    ("accepted p99 after the failover", p99([r for r in fresh if r["at_ms"] > t_kill + phase]), True),
]
failed = False
for name, value, ok in rows:
    failed |= not ok
    print(f"| {name} | {value} | {'yes' if ok else 'NO'} |")
sys.exit(1 if failed else 0)
PY
