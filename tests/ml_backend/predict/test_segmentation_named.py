"""Mask R-CNN proposals from COCO weights by name (SEGMENTATION_WEIGHTS=coco): read from a seeded torch hub
cache, offline; a clear error when the file is neither cached nor downloadable."""

from __future__ import annotations

import pytest
import torch
from PIL import Image

from devkit.weights import go_offline, seed_hub_cache
from ml_backend.predict.segmentation import SegmentationPart, load_detector
from ml_backend.settings import Settings
from training import pretrained


@pytest.fixture
def offline_hub(tmp_path, monkeypatch):
    return go_offline(monkeypatch, tmp_path / "torch")


def _seed_coco(value: float = 0.0) -> pretrained.NamedWeights:
    from torchvision.models.detection import maskrcnn_resnet50_fpn

    w = pretrained.resolve("maskrcnn_resnet50_fpn", "coco", "SEGMENTATION_WEIGHTS")
    template = maskrcnn_resnet50_fpn(weights=None, weights_backbone=None).state_dict()
    seed_hub_cache(w, template, lambda k, t: 0.0123 if k == "roi_heads.box_predictor.cls_score.weight" else value)
    return w


@pytest.mark.slow
def test_coco_weights_by_name_load_from_the_hub_cache(offline_hub):
    w = _seed_coco()
    assert w.name == "MaskRCNN_ResNet50_FPN_Weights.COCO_V1" and w.file.name == "maskrcnn_resnet50_fpn_coco-bf2d0c1e.pth"
    model, names = load_detector("coco", min_size=64, max_size=64)
    assert torch.all(model.roi_heads.box_predictor.cls_score.weight == 0.0123)
    assert len(names) == 91 and names[1] == "person"
    # the part takes the name from the settings and detects (nothing, with these weights) at the image's size
    part = SegmentationPart.from_settings(Settings(segmentation_weights="coco", segmentation_min_size=64,
                                                   segmentation_max_size=64))
    (det,) = part.detect([Image.new("RGB", (80, 60), (90, 120, 200))], "cpu")
    assert det["masks"].shape[0] == 0 or det["masks"].shape[-2:] == (60, 80)


def test_coco_weights_missing_offline_name_the_file(offline_hub):
    part = SegmentationPart(weights="MaskRCNN_ResNet50_FPN_Weights.COCO_V1")  # known name: accepted, loaded on use
    with pytest.raises(pretrained.WeightsUnavailableError, match="maskrcnn_resnet50_fpn_coco-bf2d0c1e.pth"):
        part.detector("cpu")
    with pytest.raises(ValueError, match="not a weights name of maskrcnn_resnet50_fpn"):
        SegmentationPart(weights="COCO_V9")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        SegmentationPart(weights="/nowhere/maskrcnn.pth")
