#!/usr/bin/env bash
# Runs every fuzz target for N seconds (default 60) and prints how many inputs each executed.
# Needs cargo-fuzz (`cargo install cargo-fuzz`). On a stable toolchain RUSTC_BOOTSTRAP=1 lets it use
# the sanitizer flags it needs. Usage: scripts/fuzz.sh [SECONDS] [TARGET...]
set -euo pipefail
cd "$(dirname "$0")/../fuzz"
secs=${1:-60}
shift || true
targets=("$@")
[ ${#targets[@]} -gt 0 ] || mapfile -t targets < <(RUSTC_BOOTSTRAP=1 cargo fuzz list)
export RUSTC_BOOTSTRAP=1
cargo fuzz build 2>&1 | grep -E "^error" && exit 1 || true
for t in "${targets[@]}"; do
  mkdir -p "corpus/$t"
  [ -d "regressions/$t" ] && cp -n regressions/"$t"/* "corpus/$t/" 2>/dev/null || true
  out=$(cargo fuzz run "$t" -- -max_total_time="$secs" -print_final_stats=1 2>&1) || {
    echo "$out" | tail -40
    echo "FUZZ TARGET $t FAILED" >&2
    exit 1
  }
  execs=$(echo "$out" | grep -Eo 'stat::number_of_executed_units: *[0-9]+' | grep -Eo '[0-9]+$' || echo "?")
  printf '%-24s %6ss  %12s executions  ok\n' "$t" "$secs" "$execs"
done
