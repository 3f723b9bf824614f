"""Saliency part: where the served model looks, as a "Model attention" brush region and a heatmap PNG.

Methods (``SALIENCY_METHOD``; captum, on the served classifier, for the predicted class): those of
``training.saliency`` (``grad``, ``max_grad``, ``ig`` with ``SALIENCY_IG_STEPS`` steps, ``gradcam``), the one
implementation the training report uses too.

Maps are computed for the whole batch at the model's input size, resized to each task image's
decoded size (at most ``PREDICT_MAX_SIDE``: ``decode_image`` downscaled it), then (a) the top
``SALIENCY_TOP_Q`` % pixels become a brush region in Label Studio RLE at the image's stored size
(``original_width/height``; the mask is upscaled only while encoding) and (b) a heatmap-over-image
PNG at the decoded size is cached for ``GET /saliency/<project>/<key>``.
"""

from __future__ import annotations

import logging
import math
import threading

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from label_config import regions as regions_lib
from label_config.render import ATTENTION_LABEL
from ml_backend.predict.heatmaps import HeatmapCache, overlay_png, task_key
from ml_backend.predict.parts import PartOutput, PredictContext
from training.images import normalize, original_size, to_batch
from training.saliency import METHODS, attribution_copy, saliency_maps

__all__ = ["METHODS", "SaliencyPart", "resize_map", "saliency_maps", "top_q_mask"]

log = logging.getLogger(__name__)


def resize_map(saliency: torch.Tensor, height: int, width: int) -> np.ndarray:
    """Bilinearly resize one ``S x S`` map to ``height x width`` (numpy float32)."""
    if saliency.shape == (height, width):
        return saliency.cpu().numpy().astype(np.float32)
    out = F.interpolate(saliency[None, None].float(), size=(height, width), mode="bilinear", align_corners=False)
    return out[0, 0].cpu().numpy().astype(np.float32)


def top_q_mask(saliency: np.ndarray, q: float) -> np.ndarray:
    """Bool mask of the top ``q`` percent pixels (exactly ceil(q% of H*W), only pixels with saliency > 0)."""
    flat = np.asarray(saliency, dtype=np.float32).ravel()
    k = min(flat.size, int(math.ceil(flat.size * q / 100.0)))
    mask = np.zeros(flat.size, dtype=bool)
    if k > 0:
        idx = np.argpartition(-flat, k - 1)[:k]
        mask[idx[flat[idx] > 0]] = True
    return mask.reshape(np.shape(saliency))


class SaliencyPart:
    """Prediction part: "Model attention" brush region + cached heatmap PNG per task."""

    name = "saliency"

    def __init__(self, method: str = "grad", top_q: float = 5.0, ig_steps: int = 16, alpha: float = 0.5,
                 batch_size: int = 16, write_png: bool = True) -> None:
        if method not in METHODS:
            raise ValueError(f"SALIENCY_METHOD={method!r}: choose one of {', '.join(METHODS)}")
        if not 0 < top_q <= 100:
            raise ValueError(f"SALIENCY_TOP_Q={top_q}: must be a percentage in (0, 100]")
        if ig_steps < 1:
            raise ValueError(f"SALIENCY_IG_STEPS={ig_steps}: must be >= 1")
        self.method, self.top_q, self.ig_steps, self.alpha = method, float(top_q), int(ig_steps), float(alpha)
        self.batch_size = max(1, int(batch_size))
        self.write_png = write_png
        self._lock = threading.Lock()  # one attribution at a time per part
        self._models: dict[int, tuple[nn.Module, nn.Module]] = {}  # project -> (served model, private copy)

    @classmethod
    def from_settings(cls, settings) -> "SaliencyPart":
        return cls(settings.saliency_method, settings.saliency_top_q, settings.saliency_ig_steps,
                   settings.saliency_alpha, settings.predict_batch_size)

    def private_model(self, project_id: int, model: nn.Module) -> nn.Module:
        """A copy of the served model for attribution (captum's hooks and the in-place switch never touch
        the model other request threads classify with; its weights need no gradients)."""
        cached = self._models.get(project_id)
        if cached is None or cached[0] is not model:
            self._models[project_id] = cached = (model, attribution_copy(model))
        return cached[1]

    def maps(self, ctx: PredictContext) -> list[np.ndarray]:
        """Saliency map of every task image, at its decoded size."""
        served, meta = ctx.served, ctx.served.meta
        targets = ctx.probs.argmax(dim=1)
        baseline = normalize(torch.zeros(1, 3, 1, 1, device=served.device), meta.mean, meta.std)
        out: list[np.ndarray] = []
        for start in range(0, len(ctx.images), self.batch_size):
            imgs = ctx.images[start : start + self.batch_size]
            x = normalize(to_batch(imgs, meta.image_size).to(served.device), meta.mean, meta.std)
            with self._lock:
                sal = saliency_maps(self.private_model(ctx.project_id, served.model), x, targets[start : start + len(imgs)], self.method,
                                    self.ig_steps, baseline)
            for img, s in zip(imgs, sal):
                out.append(resize_map(s, img.height, img.width))
        return out

    def __call__(self, ctx: PredictContext) -> PartOutput:
        maps = self.maps(ctx)
        control = ctx.config.attention_control
        cache = HeatmapCache(ctx.settings.model_dir, ctx.project_id)
        regions: list[list[dict]] = []
        for task, img, sal in zip(ctx.tasks, ctx.images, maps):
            task_regions: list[dict] = []
            try:
                if control:
                    mask = top_q_mask(sal, self.top_q)
                    if mask.any():
                        task_regions.append(regions_lib.brush(mask, ATTENTION_LABEL, control, ctx.config.image_name,
                                                          region_id=f"attention-{self.method}", size=original_size(img)))
                if self.write_png:
                    cache.write(ctx.served.version, task_key(task), overlay_png(img, sal, self.alpha))
            except Exception:  # one task's region or PNG failing leaves the others intact
                log.exception("project %s task %s: saliency output failed", ctx.project_id, task.get("id"))
            regions.append(task_regions)
        return PartOutput(regions=regions)
