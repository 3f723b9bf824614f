"""Batched image classification and its Label Studio ``choices`` region."""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from PIL import Image

from ml_backend.serving import ServedModel


def to_tensor(images: Sequence[Image.Image], size: int) -> torch.Tensor:
    """Resize RGB images to ``size``×``size`` and stack them as a float batch in [0, 1]."""
    arrays = [np.asarray(img.convert("RGB").resize((size, size), Image.BILINEAR), dtype=np.uint8) for img in images]
    batch = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2)
    return batch.float().div_(255.0)


def normalize(batch: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """Apply per-channel mean/std normalization to a [0, 1] batch."""
    m = torch.tensor(mean, device=batch.device).view(1, -1, 1, 1)
    s = torch.tensor(std, device=batch.device).view(1, -1, 1, 1)
    return (batch - m) / s


@torch.inference_mode()
def classify(served: ServedModel, images: Sequence[Image.Image], batch_size: int = 16) -> torch.Tensor:
    """Return class probabilities (N×C, on CPU) for a list of images, in chunks of ``batch_size``."""
    meta = served.meta
    probs = []
    for start in range(0, len(images), batch_size):
        x = to_tensor(images[start : start + batch_size], meta.image_size).to(served.device)
        logits = served.model(normalize(x, meta.mean, meta.std))
        probs.append(torch.softmax(logits.float(), dim=1).cpu())
    return torch.cat(probs) if probs else torch.empty(0, len(meta.classes))


def choices_region(from_name: str, to_name: str, label: str, score: float) -> dict:
    """A Label Studio ``choices`` prediction region."""
    return {
        "id": f"{from_name}",
        "from_name": from_name,
        "to_name": to_name,
        "type": "choices",
        "value": {"choices": [label]},
        "score": float(score),
    }
