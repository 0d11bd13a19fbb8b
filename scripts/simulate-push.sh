#!/usr/bin/env bash
# The deterministic simulation of the partner push: SCHEDULES schedules (default 200), schedule
# i with seed SEED+i (default: the binary's base seed). The last line is
# `push simulation: N schedules, V violations`; a violation prints its seed, and
# `scripts/simulate-push.sh 1 SEED` replays that schedule exactly (SIM_TRACE=1 prints each
# schedule's summary). PROFILE=release builds optimised.
set -euo pipefail
cd "$(dirname "$0")/.."
export SIM_PUSH_SCHEDULES="${1:-${SIM_PUSH_SCHEDULES:-200}}"
if [[ $# -ge 2 ]]; then
    export SIM_SEED="$2"
fi
profile=()
if [[ "${PROFILE:-debug}" == release ]]; then
    profile=(--release)
fi
cargo test --quiet "${profile[@]}" --no-run --test simulate_push
binary=$(cargo test --quiet "${profile[@]}" --no-run --test simulate_push --message-format=json |
    grep -o '"executable":"[^"]*/simulate_push-[^"]*"' | tail -n1 | cut -d'"' -f4)
exec "$binary"
