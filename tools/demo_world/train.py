"""Trains the demo world's models on this CPU (issue 16) and writes them in the formats stepstone's loaders read:

  sd15-tiny/          a diffusers StableDiffusionPipeline folder: AutoencoderKL (kl-f8, 4 latent channels),
                      CLIPTextModel + the small CLIP BPE of tools/fixtures/demo.py, UNet2DConditionModel, DDIM
                      scheduler with AnimateDiff's settings (stages `vae`, `vae_objects` that continues it with the
                      loss weighted towards the objects, then `sd`);
  mm_tiny_v2.ckpt     an AnimateDiff v2 motion module in the original .ckpt layout, trained on the world's clips
                      with the image UNet and the text encoder frozen, as AnimateDiff trains (stage `motion`);
  ImageReward-tiny/   ImageReward.pt + med_config.json + vocab.txt + image_reward_config.json: the image-reward
                      package's ImageReward class at tiny widths, trained to rank the image that fits a caption
                      above one that differs in one thing (colour, shape, background, count), stage `reward`.

    .venv/bin/python tools/demo_world/train.py --out /tmp/world            # every stage, in order (~2.5 h)
    .venv/bin/python tools/demo_world/train.py --out /tmp/world --stages motion,reward

A later stage reads what the earlier ones wrote under --out. Every stage is seeded; losses are printed every --log
steps with the time taken, and stage times and final losses go to --out/training.json (docs/PERFORMANCE.md).
Weights are stored as float16 (the loaders widen them), which keeps the whole set small enough for git. The
default step counts are those of the installed weights (tools/demo_world/training.json, on 2 cores).
"""

