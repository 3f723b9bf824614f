"""The magic wand in the real labeling view (issue 23 item 5), in headless Debian chromium: pick the wand and
the wand's ``Spurious`` label, press on a training task's patch and drag, Submit. The stored annotation holds
one region, labelled ``Spurious``; the job's training mask counts its pixels once; the page logs no error.

Label Studio 1.23.2 serializes each (tool, label) pair of a region as a result of its own: the labelled wand
region comes back as a ``magicwand`` result and a ``labels`` result with the same id and the same RLE
(docs/label-studio-ui.md). The test checks exactly that wire format and that the export keeps one of them.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from label_config.export import parse_export, spurious_regions
from label_config.render import SPURIOUS_LABEL, parse_config
from label_config.rle import decode_rle
from ml_backend.labelstudio.client import fetch_export
from tests.browser import ui
from tests.browser.ui import LabelingView, own_errors, shot
from training.options import TrainOptions

pytestmark = [pytest.mark.browser, pytest.mark.e2e, pytest.mark.slow]


def short(results: list[dict]) -> str:
    """Results as JSON with every RLE replaced by its length (for artifacts and messages)."""
    return json.dumps([{**r, "value": {k: (f"<{len(v)} ints>" if k == "rle" else v) for k, v in r["value"].items()}}
                       for r in results], indent=1)


def test_a_wand_region_is_stored_labelled_spurious_and_trains_once(logged_in, stack):
    page, log = logged_in, ui.page_log(logged_in)
    task_id = stack.task_ids("train")[2]
    patch = np.asarray(Image.open(stack.dataset / "masks" / stack.task(task_id)["data"]["key"]).convert("L")) > 127
    ys, xs = np.nonzero(patch)
    cy, cx = int(ys.mean()), int(xs.mean())
    view = LabelingView(page, stack.ls_url, stack.project_id, task_id).open()
    mark = log.mark()

    view.choose_tool("magicwand")
    view.spurious_label("spurious_wand").click()  # a generic <Labels>: the wand stays the tool
    page.wait_for_timeout(200)
    assert view.active_tools() == ["magicwand"], f"the wand is not the tool after its label: {view.active_tools()}"
    view.drag([(cx, cy), (cx + 1, cy + 1)])  # press on the patch, a tiny drag (threshold), release
    shot(page, "wand-labelled")

    saved = view.submit()
    shot(page, "submitted")
    stored = [dict(r) for r in stack.client().annotations.get(id=saved["id"]).result]
    manual = [r for r in stored if r.get("origin") != "prediction"]
    ui.write_artifact("stored-annotation.json", short(stored))

    assert len({r["id"] for r in manual}) == 1, f"not one region:\n{short(manual)}"
    assert sorted(r["type"] for r in manual) == ["labels", "magicwand"], short(manual)
    labelled = next(r for r in manual if r["type"] == "labels")
    assert (labelled["from_name"], labelled["value"]["labels"]) == ("spurious_wand", [SPURIOUS_LABEL]), short(manual)
    config = parse_config(stack.project()["label_config"])
    kept = spurious_regions(stored, config)
    assert len(kept) == 1, f"the export keeps {len(kept)} results of the one region:\n{short(kept)}"
    wand = decode_rle(kept[0]["value"]["rle"], kept[0]["original_height"], kept[0]["original_width"])
    assert wand.any() and (wand & patch).sum() / wand.sum() > 0.8, "the wand region is not on the patch"

    export = parse_export(fetch_export(stack.client(), stack.project_id), config, label_source=TrainOptions.label_source)
    record = next(r for r in export.records if r.task_id == task_id)
    assert record.mask is not None and int(record.mask.sum()) == int(wand.sum()), (
        f"training mask {None if record.mask is None else int(record.mask.sum())} px, wand {int(wand.sum())} px; "
        f"ignored {export.ignored_regions}")
    assert not export.ignored_regions, export.ignored_regions
    errors = own_errors(log.since(mark))
    ui.write_artifact("wand-page-log.txt", log.since(mark).dump())
    assert not errors, f"the page logged errors: {errors[:5]}"
