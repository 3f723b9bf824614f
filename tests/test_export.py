"""Export parsing: Label Studio JSON export -> training records (pure, no server)."""

from __future__ import annotations

import copy
import json
import logging
from pathlib import Path

import numpy as np
import pytest

from label_config.render import parse_config, render_config
from tests.helpers import data_uri, png_bytes
from training.export import parse_export
from training.rle import encode_mask

PROTOCOL = Path(__file__).resolve().parents[1].parent / "shared" / "ls-protocol"  # recorded LS 1.23.2 traffic
CLASSES = ["cat", "dog", "bird"]
CONFIG = parse_config(render_config(CLASSES))


# --------------------------------------------------------------------------------------------------
# builders shaped like ls-protocol/export_json_task.json (also used by tests/test_training_job.py)


def brush_region(mask: np.ndarray, label: str = "Spurious", from_name: str = "spurious", to_name: str = "image",
                 rid: str = "brush1") -> dict:
    h, w = mask.shape
    return {
        "id": rid, "from_name": from_name, "to_name": to_name, "type": "brushlabels",
        "original_width": w, "original_height": h, "image_rotation": 0,
        "value": {"format": "rle", "rle": encode_mask(mask), "brushlabels": [label]},
    }


def choice_region(label: str, from_name: str = "pred_class", to_name: str = "image") -> dict:
    return {"id": "cls1", "from_name": from_name, "to_name": to_name, "type": "choices", "value": {"choices": [label]}}


def annotation(aid: int, task_id: int, result: list[dict], cancelled: bool = False,
               updated_at: str = "2026-11-23T16:15:48.529678Z") -> dict:
    return {
        "id": aid, "completed_by": 1, "result": result, "was_cancelled": cancelled, "ground_truth": False,
        "created_at": updated_at, "updated_at": updated_at, "draft_created_at": None, "lead_time": None,
        "prediction": {}, "result_count": len(result), "unique_id": f"u-{aid}", "import_id": None,
        "last_action": None, "bulk_created": False, "task": task_id, "project": 1, "updated_by": 1,
        "parent_prediction": None, "parent_annotation": None, "last_created_by": None,
    }


def export_task(task_id: int, image: str, split: str | None = "train", label: str | None = "cat",
                annotations: list[dict] | None = None) -> dict:
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