import argparse
import json
import math
import os
import random
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
# Cross-attention at both levels, 2 heads (diffusers reads SD's attention_head_dim as the number of heads): heads
# of 16 and 32 channels; 8 heads of 4 channels at one level bound colours to objects too weakly.
UNET_CONFIG = dict(sample_size=8, in_channels=4, out_channels=4, block_out_channels=[32, 64], layers_per_block=1,
                   down_block_types=["CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
                   up_block_types=["CrossAttnUpBlock2D", "CrossAttnUpBlock2D"], attention_head_dim=2,
                   norm_num_groups=16, cross_attention_dim=64)
TEXT_WIDTH = 64
# The loader's defaults for an original motion-module file (no config): 8 heads, 32 groups, as AnimateDiff v2.
MOTION_HEADS = 8
MOTION_GROUPS = 32
MOTION_POSITIONS = 32
# The reward model: ImageReward's classes at tiny widths; images at the world's own size (no resampling).
REWARD_VISION = dict(image_size=64, patch_size=8, width=48, depth=2, heads=4)
REWARD_TEXT = dict(hidden_size=48, num_hidden_layers=2, num_attention_heads=4, intermediate_size=96,
                   max_position_embeddings=40)
REWARD_MLP = [48, 32, 16, 8]
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

SD_DIR, MOTION_FILE, REWARD_DIR = "sd15-tiny", "mm_tiny_v2.ckpt", "ImageReward-tiny"
STAGES = ("vae", "vae_objects", "sd", "motion", "reward")
SEEDS = dict(vae=1601, sd=1602, motion=1603, reward=1604, vae_objects=1605)
SD_SCENES = 40960  # scenes the sd stage encodes once and draws its batches from
VAE_OBJECT_WEIGHT = 8.0  # extra reconstruction weight on the pixels the objects cover (stage vae_objects)
OBJECT_WEIGHT = 4.0  # extra loss weight on latent cells the objects cover (stage sd)
TEXT_AUX_WEIGHT = 0.05  # weight of the text encoder's auxiliary attribute read-out loss (stage sd)
STREAMS = dict(vae=16, sd=17, motion=18, reward=19, scale=20, vae_objects=21, vae_check=22)  # world.sample streams, one per use


def to_model(pictures):
    """uint8 pictures [..., H, W, 3] (a list of images or clips) -> float [-1, 1] [..., 3, H, W]."""
    import torch

    return torch.from_numpy(np.stack(pictures)).movedim(-1, -3).float() / 127.5 - 1.0


def images(stream, start, count, motion_rate=0.0):
    """A batch of world images as float [-1, 1] [N, 3, 64, 64] and their captions."""
    pairs = [world.sample(stream, start + i, motion_rate) for i in range(count)]
    return to_model([p[0] for p in pairs]), [p[1] for p in pairs]


class Log:
    def __init__(self, stage, total, every):
        self.stage, self.total, self.every, self.t0 = stage, total, every, time.time()
        self.recent = []
        self.points = []

    def step(self, step, loss):
        self.recent.append(loss)
        if step % self.every == 0 or step == self.total:
            mean = float(np.mean(self.recent))
            self.recent = []
            self.points.append((step, round(mean, 5)))
            print(f"{self.stage} {step}/{self.total} loss {mean:.4f} ({time.time() - self.t0:.0f} s)", flush=True)

    def summary(self):
        return dict(steps=self.total, seconds=round(time.time() - self.t0), losses=self.points)


def save_half(model, folder):
    """config.json + float16 safetensors, as diffusers' save_pretrained names them."""
    from safetensors.torch import save_file

    transformers_model = hasattr(model, "text_model")
    if transformers_model:
        model.config.save_pretrained(folder)
    else:
        model.save_config(folder)
    name = "model.safetensors" if transformers_model else "diffusion_pytorch_model.safetensors"
    save_file({k: v.detach().half().contiguous() for k, v in model.state_dict().items()}, os.path.join(folder, name),
              metadata={"format": "pt"})


def update(loss, opt, sched, log, step, clip=None):
    """One optimiser step on `loss` (gradients clipped to norm 1 over `clip` when given), the schedule's step, the
    log's."""
    import torch

    opt.zero_grad()
    loss.backward()
    if clip is not None:
        torch.nn.utils.clip_grad_norm_(clip, 1.0)
    opt.step()
    sched.step()
    log.step(step, float(loss))


def cosine(opt, steps, floor):
    import torch

    return torch.optim.lr_scheduler.CosineAnnealingLR(opt, max(steps, 1), eta_min=floor)


def train_vae(out, steps, batch, every):
    import torch
    from diffusers import AutoencoderKL

    torch.manual_seed(SEEDS["vae"])
    vae = AutoencoderKL(**VAE_CONFIG)
    opt = torch.optim.AdamW(vae.parameters(), lr=1e-3, weight_decay=0.0)
    sched = cosine(opt, steps, 1e-4)
    log = Log("vae", steps, every)
    for step in range(1, steps + 1):
        x, _ = images(STREAMS["vae"], step * batch, batch)
        post = vae.encode(x).latent_dist
        rec = vae.decode(post.sample()).sample
        loss = (rec - x).abs().mean() + 1e-6 * post.kl().mean()
        update(loss, opt, sched, log, step)
    vae.eval()
    save_half(vae, os.path.join(out, SD_DIR, "vae"))
    return log.summary()


def scenes(stream, start, count, motion_rate=0.0):
    """A batch of world scenes (world.sample_scene): the images as float [-1, 1] [N, 3, 64, 64], the objects'
    coverage [N, 1, 64, 64], the scene dicts and their captions."""
    import torch

    pairs = [world.sample_scene(stream, start + i, motion_rate) for i in range(count)]
    picked = [p[0] for p in pairs]
    cover = torch.from_numpy(np.stack([world.coverage(s) for s in picked])).float()[:, None]
    return to_model([world.render(s) for s in picked]), cover, picked, [p[1] for p in pairs]


def colour_fit(vae, stream, count=128):
    """Share of `count` held-out scenes whose reconstruction still shows the scene's object colours
    (world.shows: the pixel checker the Rust tests use)."""
    import torch

    x, _, picked, _ = scenes(stream, 0, count)
    colours = [[o["colour"] for o in s["objects"]] for s in picked]
    with torch.no_grad():
        rec = vae.decode(vae.encode(x).latent_dist.mean).sample
    rec = ((rec.clamp(-1, 1) + 1) * 127.5).round().byte().permute(0, 2, 3, 1).numpy()
    return float(np.mean([world.shows(r, c) for r, c in zip(rec, colours)]))


def train_vae_objects(out, steps, batch, every):
    """Continues the `vae` stage's autoencoder with the reconstruction loss weighted towards the objects
    (1 + VAE_OBJECT_WEIGHT x coverage per pixel): the plain loss is mostly sky and ground, and the first VAE drew
    yellow as pink and stars as blobs, which no UNet trained on its latents can undo."""
    import torch
    from diffusers import AutoencoderKL

    folder = os.path.join(out, SD_DIR, "vae")
    vae = AutoencoderKL.from_pretrained(folder, torch_dtype=torch.float32)
    torch.manual_seed(SEEDS["vae_objects"])
    before = colour_fit(vae.eval(), STREAMS["vae_check"])
    print(f"vae before: held-out reconstructions show the scene's colours {before:.3f}", flush=True)
    vae.train()
    opt = torch.optim.AdamW(vae.parameters(), lr=5e-4, weight_decay=0.0)
    sched = cosine(opt, steps, 5e-5)
    log = Log("vae_objects", steps, every)
    for step in range(1, steps + 1):
        x, cover, _, _ = scenes(STREAMS["vae_objects"], step * batch, batch)
        post = vae.encode(x).latent_dist
        rec = vae.decode(post.sample()).sample
        weight = 1.0 + VAE_OBJECT_WEIGHT * cover
        loss = (weight * (rec - x).abs()).mean() / weight.mean() + 1e-6 * post.kl().mean()
        update(loss, opt, sched, log, step)
    vae.eval()
    after = colour_fit(vae, STREAMS["vae_check"])
    print(f"vae after: held-out reconstructions show the scene's colours {after:.3f}", flush=True)
    save_half(vae, folder)
    summary = log.summary()
    summary["colour_fit_before"], summary["colour_fit_after"] = round(before, 4), round(after, 4)
    return summary


def load_sd(out):
    import torch
    from diffusers import StableDiffusionPipeline
    from diffusers.utils import logging

    logging.set_verbosity_error()
    return StableDiffusionPipeline.from_pretrained(os.path.join(out, SD_DIR), torch_dtype=torch.float32)


def noise_scheduler():
    from diffusers import DDPMScheduler

    import make_fixtures as mf

    return DDPMScheduler(**{k: v for k, v in mf.DDIM_CASES["animatediff"].items()
                            if k not in ("set_alpha_to_one", "timestep_spacing")})


def drop_captions(captions, offset, every=10):
    """Every tenth caption empty (counted over the whole stream), so classifier-free guidance has its
    unconditional branch."""
    return ["" if (offset + i) % every == 0 else c for i, c in enumerate(captions)]


def latent_scale(vae, folder, count=512):
    """Sets the VAE's scaling_factor to 1 / (std of its latents over `count` scenes), as SD 1.5's 0.18215 was
    chosen, and writes it into the VAE's config.json: the diffusion model must see latents of unit variance, or
    its noise schedule is off by the square of the mismatch (this tiny VAE's latents have std ~1.1, so SD's own
    0.18215 would leave them at ~0.2 and drown every object in noise)."""
    import torch

    torch.manual_seed(SEEDS["sd"])
    with torch.no_grad():
        z = torch.cat([vae.encode(images(STREAMS["scale"], i, 64)[0]).latent_dist.sample()
                       for i in range(0, count, 64)])
    scale = float(f"{1.0 / float(z.std()):.5g}")
    print(f"VAE latents: std {float(z.std()):.4f} over {count} scenes -> scaling_factor {scale}")
    vae.register_to_config(scaling_factor=scale)
    vae.save_config(folder)
    return scale


def latent_set(vae, stream, count, motion_rate, chunk=64):
    """`count` scenes of `stream` encoded once: the VAE posterior's mean and std [N, 4, h, w] (a step draws a
    fresh latent from them), captions, and the objects' coverage pooled to the latent grid [N, 1, h, w].
    Rendering and encoding are most of a step's cost at these sizes, so the sd stage reuses this set."""
    import torch
    import torch.nn.functional as F

    means, stds, covers, captions = [], [], [], []
    t0 = time.time()
    with torch.no_grad():
        for start in range(0, count, chunk):
            x, cover, _, texts = scenes(stream, start, chunk, motion_rate)
            post = vae.encode(x).latent_dist
            means.append(post.mean)
            stds.append(post.std)
            covers.append(F.adaptive_avg_pool2d(cover, post.mean.shape[-2:]))
            captions += texts
    print(f"latent set: {count} scenes encoded in {time.time() - t0:.0f} s", flush=True)
    return torch.cat(means), torch.cat(stds), torch.cat(covers), captions


def caption_labels(caption):
    """What a caption names, as class indices: background, first and second object's colour and shape (the last
    class of each meaning "no second object"), motion (last class: none). None for the empty caption."""
    if not caption:
        return None
    words = caption.split()
    colours = [list(world.COLOURS).index(w) for w in words if w in world.COLOURS]
    shapes = [world.SHAPES.index(w) for w in words if w in world.SHAPES]
    background = next(i for i, (phrase, *_) in enumerate(world.BACKGROUNDS.values()) if caption.endswith(phrase))
    motion = next((i for i, m in enumerate(world.MOTION_WORDS.values()) if m in caption), len(world.MOTIONS))
    second = (colours[1], shapes[1]) if len(colours) > 1 else (len(world.COLOURS), len(world.SHAPES))
    return [background, colours[0], shapes[0], second[0], second[1], motion]


def label_classes():
    """Classes per entry of `caption_labels`."""
    return [len(world.BACKGROUNDS), len(world.COLOURS), len(world.SHAPES), len(world.COLOURS) + 1,
            len(world.SHAPES) + 1, len(world.MOTIONS) + 1]


def train_sd(out, steps, batch, every):
    import torch
    import torch.nn.functional as F
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    import demo
    import make_fixtures as mf

    sd_dir = os.path.join(out, SD_DIR)
    vae = AutoencoderKL.from_pretrained(os.path.join(sd_dir, "vae"), torch_dtype=torch.float32).eval()
    latent_scale(vae, os.path.join(sd_dir, "vae"))
    tok_dir = os.path.join(sd_dir, "tokenizer")
    n_vocab = demo.make_tokenizer(tok_dir)
    tokenizer = CLIPTokenizer.from_pretrained(tok_dir)
    ids = tokenizer(world.words(), add_special_tokens=False).input_ids
    print(f"tokenizer: {n_vocab} tokens; the world's {len(ids)} words take {sum(map(len, ids))} tokens")
    torch.manual_seed(SEEDS["sd"])
    text_encoder = CLIPTextModel(CLIPTextConfig(**dict(
        mf.CLIP_CONFIG, hidden_size=TEXT_WIDTH, intermediate_size=2 * TEXT_WIDTH, vocab_size=n_vocab,
        bos_token_id=n_vocab - 2, eos_token_id=n_vocab - 1, pad_token_id=n_vocab - 1, projection_dim=TEXT_WIDTH)))
    unet = UNet2DConditionModel(**UNET_CONFIG)
    noise_sched = noise_scheduler()
    # Auxiliary heads (discarded after training): linear read-outs of what the caption names from the mean of
    # the text encoder's states, so that every attribute (colour, shape, background, motion) is kept apart in
    # what the UNet attends to; the diffusion loss alone lets a from-scratch encoder blur the colours and shapes.
    heads = torch.nn.ModuleList([torch.nn.Linear(TEXT_WIDTH, n) for n in label_classes()])
    params = list(unet.parameters()) + list(text_encoder.parameters()) + list(heads.parameters())
    opt = torch.optim.AdamW(params, lr=5e-4, weight_decay=1e-4)
    sched = cosine(opt, steps, 5e-5)
    scale = vae.config.scaling_factor
    means, stds, covers, all_captions = latent_set(vae, STREAMS["sd"], SD_SCENES, motion_rate=0.3)
    labels = torch.tensor([caption_labels(c) for c in all_captions])
    log = Log("sd", steps, every)
    for step in range(1, steps + 1):
        pick = torch.randint(0, len(all_captions), (batch,))
        captions = drop_captions([all_captions[i] for i in pick.tolist()], step * batch)
        z = (means[pick] + stds[pick] * torch.randn_like(means[pick])) * scale
        tokens = tokenizer(captions, padding="max_length", max_length=77, truncation=True, return_tensors="pt")
        context = text_encoder(tokens.input_ids).last_hidden_state
        noise = torch.randn_like(z)
        t = torch.randint(0, noise_sched.config.num_train_timesteps, (batch,))
        pred = unet(noise_sched.add_noise(z, noise, t), t, context).sample
        # Objects cover a small share of the latent grid; without a weight the plain MSE is mostly background.
        weight = 1.0 + OBJECT_WEIGHT * covers[pick]
        loss = (weight * (pred - noise).pow(2)).mean() / weight.mean()
        if TEXT_AUX_WEIGHT:
            kept = torch.tensor([bool(c) for c in captions])
            pooled = context[kept].mean(dim=1)
            aux = sum(F.cross_entropy(head(pooled), labels[pick][kept][:, i]) for i, head in enumerate(heads))
            loss = loss + TEXT_AUX_WEIGHT * aux / len(heads)
        update(loss, opt, sched, log, step, clip=params)
    unet.eval()
    text_encoder.eval()
    scheduler = DDIMScheduler(**mf.DDIM_CASES["animatediff"])
    pipe = StableDiffusionPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
                                   scheduler=scheduler, safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False)
    pipe.save_config(sd_dir)  # model_index.json
    scheduler.save_pretrained(os.path.join(sd_dir, "scheduler"))
    save_half(unet, os.path.join(sd_dir, "unet"))
    save_half(text_encoder, os.path.join(sd_dir, "text_encoder"))
    return log.summary()


