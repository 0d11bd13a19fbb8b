#!/usr/bin/env bash
# The deterministic simulation of the job path: SCHEDULES schedules (default 500),
# schedule i with seed SEED+i (default: the binary's base seed). The last line is
# `simulation: N schedules, V violations`; a violation prints its seed and trace, and
# `scripts/simulate.sh 1 SEED` replays that schedule exactly.
# Extra: SIM_TRACE=1 prints every schedule's trace, SIM_TWICE=1 runs each twice and compares,
# SIM_THREADS=N runs them on N threads (default: one a core; the output is the same).
# PROFILE=release builds optimised (faster for 10,000s of schedules).
set -euo pipefail
cd "$(dirname "$0")/.."
export SIM_SCHEDULES="${1:-${SIM_SCHEDULES:-500}}"
if [[ $# -ge 2 ]]; then
    export SIM_SEED="$2"
fi
profile=()
if [[ "${PROFILE:-debug}" == release ]]; then
    profile=(--release)
fi
# Build first (errors show as usual), then run the binary itself, so that the last line is the
# simulation's own, not cargo's.
cargo test --quiet "${profile[@]}" --no-run --test simulate
binary=$(cargo test --quiet "${profile[@]}" --no-run --test simulate --message-format=json |
    grep -o '"executable":"[^"]*/simulate-[^"]*"' | tail -n1 | cut -d'"' -f4)
exec "$binary"
