"""Magic-wand regions in the export (issue 23): labelled or not, one region, its RLE decoded once.

``wand_results.json`` holds what Label Studio 1.23.2 stored in the browser for the three ways a wand region
can be labelled (see its ``how``); Label Studio serializes each (tool, label) pair of a region as its own
result, with the region's id and RLE repeated.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from label_config import regions
from label_config.export import parse_export, spurious_regions
from label_config.render import parse_config, render_config
from label_config.rle import decode_rle
from devkit.builders import annotation, data_uri, export_task, png_bytes, rect_mask
from tests.fixtures import fixture_path

CONFIG = parse_config(render_config(["circle", "square", "triangle"]))
RECORDED = json.loads((fixture_path("ls-protocol") / "wand_results.json").read_text())
IMG = data_uri(png_bytes((64, 64)))
OLD_CONFIG = parse_config(render_config(["circle", "square", "triangle"]).replace(
    '<Labels name="spurious_wand" toName="image">\n    <Label value="Spurious" background="#ff0000"/>\n  </Labels>', ""))


def decoded(result: dict) -> np.ndarray:
    return decode_rle(result["value"]["rle"], result["original_height"], result["original_width"])


def test_the_config_has_a_spurious_label_for_the_wand():
    assert (CONFIG.magicwand_control, CONFIG.wand_label_control) == ("magicwand", "spurious_wand")
    assert OLD_CONFIG.wand_label_control is None and OLD_CONFIG.magicwand_control == "magicwand"


@pytest.mark.parametrize("case, types", [
    ("labelled_as_drawn", ["magicwand", "labels"]),
    ("labelled_afterwards", ["magicwand", "brushlabels"]),
    ("label_left_selected", ["magicwand", "labels", "brushlabels"]),
])
def test_a_recorded_wand_region_is_one_region(case, types):
    """What Label Studio stored: one region id, the RLE in every result; the export keeps one result."""
    results = RECORDED[case]["result"]
    assert [r["type"] for r in results] == types and len({r["id"] for r in results}) == 1
    assert all(r["value"]["rle"] == results[0]["value"]["rle"] for r in results)
    kept = spurious_regions(results, CONFIG)
    assert len(kept) == 1
    out = parse_export([export_task(1, IMG, label="circle", annotations=[annotation(1, 1, results)])], CONFIG)
    assert not out.ignored_regions and not out.skipped
    np.testing.assert_array_equal(out.records[0].mask, decoded(results[0]))


def test_old_annotations_parse_with_the_old_config():
    """Annotations made with the config before ``spurious_wand`` (unlabelled wand, or a brushlabels twin)."""
    for case in ("labelled_afterwards",):
        results = RECORDED[case]["result"]
        out = parse_export([export_task(1, IMG, label="circle", annotations=[annotation(1, 1, results)])], OLD_CONFIG)
        np.testing.assert_array_equal(out.records[0].mask, decoded(results[0]))
        assert len(spurious_regions(results, OLD_CONFIG)) == 1
    unlabelled = RECORDED["labelled_afterwards"]["result"][:1]
    assert len(spurious_regions(unlabelled, OLD_CONFIG)) == 1 and len(spurious_regions(unlabelled, CONFIG)) == 1


def test_a_wand_label_on_the_old_config_is_reported_not_trained():
    """A ``labels`` result the config has no ``<Labels>`` for paints nothing; its ``magicwand`` twin still does."""
    results = RECORDED["labelled_as_drawn"]["result"]
    out = parse_export([export_task(1, IMG, label="circle", annotations=[annotation(1, 1, results)])], OLD_CONFIG)
    np.testing.assert_array_equal(out.records[0].mask, decoded(results[0]))
    assert out.ignored_regions == {"unsupported_region": [1]}


def test_distinct_regions_are_all_kept():
    """Two regions (different ids, or the same id with another RLE) both paint; results without an id too."""
    a, b = rect_mask(64, 64, 0, 10, 0, 10), rect_mask(64, 64, 30, 40, 30, 40)
    ra, rb = regions.brush(a, region_id="a"), regions.brush(b, region_id="b")
    same_id_other_rle = regions.brush(b, region_id="a")
    no_id = [dict(regions.brush(a), id=None), dict(regions.brush(a), id=None)]
    assert len(spurious_regions([ra, rb], CONFIG)) == 2
    assert len(spurious_regions([ra, same_id_other_rle], CONFIG)) == 2
    assert len(spurious_regions(no_id, CONFIG)) == 2


def test_wand_labels_without_a_mask_or_of_another_label_paint_nothing():
    """A ``labels`` twin of a keypoint (the wand's label left selected while clicking a smart keypoint) has no
    RLE; a ``labels`` result of another label or on another image is not ours: reported, task kept."""
    keypoint_twin = {"id": "k", "from_name": "spurious_wand", "to_name": "image", "type": "labels",
                     "value": {"x": 5.0, "y": 5.0, "width": 0.5, "labels": ["Spurious"]}}
    wand = RECORDED["labelled_as_drawn"]["result"][1]
    other_label = {**wand, "id": "o", "value": {**wand["value"], "labels": ["Other"]}}
    other_image = {**wand, "id": "s", "to_name": "saliency"}
    out = parse_export([export_task(1, IMG, label="circle",
                                    annotations=[annotation(1, 1, [keypoint_twin, other_label, other_image])])], CONFIG)
    assert out.records[0].mask is None
    assert out.ignored_regions == {"unsupported_region": [1, 1, 1]}
