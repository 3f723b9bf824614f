"""Issue 23: rough painted strokes snapped to the region they cover (training.stroke_snap), with known
answers on drawn images, the simulated strokes of devkit.rough_strokes, the option and the job's step."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from devkit.rough_strokes import COVERAGE, SPILL, dilate, rough_stroke, rough_strokes
from training.dataset import PairedDataset
from training.options import OptionsError, TrainOptions
from training.stroke_snap import colour_bins, connected_to, core, depth, snap_masks, snap_painted, snap_stroke

SIZE = 32


def noise_image(seed: int = 0) -> torch.Tensor:
    """uint8 [3, SIZE, SIZE] grey-ish noise (90..150 per channel), like training.synthetic's backgrounds."""
    return torch.from_numpy(np.random.default_rng(seed).integers(90, 151, (3, SIZE, SIZE), dtype=np.uint8))


def box(y0: int, y1: int, x0: int, x1: int) -> torch.Tensor:
    m = torch.zeros(SIZE, SIZE, dtype=torch.bool)
    m[y0:y1, x0:x1] = True
    return m


def patch_image() -> tuple[torch.Tensor, torch.Tensor]:
    """Noise with a red 10 x 10 patch in the top-left corner, and the patch's mask."""
    img, patch = noise_image(), box(0, 10, 0, 10)
    img[:, patch] = torch.tensor([255, 0, 0], dtype=torch.uint8)[:, None]
    return img, patch


def disc_image() -> tuple[torch.Tensor, torch.Tensor]:
    """A tinted noisy background around a dark disc; the mask is the background (the ``background`` kind)."""
    rng = np.random.default_rng(1)
    img = (np.array([210, 90, 90])[:, None, None] + rng.integers(-25, 26, (3, SIZE, SIZE))).clip(0, 255)
    yy, xx = np.mgrid[:SIZE, :SIZE]
    disc = (yy - 16) ** 2 + (xx - 16) ** 2 <= 7 ** 2
    img[:, disc] = 40
    return torch.from_numpy(img.astype(np.uint8)), torch.from_numpy(~disc)


def test_colour_bins_depth_core_and_connectivity():
    img = torch.zeros(3, 1, 3, dtype=torch.uint8)
    img[:, 0, 1] = torch.tensor([255, 0, 0])
    img[:, 0, 2] = torch.tensor([32, 64, 96])
    assert colour_bins(img)[0].tolist() == [0, 7 * 64, 1 * 64 + 2 * 8 + 3]
    d = depth(box(10, 15, 10, 15))  # a 5 x 5 square: its centre survives two erosions
    assert d[12, 12] == 3 and d[10, 10] == 1 and d[9, 9] == 0
    assert depth(box(0, 3, 0, SIZE))[0, 5] == 3  # along the image border: no edge there
    assert core(box(10, 15, 10, 15), 0.36).sum() == 9 and core(box(10, 15, 10, 15), 1.0).sum() == 25  # deepest layers
    allowed = box(0, 4, 0, 4) | box(20, 24, 20, 24)
    assert torch.equal(connected_to(box(0, 1, 0, 1), allowed), box(0, 4, 0, 4))


def test_a_rough_stroke_on_the_patch_snaps_to_the_patch():
    """Half the patch painted plus a 3-pixel spill onto the noise: the snapped mask is the patch, exactly."""
    img, patch = patch_image()
    stroke = dilate(box(0, 10, 0, 5).numpy(), 3)
    stroke = torch.from_numpy(stroke) & ~(patch & ~box(0, 10, 0, 5))
    assert (stroke & patch).sum() == 50 and (stroke & ~patch).sum() == 24
    assert torch.equal(snap_stroke(img, stroke), patch)


def test_a_rough_stroke_on_a_background_snaps_to_the_background():
    """The left half of a tinted background painted, spilling 2 pixels onto the disc: the whole background."""
    img, background = disc_image()
    covered = background & box(0, SIZE, 0, 16)
    stroke = torch.from_numpy(dilate(covered.numpy(), 2)) & ~(background & ~covered)
    assert (stroke & ~background).any()
    assert torch.equal(snap_stroke(img, stroke), background)


def test_exact_masks_and_degenerate_strokes_are_kept():
    img, patch = patch_image()
    assert torch.equal(snap_stroke(img, patch), patch)
    empty, full = torch.zeros(SIZE, SIZE, dtype=torch.bool), torch.ones(SIZE, SIZE, dtype=torch.bool)
    assert torch.equal(snap_stroke(img, empty), empty) and torch.equal(snap_stroke(img, full), full)
    dot = box(20, 21, 20, 21)
    assert torch.equal(snap_stroke(img, dot), dot)  # too few pixels to say what they cover
    masks = torch.stack([patch[None], empty[None]])
    assert torch.equal(snap_masks(torch.stack([img, img]), masks), masks)


def test_rough_strokes_cover_part_and_spill_outside_reproducibly():
    _, patch = patch_image()
    rng = np.random.default_rng(0)
    for _ in range(20):
        s = rough_stroke(patch.numpy(), rng)
        covered = (s & patch.numpy()).sum() / patch.sum().item()
        assert COVERAGE[0] - 0.05 <= covered <= COVERAGE[1] + 0.05
        assert (s & ~patch.numpy()).any()
        assert not (s & ~dilate(patch.numpy(), SPILL[1])).any()  # spill stays within reach
    masks = torch.stack([patch[None]] * 3)
    assert torch.equal(rough_strokes(masks, 5), rough_strokes(masks, 5))
    assert not rough_stroke(np.zeros((4, 4), bool), rng).any()


def test_snap_painted_snaps_only_painted_masks_and_keeps_their_weights():
    img, patch = patch_image()
    stroke = torch.from_numpy(dilate(box(0, 10, 0, 5).numpy(), 3)) & ~(patch & ~box(0, 10, 0, 5))
    images = torch.stack([img, noise_image(2)])
    masks = torch.stack([stroke[None], torch.zeros(1, SIZE, SIZE, dtype=torch.bool)])
    ds = PairedDataset(images, masks, torch.zeros(2, dtype=torch.long), [1, 2])
    out, counts = snap_painted(ds, "colour")
    assert torch.equal(out.masks[0, 0], patch) and not out.masks[1].any()
    assert out.mask_weight.tolist() == [1.0, 0.0] and out.task_ids == [1, 2]
    assert counts["snapped"] == 1 and counts["snap_pixels"] == int((stroke ^ patch).sum())
    same, none = snap_painted(ds, "off")
    assert same is ds and none == {}


def test_the_stroke_snap_option():
    assert TrainOptions().stroke_snap == "colour"
    assert TrainOptions.preset("robustar").stroke_snap == "off"
    assert TrainOptions.resolve(env={"TRAIN_STROKE_SNAP": "OFF"}).stroke_snap == "off"
    assert TrainOptions.resolve(overrides={"stroke_snap": "colour"}).stroke_snap == "colour"
    with pytest.raises(OptionsError, match="stroke_snap"):
        TrainOptions.resolve(env={"TRAIN_STROKE_SNAP": "grabcut"})
