"""Saliency heatmap PNGs: rendering (jet colour map over the image) and their cache per
project/version/task (``<MODEL_DIR>/project-<id>/heatmaps/<version>/<hash of the task key>.png``,
see ``ml_backend.predict.task_files``). The label config's second ``<Image name="saliency">`` shows
``$saliency`` = ``<backend>/saliency/<project id>/<url-quoted key>``, which ``ml_backend.api.views``
answers from this cache.
"""

from __future__ import annotations

import io
import logging
from pathlib import Path

import numpy as np
from PIL import Image

from ml_backend.predict.task_files import TaskFileCache, task_key

__all__ = ["HEATMAP_DIR", "HeatmapCache", "overlay_png", "task_key"]

log = logging.getLogger(__name__)

HEATMAP_DIR = "heatmaps"


class HeatmapCache(TaskFileCache):
    """The cached heatmap PNGs of one project."""

    def __init__(self, model_dir: str | Path, project_id: int | str) -> None:
        super().__init__(model_dir, project_id, HEATMAP_DIR, ".png")


# --------------------------------------------------------------------------------------------------
# rendering


def _jet(values: np.ndarray) -> np.ndarray:
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


def overlay_png(image: Image.Image, saliency: np.ndarray, alpha: float = 0.5) -> bytes:
    """A PNG of the heatmap (jet) blended over the image; ``saliency`` is H x W at the image's size."""
    rgb = np.asarray(image.convert("RGB"), dtype=np.float32)
    if saliency.shape != rgb.shape[:2]:
        raise ValueError(f"saliency map {saliency.shape} does not match the image {rgb.shape[:2]}")
    heat = _jet(normalize_map(saliency)).astype(np.float32)
    out = (1.0 - alpha) * rgb + alpha * heat
    buf = io.BytesIO()
    Image.fromarray(out.round().astype(np.uint8), "RGB").save(buf, "PNG", compress_level=1)
    return buf.getvalue()
