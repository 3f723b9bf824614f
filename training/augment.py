"""Standard training augmentation applied to an image batch and its painted masks *jointly*.

Done per batch on tensors inside the training loop (``engine.train_one_epoch``), before the paired
twin is built, so ``paired_step`` noises exactly the pixels the mask covers in the augmented image.
Every sample gets its own random parameters (drawn from a CPU ``torch.Generator``, so a seeded job is
reproducible). The geometry is that of torchvision.transforms.v2's ``resized_crop`` and
``horizontal_flip`` on ``tv_tensors.Image`` / ``tv_tensors.Mask`` per sample -- the image bilinear,
the mask nearest-neighbour at the same pixel centres (``NEAREST_EXACT``), so the mask keeps sitting
on the same image content -- computed for the whole batch at once: one ``grid_sample`` for the
images and one gather for the masks, on the batch's device (tests check it equals the per-sample ops).

Policies (``TRAIN_AUGMENT``): ``none``; ``flip`` (horizontal flip, p = 0.5); ``crop_flip`` (a random
resized crop of ``CROP_SCALE`` of the area with aspect ratio in ``CROP_RATIO``, back to the input
size, then the flip). ``auto`` resolves to ``crop_flip`` (``training.recipe``).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torchvision import tv_tensors
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


def _centres(start: torch.Tensor, length: torch.Tensor, size: int) -> torch.Tensor:
    """``[B, size]`` source coordinates (pixel units) of a bilinear resize (half-pixel centres) of each
    ``[start, start + length)`` to ``size``, clamped to the span's first and last pixel as a resize of
    the cropped image clamps."""
    start, length = start.to(torch.float64)[:, None], length.to(torch.float64)[:, None]
    i = torch.arange(size, dtype=torch.float64)[None, :] + 0.5
    return torch.minimum(torch.maximum(start + i * length / size - 0.5, start), start + length - 1)


def crop_grids(boxes: torch.Tensor, flip: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """Sampling grids ``[B, h, w, 2]`` for ``grid_sample`` (``align_corners=False``) that resize each
    ``(top, left, height, width)`` box of an ``h x w`` image to ``h x w``, mirrored where ``flip``:
    what ``resized_crop`` (bilinear) and ``horizontal_flip`` compute, for the whole batch at once."""
    ys = _centres(boxes[:, 0], boxes[:, 2], h)
    xs = _centres(boxes[:, 1], boxes[:, 3], w)
    xs = torch.where(flip[:, None], xs.flip(1), xs)
    gx, gy = (2 * xs + 1) / w - 1, (2 * ys + 1) / h - 1  # pixel -> [-1, 1] (align_corners=False)
    return torch.stack([gx[:, None, :].expand(-1, h, -1), gy[:, :, None].expand(-1, -1, w)], dim=-1)


def crop_indices(start: torch.Tensor, length: torch.Tensor, size: int) -> torch.Tensor:
    """``[B, size]`` source rows (or columns) of a nearest-exact resize of each ``[start, start + length)``
    to ``size``: ``start + floor((i + 0.5) * length / size)``."""
    i = torch.arange(size, dtype=torch.float64) + 0.5
    offset = torch.floor(i[None, :] * (length[:, None].to(torch.float64) / size)).long()
    return start[:, None] + torch.minimum(offset, length[:, None] - 1)


def augment_batch(
    images: torch.Tensor, masks: torch.Tensor, policy: str, generator: torch.Generator | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Augment ``images`` (float [B,3,H,W] in [0,1]) and ``masks`` (bool [B,1,H,W]) with the same
    per-sample geometry; returns tensors of the same shapes, dtypes and device.

    ``crop_flip`` is one batched ``grid_sample`` (bilinear, what ``resized_crop`` computes for a crop
    no larger than the image) and one gather of the masks (nearest-exact), on the images' device."""
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
    boxes = torch.tensor([crop_box(h, w, generator) for _ in range(b)], dtype=torch.long)  # top, left, height, width
    grid = crop_grids(boxes, flip, h, w).to(images.device, images.dtype)
    out_x = F.grid_sample(images, grid, mode="bilinear", padding_mode="border", align_corners=False)
    rows = crop_indices(boxes[:, 0], boxes[:, 2], h)
    cols = crop_indices(boxes[:, 1], boxes[:, 3], w)
    cols = torch.where(flip[:, None], cols.flip(1), cols)
    dev = masks.device
    out_m = masks[torch.arange(b, device=dev)[:, None, None], 0, rows.to(dev)[:, :, None], cols.to(dev)[:, None, :]]
    return out_x.clamp_(0.0, 1.0), out_m.unsqueeze(1)