def rect_mask(h: int, w: int, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
    m = np.zeros((h, w), dtype=bool)
    m[y0:y1, x0:x1] = True
    return m


IMG = data_uri(png_bytes((40, 30)))


# --------------------------------------------------------------------------------------------------


def test_recorded_export_task_parses_like_the_sdk_decoder():
    """The real 1.23.2 export: brush mask equals label-studio-sdk's decode, class from the choice."""
    from label_studio_sdk.converter.brush import decode_rle as sdk_decode

    task = json.loads((PROTOCOL / "export_json_task.json").read_text())
    xml = ('<View><Image name="image" value="$image"/><BrushLabels name="mask" toName="image">'
           '<Label value="Spurious"/></BrushLabels><Choices name="label" toName="image">'
           '<Choice value="cat"/><Choice value="dog"/><Choice value="bird"/></Choices></View>')
    out = parse_export([task], parse_config(xml))
    assert len(out.records) == 1 and not out.skipped
    rec = out.records[0]
    assert (rec.task_id, rec.image_url, rec.split, rec.target, rec.label) == (1, "/data/upload/1/a7c0e552-upload_a.png", "train", "cat", None)
    region = task["annotations"][0]["result"][0]
    expected = sdk_decode(region["value"]["rle"]).reshape(30, 40, 4)[:, :, 3] > 0
    assert rec.mask.shape == (30, 40) and rec.mask.dtype == bool
    np.testing.assert_array_equal(rec.mask, expected)
    assert rec.painted and rec.annotation_id == 1


def test_recorded_export_all_parses():
    tasks = json.loads((PROTOCOL / "export_json_all.json").read_text())
    xml = ('<View><Image name="image" value="$image"/><BrushLabels name="mask" toName="image">'
           '<Label value="Spurious"/></BrushLabels><Choices name="label" toName="image">'
           '<Choice value="cat"/><Choice value="dog"/><Choice value="bird"/></Choices></View>')
    out = parse_export(tasks, parse_config(xml))
    assert out.n_tasks == len(tasks)
    painted = [r for r in out.records if r.painted]
    assert {r.task_id for r in painted} >= {1, 2}
    # unannotated tasks without a data label are unlabelled, not errors
    assert set(out.skipped) <= {"unlabelled"}


def test_union_of_spurious_regions_latest_annotation_and_correction():
    a = rect_mask(30, 40, 0, 5, 0, 5)
    b = rect_mask(30, 40, 20, 30, 30, 40)
    attention = rect_mask(30, 40, 10, 20, 10, 20)
    old = annotation(1, 7, [brush_region(rect_mask(30, 40, 0, 30, 0, 40)), choice_region("bird")],
                     updated_at="2026-01-01T00:00:00Z")
    new = annotation(2, 7, [brush_region(a, rid="r1"), brush_region(b, rid="r2"),
                            brush_region(attention, label="Model attention", from_name="attention"),
                            choice_region("dog")], updated_at="2026-02-01T00:00:00Z")
    cancelled = annotation(3, 7, [choice_region("cat")], cancelled=True, updated_at="2026-03-01T00:00:00Z")
    out = parse_export([export_task(7, IMG, label="cat", annotations=[old, new, cancelled])], CONFIG)
    rec = out.records[0]
    assert rec.target == "dog" and rec.label == "cat" and rec.corrected and rec.annotation_id == 2
    np.testing.assert_array_equal(rec.mask, a | b)
    assert out.counts()["corrected"] == 1

    merged = parse_export([export_task(7, IMG, label="cat", annotations=[old, new, cancelled])], CONFIG,
                          merge_annotations=True)
    assert merged.records[0].mask.all()  # the old annotation painted everything

    data_wins = parse_export([export_task(7, IMG, label="cat", annotations=[old, new])], CONFIG, label_source="data")
    assert data_wins.records[0].target == "cat"


def test_fallbacks_split_label_and_unpainted():
    empty_mask = annotation(5, 3, [brush_region(np.zeros((30, 40), bool))])
    tasks = [
        export_task(1, IMG, split=None, label="bird"),  # no split -> train
        export_task(2, IMG, split="test", label="dog"),
        export_task(3, IMG, label="cat", annotations=[empty_mask]),  # painted nothing
        export_task(4, IMG, label=None, annotations=[annotation(6, 4, [choice_region("cat")])]),  # class only from annotation
    ]
    out = parse_export(tasks, CONFIG)
    recs = {r.task_id: r for r in out.records}
    assert recs[1].split == "train" and recs[1].target == "bird" and not recs[1].painted
    assert recs[2].split == "test"
    assert recs[3].mask is None and recs[3].annotation_id == 5
    assert recs[4].target == "cat" and recs[4].label is None
    assert out.counts()["by_split"] == {"train": 3, "test": 1}


def test_bad_records_are_skipped_counted_and_logged(caplog):
    good = rect_mask(30, 40, 0, 10, 0, 10)
    wrong_size = brush_region(good)
    wrong_size["original_width"], wrong_size["original_height"] = 20, 20
    truncated = brush_region(good)
    truncated["value"]["rle"] = truncated["value"]["rle"][:10]
    not_bytes = brush_region(good)
    not_bytes["value"]["rle"] = [0, 1, "x"]
    no_size = brush_region(good)
    del no_size["original_width"]
    tasks = [
        export_task(10, IMG, label="cat"),
        export_task(11, IMG, label="zebra"),
        export_task(12, IMG, annotations=[annotation(1, 12, [choice_region("unicorn")])]),
        export_task(13, IMG, annotations=[annotation(2, 13, [wrong_size])]),
        export_task(14, IMG, annotations=[annotation(3, 14, [truncated])]),
        export_task(15, IMG, annotations=[annotation(4, 15, [not_bytes])]),
        export_task(16, IMG, annotations=[annotation(5, 16, [no_size])]),
        export_task(17, "", label="cat"),
        export_task(18, IMG, label=None),
        "not a task",
    ]
    del tasks[7]["data"]["image"]
    with caplog.at_level(logging.INFO, logger="training.export"):
        out = parse_export(tasks, CONFIG)
    assert [r.task_id for r in out.records] == [10]
    assert out.skipped == {
        "unknown_label": [11, 12], "bad_mask": [13, 14, 15, 16], "no_image": [17], "unlabelled": [18],
        "malformed": [None],
    }
    c = out.counts()
    assert c["skipped"] == {"unknown_label": 2, "bad_mask": 4, "no_image": 1, "unlabelled": 1, "malformed": 1}
    assert c["skipped_ids"]["bad_mask"] == [13, 14, 15, 16]
    text = caplog.text
    for tid in (11, 12, 13, 14, 15, 16, 17, 18):
        assert f"task {tid} skipped" in text
    assert "zebra" in text and "unicorn" in text and "20x20" in text


def test_parse_does_not_mutate_the_export():
    tasks = [export_task(1, IMG, annotations=[annotation(1, 1, [brush_region(rect_mask(30, 40, 0, 3, 0, 3))])])]
    before = copy.deepcopy(tasks)
    parse_export(tasks, CONFIG)
    assert tasks == before


def test_bad_label_source():
    with pytest.raises(ValueError, match="label_source"):
        parse_export([], CONFIG, label_source="nope")
