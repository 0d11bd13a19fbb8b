# shellcheck shell=bash
# What the drills under load share (scripts/rolling-restart.sh, scripts/upgrade-rolling.sh):
# ports and readiness, the tear-down of one run's prefix on the shared RabbitMQ and Redis, the
# count of what is left in the queues a job can wait in, and the checks (drill_checks.py).
# Sourced, not run. The caller sets RUN (its prefix: queue and key names start with "$RUN."
# or "$RUN:") and OUT (a scratch folder), and keeps the pids of what it starts in `pids`.

DRILL_LIB="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
pids=()

drill_free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

drill_wait_http() { # url [tenths of a second]
  for _ in $(seq 1 "${2:-100}"); do curl -fs "$1" >/dev/null 2>&1 && return 0; sleep 0.1; done
  echo "not ready: $1" >&2; return 1
}

# Stops what the run started, then deletes every queue, exchange and key of its prefix and
# nothing else: the prefix is matched up to its separator, so run `rolling12` never takes
# `rolling123`'s queues. (rabbitmqctl reads stdin: without </dev/null the first delete eats the
# rest of the list.)
drill_cleanup() {
  for pid in "${pids[@]:-}"; do
    if [ -n "$pid" ]; then kill "$pid" 2>/dev/null || true; fi
  done
  wait 2>/dev/null || true
  rabbitmqctl -q list_queues --no-table-headers name </dev/null 2>/dev/null | grep "^$RUN\." |
    while read -r q; do rabbitmqctl -q delete_queue "$q" </dev/null >/dev/null 2>&1 || true; done
  rabbitmqctl -q eval "[rabbit_exchange:delete(element(2, X), false, <<\"drill\">>)
    || X <- rabbit_exchange:list(<<\"/\">>),
       re:run(element(4, element(2, X)), \"^$RUN\\\\.\") =/= nomatch], ok." </dev/null >/dev/null 2>&1 || true
  # Keys are `<prefix>:…`, and the budget's shares `{<prefix>:stripe-budget}:shares`.
  for pattern in "${RUN}[:.]*" "{${RUN}:*"; do
    redis-cli --scan --pattern "$pattern" 2>/dev/null | xargs -r -n 500 redis-cli del >/dev/null 2>&1 || true
  done
  if [ -n "${KEEP_OUT:-}" ]; then echo "logs and reports: $OUT" >&2; else rm -rf "$OUT"; fi
}

# Messages in every queue a job can wait in: the shared jobs queue, the partners' lanes
# (jobs.partner.*), the expired jobs, the delay queues (delay.*) and those of the release
# before the lanes (retry.*).
drill_queued() {
  rabbitmqctl -q list_queues --no-table-headers name messages </dev/null 2>/dev/null |
    awk -v run="$RUN" 'index($1, run ".") == 1 && substr($1, length(run) + 2) ~ /^(jobs|delay|retry)/ {n += $2}
      END {print n + 0}'
}

# Waits (at most `seconds`) until those queues are empty; prints what is left.
drill_wait_drained() { # seconds
  local left deadline=$((SECONDS + $1))
  while :; do
    left=$(drill_queued)
    if [ "$left" -eq 0 ] || [ "$SECONDS" -ge "$deadline" ]; then echo "$left"; return 0; fi
    sleep 1
  done
}

# Lines in the given logs that say a job went back to RabbitMQ for another worker.
drill_handed_back() { # log…
  cat "$@" | grep -c "handing it back\|not connected\|ack/nack" || true
}

# SIGTERM, wait for the exit; appends "<seconds> s (exit <status>)" to the array `drains`.
# Not in a $(…): only the shell that started the process can wait for it.
drill_stop() { # pid
  local began ended status=0
  began=$(date +%s.%N)
  kill -TERM "$1"
  wait "$1" || status=$?
  ended=$(date +%s.%N)
  drains+=("$(python3 -c "print(f'{$ended - $began:.1f} s (exit $status)')")")
}

# Sleeps until `fraction` of the load (started at `start`, lasting `seconds`) has passed.
drill_sleep_until() { # start seconds fraction
  python3 -c "import time; time.sleep(max(0, $1 + $2 * $3 - time.time()))"
}

drill_checks() { # the arguments of drill_checks.py
  python3 "$DRILL_LIB/drill_checks.py" "$@"
}
