"""What a version changed (``training.changes``): the fixed/broken selection on hand-made probabilities,
the side-by-side picture, and real torch models compared on a tiny test split."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from training.attention import Looker
from training.changes import FILE_NAME, compare_versions, select, side_by_side_png, what_changed
from training.checkpoints import CheckpointMeta
from training.dataset import PairedDataset

S = 8


def probs(rows: list[list[float]]) -> torch.Tensor:
    return torch.tensor(rows)


def test_fixed_and_broken_are_counted_and_the_largest_changes_shown_first():
    targets = torch.tensor([0, 0, 1, 1, 1, 0])
    parent = probs([[0.4, 0.6], [0.1, 0.9], [0.8, 0.2], [0.3, 0.7], [0.45, 0.55], [0.9, 0.1]])
    new = probs([[0.7, 0.3], [0.6, 0.4], [0.4, 0.6], [0.6, 0.4], [0.55, 0.45], [0.8, 0.2]])
    # fixed: 0 (+0.3), 1 (+0.5), 2 (+0.4); broken: 3 (-0.3), 4 (-0.1); 5 right both times
    chosen = select(targets, parent, new)
    assert (chosen["fixed"], chosen["broken"]) == (3, 2)
    assert chosen["shown"] == {"fixed": [1, 2, 0], "broken": [3, 4]}
    bounded = select(targets, parent, new, most=1)
    assert bounded["shown"] == {"fixed": [1], "broken": [3]} and bounded["fixed"] == 3


def test_ties_are_broken_by_position():
    targets = torch.tensor([1, 1, 1])
    chosen = select(targets, probs([[0.9, 0.1]] * 3), probs([[0.2, 0.8]] * 3))
    assert chosen["shown"]["fixed"] == [0, 1, 2]


def test_the_picture_is_image_parent_heatmap_new_heatmap_side_by_side():
    rgb = np.zeros((S, S, 3), dtype=np.uint8)
    hot = np.zeros((S, S), dtype=np.float32)
    hot[0, 0] = 1.0
    with Image.open(io.BytesIO(side_by_side_png(rgb, hot, np.zeros((S, S), np.float32)))) as img:
        side = img.height
        assert side >= 96 and img.width == 3 * side + 2 * 4  # a small image is enlarged, three panels
        px = np.asarray(img.convert("RGB"))
    assert (px[:, :side] == 0).all()  # the image itself
    assert px[1, side + 4].tolist() != px[-1, side + 4].tolist()  # the parent's hot corner
    assert (px[:, -side:] == px[0, -side]).all()  # no attention: one colour


class Brightness(nn.Module):
    """Class 1 when the top-left corner is bright (its gradient lives there); ``always`` fixes a class."""

    def __init__(self, always: int | None = None) -> None:
        super().__init__()
        self.linear = nn.Linear(3 * S * S, 2)
        w = torch.zeros(2, 3, S, S)
        if always is None:
            w[1, :, :2, :2] = 1.0
        with torch.no_grad():
            self.linear.weight.copy_(w.flatten(1))
            self.linear.bias.copy_(torch.tensor([0.0, -6.0]) if always is None else
                                   torch.tensor([1.0, 0.0]) if always == 0 else torch.tensor([0.0, 1.0]))

    def forward(self, x):
        return self.linear(x.flatten(1))


def split() -> PairedDataset:
    """Five test images: 0-2 of class 1 (bright corner), 3-4 of class 0 (dark)."""
    images = torch.zeros(5, 3, S, S, dtype=torch.uint8)
    images[:3, :, :2, :2] = 255
    masks = torch.zeros(5, 1, S, S, dtype=torch.bool)
    masks[:3, :, :2, :2] = True
    return PairedDataset(images, masks, torch.tensor([1, 1, 1, 0, 0]), [21, 22, 23, 24, 25])


def looker(model: nn.Module) -> Looker:
    return Looker.of(model, (0.0,) * 3, (1.0,) * 3, S, "grad")


def test_what_changed_draws_the_fixed_images_and_names_who_predicted_what(tmp_path):
    out = what_changed(looker(Brightness(always=0)), looker(Brightness()), split(), ["dark", "bright"], tmp_path)
    assert (out["fixed"], out["broken"], out["split"], out["method"]) == (3, 0, "test", "grad")
    rows = out["shown"]["fixed"]
    assert [r["task"] for r in rows] == [21, 22, 23] and out["shown"]["broken"] == []
    assert rows[0] == {"task": 21, "true": "bright", "parent": "dark", "new": "bright", "image": "changes/fixed-00.png"}
    files = sorted(p.name for p in (tmp_path / "changes").iterdir())
    assert files == ["fixed-00.png", "fixed-01.png", "fixed-02.png"] and all(FILE_NAME.fullmatch(f) for f in files)

    back = what_changed(looker(Brightness()), looker(Brightness(always=0)), split(), ["dark", "bright"], tmp_path / "b")
    assert (back["fixed"], back["broken"]) == (0, 3) and back["shown"]["broken"][0]["new"] == "dark"


def test_compare_versions_with_a_parent_of_other_classes_measures_the_new_model_only(tmp_path):
    meta = CheckpointMeta(version="v0", arch="linear", classes=["x", "y"], image_size=S, mean=(0.0,) * 3,
                          std=(1.0,) * 3)
    splits = {"train": split(), "test": split()}
    out = compare_versions((Brightness(always=0), meta), looker(Brightness()), splits, splits["train"],
                           ["dark", "bright"], tmp_path)
    assert out["changes"] is None and "before" not in out["attention"]["overall"]
    assert out["attention"]["overall"]["after"] == pytest.approx(1.0)

    meta.classes = ["dark", "bright"]
    both = compare_versions((Brightness(always=0), meta), looker(Brightness()), splits, splits["train"],
                            ["dark", "bright"], tmp_path)
    assert both["changes"]["fixed"] == 3 and "compare_error" not in both
    assert both["attention"]["overall"]["before"] is None  # a bias-only parent has no gradient: no share
