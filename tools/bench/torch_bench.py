#!/usr/bin/env python3
"""The PyTorch/diffusers side of `stepstone bench`: the same cases, shapes and timing rules, the same JSON.

SD 1.5 UNet, AnimateDiff v2 motion modules and the SD VAE at full size with random weights (diffusers'
own initialisation, seeded); CLIP's text encoder with SD 1.5's configuration. Never a runtime or CI
dependency: a tool for docs/PERFORMANCE.md. Versions are pinned in tools/bench/requirements.txt.

    .venv/bin/python tools/bench/torch_bench.py --case unet --size 32 --repeat 3 --threads 2
    .venv/bin/python tools/bench/torch_bench.py --device cuda --dtype f16 --case video-unet --size 64

Each case runs once untimed (warm-up), then --repeat timed runs; every timed run ends when the output is on
the host (CUDA: synchronised), as in stepstone's bench.
"""

import argparse
import json
import os
import resource
import subprocess
import sys
import time

CASES = ["unet", "video-unet", "vae-decode", "clip", "conv", "matmul", "attention"]


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--case", action="append", choices=CASES, dest="cases")
    p.add_argument("--size", type=int, default=64, help="latent side (pixels / 8)")
    p.add_argument("--frames", type=int, default=16, help="frames per clip (video-unet)")
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    p.add_argument("--dtype", choices=["f32", "f16", "bf16"], default="f32")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: all cores)")
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args()


def unet_config():
    # SD 1.5 (runwayml/stable-diffusion-v1-5 unet/config.json).
    return dict(
        sample_size=64,
        in_channels=4,
        out_channels=4,
        down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
        block_out_channels=(320, 640, 1280, 1280),
        layers_per_block=2,
        attention_head_dim=8,
        cross_attention_dim=768,
        norm_num_groups=32,
    )


def main():
    args = parse_args()
    import torch
    from diffusers import AutoencoderKL, MotionAdapter, UNet2DConditionModel, UNetMotionModel

    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    device = torch.device(args.device)
    dtype = {"f32": torch.float32, "f16": torch.float16, "bf16": torch.bfloat16}[args.dtype]
    if args.device == "cpu" and dtype != torch.float32:
        sys.exit("torch_bench: the CPU side is f32 only (as stepstone's)")
    if args.size < 8 or args.size % 8:
        sys.exit(f"--size {args.size}: the latent side must be a multiple of 8")

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize()

    def timed(f):
        with torch.inference_mode():
            f()  # warm-up
            sync()
            runs = []
            for _ in range(max(args.repeat, 1)):
                start = time.perf_counter()
                out = f()
                sync()
                out.float().cpu()
                runs.append((time.perf_counter() - start) * 1000.0)
        return runs

    def prepare(model):
        return model.to(device=device, dtype=dtype).eval()

    def randn(*shape):
        return torch.randn(*shape, device=device, dtype=dtype)

    results = []
    for case in args.cases or ["unet", "vae-decode", "clip"]:
        n = args.size
        entry = {"case": case, "size": n}
        if case == "unet":
            unet = prepare(UNet2DConditionModel(**unet_config()))
            sample, context = randn(2, 4, n, n), randn(2, 77, 768)
            t = torch.tensor([500.0, 500.0], device=device)
            runs = timed(lambda: unet(sample, t, encoder_hidden_states=context).sample)
            del unet
        elif case == "video-unet":
            unet = UNet2DConditionModel(**unet_config())
            model = prepare(UNetMotionModel.from_unet2d(unet, MotionAdapter()))  # defaults: AnimateDiff v2
            f = args.frames
            entry["frames"] = f
            sample, context = randn(2, 4, f, n, n), randn(2, 77, 768)
            t = torch.tensor([500.0, 500.0], device=device)
            runs = timed(lambda: model(sample, t, encoder_hidden_states=context).sample)
            del unet, model
        elif case == "vae-decode":
            vae = prepare(
                AutoencoderKL(
                    in_channels=3,
                    out_channels=3,
                    down_block_types=("DownEncoderBlock2D",) * 4,
                    up_block_types=("UpDecoderBlock2D",) * 4,
                    block_out_channels=(128, 256, 512, 512),
                    layers_per_block=2,
                    latent_channels=4,
                    norm_num_groups=32,
                    sample_size=512,
                )
            )
            z = randn(1, 4, n, n)
            runs = timed(lambda: vae.decode(z).sample)
            del vae
        elif case == "clip":
            from transformers import CLIPTextConfig, CLIPTextModel  # only here: a GPU machine may lack a match

            clip = prepare(
                CLIPTextModel(
                    CLIPTextConfig(
                        vocab_size=49408,
                        hidden_size=768,
                        intermediate_size=3072,
                        num_hidden_layers=12,
                        num_attention_heads=12,
                        max_position_embeddings=77,
                        hidden_act="quick_gelu",
                    )
                )
            )
            ids = torch.full((1, 77), 49406, dtype=torch.long, device=device)
            runs = timed(lambda: clip(ids).last_hidden_state)
            del clip
        elif case == "conv":  # stepstone's CONV_CASE: 3x3, 320 -> 320 channels, batch 2
            conv = prepare(torch.nn.Conv2d(320, 320, 3, padding=1))
            x = randn(2, 320, n, n)
            runs = timed(lambda: conv(x))
            del conv
        elif case == "matmul":  # the same arithmetic as one product
            a, b = randn(2 * n * n, 2880), randn(2880, 320)
            runs = timed(lambda: a @ b)
        elif case == "attention":  # stepstone's ATTENTION_CASE: [2, 8, size^2, 40], SDPA
            q, k, v = (randn(2, 8, n * n, 40) for _ in range(3))
            runs = timed(lambda: torch.nn.functional.scaled_dot_product_attention(q, k, v))
        else:
            raise AssertionError(case)
        if case in ("conv", "matmul"):
            entry["gflops"] = round(2.0 * 2 * n * n * 2880 * 320 / (min(runs) / 1000.0) / 1e9, 1)
        if case == "attention":
            entry["gflops"] = round(4.0 * 16 * (n * n) ** 2 * 40 / (min(runs) / 1000.0) / 1e9, 1)
        ordered = sorted(runs)
        entry.update(runs_ms=runs, min_ms=ordered[0], median_ms=ordered[len(ordered) // 2])
        if device.type == "cuda":
            entry["peak_device_mb"] = torch.cuda.max_memory_allocated() / 2**20
            torch.cuda.reset_peak_memory_stats()
        results.append(entry)

    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    except OSError:
        commit = None
    import diffusers

    report = {
        "implementation": "pytorch",
        "device": args.device,
        "adapter": torch.cuda.get_device_name() if device.type == "cuda" else None,
        "dtype": args.dtype,
        "threads": torch.get_num_threads(),
        "attention": "sdpa",
        "weights": "random (full-size SD 1.5 configurations)",
        "peak_rss_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
        "torch": torch.__version__,
        "diffusers": diffusers.__version__,
        "cpu_s": sum(os.times()[:2]),
        "commit": commit or None,
        "cases": results,
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
