#!/usr/bin/env bash
# Property-based API test of the intake against its own OpenAPI document (src/intake/openapi.json),
# with schemathesis: builds the binary, starts `autorenew run` (intake + worker + simulator) on
# free ports with its own queue and key prefixes, waits for /readyz, runs schemathesis with a
# hook that signs every request (scripts/schemathesis_hooks.py), then stops the process and
# deletes its queues, exchanges and Redis keys.
#
# Checks: no 5xx, every status, content type, header and body as documented.
# Needs RabbitMQ and Redis on localhost (as `cargo test` does). Python 3 with venv and pip.
#
#   scripts/schemathesis.sh                 # default budget
#   ST_MAX_EXAMPLES=200 scripts/schemathesis.sh
set -euo pipefail
cd "$(dirname "$0")/.."

ST_VERSION=4.32.5
TOOLS=${AUTORENEW_TOOLS_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/autorenew}
VENV=$TOOLS/schemathesis-$ST_VERSION
MAX_EXAMPLES=${ST_MAX_EXAMPLES:-40}
SEED=${ST_SEED:-}
AMQP_URL=${AUTORENEW__AMQP__URL:-amqp://guest:guest@127.0.0.1:5672/%2f}
REDIS_URL=${AUTORENEW__REDIS__URL:-redis://127.0.0.1:6379}
PREFIX="schemathesis-$$-$RANDOM"
WORK=$(mktemp -d)
started=$SECONDS

log() { printf '== schemathesis: %s (%ss)\n' "$*" "$((SECONDS - started))"; }

# --- tools -------------------------------------------------------------------------------------
if ! "$VENV/bin/python" -c 'import schemathesis, pika, redis' 2>/dev/null; then
  log "installing schemathesis $ST_VERSION into $VENV"
  mkdir -p "$TOOLS"
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q --disable-pip-version-check "schemathesis==$ST_VERSION" pika redis
fi

log "building autorenew"
cargo build -q --bin autorenew
BIN=${CARGO_TARGET_DIR:-target}/debug/autorenew

# --- free ports ---------------------------------------------------------------------------------
read -r INTAKE_PORT WORKER_PORT < <("$VENV/bin/python" - <<'EOF'
import socket
socks = [socket.socket() for _ in range(2)]
for s in socks:
    s.bind(("127.0.0.1", 0))
print(*(s.getsockname()[1] for s in socks))
EOF
)
BASE=http://127.0.0.1:$INTAKE_PORT

# --- start, and always clean up -----------------------------------------------------------------
PID=
cleanup() {
  local status=$?
  if [ -n "$PID" ] && kill -0 "$PID" 2>/dev/null; then
    kill -TERM "$PID" 2>/dev/null || true
    for _ in $(seq 1 50); do kill -0 "$PID" 2>/dev/null || break; sleep 0.2; done
    kill -KILL "$PID" 2>/dev/null || true
    wait "$PID" 2>/dev/null || true
  fi
  AMQP_URL=$AMQP_URL REDIS_URL=$REDIS_URL PREFIX=$PREFIX "$VENV/bin/python" - <<'EOF' || true
import os, pika, redis
prefix = os.environ["PREFIX"]
try:
    connection = pika.BlockingConnection(pika.URLParameters(os.environ["AMQP_URL"]))
    channel = connection.channel()
    queues = ["jobs", "jobs.expired", "dead", "delay.locked", "delay.reconcile", "delay.10s", "delay.1m",
              "delay.10m", "delay.1h", "jobs.partner.P000818"]
    for name in queues:
        channel.queue_delete(f"{prefix}.{name}")
    for name in ["jobs.partners", "jobs", "dead", "results"]:
        channel.exchange_delete(f"{prefix}.{name}")
    connection.close()
except Exception as error:  # cleanup is best effort; say what was left behind
    print(f"queues of {prefix} not deleted: {error}")
try:
    store = redis.Redis.from_url(os.environ["REDIS_URL"])
    keys = list(store.scan_iter(match=f"{prefix}*", count=1000))
    for start in range(0, len(keys), 500):
        store.delete(*keys[start:start + 500])
except Exception as error:
    print(f"Redis keys of {prefix} not deleted: {error}")
EOF
  if [ "$status" -ne 0 ] && [ -s "$WORK/autorenew.log" ]; then
    echo "--- last lines of the autorenew log"
    tail -n 40 "$WORK/autorenew.log"
  fi
  rm -rf "$WORK"
  log "done, exit $status"
  exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

log "starting autorenew run on $BASE (prefix $PREFIX)"
AUTORENEW__INTAKE__LISTEN=127.0.0.1:$INTAKE_PORT \
AUTORENEW__WORKER__LISTEN=127.0.0.1:$WORKER_PORT \
AUTORENEW__AMQP__URL=$AMQP_URL \
AUTORENEW__AMQP__PREFIX=$PREFIX \
AUTORENEW__REDIS__URL=$REDIS_URL \
AUTORENEW__REDIS__KEY_PREFIX=$PREFIX \
AUTORENEW__INTAKE__MAX_WAIT_SECS=1 \
AUTORENEW__STRIPE__MAX_REQUESTS_PER_SECOND=1000 \
AUTORENEW__STRIPE__WEBHOOK_SECRETS=whsec_schemathesis \
AUTORENEW__LOG__FILTER=warn \
  "$BIN" --config config.toml run --sim-listen 127.0.0.1:0 >"$WORK/autorenew.log" 2>&1 &
PID=$!

ready=
for _ in $(seq 1 120); do
  if curl -fsS "$BASE/readyz" >/dev/null 2>&1; then ready=1; break; fi
  kill -0 "$PID" 2>/dev/null || { echo "autorenew run exited before it was ready"; exit 1; }
  sleep 0.5
done
[ -n "$ready" ] || { echo "autorenew run was not ready within 60 s"; exit 1; }

# --- the test -----------------------------------------------------------------------------------
log "schemathesis, up to $MAX_EXAMPLES examples per operation"
args=(
  run "$BASE/openapi.json"
  --url "$BASE"
  --checks not_a_server_error,status_code_conformance,content_type_conformance,response_headers_conformance,response_schema_conformance
  --phases examples,coverage,fuzzing
  --max-examples "$MAX_EXAMPLES"
  --workers 2
  --request-timeout 10
  --suppress-health-check all
  --no-shrink
  --report junit --report-dir "$WORK/report"
)
[ -n "$SEED" ] && args+=(--seed "$SEED")
# From the scratch folder, so schemathesis's own cache (.schemathesis/) stays out of the work tree.
HOOKS_DIR=$PWD/scripts
cd "$WORK"
PYTHONPATH=$HOOKS_DIR SCHEMATHESIS_HOOKS=schemathesis_hooks \
NO_COLOR=1 "$VENV/bin/schemathesis" "${args[@]}"
