"""Trains the demo world's SD-1.5-layout models on this CPU (issue 16; in progress): stage `vae` (AutoencoderKL,
kl-f8, 4 latent channels) and stage `sd` (CLIPTextModel + UNet2DConditionModel on the frozen VAE's latents, 10%
empty captions for guidance), written as a diffusers StableDiffusionPipeline folder that Load SD 1.5 Checkpoint
reads. The motion module and the reward model come next (README.md here).

    .venv/bin/python tools/demo_world/train.py --out /tmp/demo-world --vae-steps 3000 --sd-steps 10000

Every stage is seeded; the losses are printed every `--log` steps with the time taken (for docs/PERFORMANCE.md).
"""

import argparse
import json
import os
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(os.path.dirname(HERE), "fixtures"))

import world  # noqa: E402

VAE_CONFIG = dict(in_channels=3, out_channels=3, down_block_types=["DownEncoderBlock2D"] * 4,
                  up_block_types=["UpDecoderBlock2D"] * 4, block_out_channels=[16, 32, 32, 64], layers_per_block=1,
                  latent_channels=4, norm_num_groups=16, sample_size=64, scaling_factor=0.18215)
UNET_CONFIG = dict(sample_size=8, in_channels=4, out_channels=4, block_out_channels=[32, 64], layers_per_block=1,
                   down_block_types=["CrossAttnDownBlock2D", "DownBlock2D"],
                   up_block_types=["UpBlock2D", "CrossAttnUpBlock2D"], attention_head_dim=8, norm_num_groups=16,
                   cross_attention_dim=64)
TEXT_WIDTH = 64


def images(seed, start, count):
    """A batch of world images as float [-1, 1] [N, 3, 64, 64] and their captions."""
    import torch

    pairs = [world.sample(seed, start + i) for i in range(count)]
    x = torch.from_numpy(np.stack([p[0] for p in pairs])).permute(0, 3, 1, 2).float() / 127.5 - 1.0
    return x, [p[1] for p in pairs]


def log(stage, step, total, loss, t0):
    print(f"{stage} {step}/{total} loss {loss:.4f} ({time.time() - t0:.0f} s)", flush=True)


def train_vae(out, steps, batch, every):
    import torch
    from diffusers import AutoencoderKL

    torch.manual_seed(1601)
    vae = AutoencoderKL(**VAE_CONFIG)
    opt = torch.optim.AdamW(vae.parameters(), lr=1e-3, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, max(steps, 1), eta_min=1e-4)
    t0 = time.time()
    for step in range(1, steps + 1):
        x, _ = images(16, step * batch, batch)
        post = vae.encode(x).latent_dist
        rec = vae.decode(post.sample()).sample
        loss = (rec - x).abs().mean() + 1e-6 * post.kl().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        if step % every == 0 or step == steps:
            log("vae", step, steps, float(loss), t0)
    vae.eval()
    vae.save_pretrained(os.path.join(out, "vae"), safe_serialization=True)
    return vae


def train_sd(out, vae, steps, batch, every):
    import torch
    from diffusers import DDIMScheduler, DDPMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    import demo
    import make_fixtures as mf

    tok_dir = os.path.join(out, "tokenizer")
    n_vocab = demo.make_tokenizer(tok_dir)
    tokenizer = CLIPTokenizer.from_pretrained(tok_dir)
    ids = tokenizer(world.words(), add_special_tokens=False).input_ids
    print(f"tokenizer: {n_vocab} tokens; the world's words take {sum(map(len, ids))} tokens for {len(ids)} words")
    torch.manual_seed(1602)
    text_encoder = CLIPTextModel(CLIPTextConfig(**dict(
        mf.CLIP_CONFIG, hidden_size=TEXT_WIDTH, intermediate_size=2 * TEXT_WIDTH, vocab_size=n_vocab,
        bos_token_id=n_vocab - 2, eos_token_id=n_vocab - 1, pad_token_id=n_vocab - 1, projection_dim=TEXT_WIDTH)))
    unet = UNet2DConditionModel(**UNET_CONFIG)
    noise_sched = DDPMScheduler(**{k: v for k, v in mf.DDIM_CASES["animatediff"].items()
                                   if k not in ("set_alpha_to_one", "timestep_spacing")})
    params = list(unet.parameters()) + list(text_encoder.parameters())
    opt = torch.optim.AdamW(params, lr=5e-4, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, max(steps, 1), eta_min=5e-5)
    scale = vae.config.scaling_factor
    t0 = time.time()
    for step in range(1, steps + 1):
        x, captions = images(17, step * batch, batch)
        captions = ["" if (step * batch + i) % 10 == 0 else c for i, c in enumerate(captions)]
        with torch.no_grad():
            z = vae.encode(x).latent_dist.sample() * scale
        tokens = tokenizer(captions, padding="max_length", max_length=77, truncation=True, return_tensors="pt")
        context = text_encoder(tokens.input_ids).last_hidden_state
        noise = torch.randn_like(z)
        t = torch.randint(0, noise_sched.config.num_train_timesteps, (batch,))
        pred = unet(noise_sched.add_noise(z, noise, t), t, context).sample
        loss = (pred - noise).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        if step % every == 0 or step == steps:
            log("sd", step, steps, float(loss), t0)
    unet.eval()
    text_encoder.eval()
    pipe = StableDiffusionPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
                                   scheduler=DDIMScheduler(**mf.DDIM_CASES["animatediff"]), safety_checker=None,
                                   feature_extractor=None, requires_safety_checker=False)
    pipe.save_pretrained(out, safe_serialization=True)
    return pipe


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True)
    parser.add_argument("--vae-steps", type=int, default=3000)
    parser.add_argument("--sd-steps", type=int, default=10000)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--log", type=int, default=100)
    parser.add_argument("--sample", help="after training, write a grid of samples for two prompts to this PNG")
    args = parser.parse_args()
    import torch

    torch.set_num_threads(2)
    os.makedirs(args.out, exist_ok=True)
    t0 = time.time()
    vae = train_vae(args.out, args.vae_steps, args.batch, args.log)
    pipe = train_sd(args.out, vae, args.sd_steps, 2 * args.batch, args.log)
    print(f"trained in {time.time() - t0:.0f} s")
    with open(os.path.join(args.out, "training.json"), "w") as f:
        json.dump(dict(vae_steps=args.vae_steps, sd_steps=args.sd_steps, batch=args.batch,
                       seconds=round(time.time() - t0)), f, indent=1)
    if args.sample:
        from PIL import Image

        rows = []
        for prompt in ["a red ball on green grass", "a yellow star in the night sky"]:
            g = torch.Generator().manual_seed(0)
            out = pipe([prompt] * 4, height=64, width=64, num_inference_steps=25, guidance_scale=7.5, generator=g,
                       output_type="np").images
            rows.append(np.concatenate(list((out * 255).round().astype(np.uint8)), axis=1))
        Image.fromarray(np.concatenate(rows, axis=0)).resize((4 * 128, 2 * 128), Image.NEAREST).save(args.sample)


if __name__ == "__main__":
    main()
