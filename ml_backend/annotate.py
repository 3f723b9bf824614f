"""Create Label Studio annotations from known spurious masks (simulates an expert; used by the demo and tests)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from label_studio_sdk import LabelStudio
from PIL import Image

from label_config.render import CLASS_CONTROL, IMAGE_OBJECT, SPURIOUS_CONTROL, SPURIOUS_LABEL
from training.rle import encode_mask


def brush_region(mask: np.ndarray, from_name: str = SPURIOUS_CONTROL, label: str = SPURIOUS_LABEL, region_id: str = "spurious") -> dict:
    """A ``brushlabels`` result for a boolean H×W mask at the image's original size."""
    h, w = mask.shape
    return {
        "id": region_id,
        "from_name": from_name,
        "to_name": IMAGE_OBJECT,
        "type": "brushlabels",
        "original_width": int(w),
        "original_height": int(h),
        "image_rotation": 0,
        "value": {"format": "rle", "rle": encode_mask(mask), "brushlabels": [label]},
    }


def class_region(label: str) -> dict:
    return {"id": "class", "from_name": CLASS_CONTROL, "to_name": IMAGE_OBJECT, "type": "choices", "value": {"choices": [label]}}


def paint_from_masks(client: LabelStudio, project_id: int, masks_root: Path, limit: int) -> list[int]:
    """Annotate up to ``limit`` training tasks with the mask stored at ``masks_root/<task data key>``."""
    done = []
    for task in client.tasks.list(project=project_id, fields="all"):
        if len(done) >= limit:
            break
        data = task.data or {}
        path = masks_root / str(data.get("key", ""))
        if data.get("split") != "train" or not path.is_file() or task.total_annotations:
            continue
        mask = np.asarray(Image.open(path).convert("L")) > 127
        if not mask.any():
            continue
        client.annotations.create(id=task.id, result=[brush_region(mask), class_region(data["label"])], was_cancelled=False)
        done.append(task.id)
    return done
