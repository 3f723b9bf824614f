"""The GPU path's settings in one place: bf16 autocast, channels-last memory format, pinned memory and
persistent DataLoader workers on CUDA; each is a no-op on a CPU (where they cost or change nothing).

``benchmarks/gpu.py`` measures them (training images/s plain, paired and a torchvision-references loop,
inference latency, the recipe rows at 128 and 224 px).
"""

from __future__ import annotations

from contextlib import nullcontext
from typing import ContextManager

import torch
from torch import nn


def is_cuda(device: str | torch.device) -> bool:
    return torch.device(device).type == "cuda"


def autocast(device: str | torch.device, enabled: bool = True) -> ContextManager:
    """bf16 autocast on CUDA (``TRAIN_AMP``); a null context elsewhere."""
    if enabled and is_cuda(device):
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return nullcontext()


def prepare_model(model: nn.Module, device: str | torch.device) -> nn.Module:
    """``model`` on ``device``; channels-last on CUDA (convolutions run NHWC on tensor cores), in place."""
    model.to(device)
    if is_cuda(device):
        model.to(memory_format=torch.channels_last)
    return model


def prepare_batch(x: torch.Tensor) -> torch.Tensor:
    """A float image batch in channels-last on CUDA (matching ``prepare_model``); unchanged elsewhere."""
    if x.is_cuda and x.dim() == 4:
        return x.contiguous(memory_format=torch.channels_last)
    return x


def persistent_workers(device: str | torch.device, workers: int) -> bool:
    """DataLoader workers live across epochs on CUDA (a GPU epoch is short against their start-up)."""
    return workers > 0 and is_cuda(device)
