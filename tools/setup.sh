#!/usr/bin/env bash
# Installs the system packages stepstone needs to build, test and run on Debian/Ubuntu.
# Idempotent: packages already present are skipped, so it is cheap to run every time.
set -euo pipefail

packages=(
  build-essential pkg-config clang libclang-dev          # C toolchain; bindgen for ffmpeg-sys-next
  libavcodec-dev libavformat-dev libavutil-dev           # FFmpeg, used through ffmpeg-next
  libavfilter-dev libavdevice-dev libswscale-dev libswresample-dev
  libvulkan1 mesa-vulkan-drivers                         # a (software) Vulkan adapter for wgpu
  libxkbcommon-x11-0 libx11-6 libxcursor1 libxrandr2 libxi6 libwayland-client0
  xvfb xauth                                             # headless window tests
  ca-certificates curl
)

missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done

if [ ${#missing[@]} -gt 0 ]; then
  echo "stepstone setup: installing ${missing[*]}"
  sudo=""
  if [ "$(id -u)" -ne 0 ]; then sudo="sudo"; fi
  export DEBIAN_FRONTEND=noninteractive
  $sudo apt-get update -qq
  $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

# The Rust toolchain (rustup), if this machine has none yet.
if ! command -v cargo >/dev/null 2>&1; then
  if [ -x "$HOME/.cargo/bin/cargo" ]; then
    :
  else
    echo "stepstone setup: installing the Rust toolchain with rustup"
    curl --proto '=https' --tlsv1.2 -sSf https://sh.rustup.rs | sh -s -- -y --profile minimal --component rustfmt,clippy
  fi
fi

# rustfmt and clippy (the test command checks the formatting; contributors run clippy), where rustup
# manages a toolchain that lacks them.
[ -f "$HOME/.cargo/env" ] && . "$HOME/.cargo/env"
if command -v rustup >/dev/null 2>&1; then
  for component in rustfmt clippy; do
    if ! rustup component list --installed 2>/dev/null | grep -q "^$component"; then
      echo "stepstone setup: adding the Rust component $component"
      rustup component add "$component"
    fi
  done
fi
