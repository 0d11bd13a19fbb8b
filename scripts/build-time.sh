#!/usr/bin/env bash
# Build-time figures (docs/performance.md, "Build time: the workspace"): for each commit given,
# in a worktree and target directory of its own, a clean `cargo build --release`, an incremental
# one after touching the worker's job file, the tests' build and an incremental one. Prints wall
# and CPU (user + sys) seconds and the load average; CPU is the figure to compare on a shared
# machine.
#
#   scripts/build-time.sh 9780a16 main
set -euo pipefail
cd "$(dirname "$0")/.."
[ $# -ge 1 ] || { echo "usage: $0 COMMIT [COMMIT…]" >&2; exit 2; }
work=$(mktemp -d)
cleanup() {
  for tree in "$work"/tree-*; do [ -d "$tree" ] && git worktree remove --force "$tree" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT

timed() { # label command…
  local label=$1; shift
  /usr/bin/time -f "%e %U %S" -o "$work/time" "$@" >/dev/null 2>&1
  read -r wall user sys < "$work/time"
  printf '  %-58s wall %7.1f s  cpu %7.1f s  load %s\n' "$label" "$wall" "$(echo "$user + $sys" | bc)" \
    "$(cut -d' ' -f1 /proc/loadavg)"
}

for commit in "$@"; do
  tree="$work/tree-$(git rev-parse --short "$commit")"
  git worktree add -q --detach "$tree" "$commit"
  export CARGO_TARGET_DIR="$tree/target"
  # The job file: src/worker/job.rs before the workspace, src/worker/creation.rs after it.
  file=src/worker/creation.rs; [ -f "$tree/$file" ] || file=src/worker/job.rs
  echo "$commit ($(git rev-parse --short "$commit"))"
  (cd "$tree" && cargo fetch -q)
  touch_job() { echo "// touched" >> "$tree/$file"; }
  restore_job() { git -C "$tree" checkout -q -- "$file"; }
  (cd "$tree" && timed "clean cargo build --release" cargo build --release)
  touch_job; (cd "$tree" && timed "incremental release, $file touched" cargo build --release); restore_job
  (cd "$tree" && timed "tests' build (cargo test --no-run --workspace)" cargo test --no-run --workspace --all-features)
  touch_job; (cd "$tree" && timed "incremental tests' build, $file touched" cargo test --no-run --workspace --all-features); restore_job
done
