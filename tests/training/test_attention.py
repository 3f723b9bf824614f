"""The attention-on-spurious share (``training.attention``): hand-made saliency maps and masks with a known
answer, and a real torch model whose gradient lives only in one corner."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from training.attention import Looker, attention_on_spurious, evenly, spurious_share, table
from training.dataset import PairedDataset

S = 8


def test_the_share_is_the_saliency_mass_inside_the_mask():
    sal = torch.zeros(3, 4, 4)
    sal[0, 0, 0], sal[0, 3, 3] = 3.0, 1.0  # 3 of 4 units on the masked pixel
    sal[1] = 1.0  # uniform: the mask's area share, 4 of 16 pixels
    mask = torch.zeros(3, 4, 4, dtype=torch.bool)
    mask[0, 0, 0] = True
    mask[1, :2, :2] = True
    share = spurious_share(sal, mask)  # image 2: no attention at all
    assert share[0].item() == pytest.approx(0.75) and share[1].item() == pytest.approx(0.25)
    assert math.isnan(share[2].item())
    assert spurious_share(sal[:1], mask[:1, None])[0].item() == pytest.approx(0.75)  # [N,1,H,W] masks too


def test_the_table_averages_per_class_and_overall_skipping_images_without_attention():
    per_image = {"before": torch.tensor([0.8, 0.6, float("nan"), 0.2]), "after": torch.tensor([0.1, 0.3, 0.5, 0.1]),
                 "area": torch.tensor([0.1, 0.1, 0.2, 0.2])}
    t = table(per_image, torch.tensor([0, 0, 2, 2]), ["cat", "dog", "fox"])
    assert set(t["classes"]) == {"cat", "fox"}  # no dog image has a mask
    assert t["classes"]["cat"] == {"before": 0.7, "after": 0.2, "area": 0.1, "images": 2}
    assert t["classes"]["fox"] == {"before": 0.2, "after": 0.3, "area": 0.2, "images": 2}
    assert t["overall"] == {"before": pytest.approx(0.5333, abs=1e-4), "after": 0.25, "area": 0.15, "images": 4}


def test_evenly_keeps_at_most_the_bound_first_and_last_included():
    idx = torch.arange(100) * 3
    kept = evenly(idx, 10)
    assert len(kept) == 10 and kept[0] == 0 and kept[-1] == 297 and bool((kept.diff() > 0).all())
    assert torch.equal(evenly(idx[:5], 10), idx[:5])


class CornerModel(nn.Module):
    """Class 1's logit is the brightness of the top-left 2x2 corner (its gradient lives only there)."""

    def __init__(self) -> None:
        super().__init__()
        w = torch.zeros(2, 3, S, S)
        w[1, :, :2, :2] = 1.0
        self.linear = nn.Linear(3 * S * S, 2)
        with torch.no_grad():
            self.linear.weight.copy_(w.flatten(1))
            self.linear.bias.copy_(torch.tensor([0.0, -1.0]))

    def forward(self, x):
        return self.linear(x.flatten(1))


def corner_dataset() -> PairedDataset:
    """Four images: 0 and 1 masked on the corner, 2 masked elsewhere, 3 unmasked."""
    images = torch.full((4, 3, S, S), 128, dtype=torch.uint8)
    masks = torch.zeros(4, 1, S, S, dtype=torch.bool)
    masks[:2, :, :2, :2] = True
    masks[2, :, 4:, 4:] = True
    return PairedDataset(images, masks, torch.tensor([0, 1, 1, 0]), [11, 12, 13, 14])


def test_a_model_that_looks_only_at_the_corner_scores_one_on_corner_masks_zero_elsewhere():
    looker = Looker.of(CornerModel(), (0.0, 0.0, 0.0), (1.0, 1.0, 1.0), S, "grad")
    ds = corner_dataset()
    painted = torch.tensor([True, False, False, False])  # image 1's mask: a proposal
    out = attention_on_spurious(None, looker, ds, painted, ["a", "b"])
    assert (out["masked"], out["measured"], out["painted"], out["method"]) == (3, 3, 1, "grad")
    assert out["classes"]["a"] == {"after": 1.0, "area": 0.0625, "images": 1}
    assert out["classes"]["b"] == {"after": 0.5, "area": 0.1562, "images": 2}  # 1.0 on the corner, 0.0 elsewhere
    assert "before" not in out["overall"]  # no comparable parent: after only

    torch.manual_seed(0)
    before = Looker.of(nn.Sequential(nn.Flatten(), nn.Linear(3 * 4 * S * S, 2)), (0.5,) * 3, (0.5,) * 3, 2 * S, "grad")
    both = attention_on_spurious(before, looker, ds, painted, ["a", "b"])  # a parent at another input size
    assert 0.0 < both["overall"]["before"] < 1.0 and both["overall"]["after"] == pytest.approx(2 / 3, abs=1e-4)


def test_nothing_masked_is_said_not_measured():
    ds = corner_dataset()
    empty = PairedDataset(ds.images, torch.zeros_like(ds.masks), ds.targets, ds.task_ids)
    looker = Looker.of(CornerModel(), (0.0,) * 3, (1.0,) * 3, S, "grad")
    out = attention_on_spurious(None, looker, empty, empty.painted, ["a", "b"])
    assert out["overall"] is None and out["measured"] == 0 and "no training image" in out["note"]
