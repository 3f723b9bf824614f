"""Label Studio result regions: the one place that builds ``choices``, ``brushlabels`` and ``textarea``.

Used for predictions (classifier, saliency, mask proposals, influence), for annotations the demo
and the benchmarks create through the SDK, and by tests.
"""

from __future__ import annotations

import numpy as np

from label_config.render import (
    CLASS_CONTROL,
    IMAGE_OBJECT,
    SPURIOUS_CONTROL,
    SPURIOUS_LABEL,
)
from label_config.rle import encode_mask, encode_mask_resized


def choices(label: str, from_name: str = CLASS_CONTROL, to_name: str = IMAGE_OBJECT,
            score: float | None = None, region_id: str | None = None) -> dict:
    """A ``choices`` region selecting ``label``."""
    region = {"id": region_id or from_name, "from_name": from_name, "to_name": to_name, "type": "choices",
              "value": {"choices": [label]}}
    if score is not None:
        region["score"] = float(score)
    return region


def brush(mask: np.ndarray, label: str = SPURIOUS_LABEL, from_name: str = SPURIOUS_CONTROL,
          to_name: str = IMAGE_OBJECT, score: float | None = None, region_id: str | None = None,
          size: tuple[int, int] | None = None) -> dict:
    """A ``brushlabels`` region (Label Studio RLE) for a bool ``H x W`` mask at the image's original size,
    or — ``size`` = the image's stored (width, height) — a mask computed at another size, resized while
    encoding (Label Studio decodes a brush RLE into a canvas of the image's natural size)."""
    h, w = mask.shape
    if size is not None and (int(size[1]), int(size[0])) != (h, w):
        w, h = int(size[0]), int(size[1])
        rle = encode_mask_resized(mask, w, h)
    else:
        rle = encode_mask(np.asarray(mask, dtype=bool))
    region = {
        "id": region_id or from_name,
        "from_name": from_name,
        "to_name": to_name,
        "type": "brushlabels",
        "original_width": int(w),
        "original_height": int(h),
        "image_rotation": 0,
        "value": {"format": "rle", "rle": rle, "brushlabels": [label]},
    }
    if score is not None:
        region["score"] = float(score)
    return region


def text(lines: list[str], from_name: str, to_name: str = IMAGE_OBJECT, region_id: str | None = None) -> dict:
    """A ``textarea`` region holding ``lines``."""
    return {"id": region_id or from_name, "from_name": from_name, "to_name": to_name, "type": "textarea",
            "value": {"text": list(lines)}}
