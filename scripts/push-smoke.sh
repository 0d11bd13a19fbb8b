#!/usr/bin/env bash
# The partner push end to end under load, one partner: `autorenew run` (intake, worker,
# simulator, notifier) pushing to `autorenew receiver`, driven by `autorenew loadgen`. Prints
# loadgen's report, what the receiver verified, and the notifier's delivery latency (event `time`
# to 2xx) read from its histogram. Not yet the issue's figures (no baseline, no isolation run):
# a smoke run and the tool for them. Needs RabbitMQ and Redis (AUTORENEW__AMQP__URL and
# AUTORENEW__REDIS__URL override the local ones).
#
#   scripts/push-smoke.sh                 # release build, 200/s for 20 s
#   RATE=500 DURATION=30s scripts/push-smoke.sh
#   PROFILE=debug scripts/push-smoke.sh
set -euo pipefail
cd "$(dirname "$0")/.."

RATE="${RATE:-200}"
DURATION="${DURATION:-20s}"
PROFILE="${PROFILE:-release}"
if [ "$PROFILE" = release ]; then cargo build --release --quiet; else cargo build --quiet; fi
BIN=$PWD/target/$PROFILE/autorenew
RUN=pushsmoke$$
dir=$(mktemp -d)

# What the drills share (scripts/lib/drill.sh): the ports, and the tear-down of this run's
# queues, exchanges and keys, and of its scratch folder.
# shellcheck source=lib/drill.sh
source scripts/lib/drill.sh
OUT=$dir
trap drill_cleanup EXIT

intake=$(drill_free_port); worker=$(drill_free_port); notifier=$(drill_free_port); sim=$(drill_free_port); receiver=$(drill_free_port)

# config.toml with the demo partner's push switched on, to this run's receiver.
sed -e 's/^# \[partners.push\]/[partners.push]/' \
    -e "s|^# url = \"http://127.0.0.1:8090/P000818\"|url = \"http://127.0.0.1:$receiver/P000818\"|" \
    -e 's|^# secrets = \["whsec_|secrets = ["whsec_|' config.toml > "$dir/config.toml"

export AUTORENEW__AMQP__PREFIX=$RUN AUTORENEW__REDIS__KEY_PREFIX=$RUN
export AUTORENEW__INTAKE__LISTEN=127.0.0.1:$intake AUTORENEW__WORKER__LISTEN=127.0.0.1:$worker
export AUTORENEW__PUSH__LISTEN=127.0.0.1:$notifier AUTORENEW__LOG__FILTER=warn
export AUTORENEW__STRIPE__MAX_REQUESTS_PER_SECOND=100000

"$BIN" --config "$dir/config.toml" receiver --quiet --listen "127.0.0.1:$receiver" >"$dir/receiver.log" 2>&1 &
pids+=($!)
"$BIN" --config "$dir/config.toml" run --sim-listen "127.0.0.1:$sim" >"$dir/run.log" 2>&1 &
pids+=($!)
for _ in $(seq 1 100); do
  curl -sf "http://127.0.0.1:$notifier/readyz" >/dev/null && curl -sf "http://127.0.0.1:$intake/readyz" >/dev/null && break
  sleep 0.2
done

"$BIN" --config "$dir/config.toml" loadgen --quiet --rate "$RATE" --duration "$DURATION" \
  --target "http://127.0.0.1:$intake"

# Let the last pushes land, then read what arrived and the notifier's histogram.
sent=$(curl -s "http://127.0.0.1:$notifier/metrics" | awk -F' ' '/^autorenew_push_attempts_total/ {n += $2} END {print n + 0}')
for _ in $(seq 1 50); do
  verified=$(curl -s "http://127.0.0.1:$receiver/_receiver/stats" | python3 -c 'import json,sys; print(json.load(sys.stdin).get("P000818", {}).get("distinct", 0))')
  [ "$verified" -gt 0 ] && [ "$verified" -ge "$sent" ] && break
  sleep 0.2
  sent=$(curl -s "http://127.0.0.1:$notifier/metrics" | awk -F' ' '/^autorenew_push_attempts_total/ {n += $2} END {print n + 0}')
done
echo
echo "receiver: $(curl -s "http://127.0.0.1:$receiver/_receiver/stats")"
curl -s "http://127.0.0.1:$notifier/metrics" | python3 -c '
import re, sys
buckets, count, total = [], 0, 0.0
for line in sys.stdin:
    m = re.match(r"autorenew_push_delivery_seconds_bucket\{.*attempt=\"first\",le=\"([^\"]+)\"\} (\d+)", line)
    if m and m.group(1) != "+Inf":
        buckets.append((float(m.group(1)), int(m.group(2))))
    m = re.match(r"autorenew_push_delivery_seconds_count\{.*attempt=\"first\"\} (\d+)", line)
    if m: count = int(m.group(1))
    m = re.match(r"autorenew_push_delivery_seconds_sum\{.*attempt=\"first\"\} (\S+)", line)
    if m: total = float(m.group(1))
def quantile(q):
    for le, n in sorted(buckets):
        if n >= q * count:
            return "<= %g ms" % (le * 1000)
    return "> the top bucket"
if count:
    print("push delivery (event time to 2xx, first attempts): %d, mean %.1f ms, p50 %s, p99 %s"
          % (count, 1000 * total / count, quantile(0.5), quantile(0.99)))
else:
    print("no delivery recorded")
'
