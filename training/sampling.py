"""The order a training epoch visits its samples: shuffled, with a least share of painted images per batch.

With masks on a few images (say 10 %), a shuffled batch of 32 holds about three painted images, and
the paired terms that teach the model to ignore the painted pixels weigh little against the
cross-entropy of the other 29.  ``epoch_order(..., share=0.5)`` builds every batch from
``ceil(share * B)`` painted images (a fresh permutation of them, drawn again as often as needed) and
unpainted images for the rest. Every unpainted image is seen once per epoch: the epoch has as many
batches as the unpainted images need (``epoch_batches``: ``ceil(unpainted / (B - k))``, about twice a
plain epoch's at share 0.5 with few painted images, so such an epoch takes about twice as long; the
recipe's epoch count is unchanged and the LR schedule spans these batches). Nothing is dropped. When the painted images are already that share of the data, or there are none or only
painted ones, the order is a plain permutation.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor


def _cycled(idx: Tensor, n: int, generator: torch.Generator) -> Tensor:
    """``n`` entries of ``idx``: successive fresh permutations of it, cut at ``n``."""
    reps = math.ceil(n / max(idx.numel(), 1))
    return torch.cat([idx[torch.randperm(idx.numel(), generator=generator)] for _ in range(reps)])[:n]


def _paired_share(painted: Tensor, batch_size: int, share: float) -> int:
    """Painted images per batch (0: a plain permutation)."""
    n, n_painted = painted.numel(), int(painted.sum())
    k = math.ceil(share * batch_size)
    if not k or not n_painted or n_painted == n or n_painted >= share * n:
        return 0
    return min(k, batch_size - 1)  # every batch keeps some unpainted images


def epoch_batches(painted: Tensor, batch_size: int, share: float = 0.0) -> int:
    """Optimizer steps in one epoch of ``epoch_order`` (every unpainted image once)."""
    n = painted.numel()
    k = _paired_share(painted, batch_size, share)
    if not k:
        return math.ceil(n / batch_size)
    return math.ceil((n - int(painted.sum())) / (batch_size - k))


def epoch_order(painted: Tensor, batch_size: int, generator: torch.Generator, share: float = 0.0) -> Tensor:
    """Indices for one epoch over a dataset whose rows ``painted`` (bool [N]) are painted, consumed in
    batches of ``batch_size`` (``order.split(batch_size)``); every unpainted row appears exactly once,
    painted rows as often as the share needs (the last batch may be short)."""
    n = painted.numel()
    k = _paired_share(painted, batch_size, share)
    if not k:
        return torch.randperm(n, generator=generator)
    n_batches = epoch_batches(painted, batch_size, share)
    painted_idx = painted.nonzero().squeeze(1)
    plain_idx = (~painted).nonzero().squeeze(1)
    p = _cycled(painted_idx, k * n_batches, generator).view(n_batches, k)
    u = plain_idx[torch.randperm(plain_idx.numel(), generator=generator)]
    rows = [torch.cat([p[i], u[i * (batch_size - k):(i + 1) * (batch_size - k)]]) for i in range(n_batches)]
    return torch.cat(rows)