def motion_model(unet, layers, train):
    """UNetMotionModel over `unet` whose temporal modules are the original AnimateDiff modules (per-frame
    GroupNorm, original key names), returned with those modules (an OriginalMotionModules)."""
    from diffusers import MotionAdapter, UNetMotionModel

    import motion

    OriginalMotionModules, OriginalWrapper = motion.torch_modules()
    channels = list(unet.config.block_out_channels)
    original = OriginalMotionModules(channels, MOTION_HEADS, MOTION_GROUPS, MOTION_POSITIONS, True, layers=layers)
    adapter = MotionAdapter(block_out_channels=tuple(channels), motion_layers_per_block=layers,
                            motion_num_attention_heads=MOTION_HEADS, motion_norm_num_groups=MOTION_GROUPS,
                            motion_max_seq_length=MOTION_POSITIONS, use_motion_mid_block=True)
    model = UNetMotionModel.from_unet2d(unet, adapter)
    for i, level in enumerate(original.down_blocks):
        for j, m in enumerate(level.motion_modules):
            model.down_blocks[i].motion_modules[j] = OriginalWrapper(m)
    model.mid_block.motion_modules[0] = OriginalWrapper(original.mid_block.motion_modules[0])
    for i, level in enumerate(original.up_blocks):
        for j, m in enumerate(level.motion_modules):
            model.up_blocks[i].motion_modules[j] = OriginalWrapper(m)
    model.train(train)
    return model, original


