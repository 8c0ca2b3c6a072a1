"""The demo world (issue 16): small procedural 64 x 64 scenes with captions, and 16-frame clips in which the
objects move, made on the fly from a seed (never stored). The tiny models of assets/demo-models are to be
trained on it, so that the main command draws something a person can recognise and the tests can check
I4VGen's claims (the reward picks the fitting candidate, NI-VSDS adds motion, regeneration keeps the subject).

A scene is a background and one or two objects; an object has a shape, a colour, a size and a position. A clip
moves every object by one motion (left, right, up, down, bounce, grow). Captions name what is drawn:

    "a red ball on green grass", "a blue box and a yellow star in the night sky",
    "a white triangle moving left on sand"

Everything is numpy only and deterministic: `scene(rng)`, `render(scene)`, `caption(scene)`, `clip(...)`.
Run as a script to print a few captions and write a contact sheet (`--sheet out.png`, needs Pillow).
"""

import argparse
import math

import numpy as np

SIZE = 64
FRAMES = 16

# Backgrounds: name -> (caption phrase, top colour, bottom colour, horizon as a fraction of the height or None).
BACKGROUNDS = {
    "sky": ("in the blue sky", (110, 160, 235), (190, 215, 250), None),
    "grass": ("on green grass", (150, 200, 240), (60, 150, 60), 0.45),
    "sand": ("on sand", (160, 200, 240), (225, 200, 140), 0.45),
    "night": ("in the night sky", (10, 12, 40), (35, 40, 80), None),
    "water": ("on the water", (170, 205, 240), (40, 90, 160), 0.5),
}
# Object colours, chosen far apart in RGB and from every background.
COLOURS = {
    "red": (220, 30, 30),
    "yellow": (245, 220, 30),
    "purple": (150, 50, 200),
    "white": (250, 250, 250),
    "black": (15, 15, 15),
    "orange": (250, 140, 20),
    "pink": (250, 120, 190),
}
SHAPES = ("ball", "box", "triangle", "star")
MOTIONS = ("left", "right", "up", "down", "bounce", "grow")
MOTION_WORDS = {"left": "moving left", "right": "moving right", "up": "rising", "down": "falling",
                "bounce": "bouncing", "grow": "growing"}


def scene(rng, objects=None):
    """A random scene: background, and 1 or 2 objects of distinct colours (dicts: shape, colour, size in
    pixels, centre x, y)."""
    background = rng.choice(list(BACKGROUNDS))
    count = objects or int(rng.choice([1, 1, 2]))
    colours = rng.choice(list(COLOURS), size=count, replace=False)
    items = []
    for i, colour in enumerate(colours):
        size = float(rng.uniform(12, 22))
        x = float(rng.uniform(size / 2 + 2, SIZE - size / 2 - 2)) if count == 1 else (
            float(rng.uniform(12, 26)) if i == 0 else float(rng.uniform(38, 52)))
        # On the ground where there is one (its top at the horizon or below), anywhere in a sky.
        horizon = BACKGROUNDS[background][3]
        top = size / 2 + 4 if horizon is None else horizon * SIZE
        y = float(rng.uniform(top, SIZE - size / 2 - 2))
        items.append(dict(shape=str(rng.choice(SHAPES)), colour=str(colour), size=size, x=x, y=y))
    return dict(background=str(background), objects=items)


def _background(name):
    _, top, bottom, horizon = BACKGROUNDS[name]
    y = np.linspace(0.0, 1.0, SIZE)[:, None, None]
    top, bottom = np.array(top, float), np.array(bottom, float)
    if horizon is None:
        img = top + (bottom - top) * y
    else:
        sky = top + (top * 0.15) * (y / horizon)
        img = np.where(y < horizon, sky, bottom * (0.85 + 0.3 * (y - horizon)))
    img = np.broadcast_to(img, (SIZE, SIZE, 3)).copy()
    if name == "night":  # a few fixed stars
        for sx, sy in [(7, 9), (21, 4), (40, 14), (55, 6), (48, 30), (12, 36), (30, 52), (58, 50)]:
            img[sy, sx] = (230, 230, 200)
    return img


def _mask(shape, size, x, y):
    """Coverage in [0, 1] of one object (4x supersampled, so edges are smooth and sizes are continuous)."""
    n = SIZE * 4
    gy, gx = np.mgrid[0:n, 0:n].astype(float) / 4.0 + 0.125
    dx, dy, r = gx - x, gy - y, size / 2
    if shape == "ball":
        inside = dx * dx + dy * dy <= r * r
    elif shape == "box":
        inside = (np.abs(dx) <= r * 0.85) & (np.abs(dy) <= r * 0.85)
    elif shape == "triangle":
        inside = (dy <= r * 0.8) & (dy >= -r) & (np.abs(dx) <= (dy + r) * 0.6)
    elif shape == "star":
        angle = np.arctan2(dy, dx)
        radius = r * (0.55 + 0.45 * np.abs(np.cos(2.5 * (angle + math.pi / 2))))
        inside = dx * dx + dy * dy <= radius * radius
    else:
        raise ValueError(f"unknown shape {shape}")
    return inside.reshape(SIZE, 4, SIZE, 4).mean(axis=(1, 3))


