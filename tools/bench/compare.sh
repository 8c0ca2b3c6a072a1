#!/usr/bin/env bash
# Runs stepstone's bench and the PyTorch/diffusers one back to back on the same cases and prints a table of
# ratios (stepstone / PyTorch). Settings from the environment:
#   CASES="unet vae-decode clip"  SIZE=32  FRAMES=16  REPEAT=3  THREADS=<all cores>
#   DEVICE=cpu|wgpu|vulkan|cuda (stepstone)  TORCH_DEVICE=cpu|cuda (default: cpu for cpu, else cuda)
#   DTYPE=f32|f16|bf16  OUT_DIR=out/bench  PYTHON=.venv/bin/python  STEPSTONE=<built binary>
# The PyTorch side needs tools/bench/requirements.txt in $PYTHON's environment. The two runs never overlap.
set -euo pipefail
cd "$(dirname "$0")/../.."
CASES=${CASES:-"unet vae-decode clip"}
SIZE=${SIZE:-32}
FRAMES=${FRAMES:-16}
REPEAT=${REPEAT:-3}
THREADS=${THREADS:-$(nproc)}
DEVICE=${DEVICE:-cpu}
DTYPE=${DTYPE:-f32}
OUT_DIR=${OUT_DIR:-out/bench}
PYTHON=${PYTHON:-.venv/bin/python}
if [ -z "${TORCH_DEVICE:-}" ]; then
  if [ "$DEVICE" = cpu ]; then TORCH_DEVICE=cpu; else TORCH_DEVICE=cuda; fi
fi
mkdir -p "$OUT_DIR"
if [ -z "${STEPSTONE:-}" ]; then
  cargo build --locked --bin stepstone
  STEPSTONE="${CARGO_TARGET_DIR:-target}/debug/stepstone"
fi
case_args=()
for c in $CASES; do case_args+=(--case "$c"); done

echo "stepstone bench: $CASES at $SIZE, $DEVICE $DTYPE, $THREADS threads" >&2
RAYON_NUM_THREADS=$THREADS "$STEPSTONE" bench "${case_args[@]}" --size "$SIZE" --frames "$FRAMES" \
  --repeat "$REPEAT" --device "$DEVICE" --dtype "$DTYPE" > "$OUT_DIR/stepstone.json"
echo "PyTorch bench: $CASES at $SIZE, $TORCH_DEVICE $DTYPE, $THREADS threads" >&2
"$PYTHON" tools/bench/torch_bench.py "${case_args[@]}" --size "$SIZE" --frames "$FRAMES" --repeat "$REPEAT" \
  --device "$TORCH_DEVICE" --dtype "$DTYPE" --threads "$THREADS" > "$OUT_DIR/torch.json"
"$PYTHON" tools/bench/table.py "$OUT_DIR/stepstone.json" "$OUT_DIR/torch.json" | tee "$OUT_DIR/table.md"
