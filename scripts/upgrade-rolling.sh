#!/usr/bin/env bash
# The upgrade to partner lanes as a rolling restart under load (docs/operations.md, "Upgrading
# to partner lanes"; CONTRACT §11): the release before the lanes (one shared jobs queue, retry.*
# delay queues) runs an intake and workers under a steady load of two partners; one worker after
# the other is stopped with SIGTERM (its drain) and replaced by this checkout's binary, then the
# intake, the load going on throughout, old and new processes side by side. Then the load stops,
# every queue a job can wait in (the shared queue, the lanes, delay.* and the old retry.*)
# drains, the old retry.* queues are deleted as the operator would (--if-empty), and the checks
# of scripts/rolling-restart.sh are made: 0 lost, 0 duplicates, one subscription per payId at
# the simulator. Exits 1 when a check fails. Needs RabbitMQ and Redis on localhost and the git
# history (the old release is built from its commit).
#
#   scripts/upgrade-rolling.sh                                    # 60 s at 200 requests/s
#   PROFILE=debug NO_BUILD=1 UPGRADE_SECONDS=30 UPGRADE_RATE=100 scripts/upgrade-rolling.sh   # the CI slice
#
# The old binary: the commit UPGRADE_FROM (default 654ebe5^, the release before the lanes) is
# exported to target/upgrade-old/<commit>/src and built there with this checkout's target
# directory, so the third-party crates already built for this checkout with the same features
# are reused (after `cargo test`, a debug build still compiles the workspace's crates and the
# few dozen that the tests' dev-dependencies built with other features: about a minute); the
# binary is kept as target/upgrade-old/<commit>/<profile>/autorenew, and a second run builds
# nothing.
#
# Environment: PROFILE (release; debug is quicker to build, slower to run), NO_BUILD=1 (run this
# checkout's binary as it is; the old one is still built if not kept), BUILD_NICE (0),
# UPGRADE_SECONDS (60), UPGRADE_RATE (200 requests/s in all, half for each partner),
# UPGRADE_WORKERS (3), UPGRADE_CONCURRENCY (256 jobs in hand per worker), UPGRADE_ERROR_RATE
# (0.01: the simulator's share of 500s; with no quick retries each sends its job to a delay
# queue, so the old retry.* queues hold jobs while the old workers go), UPGRADE_FROM,
# KEEP_OUT=1 (keep the logs and reports).
set -euo pipefail
cd "$(dirname "$0")/.."

UPGRADE_FROM="${UPGRADE_FROM:-654ebe5^}"
SECONDS_OF_LOAD="${UPGRADE_SECONDS:-60}"
RATE="${UPGRADE_RATE:-200}"
WORKERS="${UPGRADE_WORKERS:-3}"
CONCURRENCY="${UPGRADE_CONCURRENCY:-256}"
ERROR_RATE="${UPGRADE_ERROR_RATE:-0.01}"
PROFILE="${PROFILE:-release}"
TARGET="${CARGO_TARGET_DIR:-$PWD/target}"
profile_flag=()
if [ "$PROFILE" = release ]; then profile_flag=(--release); fi

RUN=upgrade$$
OUT=$(mktemp -d)
# shellcheck source=scripts/lib/drill.sh
. scripts/lib/drill.sh

# Cargo puts every build's binary at target/<profile>/autorenew, the old one's too: this
# checkout's is kept aside while the old one builds and put back after (and on an interrupted
# build, by the cleanup).
kept=""
put_back_new_binary() {
  [ -n "$kept" ] || return 0
  local f
  for f in autorenew autorenew.d; do
    if [ -e "$kept/$f" ]; then mv -f "$kept/$f" "$TARGET/$PROFILE/$f"; else rm -f "$TARGET/$PROFILE/$f"; fi
  done
  rmdir "$kept"; kept=""
}
cleanup() { put_back_new_binary; drill_cleanup; }
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

if [ -n "${NO_BUILD:-}" ]; then :
else nice -n "${BUILD_NICE:-0}" cargo build --quiet "${profile_flag[@]}"; fi
NEW_BIN=$TARGET/$PROFILE/autorenew

