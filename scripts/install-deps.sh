#!/usr/bin/env bash
# Installs what SecureComm needs to build and test on Debian/Ubuntu, and nothing that is already
# there. Safe to run repeatedly. Needs root or sudo for the system packages.
set -euo pipefail

packages=(
  build-essential pkg-config cmake   # opus builds libopus from source with cmake
  libasound2-dev                     # cpal (voice) on ALSA
  espeak-ng sox                      # voice quality bench: test speech, resampling to 48/16 kHz
  libssl-dev                         # TLS/SQLCipher builds
  nftables iproute2 conntrack ethtool # netsim namespaces, NAT routers, NAT mapping flushes,
                                     #   checksums computed before user-space link impairment
  libgl1 libegl1 libgl1-mesa-dri     # the desktop window draws with OpenGL (Mesa in software
  libxkbcommon-x11-0 libxcursor1     #   when there is no GPU) on X11; winit loads these
  libxrandr2 libxi6 libx11-xcb1      #   at run time
  xvfb xauth                         # the window test and screenshots run on a virtual display
)

missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done

if [ ${#missing[@]} -gt 0 ]; then
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  echo "installing: ${missing[*]}"
  $sudo apt-get update -q
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -q --no-install-recommends "${missing[@]}"
fi

if ! command -v cargo >/dev/null 2>&1; then
  if [ -x "$HOME/.cargo/bin/cargo" ]; then
    echo "cargo is in ~/.cargo/bin; add it to PATH (source ~/.cargo/env)"
  else
    echo "installing the Rust toolchain with rustup"
    command -v curl >/dev/null 2>&1 || { ${sudo:-} apt-get install -y -q curl ca-certificates; }
    curl --proto '=https' --tlsv1.2 -sSf https://sh.rustup.rs | sh -s -- -y --profile minimal --component clippy,rustfmt
  fi
fi
