#!/usr/bin/env bash
# A short fuzzing run of every cargo-fuzz target (fuzz/): a smoke test that fits CI, not a
# campaign. Installs cargo-fuzz when it is missing (it stays in ~/.cargo/bin), builds the targets
# once, then runs each for FUZZ_SECONDS (default 20). Exits non-zero when a target crashes (a
# panic or a failed assertion); the input that did it is left in fuzz/artifacts/<target>/.
#
# Runs on the stable toolchain: `--sanitizer none` needs no nightly-only flag (AddressSanitizer
# would, and safe Rust gains little from it). The targets' own assertions and Rust's overflow
# and debug assertions (on in fuzz/Cargo.toml's release profile) are the oracles.
#
#   scripts/fuzz-smoke.sh                 # every target, 20 s each
#   FUZZ_SECONDS=300 scripts/fuzz-smoke.sh request_parsing
set -euo pipefail
cd "$(dirname "$0")/.."

seconds="${FUZZ_SECONDS:-20}"
cargo_fuzz_version="0.13.2"

if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "== installing cargo-fuzz $cargo_fuzz_version"
  cargo install cargo-fuzz --locked --version "$cargo_fuzz_version"
fi

targets=("$@")
if [ "${#targets[@]}" -eq 0 ]; then
  mapfile -t targets < <(cargo fuzz list)
fi

echo "== building ${targets[*]} (sanitizer none)"
cargo fuzz build --sanitizer none

for target in "${targets[@]}"; do
  corpus="fuzz/corpus/$target"
  mkdir -p "$corpus"
  # Committed seeds (valid requests) and a dictionary start a short run past the JSON syntax.
  extra=()
  [ -d "fuzz/seeds/$target" ] && extra+=("fuzz/seeds/$target")
  flags=(-max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1)
  [ "$target" = request_parsing ] && flags+=(-dict=fuzz/request.dict)
  echo "== fuzzing $target for ${seconds} s"
  if ! cargo fuzz run --sanitizer none "$target" "$corpus" "${extra[@]}" -- "${flags[@]}"; then
    echo "fuzz target $target failed; its input is in fuzz/artifacts/$target/" >&2
    echo "reproduce: cargo fuzz run --sanitizer none $target fuzz/artifacts/$target/<file>" >&2
    exit 1
  fi
done
echo "== fuzz smoke: ${#targets[@]} targets, no crash"
