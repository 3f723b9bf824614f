"""Generated image-classification data with a spurious feature, plus the true spurious-pixel masks.

Each class is a shape (circle, square, triangle, cross, …) drawn at a random place on a noisy
background. The spurious feature (``kind``) carries a class of its own, its *spurious value*:

- ``patch`` (default): a coloured square in a corner, colour and corner chosen by the value;
  its mask is the square;
- ``background``: the whole background is tinted with the value's colour; its mask is every
  pixel outside the shape;
- ``texture``: the background carries the value's texture (stripes at one of several
  orientations, a checkerboard, dots); its mask is every pixel outside the shape;
- ``natural``: the background is a natural-like texture of the value's family (``training.natural_textures``:
  1/f^beta noise with a family's slope, orientation and overlapping earthy palette, a fresh random
  phase per image, like photographs of grass, sand or sky); its mask is every pixel outside the shape;
- ``photo``: the background is a random crop of the value's real photograph (``training.photo_backgrounds``:
  grass, a landscape, a brick wall, a coffee cup, gravel, a flower, the sample photographs bundled with
  scikit-image and scikit-learn); its mask is every pixel outside the shape.

In ``train`` the spurious value equals the label for a fraction ``p_spurious`` of the images (a
uniformly random class otherwise, which may also be the label); in ``test`` it is uniformly random.
The true spurious-pixel mask is written for every training image, to simulate an expert's painting,
and every image's spurious value is listed in ``spurious.json`` (for group-based baselines, which
need ``label x spurious value`` groups). ``spurious=False`` draws no feature at all (a neutral
background; the "oracle" training set), with value -1 and an empty mask.

Layout written under ``out``::

    train/<class>/<name>.png     test/<class>/<name>.png     masks/train/<class>/<name>.png (0/255)
    spurious.json                {"train/<class>/<name>.png": value, ...}
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from training.natural_textures import natural_background
from training.photo_backgrounds import photo_background

SHAPES = ("circle", "square", "triangle", "cross", "diamond", "ring")
PATCH_COLOURS = ((255, 0, 0), (0, 200, 0), (0, 0, 255), (255, 200, 0), (255, 0, 255), (0, 220, 220))
KINDS = ("patch", "background", "texture", "natural", "photo")
# background tints: mid-intensity, so the dark shape stays visible on each of them
BACKGROUND_COLOURS = ((210, 90, 90), (90, 190, 90), (90, 110, 220), (205, 185, 70), (195, 90, 195), (80, 195, 195))
TEXTURES = ("hstripes", "vstripes", "diagonal", "checker", "dots", "antidiagonal")


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


def _texture(name: str, size: int) -> np.ndarray:
    """Bool ``size x size`` pattern of one of ``TEXTURES`` (True = bright texel)."""
    period = max(4, size // 8)
    half = period // 2
    yy, xx = np.mgrid[:size, :size]
    if name == "hstripes":
        return yy % period < half
    if name == "vstripes":
        return xx % period < half
    if name == "diagonal":
        return (xx + yy) % period < half
    if name == "antidiagonal":
        return (xx - yy) % period < half
    if name == "checker":
        return ((xx // half) + (yy // half)) % 2 == 0
    if name == "dots":
        return (xx % period < max(1, half // 2 + 1)) & (yy % period < max(1, half // 2 + 1))
    raise ValueError(f"unknown texture {name!r}")


def _render_on_background(
    shape: str, value: int, size: int, rng: random.Random, spurious: bool, kind: str
) -> tuple[Image.Image, np.ndarray]:
    """``background`` / ``texture`` / ``natural`` / ``photo`` kinds: the shape over a value-specific background."""
    nrng = np.random.default_rng(rng.getrandbits(32))
    if spurious and kind == "natural":
        bg = natural_background(value, size, nrng)
    elif spurious and kind == "photo":
        bg = photo_background(value, size, nrng)
    elif spurious and kind == "background":
        colour = np.asarray(BACKGROUND_COLOURS[value % len(BACKGROUND_COLOURS)], dtype=np.int16)
        bg = colour + nrng.integers(-25, 26, (size, size, 3), dtype=np.int16)
    else:
        bg = nrng.integers(90, 150, (size, size, 3), dtype=np.int16)
        if spurious:  # texture: bright texels over the neutral noise
            bg[_texture(TEXTURES[value % len(TEXTURES)], size)] += 90
    layer = Image.new("RGB", (size, size), (0, 0, 0))  # RGB: _draw_shape cuts the ring's hole with an RGB fill
    r = size * rng.uniform(0.16, 0.24)
    cx, cy = rng.uniform(size * 0.3, size * 0.7), rng.uniform(size * 0.3, size * 0.7)
    grey = rng.randint(20, 70)
    _draw_shape(ImageDraw.Draw(layer), shape, cx, cy, r, (255, 255, 255))
    obj = np.asarray(layer)[..., 0] > 127
    img = np.where(obj[..., None], np.int16(grey), bg).clip(0, 255).astype(np.uint8)
    mask = np.where(obj, 0, 255).astype(np.uint8) if spurious else np.zeros((size, size), dtype=np.uint8)
    return Image.fromarray(img, "RGB"), mask


def render_sample(
    shape: str, patch_class: int, size: int, rng: random.Random, patch: bool = True, kind: str = "patch"
) -> tuple[Image.Image, np.ndarray]:
    """Draw one image of ``shape`` with the spurious feature of value ``patch_class``; return it and
    the feature's mask (uint8 0/255). ``patch=False``: no spurious feature, an empty mask."""
    if kind not in KINDS:
        raise ValueError(f"unknown spurious kind {kind!r}; choose one of {', '.join(KINDS)}")
    if kind != "patch":
        return _render_on_background(shape, patch_class, size, rng, patch, kind)
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
    kind: str = "patch",
) -> dict:
    """Write an ImageFolder dataset (per-class counts ``n_train``/``n_test``) and its training masks.

    Returns ``{"root", "classes", "train", "test", "kind", "spurious_values"}``; the last maps each
    image's path relative to ``out`` to its spurious value (-1 without the feature).
    """
    if kind not in KINDS:
        raise ValueError(f"unknown spurious kind {kind!r}; choose one of {', '.join(KINDS)}")
    out = Path(out)
    rng = random.Random(seed)
    counts = {"train": 0, "test": 0}
    values: dict[str, int] = {}
    for split, n in (("train", n_train), ("test", n_test)):
        for ci, name in enumerate(classes):
            folder = out / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for k in range(n):
                agree = split == "train" and rng.random() < p_spurious
                patch_class = ci if agree else rng.randrange(len(classes))
                img, mask = render_sample(name, patch_class, size, rng, patch=spurious, kind=kind)
                file = f"{name}_{k:04d}.png"
                img.save(folder / file)
                values[f"{split}/{name}/{file}"] = patch_class if spurious else -1
                if split == "train":
                    mdir = out / "masks" / split / name
                    mdir.mkdir(parents=True, exist_ok=True)
                    Image.fromarray(mask, "L").save(mdir / file)
                counts[split] += 1
    (out / "spurious.json").write_text(json.dumps(values, indent=0))
    return {"root": str(out), "classes": list(classes), **counts, "kind": kind, "spurious_values": values}
