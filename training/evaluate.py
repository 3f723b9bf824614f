"""Accuracy (and mean cross-entropy) of a model on the cached splits."""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from training.dataset import PairedDataset
from training.paired import make_normalizer


@torch.inference_mode()
def predict_logits(
    model: nn.Module,
    dataset: PairedDataset,
    mean: Sequence[float],
    std: Sequence[float],
    device: str | torch.device = "cpu",
    batch_size: int = 128,
    image_size: int | None = None,
) -> torch.Tensor:
    """Logits (N x C, float32 on CPU) for every image of ``dataset``, in order.

    When ``image_size`` differs from the cached size (a parent trained at another size) the batch is
    resized on the device (bilinear, antialiased).
    """
    was_training = model.training
    model.eval()
    norm = make_normalizer(mean, std)
    out = []
    try:
        for x, _, _ in dataset.batches(batch_size, device):
            if image_size and image_size != x.shape[-1]:
                x = F.interpolate(x, size=(image_size, image_size), mode="bilinear", align_corners=False, antialias=True)
            out.append(model(norm(x)).float().cpu())
    finally:
        model.train(was_training)
    if not out:
        return torch.zeros(0, 0)
    return torch.cat(out)


def evaluate(
    model: nn.Module,
    dataset: PairedDataset,
    mean: Sequence[float],
    std: Sequence[float],
    device: str | torch.device = "cpu",
    batch_size: int = 128,
    image_size: int | None = None,
) -> dict[str, float | int | None]:
    """``{"accuracy", "loss", "n", "correct", "accuracy_painted", "n_painted"}`` on ``dataset``.

    ``accuracy`` is None for an empty split. ``accuracy_painted`` is the accuracy on the painted
    images only (clean images, not noised), None when none is painted.
    """
    n = len(dataset)
    if n == 0:
        return {"accuracy": None, "loss": None, "n": 0, "correct": 0, "accuracy_painted": None, "n_painted": 0}
    logits = predict_logits(model, dataset, mean, std, device, batch_size, image_size)
    targets = dataset.targets
    right = logits.argmax(1) == targets
    painted = dataset.painted
    n_p = int(painted.sum())
    return {
        "accuracy": float(right.float().mean()),
        "loss": float(F.cross_entropy(logits, targets)),
        "n": n,
        "correct": int(right.sum()),
        "accuracy_painted": float(right[painted].float().mean()) if n_p else None,
        "n_painted": n_p,
    }


def evaluate_splits(model: nn.Module, splits: dict[str, PairedDataset], mean, std, device="cpu",
                    batch_size: int = 128, image_size: int | None = None) -> dict[str, dict]:
    """``evaluate`` on every split, keyed by split name."""
    return {name: evaluate(model, ds, mean, std, device, batch_size, image_size) for name, ds in sorted(splits.items())}
