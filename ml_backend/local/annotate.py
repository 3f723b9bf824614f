"""Create Label Studio annotations from known spurious masks (simulates an expert; used by the demo and tests)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from label_studio_sdk import LabelStudio
from PIL import Image

from label_config import regions


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
        client.annotations.create(id=task.id, result=[regions.brush(mask, region_id="spurious")], was_cancelled=False)
        done.append(task.id)
    return done