# Sets OLD_BIN, and OLD_BUILD to what it took.
build_old() {
  local sha dir src began f status=0
  if ! sha=$(git rev-parse --verify --quiet "$UPGRADE_FROM^{commit}"); then
    echo "no commit $UPGRADE_FROM here: the old release is built from the git history" >&2
    return 1
  fi
  dir="$TARGET/upgrade-old/$sha"
  OLD_BIN="$dir/$PROFILE/autorenew"
  if [ -x "$OLD_BIN" ]; then OLD_BUILD="kept from an earlier run"; return 0; fi
  src="$dir/src"
  # Exported once: the same paths and times each build, so a rebuild is incremental.
  if [ ! -f "$src/.exported" ]; then
    rm -rf "$src"; mkdir -p "$src"
    git archive "$sha" | tar -x -C "$src"
    touch "$src/.exported"
  fi
  mkdir -p "$TARGET/$PROFILE" "$dir/$PROFILE"
  kept=$(mktemp -d "$TARGET/upgrade-old/kept.XXXXXX")
  for f in autorenew autorenew.d; do
    if [ -e "$TARGET/$PROFILE/$f" ]; then cp -p "$TARGET/$PROFILE/$f" "$kept/$f"; fi
  done
  began=$(date +%s.%N)
  echo "building the release before the upgrade, ${sha:0:7} ($UPGRADE_FROM, $PROFILE) in $src" >&2
  (cd "$src" && nice -n "${BUILD_NICE:-0}" cargo build --quiet --locked --bin autorenew \
    "${profile_flag[@]}" --target-dir "$TARGET") || status=$?
  if [ "$status" -eq 0 ]; then
    cp -p "$TARGET/$PROFILE/autorenew" "$OLD_BIN.part" && mv "$OLD_BIN.part" "$OLD_BIN"
  fi
  put_back_new_binary
  [ "$status" -eq 0 ] || return "$status"
  OLD_BUILD="built in $(python3 -c "import time; print(f'{time.time() - $began:.0f}')") s"
}
build_old
echo "old binary ($UPGRADE_FROM): $OLD_BUILD" >&2

# Two partners, and nothing else: the file replaces config.toml for both releases (the
# environment still overrides it). No `weight`: the old release refuses keys it does not know.
CONFIG="$OUT/config.toml"
for p in P000818 P000819; do
  printf '[[partners]]\ncode = "%s"\nsecret = "upgrade-drill-secret-%s"\n\n' "$p" "$p"
done >"$CONFIG"

export AUTORENEW__AMQP__PREFIX=$RUN AUTORENEW__REDIS__KEY_PREFIX=$RUN
export AUTORENEW__INTAKE__PARTNER_RATE_LIMIT_PER_SECOND=0
AUTORENEW__INTAKE__LISTEN="127.0.0.1:$(drill_free_port)"
export AUTORENEW__INTAKE__LISTEN
export AUTORENEW__WORKER__CONCURRENCY=$CONCURRENCY
export AUTORENEW__STRIPE__MAX_REQUESTS_PER_SECOND=1000000
# A Stripe 500 goes straight to the first delay queue (no quick retries), and the delays are
# short, so delayed jobs come back within the run: the old workers' into retry.*, which
# dead-letters into the shared queue, the new workers' into delay.*, back to the lanes.
export AUTORENEW__WORKER__STEP_RETRIES=0
export AUTORENEW__AMQP__RETRY_DELAYS_MS=2000,4000,8000,16000
export AUTORENEW__AMQP__RECONCILE_DELAY_MS=5000
export RUST_LOG=warn
INTAKE="http://$AUTORENEW__INTAKE__LISTEN"

port=$(drill_free_port)
"$NEW_BIN" --config "$CONFIG" stripe-sim --listen "127.0.0.1:$port" --latency 200 \
  --error-rate "$ERROR_RATE" >"$OUT/sim.log" 2>&1 & pids+=($!)
SIM="http://127.0.0.1:$port"; drill_wait_http "$SIM/_sim/stats"
export AUTORENEW__STRIPE__SECRET_KEY=sk_test_upgrade AUTORENEW__STRIPE__API_BASE="$SIM"
export AUTORENEW__STRIPE__HTTP2_PRIOR_KNOWLEDGE=true

start_intake() { # old|new
  local bin=$OLD_BIN; [ "$1" = new ] && bin=$NEW_BIN
  "$bin" --config "$CONFIG" intake >"$OUT/intake-$1.log" 2>&1 & pids+=($!)
  INTAKE_PID=$!
  drill_wait_http "$INTAKE/readyz" 300
}

# worker N → WORKER[N] is its pid; its log is $OUT/worker-<old|new>-<generation>.log
declare -A WORKER
generation=0
start_worker() { # slot old|new
  local port bin=$OLD_BIN; [ "$2" = new ] && bin=$NEW_BIN
  port=$(drill_free_port); generation=$((generation + 1))
  AUTORENEW__WORKER__LISTEN="127.0.0.1:$port" "$bin" --config "$CONFIG" worker \
    >/dev/null 2>"$OUT/worker-$2-$generation.log" & pids+=($!)
  WORKER[$1]=$!
  drill_wait_http "http://127.0.0.1:$port/readyz" 300
}

start_intake old
for slot in $(seq 1 "$WORKERS"); do start_worker "$slot" old; done

began=$SECONDS
half=$(python3 -c "print($RATE / 2)")
"$NEW_BIN" --config "$CONFIG" loadgen --quiet --json --target "$INTAKE" \
  --pace "P000818:$half" --pace "P000819:$half" --duration "${SECONDS_OF_LOAD}s" \
  --result-timeout 120s >"$OUT/report.json" 2>"$OUT/loadgen.log" &
LOADGEN=$!; pids+=("$LOADGEN")

