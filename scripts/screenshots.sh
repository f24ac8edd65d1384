#!/usr/bin/env bash
# Starts the real SecureComm window under Xvfb (a virtual X display, software OpenGL) and saves
# the main screens as PNGs into docs/screenshots/ (or the folder given). The window runs on a
# freshly seeded community of three real nodes on loopback; nothing leaves this machine.
# Usage: scripts/screenshots.sh [OUT_DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
out="${1:-docs/screenshots}"
scripts/install-deps.sh
missing=()
for p in xvfb xauth; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  $sudo apt-get update -q
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -q --no-install-recommends "${missing[@]}"
fi
[ -f "$HOME/.cargo/env" ] && . "$HOME/.cargo/env"
cargo build --release -p securecomm-app --bin securecomm
target="${CARGO_TARGET_DIR:-target}"
xvfb-run -a -s "-screen 0 1280x800x24" "$target/release/securecomm" --screenshots "$out"
