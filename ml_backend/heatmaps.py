"""Saliency heatmap PNGs: rendering (jet colour map over the image) and their cache per
project/version/task (``<MODEL_DIR>/project-<id>/heatmaps/<version>/<hash of the task key>.png``,
see ``ml_backend.task_files``). The label config's second ``<Image name="saliency">`` shows
``$saliency`` = ``<backend>/saliency/<project id>/<url-quoted key>``, which ``ml_backend.views``
answers from this cache.
"""

from __future__ import annotations

import io
import logging
from pathlib import Path

import numpy as np
from PIL import Image

from ml_backend.task_files import TaskFileCache, task_key

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


# --------------------------------------------------------------------------------------------------
# brush regions at the task image's stored size


_RLE_CHUNK_PIXELS = 1 << 20  # output pixels upscaled at once while encoding (bounds memory)


def _runs(flat: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    change = np.flatnonzero(flat[1:] != flat[:-1])
    ends = np.append(change, flat.size - 1)
    return flat[ends], np.diff(np.append(-1, ends))


def upscaled_mask_rle(mask: np.ndarray, width: int, height: int) -> list[int]:
    """Label Studio brush RLE of ``mask`` (bool ``h x w``) nearest-upscaled to ``height x width``, without
    building the full-size mask: rows are upscaled ~1 M pixels at a time and only their runs are kept.

    Byte-identical to ``label_config.rle.encode_mask`` of the nearest-upscaled mask (source row/column
    ``floor((i + 0.5) * h / height)``), so it decodes to exactly ``width*height*4`` values.
    """
    from label_config.rle import (
        _encode_runs,  # the SDK-exact record packer, fed with runs
    )

    mask = np.asarray(mask, dtype=bool)
    h, w = mask.shape
    if width * height * 4 >= 1 << 32:
        raise ValueError(f"mask of {width}x{height} pixels is too large for the 32-bit RLE length field")
    rows = np.minimum(((np.arange(height) + 0.5) * h / height).astype(np.int64), h - 1)
    cols = np.minimum(((np.arange(width) + 0.5) * w / width).astype(np.int64), w - 1)
    step = max(1, _RLE_CHUNK_PIXELS // max(1, width))
    values: list[np.ndarray] = []
    lengths: list[np.ndarray] = []
    for r0 in range(0, height, step):
        v, n = _runs(mask[rows[r0 : r0 + step]][:, cols].ravel())
        if values and values[-1][-1] == v[0]:  # a run that goes on across the chunk boundary
            lengths[-1][-1] += n[0]
            v, n = v[1:], n[1:]
        if v.size:
            values.append(v.copy())
            lengths.append(n.copy())
    if not values:
        return _encode_runs(np.zeros(0, np.int64), np.zeros(0, np.int64), 0)
    vals = np.concatenate(values).astype(np.int64) * 255
    return _encode_runs(vals, np.concatenate(lengths) * 4, width * height * 4)


def brush_at_size(mask: np.ndarray, size: tuple[int, int], label: str, from_name: str, to_name: str,
                  score: float | None = None, region_id: str | None = None) -> dict:
    """A ``brushlabels`` region for ``mask`` (at the decoded, maybe downscaled image's size) at the task
    image's stored ``size`` = (width, height): Label Studio decodes a brush RLE into a canvas of the
    image's natural size, so it must hold exactly ``width*height*4`` values; the mask is upscaled
    (nearest) only while encoding."""
    from label_config import regions as regions_lib

    width, height = int(size[0]), int(size[1])
    if mask.shape == (height, width):
        return regions_lib.brush(mask, label, from_name, to_name, score, region_id=region_id)
    region = regions_lib.brush(np.zeros((1, 1), dtype=bool), label, from_name, to_name, score, region_id=region_id)
    region["original_width"], region["original_height"] = width, height
    region["value"]["rle"] = upscaled_mask_rle(mask, width, height)
    return region
