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
from training.saliency import overlay

__all__ = ["HEATMAP_DIR", "HeatmapCache", "overlay_png", "task_key"]

log = logging.getLogger(__name__)

HEATMAP_DIR = "heatmaps"


class HeatmapCache(TaskFileCache):
    """The cached heatmap PNGs of one project."""

    def __init__(self, model_dir: str | Path, project_id: int | str) -> None:
        super().__init__(model_dir, project_id, HEATMAP_DIR, ".png")


# --------------------------------------------------------------------------------------------------
# rendering


def overlay_png(image: Image.Image, saliency: np.ndarray, alpha: float = 0.5) -> bytes:
    """A PNG of the heatmap (jet) blended over the image; ``saliency`` is H x W at the image's size."""
    out = overlay(np.asarray(image.convert("RGB")), saliency, alpha)
    buf = io.BytesIO()
    Image.fromarray(out, "RGB").save(buf, "PNG", compress_level=1)
    return buf.getvalue()
