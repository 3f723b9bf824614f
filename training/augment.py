"""Standard training augmentation applied to an image batch and its painted masks *jointly*.

Done per batch on tensors inside the training loop (``engine.train_one_epoch``), before the paired
twin is built, so ``paired_step`` noises exactly the pixels the mask covers in the augmented image.
Every sample gets its own random parameters (drawn from a CPU ``torch.Generator``, so a seeded job is
reproducible); the geometry is torchvision.transforms.v2's functional ops on ``tv_tensors.Image`` /
``tv_tensors.Mask``, which interpolate the image bilinearly (antialiased) and the mask with
nearest-neighbour at the same pixel centres (``NEAREST_EXACT``), so the mask keeps sitting on the same image content.

Policies (``TRAIN_AUGMENT``): ``none``; ``flip`` (horizontal flip, p = 0.5); ``crop_flip`` (a random
resized crop of ``CROP_SCALE`` of the area with aspect ratio in ``CROP_RATIO``, back to the input
size, then the flip). ``auto`` resolves to ``crop_flip`` (``training.recipe``).
"""

from __future__ import annotations

import math

import torch
from torchvision import tv_tensors
from torchvision.transforms.v2 import InterpolationMode
from torchvision.transforms.v2 import functional as TF

AUGMENTS = ("none", "flip", "crop_flip")
CROP_SCALE = (0.8, 1.0)  # mild: a small image keeps its object (and its painted region) in frame
CROP_RATIO = (3 / 4, 4 / 3)


def crop_box(h: int, w: int, generator: torch.Generator, scale=CROP_SCALE, ratio=CROP_RATIO) -> tuple[int, int, int, int]:
    """``(top, left, height, width)`` of a random resized crop (RandomResizedCrop's sampling, seeded)."""
    area = h * w
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        u = torch.rand(2, generator=generator).tolist()
        target = area * (scale[0] + (scale[1] - scale[0]) * u[0])
        aspect = math.exp(log_ratio[0] + (log_ratio[1] - log_ratio[0]) * u[1])
        cw = round(math.sqrt(target * aspect))
        ch = round(math.sqrt(target / aspect))
        if 0 < cw <= w and 0 < ch <= h:
            top = int(torch.randint(0, h - ch + 1, (1,), generator=generator).item())
            left = int(torch.randint(0, w - cw + 1, (1,), generator=generator).item())
            return top, left, ch, cw
    return 0, 0, h, w  # fallback: the whole image


def augment_batch(
    images: torch.Tensor, masks: torch.Tensor, policy: str, generator: torch.Generator | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Augment ``images`` (float [B,3,H,W] in [0,1]) and ``masks`` (bool [B,1,H,W]) with the same
    per-sample geometry; returns tensors of the same shapes, dtypes and device."""
    if policy == "none" or images.shape[0] == 0:
        return images, masks
    if policy not in AUGMENTS:
        raise ValueError(f"unknown augmentation {policy!r}; choose one of {AUGMENTS}")
    generator = generator or torch.Generator().manual_seed(0)
    b, _, h, w = images.shape
    flip = torch.rand(b, generator=generator) < 0.5
    if policy == "flip":
        out_x, out_m = images.clone(), masks.clone()
        idx = flip.nonzero().squeeze(1).to(images.device)
        if idx.numel():
            fx = TF.horizontal_flip(tv_tensors.Image(images[idx]))
            fm = TF.horizontal_flip(tv_tensors.Mask(masks[idx]))
            out_x[idx], out_m[idx] = fx.as_subclass(torch.Tensor), fm.as_subclass(torch.Tensor)
        return out_x, out_m
    xs, ms = [], []
    m8 = masks.to(torch.uint8)  # nearest-neighbour resize needs a numeric dtype
    for i in range(b):
        top, left, ch, cw = crop_box(h, w, generator)
        img, msk = tv_tensors.Image(images[i]), tv_tensors.Mask(m8[i])
        img = TF.resized_crop(img, top, left, ch, cw, [h, w], antialias=True)
        # nearest-exact samples at the pixel centres, as bilinear does (plain "nearest", which v2's
        # resized_crop uses for a Mask whatever it is asked, is off by half a pixel): crop, then resize
        msk = TF.resize(TF.crop(msk, top, left, ch, cw), [h, w], interpolation=InterpolationMode.NEAREST_EXACT)
        if flip[i]:
            img, msk = TF.horizontal_flip(img), TF.horizontal_flip(msk)
        xs.append(img.as_subclass(torch.Tensor))
        ms.append(msk.as_subclass(torch.Tensor))
    return torch.stack(xs).clamp_(0.0, 1.0), torch.stack(ms).bool()
