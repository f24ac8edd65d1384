#!/usr/bin/env bash
# Regenerates the [[bin]] list of fuzz/Cargo.toml from fuzz/fuzz_targets/*.rs.
set -euo pipefail
cd "$(dirname "$0")/../fuzz"
sed -i '/^\[\[bin\]\]/,$d' Cargo.toml
for f in fuzz_targets/*.rs; do
  n=$(basename "$f" .rs)
  printf '[[bin]]\nname = "%s"\npath = "%s"\ntest = false\ndoc = false\nbench = false\n\n' "$n" "$f" >> Cargo.toml
done
sed -i -e :a -e '/^\n*$/{$d;N;ba' -e '}' Cargo.toml