def render(s):
    """The scene as uint8 RGB [64, 64, 3]."""
    img = _background(s["background"])
    for o in s["objects"]:
        m = _mask(o["shape"], o["size"], o["x"], o["y"])[..., None]
        colour = np.array(COLOURS[o["colour"]], float)
        shade = 0.8 + 0.2 * np.linspace(1.0, 0.0, SIZE)[:, None, None]  # light from above
        img = img * (1 - m) + colour * shade * m
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)


def _phrase(o):
    article = "an" if o["colour"][0] in "aeiou" else "a"
    return f"{article} {o['colour']} {o['shape']}"


def caption(s, motion=None):
    """"a red ball on green grass", "a red ball and a white star moving left in the night sky"."""
    things = " and ".join(_phrase(o) for o in s["objects"])
    verb = f" {MOTION_WORDS[motion]}" if motion else ""
    return f"{things}{verb} {BACKGROUNDS[s['background']][0]}"


def moved(s, motion, t):
    """The scene at time t in [0, 1] of a clip with `motion` (objects stay inside the frame)."""
    out = dict(background=s["background"], objects=[])
    for o in s["objects"]:
        o = dict(o)
        span = 28.0
        if motion == "left":
            o["x"] -= span * (t - 0.5)
        elif motion == "right":
            o["x"] += span * (t - 0.5)
        elif motion == "up":
            o["y"] -= span * (t - 0.5)
        elif motion == "down":
            o["y"] += span * (t - 0.5)
        elif motion == "bounce":
            o["y"] -= 14.0 * abs(math.sin(math.pi * 2 * t))
        elif motion == "grow":
            o["size"] *= 0.7 + 0.6 * t
        half = o["size"] / 2
        o["x"] = min(max(o["x"], half), SIZE - half)
        o["y"] = min(max(o["y"], half), SIZE - half)
        out["objects"].append(o)
    return out


def clip(s, motion, frames=FRAMES):
    """The clip as uint8 [frames, 64, 64, 3]."""
    return np.stack([render(moved(s, motion, i / max(frames - 1, 1))) for i in range(frames)])


def sample(seed, index, motion_rate=0.0):
    """Training example `index` of stream `seed`: (image, caption), reproducible without storing anything. With
    `motion_rate`, that share of the captions names a motion too (a still image says nothing about it: the text
    encoder learns those words exist before the motion module learns what they mean)."""
    s, text = sample_scene(seed, index, motion_rate)
    return render(s), text


def sample_scene(seed, index, motion_rate=0.0):
    """The scene and caption of `sample(seed, index, motion_rate)`, before rendering."""
    rng = np.random.default_rng([seed, index])
    s = scene(rng)
    motion = str(rng.choice(MOTIONS)) if rng.random() < motion_rate else None
    return s, caption(s, motion)


def coverage(s):
    """How much of each pixel the scene's objects cover, float [64, 64] in [0, 1]."""
    m = np.zeros((SIZE, SIZE))
    for o in s["objects"]:
        m = np.maximum(m, _mask(o["shape"], o["size"], o["x"], o["y"]))
    return m


def colour_counts(img):
    """Pixels of each object colour (COLOURS order) in a uint8 RGB image [H, W, 3]: a pixel counts as the
    nearest colour's shaded tone (0.75 to 1.05 of it, as the renderer lights objects) when within 45 of it."""
    ref = np.array(list(COLOURS.values()), float)
    p = img.reshape(-1, 3).astype(float)
    s = np.clip(p @ ref.T / (ref * ref).sum(1), 0.75, 1.05)
    d = np.sqrt(((p[:, None, :] - s[:, :, None] * ref[None]) ** 2).sum(-1))
    near = d.argmin(1)
    return np.bincount(near[d.min(1) < 45], minlength=len(ref))


def shows(img, colours, least=28):
    """Does the image show every one of `colours` (names) on at least `least` pixels, and no other object
    colour on more pixels than the least of them?"""
    counts = colour_counts(img)
    names = list(COLOURS)
    low = min(counts[names.index(c)] for c in colours)
    return low >= least and all(counts[i] <= low for i, n in enumerate(names) if n not in colours)


def sample_clip(seed, index):
    """Clip example `index` of stream `seed`: (frames, caption with the motion)."""
    rng = np.random.default_rng([seed, index, 1])
    s = scene(rng)
    motion = str(rng.choice(MOTIONS))
    return clip(s, motion), caption(s, motion if rng.random() < 0.7 else None)


def words():
    """Every word a caption can hold (the tokenizer's vocabulary must cover them)."""
    out = {"a", "an", "and"}
    for phrase, *_ in BACKGROUNDS.values():
        out.update(phrase.split())
    out.update(COLOURS)
    out.update(SHAPES)
    for w in MOTION_WORDS.values():
        out.update(w.split())
    return sorted(out)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--sheet", help="write a contact sheet of 8 images and 2 clips to this PNG")
    args = parser.parse_args()
    for i in range(6):
        print(sample(args.seed, i)[1])
    print(f"{len(words())} words: {' '.join(words())}")
    if args.sheet:
        from PIL import Image

        rows = [np.concatenate([sample(args.seed, i)[0] for i in range(8)], axis=1)]
        for j in range(2):
            frames, text = sample_clip(args.seed, j)
            print("clip:", text)
            rows.append(np.concatenate(list(frames[::2]), axis=1))
        Image.fromarray(np.concatenate(rows, axis=0)).resize((8 * 128, 3 * 128), Image.NEAREST).save(args.sheet)


if __name__ == "__main__":
    main()