def clips(stream, start, count):
    """A batch of world clips as float [-1, 1] [N, 16, 3, 64, 64] and their captions."""
    pairs = [world.sample_clip(stream, start + i) for i in range(count)]
    return to_model([p[0] for p in pairs]), [p[1] for p in pairs]


def train_motion(out, steps, batch, every):
    import torch

    import motion

    pipe = load_sd(out)
    unet, vae, text_encoder, tokenizer = pipe.unet.eval(), pipe.vae.eval(), pipe.text_encoder.eval(), pipe.tokenizer
    torch.manual_seed(SEEDS["motion"])
    model, original = motion_model(unet, unet.config.layers_per_block, True)
    for p in model.parameters():
        p.requires_grad_(False)
    with torch.no_grad():  # AnimateDiff's zero-initialised output projections: training starts at the image model
        for name, p in original.named_parameters():
            if ".proj_out." in name:
                p.zero_()
    params = [p for p in original.parameters()]
    for p in params:
        p.requires_grad_(True)
    # The frozen image UNet runs in eval mode (no dropout), the motion modules train.
    model.eval()
    original.train()
    opt = torch.optim.AdamW(params, lr=1e-3, weight_decay=1e-4)
    sched = cosine(opt, steps, 1e-4)
    noise_sched = noise_scheduler()
    scale = vae.config.scaling_factor
    log = Log("motion", steps, every)
    for step in range(1, steps + 1):
        x, captions = clips(STREAMS["motion"], step * batch, batch)
        captions = drop_captions(captions, step * batch)
        b, f = x.shape[:2]
        with torch.no_grad():
            z = vae.encode(x.reshape(b * f, *x.shape[2:])).latent_dist.sample() * scale
            z = z.reshape(b, f, *z.shape[1:]).permute(0, 2, 1, 3, 4)  # [B, C, F, h, w]
            tokens = tokenizer(captions, padding="max_length", max_length=77, truncation=True, return_tensors="pt")
            context = text_encoder(tokens.input_ids).last_hidden_state
        noise = torch.randn_like(z)
        t = torch.randint(0, noise_sched.config.num_train_timesteps, (b,))
        noisy = noise_sched.add_noise(z, noise, t)  # one timestep per clip
        pred = model(noisy, t, context).sample
        loss = (pred - noise).pow(2).mean()
        update(loss, opt, sched, log, step, clip=params)
    original.eval()
    sd = motion.save_original(original, os.path.join(out, MOTION_FILE), half=True)
    print(f"motion module: {sum(v.numel() for k, v in sd.items() if not k.endswith('.pe'))} params")
    return log.summary()


