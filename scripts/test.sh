#!/usr/bin/env bash
# Runs every test in the workspace once and fails if any test fails or if no test ran.
# This is what `make test` and CI (.ci/run) call.
set -euo pipefail
cd "$(dirname "$0")/.."
[ -f "$HOME/.cargo/env" ] && . "$HOME/.cargo/env"

log=$(mktemp)
trap 'rm -f "$log"' EXIT

if command -v cargo-nextest >/dev/null 2>&1; then
  cargo nextest run --workspace --no-fail-fast --profile ci 2>&1 | tee "$log"
  ran=$(grep -Eo '[0-9]+ tests? run' "$log" | tail -1 | grep -Eo '^[0-9]+' || echo 0)
  # nextest does not run doc tests.
  cargo test --workspace --doc 2>&1 | tee -a "$log"
else
  cargo test --workspace --no-fail-fast 2>&1 | tee "$log"
  ran=$(grep -Eo 'test result: [a-zA-Z]+\. [0-9]+ passed' "$log" | grep -Eo '[0-9]+ passed' | awk '{s+=$1} END {print s+0}')
fi

if [ "${ran:-0}" -eq 0 ]; then
  echo "error: no tests ran" >&2
  exit 1
fi
echo "tests passed: $ran"
