"""Simulated rough strokes: what an expert's quick brush paint of a true mask looks like (seeded).

Recorded in the demo (issue 23): on the 10 x 10 corner patch the stored strokes covered 31-64 of the patch's
100 pixels and spilled about 100 pixels outside it. ``rough_stroke`` draws the same two errors:

- partial coverage: the part of the true region on one side of a random straight cut (a random direction),
  keeping a ``coverage`` share drawn from ``COVERAGE``;
- spill: that part dilated by ``spill`` pixels (drawn from ``SPILL``), the dilation's pixels outside the
  region included (a brush wider than the paint's edge).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

COVERAGE = (0.31, 0.64)  # share of the true region the stroke covers
SPILL = (3, 6)  # pixels the stroke reaches past the covered part (inclusive)


def dilate(mask: np.ndarray, pixels: int) -> np.ndarray:
    """``mask`` (bool [H, W]) grown by ``pixels`` (a square neighbourhood)."""
    if pixels <= 0:
        return mask.copy()
    t = torch.from_numpy(mask.astype(np.float32))[None, None]
    return F.max_pool2d(t, 2 * pixels + 1, stride=1, padding=pixels)[0, 0].numpy() > 0


def rough_stroke(mask: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A rough stroke (bool [H, W]) over the true ``mask`` (bool [H, W]); an empty mask gives an empty stroke."""
    ys, xs = np.nonzero(mask)
    if not ys.size:
        return mask.copy()
    angle = rng.uniform(0, 2 * np.pi)
    along = xs * np.cos(angle) + ys * np.sin(angle)
    cut = np.quantile(along, rng.uniform(*COVERAGE))
    covered = np.zeros_like(mask)
    keep = along <= cut
    covered[ys[keep], xs[keep]] = True
    return dilate(covered, int(rng.integers(SPILL[0], SPILL[1] + 1))) & ~(mask & ~covered)


def rough_strokes(masks: torch.Tensor, seed: int) -> torch.Tensor:
    """``rough_stroke`` of every mask of ``bool [N, 1, H, W]``, one seeded generator for all."""
    rng = np.random.default_rng(seed)
    return torch.stack([torch.from_numpy(rough_stroke(m[0].numpy(), rng))[None] for m in masks])
