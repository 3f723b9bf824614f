"""Issue 12: mask propagation, the painted share of every batch and the stable alignment term —
real torch models on generated data (training.synthetic), the job pipeline and the backend's part."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from label_config.export import parse_export
from label_config.render import parse_config, render_config
from label_config.rle import decode_rle
from ml_backend.labelstudio.fetch import FetchPolicy, ImageFetcher
from ml_backend.predict.parts import PredictContext
from ml_backend.predict.mask_proposals import PropagationPart, interactive_region, seed_mask
from ml_backend.predict.registry import ModelRegistry, model_defaults
from ml_backend.settings import Settings
from ml_backend.jobs.train_job import job_options
from devkit.builders import synthetic_export
from training import propagation
from training.checkpoints import CheckpointStore
from training.dataset import PairedDataset
from training.paired import alignment, paired_loss
from training.pipeline import run_pipeline
from training.sampling import epoch_batches, epoch_order
from training.synthetic import make_spurious_dataset

CLASSES = ["circle", "square", "triangle"]


def _tensors(root: Path, split: str = "train") -> tuple[torch.Tensor, torch.Tensor]:
    paths = sorted((root / split).glob("*/*.png"))
    x = torch.from_numpy(np.stack([np.asarray(Image.open(p).convert("RGB")) for p in paths])).permute(0, 3, 1, 2)
    m = torch.from_numpy(np.stack([np.asarray(Image.open(root / "masks" / split / p.parent.name / p.name)) > 127
                                   for p in paths])).unsqueeze(1)
    return x.contiguous(), m


@pytest.fixture(scope="module")
def background(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("background")
    make_spurious_dataset(root, classes=tuple(CLASSES), n_train=20, n_test=6, size=24, seed=3, kind="background")
    return root


def test_mask_net_propagates_a_few_painted_masks(background):
    """Fitted to 6 painted images, the net finds the background of the other 54 (IoU against the truth)."""
    x, m = _tensors(background)
    painted = torch.zeros(len(x), dtype=torch.bool)
    painted[::10] = True
    net = propagation.train_mask_net(x[painted], m[painted], seed=0)
    proposal = propagation.predict_masks(net, x[~painted])
    assert proposal.masks.shape == m[~painted].shape and proposal.masks.dtype == torch.bool
    assert float(propagation.iou(proposal.masks, m[~painted]).mean()) > 0.85
    assert ((0 <= proposal.confidence) & (proposal.confidence <= 1)).all()
    # an untrained net proposes nothing useful: the test can fail
    untrained = propagation.predict_masks(propagation.MaskNet(work_size=24), x[~painted])
    assert float(propagation.iou(untrained.masks, m[~painted]).mean()) < 0.85


def test_propagation_step_policies(background):
    x, m = _tensors(background)
    keep = torch.zeros(len(x), dtype=torch.bool)
    keep[::10] = True
    masks = m & keep.view(-1, 1, 1, 1)
    ds = PairedDataset(x, masks, torch.zeros(len(x), dtype=torch.long), list(range(len(x))))
    same, net, counts = propagation.propagation_step(ds, "off", 0.9)
    assert same is ds and net is None and counts["propagated_used"] == 0
    used, net, counts = propagation.propagation_step(ds, "all", 0.9, seed=0)
    assert net is not None and counts["propagated"] == counts["propagated_used"] > 40
    assert used.n_painted == 6 + counts["propagated_used"]
    # the expert's masks are kept as they were, with weight 1; proposals weigh their confidence (< 1)
    assert torch.equal(used.masks[keep], masks[keep]) and (used.mask_weight[keep] == 1).all()
    new = used.painted & ~keep
    assert ((used.mask_weight[new] > 0) & (used.mask_weight[new] <= 1)).all()
    confident, _, c2 = propagation.propagation_step(ds, "confident", 1.01, seed=0)  # nothing is that sure
    assert c2["propagated_used"] == 0 and confident.n_painted == 6
    # too few painted images: no net
    one = PairedDataset(x, m & (torch.arange(len(x)) == 0).view(-1, 1, 1, 1), ds.targets, ds.task_ids)
    assert propagation.propagation_step(one, "all", 0.9)[1] is None


def test_epoch_order_gives_painted_images_their_share():
    painted = torch.zeros(100, dtype=torch.bool)
    painted[:5] = True
    g = torch.Generator().manual_seed(0)
    order = epoch_order(painted, 10, g, share=0.5)
    assert epoch_batches(painted, 10, 0.5) == 19  # 95 unpainted images, 5 per batch
    batches = order.split(10)
    assert len(batches) == 19
    for batch in batches:
        assert int(painted[batch].sum()) == 5
    unpainted = order[~painted[order]]
    assert sorted(unpainted.tolist()) == list(range(5, 100))  # every unpainted image exactly once per epoch
    odd = epoch_order(painted[:98], 8, g, share=0.5)  # 93 unpainted, 4 per batch: the last batch is short
    assert sorted(odd[~painted[odd]].tolist()) == list(range(5, 98))
    assert all(int(painted[b].sum()) == 4 for b in odd.split(8))
    plain = epoch_order(painted, 10, g, share=0.0)
    assert sorted(plain.tolist()) == list(range(100))
    assert sorted(epoch_order(torch.ones(7, dtype=torch.bool), 4, g, share=0.5).tolist()) == list(range(7))


def test_alignment_terms():
    z = torch.tensor([[8.0, -3.0, 1.0], [0.5, 0.2, -0.1]])
    assert torch.allclose(alignment(z, z, "kl"), torch.zeros(2), atol=1e-6)
    # kl ignores a shift of all logits (what a converged model's large logits often are); l2 does not
    assert torch.allclose(alignment(z, z + 20, "kl"), torch.zeros(2), atol=1e-5)
    assert float(alignment(z, z + 20, "l2")[0]) == pytest.approx(1200.0)
    zt = z.flip(1)
    kl = alignment(z, zt, "kl")
    p, q = F.softmax(z, 1), F.softmax(zt, 1)
    expected = (p * (p / q).log()).sum(1) + (q * (q / p).log()).sum(1)
    assert torch.allclose(kl, expected, atol=1e-5)
    # weights scale the twin terms; None is Robustar's loss exactly
    y = torch.tensor([0, 1])
    paired = torch.tensor([True, True])
    base, _ = paired_loss(z, zt, y, 1.0, paired)
    same, _ = paired_loss(z, zt, y, 1.0, paired, weights=torch.ones(2))
    none, _ = paired_loss(z, zt, y, 1.0, paired, weights=torch.zeros(2))
    assert torch.allclose(base, same) and torch.allclose(none, F.cross_entropy(z, y))
    with pytest.raises(ValueError, match="alignment"):
        alignment(z, zt, "cosine")


def test_seed_mask_and_interactive_region():
    h, w = 20, 40
    ctx = {"result": [{"type": "keypointlabels", "from_name": "spurious", "to_name": "image",
                       "value": {"x": 50, "y": 50, "width": 1, "keypointlabels": ["Spurious"]}},
                      {"type": "keypointlabels", "from_name": "other", "value": {"x": 0, "y": 0}}]}
    seeds = seed_mask(ctx, "spurious", h, w)
    assert seeds is not None and seeds.sum() == 1 and seeds[10, 20]
    assert seed_mask({"result": []}, "spurious", h, w) is None
    prob = torch.zeros(h, w)
    prob[:, 15:30] = 0.9  # the region the mark is in
    prob[:, :5] = 0.9  # another region, not connected
    region = interactive_region(prob, seeds)
    assert region[:, 15:30].all() and not region[:, :5].any()


@pytest.mark.slow
def test_job_propagates_saves_the_net_and_the_backend_proposes(tmp_path, background):
    """A job with a few painted images (job defaults: propagation ``confident``) trains with the
    propagated masks, saves the mask net beside the version, and /predict's propagation part turns it
    into a ``Spurious`` brush proposal — and, given an expert's mark as context, the region at the mark."""
    tasks, _ = synthetic_export(background, CLASSES, paint_every=10)
    config = parse_config(render_config(CLASSES))
    export = parse_export(tasks, config)
    settings = Settings(model_dir=tmp_path / "models", model_arch="tiny-cnn", image_size=24)
    opts = job_options(settings, {"epochs": 2, "device": "cpu", "num_workers": 2, "propagation_confidence": 0.5,
                                  "mode": "scratch"})
    assert (opts.propagated_masks, opts.align, opts.painted_share) == ("confident", "kl", 0.5)
    store = CheckpointStore(settings.model_dir, 7)
    fetch = ImageFetcher(None, None, FetchPolicy.from_settings(settings)).fetch
    result = run_pipeline(store, CLASSES, export, opts, fetch, model_defaults(settings))
    counts = result.summary["counts"]
    assert counts["train_painted"] == 6 and counts["propagated_used"] > 30
    # the painted masks (exact here) went through the stroke snap (TRAIN_STROKE_SNAP=colour) nearly unchanged
    assert counts["snapped"] == 6 and counts["snap_pixels"] < 6 * 24 * 24 * 0.05
    version = result.summary["version"]
    assert propagation.net_path(store.root, version).is_file()

    part = PropagationPart(settings.model_dir)
    served = ModelRegistry(settings).get(7, CLASSES)
    path = sorted((background / "train" / "circle").glob("*.png"))[1]  # not painted (every 10th task is)
    img = Image.open(path).convert("RGB")
    ctx = PredictContext(project_id=7, settings=settings, config=config, served=served, tasks=[{"id": 1}],
                         images=[img], probs=torch.ones(1, 3) / 3)
    region = part(ctx).regions[0][0]
    assert region["from_name"] == "spurious" and region["value"]["brushlabels"] == ["Spurious"]
    assert 0 < region["score"] <= 1
    mask = decode_rle(region["value"]["rle"], region["original_height"], region["original_width"])
    truth = np.asarray(Image.open(background / "masks" / "train" / "circle" / path.name)) > 127
    assert (mask & truth).sum() / (mask | truth).sum() > 0.7
    ctx.context = {"result": [{"type": "keypointlabels", "from_name": "spurious", "to_name": "image",
                               "value": {"x": 2, "y": 2, "width": 1, "keypointlabels": ["Spurious"]}}]}
    interactive = part(ctx).regions[0][0]
    imask = decode_rle(interactive["value"]["rle"], interactive["original_height"], interactive["original_width"])
    assert imask[0, 0] and imask.mean() > 0.3
    assert math.isfinite(interactive["score"])
