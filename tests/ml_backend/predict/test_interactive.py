"""Click-to-propose: an interactive request answers the ``Spurious`` region at the mark and nothing else."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

from label_config import render_config
from label_config.render import parse_config
from label_config.rle import decode_rle
from ml_backend.predict.interactive import color_region, propose_at_marks, spurious_marks
from ml_backend.predict.predictor import RobustarModel, configured_parts
from ml_backend.predict.registry import ModelRegistry
from ml_backend.settings import Settings
from devkit.builders import data_uri

CLASSES = ["cat", "dog"]


def patched_image(w: int = 64, h: int = 48) -> Image.Image:
    """Grey noise with a red 10x10 patch at rows 5..14, columns 40..49."""
    rng = np.random.default_rng(0)
    a = rng.integers(90, 140, size=(h, w, 3), dtype=np.uint8)
    a[5:15, 40:50] = (220, 20, 20)
    return Image.fromarray(a)


def png(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "PNG")
    return buf.getvalue()


def keypoint(x: float, y: float, from_name: str = "spurious_point") -> dict:
    return {"type": "keypointlabels", "from_name": from_name, "to_name": "image", "original_width": 64,
            "original_height": 48, "value": {"x": x, "y": y, "width": 1, "keypointlabels": ["Spurious"]}}


def test_the_config_has_smart_spurious_tools():
    xml = render_config(CLASSES)
    assert '<KeyPointLabels name="spurious_point" toName="image" smart="true" smartOnly="true">' in xml
    assert '<RectangleLabels name="spurious_box" toName="image" smart="true" smartOnly="true">' in xml
    assert parse_config(xml).spurious_control == "spurious"  # the brush still holds what is painted


def test_marks_are_only_spurious_ones():
    other = {"type": "keypointlabels", "from_name": "x", "value": {"x": 1, "y": 1, "keypointlabels": ["Other"]}}
    assert spurious_marks({"result": [keypoint(10, 10), other, "junk"]}) == [keypoint(10, 10)]
    assert spurious_marks({}) == [] and spurious_marks({"result": None}) == []


def test_colour_region_from_a_click_and_a_box():
    img = patched_image()
    truth = np.zeros((48, 64), bool)
    truth[5:15, 40:50] = True
    seeds = np.zeros((48, 64), bool)
    seeds[9, 44] = True
    assert np.array_equal(color_region(img, seeds), truth)
    box = {"type": "rectanglelabels", "value": {"x": 60.0, "y": 8.0, "width": 20.0, "height": 25.0,
                                                  "rectanglelabels": ["Spurious"]}}
    assert np.array_equal(propose_at_marks(img, [box], None), truth)


def test_interactive_request_answers_only_the_region_at_the_mark(tmp_path):
    settings = Settings(model_dir=tmp_path / "m", model_arch="tiny-cnn", image_size=32,
                        predict_parts=("saliency", "influence", "propagation"))
    model = RobustarModel(1, render_config(CLASSES), settings, ModelRegistry(settings), configured_parts(settings))
    tasks = [{"id": 3, "data": {"image": data_uri(png(patched_image())), "split": "train"}}]
    empty = model.predict(tasks, context={})
    assert empty == [{"result": [], "score": 0.0, "model_version": "v0"}]
    assert model.predict(tasks, context={"result": []})[0]["result"] == []

    first = model.predict(tasks, context={"result": [keypoint(44 / 64 * 100 + 0.5, 9 / 48 * 100 + 1)]})
    second = model.predict(tasks, context={"result": [keypoint(44 / 64 * 100 + 0.5, 9 / 48 * 100 + 1)]})
    (region,) = first[0]["result"]  # no class choice, no attention, no influence text
    assert region["type"] == "brushlabels" and region["from_name"] == "spurious"
    assert region["value"]["brushlabels"] == ["Spurious"]
    assert region["id"].startswith("spurious-") and region["id"] != second[0]["result"][0]["id"]
    mask = decode_rle(region["value"]["rle"], region["original_height"], region["original_width"])
    assert mask[5:15, 40:50].all() and mask.sum() == 100
    regular = model.predict(tasks)  # a stored prediction still has its class (and never a random id)
    assert [r["type"] for r in regular[0]["result"]][0] == "choices"


def test_a_large_image_is_grown_on_a_small_grid_and_snapped_to_its_pixels():
    rng = np.random.default_rng(1)
    a = rng.integers(90, 140, size=(160, 224, 3), dtype=np.uint8)
    a[11:48, 150:187] = (220, 20, 20)
    seeds = np.zeros((160, 224), bool)
    seeds[30, 170] = True
    got = color_region(Image.fromarray(a), seeds)
    truth = np.zeros((160, 224), bool)
    truth[11:48, 150:187] = True
    assert np.array_equal(got, truth)


def test_the_net_region_at_the_mark_comes_back_at_the_image_size():
    import torch

    img = patched_image()
    prob = torch.zeros(48, 64)
    prob[5:15, 40:50] = 0.9  # the net's region at the mark (grow grid = image: 64 px)
    prob[30:40, 0:10] = 0.9  # another one, not connected
    mask = propose_at_marks(img, [keypoint(44 / 64 * 100 + 0.5, 9 / 48 * 100 + 1)], prob)
    assert mask[5:15, 40:50].all() and not mask[30:40, 0:10].any()


def test_the_part_serves_the_newer_proposals_net_and_reloads_it(tmp_path):
    """Proposals before training: a proposal job's net for the served version (``vN.proposals.pt``) is served
    when newer than the version's own, and reloaded when the file changes."""
    import os

    import torch

    from ml_backend.predict.mask_proposals import PropagationPart
    from training import propagation
    from training.checkpoints import CheckpointStore

    root = CheckpointStore(tmp_path, 3).root
    part = PropagationPart(tmp_path)
    assert part.net(3, "v1") is None
    torch.manual_seed(0)
    own = propagation.save(propagation.MaskNet(), propagation.net_path(root, "v1"), {})
    assert propagation.newest_net_path(root, "v1") == own
    first = part.net(3, "v1")
    assert first is not None and part.net(3, "v1") is first  # cached while the file is unchanged
    proposals = propagation.save(propagation.MaskNet(work_size=32), propagation.proposals_path(root, "v1"), {})
    os.utime(proposals, ns=(own.stat().st_mtime_ns + 10**9,) * 2)
    newer = part.net(3, "v1")
    assert newer is not first and newer.work_size == 32
    os.utime(own, ns=(proposals.stat().st_mtime_ns + 10**9,) * 2)  # a training job saved the version's net later
    assert part.net(3, "v1").work_size == propagation.WORK_SIZE


def test_region_ids_are_unique_per_answer():
    from ml_backend.predict.predictor import unique_region_ids

    result = [{"id": "propagated"}, {"id": "pred_class"}, {"id": "propagated"}, {"from_name": "x"}, {"id": "propagated"}]
    assert [r["id"] for r in unique_region_ids(result)] == ["propagated", "pred_class", "propagated-2", "x",
                                                            "propagated-3"]