def altered(rng, s):
    """`s` with one thing changed, so that its caption no longer fits: an object's colour or shape, the
    background, or the number of objects."""
    s = json.loads(json.dumps(s))
    objects = s["objects"]
    what = rng.choice(["colour", "colour", "shape", "background", "count"])
    o = objects[int(rng.integers(len(objects)))]
    if what == "colour":
        used = {x["colour"] for x in objects}
        o["colour"] = str(rng.choice([c for c in world.COLOURS if c not in used]))
    elif what == "shape":
        o["shape"] = str(rng.choice([x for x in world.SHAPES if x != o["shape"]]))
    elif what == "background":
        s["background"] = str(rng.choice([b for b in world.BACKGROUNDS if b != s["background"]]))
    elif len(objects) == 2:
        s["objects"] = [objects[int(rng.integers(2))]]
    else:
        extra = world.scene(rng, objects=2)["objects"]
        extra = [e for e in extra if e["colour"] != o["colour"]][0]
        s["objects"] = sorted([o, extra], key=lambda e: e["x"])
    return s


def reward_pairs(stream, start, count):
    """(fitting image, image differing in one thing, caption of the first, caption of the second) per example."""
    out = []
    for i in range(count):
        rng = np.random.default_rng([stream, start + i])
        s = world.scene(rng)
        s2 = altered(rng, s)
        out.append((world.render(s), world.render(s2), world.caption(s), world.caption(s2)))
    return out


