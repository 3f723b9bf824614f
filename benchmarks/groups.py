"""The peer baseline that needs group labels instead of masks: cluster-balanced worst-group training.

As in the "spurious MNIST" report (``/work/shared/seeds/spurious-mnist-report.txt``: the third
step of TOFU with hand-made clusters), the training images are split into groups ``label x
spurious value`` (``K x K`` groups for ``K`` classes). Every step draws the same number of images
from each non-empty group (random resampling with replacement, so the tiny minority groups are
seen as often as the majority ones), computes the cross-entropy of each group, and back-propagates
the *worst* group's loss (``min_f max_g L(f(C_g))``). ``objective="mean"`` back-propagates the mean
over the groups instead (group-balanced ERM).

It runs on the product's ``PairedDataset``, model zoo, optimizer and normalisation, with the same
epochs, batch size and lr schedule as ``training.engine.fit``, so only the objective differs.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from training.dataset import PairedDataset
from training.engine import make_optimizer
from training.images import make_normalizer
from training.options import TrainOptions

OBJECTIVES = ("worst", "mean")


def group_ids(targets: torch.Tensor, spurious: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Group of each image: ``label * K + spurious value`` (values outside 0..K-1 form group ``label * K``)."""
    s = spurious.clamp(0, num_classes - 1)
    return targets.long() * num_classes + s.long()


def train_group_balanced(
    model: nn.Module,
    train: PairedDataset,
    groups: torch.Tensor,
    opts: TrainOptions,
    mean,
    std,
    device: str = "cpu",
    objective: str = "worst",
) -> dict[str, Any]:
    """Train ``model`` for ``opts.epochs`` epochs of ``ceil(N / batch_size)`` group-balanced steps.

    Each step takes ``ceil(batch_size / G)`` images from each of the ``G`` non-empty groups. Masks
    in ``train`` are ignored (this baseline knows groups, not pixels). Returns per-epoch history.
    """
    if objective not in OBJECTIVES:
        raise ValueError(f"objective must be one of {OBJECTIVES}, got {objective!r}")
    if groups.shape[0] != len(train):
        raise ValueError("one group id per training image is needed")
    model.to(device).train()
    optimizer = make_optimizer(model, opts)
    steps_per_epoch = math.ceil(len(train) / opts.batch_size)
    total = steps_per_epoch * opts.epochs
    scheduler = (torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(total, 1))
                 if opts.lr_schedule == "cosine" else None)
    norm = make_normalizer(mean, std)
    gen = torch.Generator().manual_seed(opts.seed)
    members = [(groups == g).nonzero().squeeze(1) for g in torch.unique(groups)]
    per_group = max(1, math.ceil(opts.batch_size / len(members)))
    epochs = []
    for epoch in range(1, opts.epochs + 1):
        worst_sum, n = 0.0, 0
        for _ in range(steps_per_epoch):
            picks = [m[torch.randint(0, m.numel(), (per_group,), generator=gen)] for m in members]
            idx = torch.cat(picks)
            x = train.images[idx].to(device).float().div_(255.0)
            y = train.targets[idx].to(device)
            logits = model(norm(x))
            losses = F.cross_entropy(logits, y, reduction="none").view(len(members), per_group).mean(1)
            loss = losses.max() if objective == "worst" else losses.mean()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            if scheduler is not None:
                scheduler.step()
            worst_sum += float(losses.max().detach())
            n += 1
        epochs.append({"epoch": epoch, "train_worst_group_loss": worst_sum / max(n, 1)})
    return {"epochs": epochs, "groups": len(members), "per_group": per_group}
