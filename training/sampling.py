"""The order a training epoch visits its samples: shuffled, with a least share of painted images per batch.

With masks on a few images (say 10 %), a shuffled batch of 32 holds about three painted images, and
the paired terms that teach the model to ignore the painted pixels weigh little against the
cross-entropy of the other 29.  ``epoch_order(..., share=0.5)`` builds every batch from
``ceil(share * B)`` painted images (a fresh permutation of them, drawn again as often as needed) and
unpainted images for the rest (a permutation of them, as far as it goes this epoch; the next epoch
draws another), keeping the number of batches of a plain epoch, so an epoch costs the same time.
When the painted images are already that share of the data, or there are none or only painted
ones, the order is a plain permutation.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor


def _cycled(idx: Tensor, n: int, generator: torch.Generator) -> Tensor:
    """``n`` entries of ``idx``: successive fresh permutations of it, cut at ``n``."""
    reps = math.ceil(n / max(idx.numel(), 1))
    return torch.cat([idx[torch.randperm(idx.numel(), generator=generator)] for _ in range(reps)])[:n]


def epoch_order(painted: Tensor, batch_size: int, generator: torch.Generator, share: float = 0.0) -> Tensor:
    """Indices for one epoch over a dataset whose rows ``painted`` (bool [N]) are painted, consumed in
    batches of ``batch_size`` (``order.split(batch_size)``)."""
    n = painted.numel()
    n_painted = int(painted.sum())
    k = math.ceil(share * batch_size)
    if not k or not n_painted or n_painted == n or n_painted >= share * n:
        return torch.randperm(n, generator=generator)
    k = min(k, batch_size - 1)  # every batch keeps some unpainted images
    n_batches = math.ceil(n / batch_size)
    painted_idx = painted.nonzero().squeeze(1)
    plain_idx = (~painted).nonzero().squeeze(1)
    p = _cycled(painted_idx, k * n_batches, generator).view(n_batches, k)
    u = _cycled(plain_idx, (batch_size - k) * n_batches, generator).view(n_batches, batch_size - k)
    return torch.cat([p, u], 1).reshape(-1)