def reward_vocab():
    """BERT WordPiece vocabulary: the special tokens at BERT's ids, then the world's words and the characters."""
    toks = ["[PAD]"] + [f"[unused{i}]" for i in range(99)] + ["[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    toks += list("abcdefghijklmnopqrstuvwxyz0123456789.,")
    toks += ["##" + c for c in "abcdefghijklmnopqrstuvwxyz"]
    toks += [w for w in world.words() if w not in toks]
    return toks


def build_reward(folder):
    import torch
    from torch import nn

    import image_reward as irf

    mods = irf.import_package()
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, "vocab.txt"), "w", encoding="utf-8") as f:
        f.write("\n".join(reward_vocab()) + "\n")
    irf.VISION_TINY, irf.TEXT_TINY, irf.MLP_TINY = dict(REWARD_VISION), dict(REWARD_TEXT), list(REWARD_MLP)
    model = irf.make_tiny(*mods, folder, seed=SEEDS["reward"])
    # make_tiny draws every weight from N(0, 0.3) for parity tests; training starts from a usual init instead:
    # N(0, 1/fan_in) matrices (the MLP head is a stack of linear layers), 0.02 tables, unit norms, zero biases.
    gen = torch.Generator().manual_seed(SEEDS["reward"])
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias"):
                p.zero_()
            elif "norm" in name.lower() and p.dim() == 1:
                p.fill_(1.0)
            elif p.dim() >= 2 and "embed" not in name:
                fan_in = p[0].numel()
                p.copy_(torch.randn(p.shape, generator=gen) / math.sqrt(fan_in))
            else:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.02)
    return model, mods


def reward_forward(model, pixels, ids, mask):
    """ImageReward.score's computation on a batch: ViT image embeddings, BERT with cross-attention over them,
    the [CLS] state through the MLP, normalised by the stored mean and std."""
    import torch

    embeds = model.blip.visual_encoder(pixels)
    atts = torch.ones(embeds.shape[:-1], dtype=torch.long)
    out = model.blip.text_encoder(ids, attention_mask=mask, encoder_hidden_states=embeds, encoder_attention_mask=atts,
                                  return_dict=True)
    return ((model.mlp(out.last_hidden_state[:, 0, :]) - model.mean) / model.std).squeeze(-1)


