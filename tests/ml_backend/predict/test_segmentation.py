"""Segmentation part: Mask R-CNN detections -> a ``Spurious`` brush proposal at the image's original size."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from PIL import Image

from label_config import render_config
from label_config.render import parse_config
from label_config.rle import decode_rle
from ml_backend.predict.predictor import RobustarModel, configured_parts
from ml_backend.predict.parts import PredictContext
from ml_backend.predict.segmentation import SegmentationPart, detections_to_mask, load_detector
from ml_backend.api.server import build_app
from ml_backend.predict.registry import ModelRegistry, ServedModel
from ml_backend.settings import Settings
from devkit.builders import data_uri, png_bytes
from training.checkpoints import CheckpointMeta
from training.models import build_model

CLASSES = ["cat", "dog"]
CONFIG = parse_config(render_config(CLASSES))


def _ctx(images: list[Image.Image], settings: Settings | None = None) -> PredictContext:
    meta = CheckpointMeta(version="v0", arch="tiny-cnn", classes=CLASSES, image_size=32)
    served = ServedModel(build_model("tiny-cnn", len(CLASSES)).eval(), meta, "cpu")
    tasks = [{"id": 10 + i, "data": {"image": "x", "split": "train"}} for i in range(len(images))]
    return PredictContext(1, settings or Settings(), CONFIG, served, tasks, images,
                          torch.full((len(images), len(CLASSES)), 0.5))


def _box_mask(h: int, w: int, y0: int, y1: int, x0: int, x1: int) -> torch.Tensor:
    m = torch.zeros(1, h, w)
    m[0, y0:y1, x0:x1] = 0.9
    return m


def _detection(h: int, w: int) -> dict:
    """Three detections: a confident cat-sized box, a second confident box, a low-score one."""
    masks = torch.stack([_box_mask(h, w, 2, 10, 3, 12), _box_mask(h, w, 20, 30, 25, 40), _box_mask(h, w, 0, h, 0, w)])
    return {"masks": masks, "scores": torch.tensor([0.9, 0.7, 0.2]), "labels": torch.tensor([17, 1, 3]),
            "boxes": torch.zeros(3, 4)}


def test_detections_to_mask_background_instances_threshold():
    h, w = 37, 50
    det = _detection(h, w)
    fg = np.zeros((h, w), bool)
    fg[2:10, 3:12] = True
    fg[20:30, 25:40] = True
    mask, score = detections_to_mask(det, h, w, 0.5, "background")
    assert mask.shape == (h, w) and np.array_equal(mask, ~fg)  # low-score full-image detection ignored
    assert score == pytest.approx(0.8)
    person = np.zeros((h, w), bool)
    person[20:30, 25:40] = True
    mask, score = detections_to_mask(det, h, w, 0.5, "instances", {1})
    assert np.array_equal(mask, person) and score == pytest.approx(0.7)
    assert detections_to_mask(det, h, w, 0.95, "background") == (None, None)  # nothing qualifies: no proposal
    assert detections_to_mask(det, h, w, 0.5, "instances", {5}) == (None, None)


def test_part_with_known_detector_gives_rle_at_original_size():
    sizes = [(50, 37), (64, 48), (41, 41)]  # PIL (width, height), deliberately not the model size
    images = [Image.new("RGB", s, (120, 90, 60)) for s in sizes]
    seen = []

    def detector(batch):
        seen.extend(tuple(t.shape) for t in batch)
        return [_detection(t.shape[1], t.shape[2]) for t in batch]

    part = SegmentationPart(detector=detector, score_threshold=0.5, batch_size=2)
    out = part(_ctx(images))
    assert seen == [(3, h, w) for w, h in sizes]  # the detector gets each image at its original size
    for (w, h), regions in zip(sizes, out.regions):
        assert len(regions) == 1
        r = regions[0]
        assert r["from_name"] == "spurious" and r["to_name"] == "image" and r["type"] == "brushlabels"
        assert r["value"]["format"] == "rle" and r["value"]["brushlabels"] == ["Spurious"]
        assert (r["original_width"], r["original_height"], r["image_rotation"]) == (w, h, 0)
        expected, _ = detections_to_mask(_detection(h, w), h, w, 0.5, "background")
        assert np.array_equal(decode_rle(r["value"]["rle"], h, w), expected)  # mask -> RLE -> mask round trip
        assert r["score"] == pytest.approx(0.8)


def test_instances_mode_needs_classes():
    with pytest.raises(ValueError, match="SEGMENTATION_CLASSES"):
        SegmentationPart(detector=lambda b: [], mode="instances")


@pytest.fixture(scope="module")
def detector_weights(tmp_path_factory):
    """Random-init torchvision Mask R-CNN weights files (v1 with COCO's 91 classes, v2 fine-tuned-style with 4)."""
    from torchvision.models import detection

    root = tmp_path_factory.mktemp("maskrcnn")
    torch.manual_seed(0)
    v1 = detection.maskrcnn_resnet50_fpn(weights=None, weights_backbone=None, num_classes=91)
    torch.save(v1.state_dict(), root / "v1.pt")
    v2 = detection.maskrcnn_resnet50_fpn_v2(weights=None, weights_backbone=None, num_classes=4)
    torch.save({"state_dict": v2.state_dict(), "classes": ["__background__", "ruler", "text", "marker"]}, root / "v2.pt")
    return {"maskrcnn_resnet50_fpn": root / "v1.pt", "maskrcnn_resnet50_fpn_v2": root / "v2.pt"}


FAST = {"rpn_pre_nms_top_n_test": 100, "rpn_post_nms_top_n_test": 50, "box_detections_per_img": 5}


@pytest.mark.slow  # two full-size Mask R-CNNs on the CPU
@pytest.mark.parametrize("arch", ["maskrcnn_resnet50_fpn", "maskrcnn_resnet50_fpn_v2"])
def test_real_maskrcnn_from_local_weights(detector_weights, arch):
    """A real torchvision Mask R-CNN, weights from a local file, permissive threshold: valid regions."""
    part = SegmentationPart(weights=detector_weights[arch], arch=arch, score_threshold=0.0, min_size=64, max_size=96,
                            detector_kwargs=FAST)
    images = [Image.fromarray(np.random.default_rng(i).integers(0, 255, (h, w, 3), dtype=np.uint8))
              for i, (w, h) in enumerate([(48, 36), (40, 52)])]
    real = part.detector("cpu")  # loads the weights file
    dets: list[dict] = []
    part._detector = lambda batch: dets.extend(real(batch)) or dets[-len(batch):]
    out = part(_ctx(images))
    assert len(out.regions) == 2 and len(dets) == 2
    assert any(out.regions)  # with a threshold of 0 a random-init detector still proposes something
    for img, d, regions in zip(images, dets, out.regions):
        assert d["masks"].shape[-2:] == (img.height, img.width)  # torchvision pastes masks at the input size
        expected, _ = detections_to_mask(d, img.height, img.width, 0.0, "background")
        assert len(regions) == (expected is not None)
        for r in regions:  # random weights: whatever it finds is well formed and at the original size
            assert (r["original_width"], r["original_height"]) == img.size
            assert np.array_equal(decode_rle(r["value"]["rle"], img.height, img.width), expected)
    assert len(part._names) == (91 if arch.endswith("fpn") else 4)


@pytest.mark.slow  # builds full-size Mask R-CNN weights
def test_detector_weights_that_do_not_fit_the_arch_are_refused(detector_weights, tmp_path):
    with pytest.raises(ValueError, match="does not fit maskrcnn_resnet50_fpn_v2"):
        load_detector(detector_weights["maskrcnn_resnet50_fpn"], "maskrcnn_resnet50_fpn_v2")
    torch.save({"fc.weight": torch.zeros(2, 2)}, tmp_path / "bad.pt")
    with pytest.raises(ValueError, match="not a Mask R-CNN"):
        load_detector(tmp_path / "bad.pt")
    with pytest.raises(FileNotFoundError):
        SegmentationPart(weights=tmp_path / "missing.pt")


def test_without_weights_health_says_so_and_part_is_skipped(tmp_path):
    settings = Settings(model_dir=tmp_path / "m", model_arch="tiny-cnn", image_size=32, redis_url="redis://127.0.0.1:1/0")
    names = [p.name for p in configured_parts(settings)]
    assert names == ["saliency", "influence", "propagation"]
    settings = Settings(model_dir=tmp_path / "m", model_arch="tiny-cnn", image_size=32, redis_url="redis://127.0.0.1:1/0",
                        predict_parts=("segmentation",))
    with TestClient(build_app(settings)) as client:
        health = client.get("/health").json()
    assert health["status"] == "UP" and health["parts"] == []
    assert "SEGMENTATION_WEIGHTS" in health["disabled_parts"]["segmentation"]
    assert health["disabled_parts"]["saliency"].startswith("off")


def test_failing_segmentation_degrades_only_itself(tmp_path, caplog):
    settings = Settings(model_dir=tmp_path / "m", model_arch="tiny-cnn", image_size=32)

    def broken(batch):
        raise RuntimeError("detector exploded")

    model = RobustarModel(1, render_config(CLASSES), settings, ModelRegistry(settings), [SegmentationPart(detector=broken)])
    tasks = [{"id": 7, "data": {"image": data_uri(png_bytes()), "split": "test"}}]
    with caplog.at_level(logging.ERROR):
        results = model.predict(tasks)
    assert [r["type"] for r in results[0]["result"]] == ["choices"]  # the classifier still answers
    assert "segmentation" in caplog.text and "[7]" in caplog.text


def test_part_settings_from_the_environment(monkeypatch, tmp_path):
    env = {"PREDICT_PARTS": "saliency, segmentation", "SALIENCY_METHOD": "gradcam", "SALIENCY_TOP_Q": "2.5",
           "SEGMENTATION_WEIGHTS": str(tmp_path / "w.pt"), "SEGMENTATION_ARCH": "maskrcnn_resnet50_fpn_v2",
           "SEGMENTATION_SCORE": "0.3", "SEGMENTATION_MODE": "instances", "SEGMENTATION_CLASSES": "person, 62",
           "INFLUENCE_TOP_K": "7", "INFLUENCE_SCORE": "tracin", "INFLUENCE_BUILD": "off"}
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    s = Settings.from_env()
    assert s.predict_parts == ("saliency", "segmentation") and s.saliency_method == "gradcam" and s.saliency_top_q == 2.5
    assert s.segmentation_weights == tmp_path / "w.pt" and s.segmentation_arch.endswith("v2")
    assert (s.segmentation_score, s.segmentation_mode, s.segmentation_classes) == (0.3, "instances", ("person", "62"))
    assert (s.influence_top_k, s.influence_score, s.influence_build) == (7, "tracin", "off")
    # the weights file does not exist: segmentation is reported, not started
    assert [p.name for p in configured_parts(s)] == ["saliency"]
    assert "does not exist" in s.extra["disabled_parts"]["segmentation"]
    monkeypatch.setenv("PREDICT_PARTS", "saliency,lime")
    with pytest.raises(ValueError, match="lime"):
        configured_parts(Settings.from_env())


def test_instance_classes_by_coco_name_or_id():
    from ml_backend.predict.segmentation import coco_categories, resolve_classes

    names = coco_categories()
    assert names[1] == "person" and len(names) == 91
    assert resolve_classes(["Person", "62"], names) == {1, 62}
    with pytest.raises(ValueError, match="unknown class 'unicorn'"):
        resolve_classes(["unicorn"], names)
