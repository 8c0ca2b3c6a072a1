#!/usr/bin/env bash
# Prepares, on this (GPU-less) machine, what tools/bench/gpu.sh needs on a GPU machine that has a driver,
# CUDA, PyTorch and no Rust, no network: the stepstone-bench binary built with the Vulkan SPIR-V compiler
# (stripped, xz-compressed, into .gpu/), the Vulkan/EGL loader packages (.gl/) and the wheels of the
# PyTorch side that such a machine lacks (.whl/: diffusers 0.27.2 and the huggingface_hub it imports).
# All three folders are git-ignored; carry them: carry = [".gpu", ".gl", ".whl"].
#   GPU_TARGET_DIR  the cargo target dir for the GPU build (default /var/cache/stepstone/target-gpu: burn is
#                   rebuilt once with `vulkan`, ~22 min on 2 cores; later builds reuse it)
set -euo pipefail
cd "$(dirname "$0")/../.."
target=${GPU_TARGET_DIR:-/var/cache/stepstone/target-gpu}
CARGO_TARGET_DIR="$target" cargo build --locked --features vulkan,bench-bin --bin stepstone-bench
mkdir -p .gpu
strip -o .gpu/stepstone-bench "$target/debug/stepstone-bench"
xz -T0 -6 -f .gpu/stepstone-bench
git rev-parse --short HEAD > .gpu/commit
# Nothing but the C runtime may be needed there.
if ldd "$target/debug/stepstone-bench" | grep -vE 'linux-vdso|libgcc_s|libm\.so|libc\.so|ld-linux' | grep -q .; then
  echo "pack-gpu: stepstone-bench links more than the C runtime:" >&2
  ldd "$target/debug/stepstone-bench" >&2
  exit 1
fi
mkdir -p .whl
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
  -d .whl diffusers==0.27.2 huggingface_hub==0.23.4 importlib_metadata==7.1.0
mkdir -p .gl /tmp/amd64/partial
o='-oAPT::Architecture=amd64 -oAPT::Architectures=amd64 -oDir::State::Lists=/tmp/amd64'
apt-get $o update -qq
(cd .gl && apt-get $o download -qq libvulkan1 libegl1 libglvnd0 libopengl0 libgl1 libglx0 libgles2)
du -shc .gpu .gl .whl