def to_pixels(batch_uint8, vae=None):
    """uint8 [N, 64, 64, 3] -> the reward's normalised input [N, 3, 64, 64]; through the VAE first when given,
    so that training sees the softness of decoded images as well as clean renders."""
    import torch

    x = torch.from_numpy(np.stack(batch_uint8)).permute(0, 3, 1, 2).float() / 255.0
    if vae is not None:
        with torch.no_grad():
            x = ((vae.decode(vae.encode(x * 2 - 1).latent_dist.mean).sample + 1) / 2).clamp(0, 1)
    mean = torch.tensor(CLIP_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(CLIP_STD).view(1, 3, 1, 1)
    return (x - mean) / std


def train_reward(out, steps, batch, every):
    import torch
    import torch.nn.functional as F

    import image_reward as irf

    folder = os.path.join(out, REWARD_DIR)
    model, mods = build_reward(folder)
    vae = load_sd(out).vae.eval()
    tok = model.blip.tokenizer

    def tokens(texts):
        t = tok(texts, padding="max_length", truncation=True, max_length=35, return_tensors="pt")
        return t.input_ids, t.attention_mask

    model.mean, model.std = 0.0, 1.0
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-3, weight_decay=1e-4)
    sched = cosine(opt, steps, 1e-4)
    log = Log("reward", steps, every)
    torch.manual_seed(SEEDS["reward"])
    for step in range(1, steps + 1):
        pairs = reward_pairs(STREAMS["reward"], step * batch, batch)
        good, bad, cap, cap2 = (list(x) for x in zip(*pairs))
        via_vae = vae if step % 2 == 0 else None  # candidates are VAE decodes: half the steps see their softness
        px_good, px_bad = to_pixels(good, via_vae), to_pixels(bad, via_vae)
        ids, mask = tokens(cap)
        ids2, mask2 = tokens(cap2)
        r_good = reward_forward(model, px_good, ids, mask)
        r_bad = reward_forward(model, px_bad, ids, mask)  # the same caption, the image that does not fit
        r_wrong = reward_forward(model, px_good, ids2, mask2)  # the same image, a caption that does not fit
        loss = -F.logsigmoid(r_good - r_bad).mean() - 0.5 * F.logsigmoid(r_good - r_wrong).mean()
        update(loss, opt, sched, log, step, clip=params)
    model.eval()
    # Normalise as ImageReward does: the stored mean and std of the raw rewards, over fitting and unfitting pairs.
    with torch.no_grad():
        pairs = reward_pairs(STREAMS["reward"] + 100, 0, 256)
        good, bad, cap, _ = (list(x) for x in zip(*pairs))
        ids, mask = tokens(cap)
        raw = torch.cat([reward_forward(model, to_pixels(good), ids, mask),
                         reward_forward(model, to_pixels(bad), ids, mask)])
        accuracy = float((raw[:256] > raw[256:]).float().mean())
    model.mean, model.std = float(raw.mean()), float(raw.std())
    print(f"reward: held-out pairs ranked right {accuracy:.3f}; mean {model.mean:.3f} std {model.std:.3f}")
    torch.save(model.state_dict(), os.path.join(folder, "ImageReward.pt"))
    irf.write_config(model, folder)
    summary = log.summary()
    summary["held_out_accuracy"] = round(accuracy, 4)
    return summary


def check_reward(out):
    """The saved reward model, loaded back through the package's own ImageReward.score (its preprocess
    included), ranks held-out fitting images above unfitting ones."""
    from PIL import Image

    import image_reward as irf

    folder = os.path.join(out, REWARD_DIR)
    mods = irf.import_package()
    irf.VISION_TINY, irf.TEXT_TINY, irf.MLP_TINY = dict(REWARD_VISION), dict(REWARD_TEXT), list(REWARD_MLP)
    model = irf.make_tiny(*mods, folder, seed=0)
    import torch

    model.load_state_dict(torch.load(os.path.join(folder, "ImageReward.pt"), weights_only=True), strict=False)
    with open(os.path.join(folder, "image_reward_config.json")) as f:
        config = json.load(f)
    model.mean, model.std = config["mean"], config["std"]
    model.preprocess = mods[0]._transform(config["vision"]["image_size"])  # the package's, at the model's size
    pairs = reward_pairs(STREAMS["reward"] + 200, 0, 32)
    right = 0
    for good, bad, cap, _ in pairs:
        s = model.score(cap, [Image.fromarray(good), Image.fromarray(bad)])
        right += s[0] > s[1]
    print(f"reward check (the package's score and preprocess): {right}/32 ranked right")


