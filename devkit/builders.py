"""Test data builders (pure, no I/O): images, data URIs, masks, and Label Studio export tasks and
annotations shaped like ``tests/fixtures/ls-protocol/export_json_task.json``.

Result regions come from the product's own builders: ``label_config.regions.brush`` / ``choices``.
"""

from __future__ import annotations

import base64
import io
from pathlib import Path

import numpy as np
from PIL import Image


def png_bytes(size: tuple[int, int] = (40, 30), colour: tuple[int, int, int] = (200, 30, 30)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, colour).save(buf, "PNG")
    return buf.getvalue()


def data_uri(data: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(data).decode()


def rect_mask(h: int, w: int, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
    m = np.zeros((h, w), dtype=bool)
    m[y0:y1, x0:x1] = True
    return m


def annotation(aid: int, task_id: int, result: list[dict], cancelled: bool = False,
               updated_at: str = "2026-11-23T16:15:48.529678Z") -> dict:
    """One annotation of an export task, with every field Label Studio 1.23.2 exports."""
    return {
        "id": aid, "completed_by": 1, "result": result, "was_cancelled": cancelled, "ground_truth": False,
        "created_at": updated_at, "updated_at": updated_at, "draft_created_at": None, "lead_time": None,
        "prediction": {}, "result_count": len(result), "unique_id": f"u-{aid}", "import_id": None,
        "last_action": None, "bulk_created": False, "task": task_id, "project": 1, "updated_by": 1,
        "parent_prediction": None, "parent_annotation": None, "last_created_by": None,
    }


def export_task(task_id: int, image: str, split: str | None = "train", label: str | None = "cat",
                annotations: list[dict] | None = None) -> dict:
    """One task of a JSON export; ``split``/``label`` of None leave that data field out."""
    data = {"image": image}
    if split is not None:
        data["split"] = split
    if label is not None:
        data["label"] = label
    return {
        "id": task_id, "annotations": annotations or [], "file_upload": None, "drafts": [], "predictions": [],
        "data": data, "meta": {}, "created_at": "2026-11-23T16:15:42.150059Z",
        "updated_at": "2026-11-23T16:15:48.544775Z", "allow_skip": True, "inner_id": task_id,
        "total_annotations": len(annotations or []), "cancelled_annotations": 0, "total_predictions": 0,
        "comment_count": 0, "unresolved_comment_count": 0, "last_comment_updated_at": None, "project": 1,
        "updated_by": 1, "comment_authors": [],
    }


def synthetic_export(root: Path, classes: list[str], image_url=lambda split, cls, path: data_uri(path.read_bytes()),
                     paint_every: int = 2) -> tuple[list[dict], dict[str, bytes]]:
    """A Label Studio JSON export of a synthetic ImageFolder (``training.synthetic``): every
    ``paint_every``-th training image painted with its true spurious mask. Returns the tasks and the
    image bytes by URL (``image_url(split, class, path)``; data URIs by default)."""
    from label_config import regions

    tasks, files, tid = [], {}, 0
    for split in ("train", "test"):
        for cls in classes:
            for path in sorted((root / split / cls).glob("*.png")):
                tid += 1
                anns = []
                if split == "train" and tid % paint_every == 0:
                    mask = np.asarray(Image.open(root / "masks" / split / cls / path.name)) > 0
                    anns = [annotation(tid, tid, [regions.brush(mask), regions.choices(cls)])]
                url = image_url(split, cls, path)
                files[url] = path.read_bytes()
                tasks.append(export_task(tid, url, split=split, label=cls, annotations=anns))
    return tasks, files