# The workers in turn, then the intake (docs/operations.md: workers first, so a lane never
# waits for a worker), evenly over the load: with 3 workers at 1/5, 2/5 and 3/5 of it, the
# intake at 4/5; counted from the load's start. A worker is replaced as a Deployment with
# maxSurge 1 replaces it: the new one is ready before the old one gets SIGTERM, and the old one
# drains beside the rest, so a slow drain (10 s and more on a loaded machine) never pushes the
# next step, and the intake's swap, past the load's end.
load_start=$(date +%s.%N)
into_load() { python3 -c "import time; print(f'{time.time() - $load_start:.1f}')"; }
steps=$((WORKERS + 2))
drains=() signals=() retiring=() watchers=()
retire() { # pid: SIGTERM, and its drain timed in the background
  local pid=$1 began; began=$(date +%s.%N)
  kill -TERM "$pid"
  (
    # A child that exited stays a zombie until waited for: that is the end of its drain.
    while state=$(ps -o stat= -p "$pid" 2>/dev/null) && [ "${state:0:1}" != Z ]; do sleep 0.1; done
    python3 -c "import time; print(f'{time.time() - $began:.1f}')" >"$OUT/drain-$pid"
  ) &
  watchers+=($!) retiring+=("$pid")
}
for slot in $(seq 1 "$WORKERS"); do
  drill_sleep_until "$load_start" "$SECONDS_OF_LOAD" "$slot / $steps"
  signals+=("$(into_load)")
  old=${WORKER[$slot]}
  start_worker "$slot" new
  [ -n "${mixed_from:-}" ] || mixed_from=$(into_load)
  retire "$old"
done
drill_sleep_until "$load_start" "$SECONDS_OF_LOAD" "$((WORKERS + 1)) / $steps"
swap_began=$(date +%s.%N)
signals+=("$(into_load)")
drill_stop "$INTAKE_PID"
start_intake new
swap=$(python3 -c "import time; print(f'{time.time() - $swap_began:.1f}')")
# Old and new workers must have run side by side under load, or the drill tested nothing of the
# upgrade: the first new worker ready before the load's end. Whether the intake's swap also fell
# within the load is reported, not required: on a machine loaded to 10 and more, each new
# process takes 10 s and more to start, and the intake's turn comes last.
intake_ready=$(into_load)
mixed=$(python3 -c "print('yes' if $mixed_from < $SECONDS_OF_LOAD else 'no')")
intake_under_load=$(python3 -c "print('yes' if $intake_ready < $SECONDS_OF_LOAD else 'no, after the load')")

status=0; wait "$LOADGEN" || status=$?
for watcher in "${watchers[@]}"; do wait "$watcher" || true; done
for pid in "${retiring[@]}"; do
  exit_status=0; wait "$pid" || exit_status=$?
  drains+=("$(cat "$OUT/drain-$pid" 2>/dev/null || echo '?') s (exit $exit_status)")
done
[ "$status" -eq 0 ] || echo "loadgen exited $status (its report says why; the checks below decide)" >&2
# Everything a job can wait in, the old retry.* included (their longest delay is 16 s).
left=$(drill_wait_drained 60)
curl -fs "$SIM/_sim/stats" >"$OUT/stats.json"

# The operator's last step: the old retry.* queues, now empty, go.
retry_queues=$(rabbitmqctl -q list_queues --no-table-headers name </dev/null 2>/dev/null |
  grep "^$RUN\.retry\." || true)
deleted=0
for q in $retry_queues; do
  if rabbitmqctl -q delete_queue "$q" --if-empty </dev/null >/dev/null 2>&1; then deleted=$((deleted + 1)); fi
done
lanes=$(rabbitmqctl -q list_queues --no-table-headers name </dev/null 2>/dev/null |
  grep -c "^$RUN\.jobs\.partner\." || true)

retried() { cat "$OUT"/worker-"$1"-*.log | grep -c "job will be retried" || true; }
drill_checks --report "$OUT/report.json" --stats "$OUT/stats.json" --faults \
  --queued "$left" --handed-back "$(drill_handed_back "$OUT"/worker-*.log)" \
  --check "old and new workers side by side under load" "from $mixed_from s of $SECONDS_OF_LOAD s" "$mixed" \
  --line "the new intake ready at $intake_ready s of the load's $SECONDS_OF_LOAD s: under load $intake_under_load" \
  --title "Upgrade from ${UPGRADE_FROM} as a rolling restart: $WORKERS workers and the intake, $RATE/s (two partners) for $SECONDS_OF_LOAD s, simulator at 200 ms a call, $ERROR_RATE 500s" \
  --line "old binary: $OLD_BUILD; drill: $((SECONDS - began)) s from the first request to the checks" \
  --line "SIGTERMs at ${signals[*]} s of the load; drains (the old intake, then the old workers): ${drains[*]}; intake swap (SIGTERM to the new one ready): $swap s" \
  --line "delayed retries: by old workers $(retried old) (retry.*), by new workers $(retried new) (delay.* and lanes); lanes declared $lanes; old retry.* queues deleted empty: $deleted of $(echo "$retry_queues" | grep -c . || true)"