def sample_sheet(out, path):
    """A grid: 4 samples for each of four prompts, from the saved pipeline."""
    import torch
    from PIL import Image

    pipe = load_sd(out)
    rows = []
    for prompt in ["a red ball on green grass", "a yellow star in the night sky", "a purple box on sand",
                   "an orange triangle and a white ball on the water"]:
        g = torch.Generator().manual_seed(0)
        images = pipe([prompt] * 4, height=64, width=64, num_inference_steps=25, guidance_scale=7.5, generator=g,
                      output_type="np").images
        rows.append(np.concatenate(list((images * 255).round().astype(np.uint8)), axis=1))
    Image.fromarray(np.concatenate(rows, axis=0)).resize((4 * 128, 4 * 128), Image.NEAREST).save(path)


def install(out):
    """Copies the trained parts into assets/demo-models, replacing what is there (the random-weight parts made
    by tools/fixtures/demo.py stay), with training.json beside them as a record."""
    import shutil

    assets = os.path.join(os.path.dirname(os.path.dirname(HERE)), "assets", "demo-models")
    for name in (SD_DIR, REWARD_DIR):
        src, dst = os.path.join(out, name), os.path.join(assets, name)
        if not os.path.isdir(src):
            sys.exit(f"{src}: missing; train every stage first")
        if os.path.isdir(dst):
            shutil.rmtree(dst)
        shutil.copytree(src, dst)
    shutil.copyfile(os.path.join(out, MOTION_FILE), os.path.join(assets, MOTION_FILE))
    shutil.copyfile(os.path.join(out, "training.json"), os.path.join(HERE, "training.json"))
    print(f"installed {SD_DIR}, {MOTION_FILE} and {REWARD_DIR} into {assets}")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True)
    parser.add_argument("--stages", default=",".join(STAGES))
    parser.add_argument("--vae-steps", type=int, default=1500)
    parser.add_argument("--vae-objects-steps", type=int, default=1200)
    parser.add_argument("--sd-steps", type=int, default=6000)
    parser.add_argument("--motion-steps", type=int, default=1500)
    parser.add_argument("--reward-steps", type=int, default=2000)
    parser.add_argument("--log", type=int, default=100)
    parser.add_argument("--sample", help="after the sd stage, write a grid of samples to this PNG")
    parser.add_argument("--install", action="store_true",
                        help="only copy a finished --out into assets/demo-models (replacing the trained parts)")
    args = parser.parse_args()
    if args.install:
        install(args.out)
        return
    stages = args.stages.split(",")
    unknown = [s for s in stages if s not in STAGES]
    if unknown:
        parser.error(f"unknown stage(s) {unknown}; the stages are {list(STAGES)}")
    import torch

    torch.set_num_threads(int(os.environ.get("TRAIN_THREADS", "2")))
    random.seed(0)
    os.makedirs(os.path.join(args.out, SD_DIR), exist_ok=True)
    record_path = os.path.join(args.out, "training.json")
    record = {}
    if os.path.exists(record_path):
        with open(record_path) as f:
            record = json.load(f)
    record["torch"] = torch.__version__
    record["threads"] = torch.get_num_threads()
    plan = dict(vae=(train_vae, args.vae_steps, 32), vae_objects=(train_vae_objects, args.vae_objects_steps, 32),
                sd=(train_sd, args.sd_steps, 64),
                motion=(train_motion, args.motion_steps, 2), reward=(train_reward, args.reward_steps, 32))
    for stage in STAGES:
        if stage not in stages:
            continue
        fn, steps, batch = plan[stage]
        record[stage] = dict(fn(args.out, steps, batch, args.log), batch=batch)
        with open(record_path, "w") as f:
            json.dump(record, f, indent=1)
        if stage == "sd" and args.sample:
            sample_sheet(args.out, args.sample)
        if stage == "reward":
            check_reward(args.out)
    total = sum(record[s]["seconds"] for s in STAGES if s in record)
    print(f"stages {stages} done; all recorded stages took {total} s ({math.ceil(total / 60)} min)")


if __name__ == "__main__":
    main()
