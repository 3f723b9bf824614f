"""A torch hub cache seeded with small stand-ins of torchvision's weights, for tests that must never reach
a network: the file name torchvision expects, every tensor a stride-0 view of one number (a few KB on
disk, loads like the real state dict)."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import torch

from training.pretrained import NamedWeights

ValueFor = Callable[[str, torch.Tensor], float]


def plausible(marker: str, value: float) -> ValueFor:
    """Values that train: BatchNorm at identity (weight/var 1, bias/mean 0), other weights 1e-3, and the
    tensor named ``marker`` = ``value`` (what a test reads back)."""
    def value_for(name: str, t: torch.Tensor) -> float:
        if name == marker:
            return value
        if name.endswith(("running_var",)) or (name.endswith("weight") and t.ndim == 1):
            return 1.0
        if name.endswith(("bias", "running_mean")) or t.ndim == 0:
            return 0.0
        return 1e-3
    return value_for


def seed_hub_cache(weights: NamedWeights, template: dict[str, torch.Tensor], value_for: ValueFor) -> Path:
    """Write a state dict shaped like ``template`` to ``weights.file`` (under the current TORCH_HOME)."""
    state = {k: torch.full((), value_for(k, v), dtype=v.dtype).expand(v.shape) for k, v in template.items()}
    weights.file.parent.mkdir(parents=True, exist_ok=True)
    torch.save(state, weights.file)
    return weights.file


def go_offline(monkeypatch, torch_home: Path) -> Path:
    """Point torch's hub cache at ``torch_home`` and send every download to a closed port (for a
    pytest ``monkeypatch``): a test that reaches for the network fails instead of downloading."""
    monkeypatch.setenv("TORCH_HOME", str(torch_home))
    for var in ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy"):
        monkeypatch.setenv(var, "http://127.0.0.1:9")
    for var in ("NO_PROXY", "no_proxy"):
        monkeypatch.delenv(var, raising=False)
    return torch_home
