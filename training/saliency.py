"""Where a classifier looks: saliency maps (captum) and their heatmap colouring, the one implementation the
backend's predictions (``ml_backend.predict.saliency``) and the training report (``training.changes``,
``training.attention``) share.

Methods, for a given target class:

- ``grad``: vanilla gradient, |d logit / d pixel| summed over the colour channels;
- ``max_grad``: Robustar's "max gradient": |gradient| maxed over the colour channels;
- ``ig``: integrated gradients from a black image (``ig_steps`` steps), |attribution| summed over channels;
- ``gradcam``: Grad-CAM on the last convolutional block (ReLU'd, bilinearly upsampled).
"""

from __future__ import annotations

import copy

import numpy as np
import torch
from torch import nn

METHODS = ("grad", "max_grad", "ig", "gradcam")


def gradcam_layer(model: nn.Module) -> nn.Module:
    """The module whose output is the last convolutional feature map (ResNet ``layer4``, ``features``, …)."""
    for name in ("layer4", "features"):
        layer = getattr(model, name, None)
        if isinstance(layer, nn.Module):
            return layer
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    if not convs:
        raise ValueError(f"Grad-CAM needs a convolutional layer; {type(model).__name__} has none")
    return convs[-1]


def attribution_copy(model: nn.Module) -> nn.Module:
    """A frozen copy of ``model`` in eval mode to attribute with (captum's hooks and the in-place switch never
    touch the original; its weights need no gradients)."""
    clone = copy.deepcopy(model).eval()
    for p in clone.parameters():
        p.requires_grad_(False)
    return clone


def _no_inplace(model: nn.Module):
    """Temporarily turn in-place ReLUs off (captum's layer/input hooks and in-place ops do not mix)."""
    changed = [m for m in model.modules() if isinstance(m, (nn.ReLU, nn.ReLU6)) and m.inplace]
    for m in changed:
        m.inplace = False
    return changed


def saliency_maps(
    model: nn.Module,
    x: torch.Tensor,
    target: torch.Tensor,
    method: str = "grad",
    ig_steps: int = 16,
    baseline: torch.Tensor | None = None,
) -> torch.Tensor:
    """Non-negative saliency maps ``N x S x S`` (at the input size) of normalised inputs ``x`` for ``target``."""
    from captum.attr import (
        IntegratedGradients,
        LayerAttribution,
        LayerGradCam,
        Saliency,
    )

    if method not in METHODS:
        raise ValueError(f"unknown saliency method {method!r}; choose one of {', '.join(METHODS)}")
    x = x.detach().clone().requires_grad_(True)
    target = target.to(x.device)
    changed = _no_inplace(model)
    try:
        with torch.enable_grad():
            if method in ("grad", "max_grad"):
                attr = Saliency(model).attribute(x, target=target, abs=True)
                out = attr.amax(dim=1) if method == "max_grad" else attr.sum(dim=1)
            elif method == "ig":
                base = baseline if baseline is not None else torch.zeros_like(x)
                attr = IntegratedGradients(model).attribute(
                    x, baselines=base.expand_as(x), target=target, n_steps=ig_steps,
                    internal_batch_size=max(x.shape[0], 64),  # bounds memory: 64 interpolated images per pass
                )
                out = attr.abs().sum(dim=1)
            else:
                cam = LayerGradCam(model, gradcam_layer(model)).attribute(x, target=target, relu_attributions=True)
                out = LayerAttribution.interpolate(cam, tuple(x.shape[-2:]), interpolate_mode="bilinear")[:, 0]
                out = out.clamp_min(0)
    finally:
        for m in changed:
            m.inplace = True
    return out.detach().float()


# --------------------------------------------------------------------------------------------------
# heatmap colouring


def jet(values: np.ndarray) -> np.ndarray:
    """The classic 'jet' colour map (blue -> cyan -> yellow -> red) of values in [0, 1], as uint8 RGB."""
    v = np.clip(values, 0.0, 1.0)[..., None]
    r = np.clip(1.5 - np.abs(4.0 * v - 3.0), 0.0, 1.0)
    g = np.clip(1.5 - np.abs(4.0 * v - 2.0), 0.0, 1.0)
    b = np.clip(1.5 - np.abs(4.0 * v - 1.0), 0.0, 1.0)
    return (np.concatenate([r, g, b], axis=-1) * 255.0).astype(np.uint8)


def normalize_map(saliency: np.ndarray) -> np.ndarray:
    """Scale a non-negative saliency map to [0, 1] by its 99.5th percentile (robust to single hot pixels)."""
    s = np.asarray(saliency, dtype=np.float32)
    s = np.maximum(s, 0.0)
    top = float(np.percentile(s, 99.5)) if s.size else 0.0
    if top <= 0.0:
        top = float(s.max()) if s.size else 0.0
    if top <= 0.0:
        return np.zeros_like(s)
    return np.clip(s / top, 0.0, 1.0)


def overlay(rgb: np.ndarray, saliency: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """The heatmap (jet) of ``saliency`` (H x W) blended over ``rgb`` (H x W x 3), as uint8 RGB."""
    rgb = np.asarray(rgb, dtype=np.float32)
    if saliency.shape != rgb.shape[:2]:
        raise ValueError(f"saliency map {saliency.shape} does not match the image {rgb.shape[:2]}")
    heat = jet(normalize_map(saliency)).astype(np.float32)
    return ((1.0 - alpha) * rgb + alpha * heat).round().astype(np.uint8)
