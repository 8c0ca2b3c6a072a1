#!/usr/bin/env bash
# One prepared benchmark run on a GPU machine (about 8 minutes): stepstone on Vulkan (SPIR-V kernels, f32)
# and PyTorch + diffusers on CUDA (fp16 and fp32, SDPA) over the same full-size cases, JSON and a table
# under $OUT. Needs what tools/bench/pack-gpu.sh prepared, carried: .gpu, .gl, .whl.
#   DEADLINE  seconds the whole script may take (default 540: a device call may run 600); each case gets
#             its own limit, cut to what is left, and a case that cannot start in time is skipped
set -uo pipefail
START=$(date +%s)
DEADLINE=${DEADLINE:-540}
left() { echo $(( DEADLINE - ($(date +%s) - START) )); }
limit() {  # the smaller of $1 and what is left (0: skip)
  local l; l=$(left)
  if [ "$l" -lt 20 ]; then echo 0; elif [ "$1" -lt "$l" ]; then echo "$1"; else echo "$l"; fi
}
cd "$(dirname "$0")/../.."
OUT=${OUT:-out/gpu-bench}
mkdir -p "$OUT"
log() { echo "[gpu.sh $(date +%T)] $*" | tee -a "$OUT/log.txt" >&2; }
export XDG_RUNTIME_DIR=${XDG_RUNTIME_DIR:-/tmp/xdg}
mkdir -p "$XDG_RUNTIME_DIR" && chmod 700 "$XDG_RUNTIME_DIR"
if [ -z "${NO_LOADERS:-}" ]; then  # NO_LOADERS=1: a dry run on a machine that has its own
  for f in .gl/*.deb; do dpkg -x "$f" /; done
  ldconfig
fi
if [ -f /usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json ]; then
  export VK_DRIVER_FILES=/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json
fi
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
  || log "wheel install failed"
xz -dc .gpu/stepstone-bench.xz > /tmp/stepstone-bench && chmod +x /tmp/stepstone-bench
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"
log "commit $(cat .gpu/commit 2>/dev/null)"

# stepstone: one process per case, so that each peak is its own. Reference shapes: UNet batch 2 (CFG) and
# video UNet 2 x 16 frames (batch 32) at 64x64 latents, the VAE decode of one 64x64 latent, CLIP.
ours() {  # name, seconds, args...
  local name=$1 t; t=$(limit "$2"); shift 2
  if [ "$t" -eq 0 ]; then log "stepstone $name skipped: no time left"; return; fi
  log "stepstone $name (limit ${t}s): $*"
  timeout "$t" /tmp/stepstone-bench --device vulkan "$@" > "$OUT/ss-$name.json" 2>> "$OUT/log.txt" \
    || log "stepstone $name failed or timed out (rc $?)"
}
# The device's convolution and matmul rates at SD 1.5's first-level shape (GFLOP/s in the JSON): a quick
# check that the kernels reach the tensor cores before the long cases.
ours conv 20 --case conv --size 64 --repeat 5
ours matmul 20 --case matmul --size 64 --repeat 5
ours conv-f16 20 --case conv --size 64 --repeat 5 --dtype f16
ours matmul-f16 20 --case matmul --size 64 --repeat 5 --dtype f16
ours attention-f16 20 --case attention --size 64 --repeat 5 --dtype f16
ours unet 60 --case unet --size 64 --repeat 5
ours video 90 --case video-unet --size 64 --frames 16 --repeat 3
ours vae 45 --case vae-decode --size 64 --repeat 5
ours clip 30 --case clip --repeat 5
# f16 (parity-tested within 1e-2 on llvmpipe: tests/half_precision.rs).
ours unet-f16 45 --case unet --size 64 --repeat 5 --dtype f16
ours video-f16 60 --case video-unet --size 64 --frames 16 --repeat 3 --dtype f16

# PyTorch: fp16 (the usual GPU setting) and fp32 (the same arithmetic as ours). CLIP runs on the machine's
# own transformers; the diffusers cases on the carried diffusers 0.27.2 + huggingface_hub 0.23.4.
theirs() {  # dtype
  local t; t=$(limit 100)
  if [ "$t" -eq 0 ]; then log "pytorch $1 skipped: no time left"; return; fi
  log "pytorch $1 (limit ${t}s)"
  PYTHONPATH=/tmp/site timeout "$t" python3 tools/bench/torch_bench.py --device cuda --dtype "$1" --size 64 \
    --frames 16 --repeat 5 --case conv --case matmul --case attention --case unet --case video-unet --case vae-decode > "$OUT/pt-$1.json" 2>> "$OUT/log.txt" \
    || log "pytorch $1 failed (rc $?)"
}
theirs f16
theirs f32
# Last, with what is left: the whole I4VGen run at the reference settings (16 x 512x512, 25 steps).
ours i4vgen 300 --case i4vgen --size 64 --frames 16 --steps 25 --warmup 0 --repeat 1
python3 - "$OUT" <<'PY' > "$OUT/table.md" 2>> "$OUT/log.txt"
import json, os, sys
out = sys.argv[1]
def load(name):
    try:
        return json.load(open(os.path.join(out, name)))
    except (OSError, ValueError):
        return None
torch = {d: load(f"pt-{d}.json") for d in ("f16", "f32")}
print("| case | stepstone vulkan ms (dtype) | PyTorch f32 ms | PyTorch f16 ms | ours / f32 | ours / f16 | ours peak MB (est.) |")
print("|---|---|---|---|---|---|---|")
for name in ("conv", "conv-f16", "matmul", "matmul-f16", "attention-f16", "unet", "unet-f16", "video", "video-f16", "vae", "clip", "i4vgen"):
    ours = load(f"ss-{name}.json")
    if not ours:
        print(f"| {name} | failed | | | | | |")
        continue
    c = ours["cases"][0]
    rate = f', {c["gflops"]} GFLOP/s' if "gflops" in c else ""
    row = [c["case"], f'{c["min_ms"]:.1f} ({ours["dtype"]}{rate})']
    for d in ("f32", "f16"):
        t = torch[d] and next((x for x in torch[d]["cases"] if x["case"] == c["case"]), None)
        row.append(f'{t["min_ms"]:.1f}' if t else "-")
    for d in ("f32", "f16"):
        t = torch[d] and next((x for x in torch[d]["cases"] if x["case"] == c["case"]), None)
        row.append(f'{c["min_ms"] / t["min_ms"]:.2f}x' if t else "-")
    row.append(str(c.get("estimated_peak_mb", "-")))
    print("| " + " | ".join(row) + " |")
PY
cat "$OUT/table.md"
log done
