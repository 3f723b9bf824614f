"""Export parsing: Label Studio JSON export -> training records (pure, no server)."""

from __future__ import annotations

import copy
import json
import logging

import numpy as np
import pytest

from label_config import regions
from label_config.export import parse_export
from label_config.render import parse_config, render_config
from devkit.builders import annotation, data_uri, export_task, png_bytes, rect_mask
from tests.fixtures import fixture_path

PROTOCOL = fixture_path("ls-protocol")  # recorded LS 1.23.2 traffic
CLASSES = ["cat", "dog", "bird"]
CONFIG = parse_config(render_config(CLASSES))


IMG = data_uri(png_bytes((40, 30)))


def fix(label: str) -> dict:
    """The expert's class correction (``class_fix``); ``regions.choices`` alone is the model's ``pred_class``."""
    return regions.choices(label, from_name="class_fix", region_id="fix")


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
    old = annotation(1, 7, [regions.brush(rect_mask(30, 40, 0, 30, 0, 40)), fix("bird")],
                     updated_at="2026-01-01T00:00:00Z")
    new = annotation(2, 7, [regions.brush(a, region_id="r1"), regions.brush(b, region_id="r2"),
                            regions.brush(attention, label="Model attention", from_name="attention"),
                            fix("dog")], updated_at="2026-02-01T00:00:00Z")
    cancelled = annotation(3, 7, [fix("cat")], cancelled=True, updated_at="2026-03-01T00:00:00Z")
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


def test_the_prefilled_prediction_is_never_a_training_label():
    """Label Studio pre-fills the annotation with the prediction (``pred_class`` = the model's guess): an
    expert who only paints submits that guess; the target stays the task's label, and without a label
    the task is unlabelled, not trained on the guess. Older configs (no ``class_fix``) keep ``pred_class``."""
    painted = regions.brush(rect_mask(30, 40, 0, 5, 0, 5))
    guess = regions.choices("bird", score=0.35)
    tasks = [export_task(1, IMG, label="cat", annotations=[annotation(1, 1, [painted, guess])]),
             export_task(2, IMG, label=None, annotations=[annotation(2, 2, [painted, guess])])]
    out = parse_export(tasks, CONFIG)
    assert [(r.task_id, r.target, r.corrected, r.painted) for r in out.records] == [(1, "cat", False, True)]
    assert out.skipped == {"unlabelled": [2]}
    legacy = parse_config(render_config(CLASSES).replace('name="class_fix"', 'name="other_choices"'))
    assert legacy.correction_control is None
    assert parse_export(tasks[:1], legacy).records[0].target == "bird"


def test_magic_wand_regions_paint_and_other_regions_are_reported():
    """Label Studio stores a magic-wand stroke unlabelled (``type: "magicwand"``, value ``format``/``rle``
    only, as recorded in the browser): it paints spurious pixels like the brush. A region of a kind
    that cannot paint (a rectangle, a wand on another image) is ignored and reported per task."""
    brush = rect_mask(30, 40, 0, 5, 0, 5)
    wand = rect_mask(30, 40, 10, 20, 10, 30)
    wand_region = regions.brush(wand, region_id="w1")
    wand_region.update(type="magicwand", from_name="magicwand")
    wand_region["value"].pop("brushlabels")
    stray_wand = dict(wand_region, to_name="saliency", id="w2")
    rect = {"id": "r", "type": "rectanglelabels", "from_name": "box", "to_name": "image",
            "value": {"x": 1, "y": 1, "width": 5, "height": 5, "rectanglelabels": ["Spurious"]}}
    tasks = [export_task(1, IMG, label="cat", annotations=[annotation(1, 1, [regions.brush(brush), wand_region])]),
             export_task(2, IMG, label="dog", annotations=[annotation(2, 2, [wand_region, rect, stray_wand])])]
    out = parse_export(tasks, CONFIG)
    recs = {r.task_id: r for r in out.records}
    np.testing.assert_array_equal(recs[1].mask, brush | wand)
    np.testing.assert_array_equal(recs[2].mask, wand)
    assert out.ignored_regions == {"unsupported_region": [2, 2]}
    assert CONFIG.magicwand_control == "magicwand"


def test_fallbacks_split_label_and_unpainted():
    empty_mask = annotation(5, 3, [regions.brush(np.zeros((30, 40), bool))])
    tasks = [
        export_task(1, IMG, split=None, label="bird"),  # no split -> train
        export_task(2, IMG, split="test", label="dog"),
        export_task(3, IMG, label="cat", annotations=[empty_mask]),  # painted nothing
        export_task(4, IMG, label=None, annotations=[annotation(6, 4, [fix("cat")])]),  # class only from annotation
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
    wrong_size = regions.brush(good)
    wrong_size["original_width"], wrong_size["original_height"] = 20, 20
    truncated = regions.brush(good)
    truncated["value"]["rle"] = truncated["value"]["rle"][:10]
    not_bytes = regions.brush(good)
    not_bytes["value"]["rle"] = [0, 1, "x"]
    no_size = regions.brush(good)
    del no_size["original_width"]
    tasks = [
        export_task(10, IMG, label="cat"),
        export_task(11, IMG, label="zebra"),
        export_task(12, IMG, annotations=[annotation(1, 12, [fix("unicorn")])]),
        export_task(13, IMG, annotations=[annotation(2, 13, [wrong_size])]),
        export_task(14, IMG, annotations=[annotation(3, 14, [truncated])]),
        export_task(15, IMG, annotations=[annotation(4, 15, [not_bytes])]),
        export_task(16, IMG, annotations=[annotation(5, 16, [no_size])]),
        export_task(17, "", label="cat"),
        export_task(18, IMG, label=None),
        "not a task",
    ]
    del tasks[7]["data"]["image"]
    with caplog.at_level(logging.INFO, logger="label_config.export"):
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
    tasks = [export_task(1, IMG, annotations=[annotation(1, 1, [regions.brush(rect_mask(30, 40, 0, 3, 0, 3))])])]
    before = copy.deepcopy(tasks)
    parse_export(tasks, CONFIG)
    assert tasks == before


def test_bad_label_source():
    with pytest.raises(ValueError, match="label_source"):
        parse_export([], CONFIG, label_source="nope")
