"""Batched image classification of a served model."""

from __future__ import annotations

from typing import Sequence

import torch
from PIL import Image

from ml_backend.predict.registry import ServedModel
from training.images import normalize, to_batch


@torch.inference_mode()
def classify(served: ServedModel, images: Sequence[Image.Image], batch_size: int = 16) -> torch.Tensor:
    """Return class probabilities (N×C, on CPU) for a list of images, in chunks of ``batch_size``."""
    meta = served.meta
    probs = []
    for start in range(0, len(images), batch_size):
        x = to_batch(images[start : start + batch_size], meta.image_size).to(served.device)
        logits = served.model(normalize(x, meta.mean, meta.std))
        probs.append(torch.softmax(logits.float(), dim=1).cpu())
    return torch.cat(probs) if probs else torch.empty(0, len(meta.classes))
