"""Generated image-classification data with a spurious feature, plus the true spurious-pixel masks.

Each class is a shape (circle, square, triangle, cross, …) drawn at a random place on a textured
background. In ``train`` a class-specific coloured patch in a class-specific corner agrees with the
label for a fraction ``p_spurious`` of the images (random otherwise); in ``test`` the patch is random.
The mask of the patch is written for every training image, to simulate an expert's painting.

Layout written under ``out``::

    train/<class>/<name>.png     test/<class>/<name>.png     masks/train/<class>/<name>.png (0/255)
"""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

SHAPES = ("circle", "square", "triangle", "cross", "diamond", "ring")
PATCH_COLOURS = ((255, 0, 0), (0, 200, 0), (0, 0, 255), (255, 200, 0), (255, 0, 255), (0, 220, 220))


def _draw_shape(draw: ImageDraw.ImageDraw, shape: str, cx: float, cy: float, r: float, colour: tuple) -> None:
    if shape == "circle":
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=colour)
    elif shape == "square":
        draw.rectangle([cx - r, cy - r, cx + r, cy + r], fill=colour)
    elif shape == "triangle":
        draw.polygon([(cx, cy - r), (cx - r, cy + r), (cx + r, cy + r)], fill=colour)
    elif shape == "cross":
        w = r / 3
        draw.rectangle([cx - r, cy - w, cx + r, cy + w], fill=colour)
        draw.rectangle([cx - w, cy - r, cx + w, cy + r], fill=colour)
    elif shape == "diamond":
        draw.polygon([(cx, cy - r), (cx + r, cy), (cx, cy + r), (cx - r, cy)], fill=colour)
    elif shape == "ring":
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=colour)
        draw.ellipse([cx - r / 2, cy - r / 2, cx + r / 2, cy + r / 2], fill=(0, 0, 0, 0))
    else:
        raise ValueError(f"unknown shape {shape!r}")


def render_sample(
    shape: str, patch_class: int, size: int, rng: random.Random, patch: bool = True
) -> tuple[Image.Image, np.ndarray]:
    """Draw one image of ``shape`` with the spurious patch of ``patch_class``; return it and the patch mask."""
    noise = np.random.default_rng(rng.getrandbits(32)).integers(90, 150, (size, size, 3), dtype=np.uint8)
    img = Image.fromarray(noise, "RGB")
    draw = ImageDraw.Draw(img)
    r = size * rng.uniform(0.16, 0.24)
    cx, cy = rng.uniform(size * 0.3, size * 0.7), rng.uniform(size * 0.3, size * 0.7)
    grey = rng.randint(20, 70)
    _draw_shape(draw, shape, cx, cy, r, (grey, grey, grey))
    mask = np.zeros((size, size), dtype=np.uint8)
    if patch:
        p = max(3, size // 6)
        corners = [(0, 0), (size - p, 0), (0, size - p), (size - p, size - p)]
        x, y = corners[patch_class % 4]
        colour = PATCH_COLOURS[patch_class % len(PATCH_COLOURS)]
        draw.rectangle([x, y, x + p - 1, y + p - 1], fill=colour)
        mask[y : y + p, x : x + p] = 255
    return img, mask


def make_spurious_dataset(
    out: str | Path,
    classes: tuple[str, ...] = ("circle", "square", "triangle"),
    n_train: int = 40,
    n_test: int = 20,
    size: int = 64,
    p_spurious: float = 0.95,
    seed: int = 0,
    spurious: bool = True,
) -> dict:
    """Write an ImageFolder dataset (per-class counts ``n_train``/``n_test``) and its training masks."""
    out = Path(out)
    rng = random.Random(seed)
    counts = {"train": 0, "test": 0}
    for split, n in (("train", n_train), ("test", n_test)):
        for ci, name in enumerate(classes):
            folder = out / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for k in range(n):
                agree = split == "train" and rng.random() < p_spurious
                patch_class = ci if agree else rng.randrange(len(classes))
                img, mask = render_sample(name, patch_class, size, rng, patch=spurious)
                file = f"{name}_{k:04d}.png"
                img.save(folder / file)
                if split == "train":
                    mdir = out / "masks" / split / name
                    mdir.mkdir(parents=True, exist_ok=True)
                    Image.fromarray(mask, "L").save(mdir / file)
                counts[split] += 1
    return {"root": str(out), "classes": list(classes), **counts}
