"""Mask propagation: paint a few images, a small segmentation net proposes the rest.

The expert paints the spurious pixels of a few training images; ``train_mask_net`` fits a light
fully-convolutional net (``MaskNet``) to those (image, mask) pairs, and ``propagate`` predicts the
spurious region of every other image, with a per-image confidence.  The net needs no downloaded
weights, trains in seconds on a CPU, and is saved beside the version (``net_path``, ``save``, ``load``) so the
backend can show its proposals in Label Studio.

``MaskNet`` works at a fixed resolution (``WORK_SIZE``, 48 px, or the images' size when smaller): the
input is resized to it and the per-pixel logits are resized back, so its cost does not grow with the
model's image size, and its receptive field (a stride-2 stem, dilations 1, 2, 4 and 8, plus two coordinate
channels for "which corner") covers the whole working image: a background is "everything but the
object", which a local filter cannot tell.

Confidence of an image = mean over its pixels of ``|2p - 1|`` (1: every pixel surely in or out).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from training.files import atomic_write
from training.models import torch_threads

log = logging.getLogger(__name__)

WORK_SIZE = 48
MIN_PAINTED = 2  # fewer painted images than this: no net is trained
STEPS_PER_IMAGE = 10  # optimizer steps per painted image, within MIN_STEPS..MAX_STEPS
# 100 steps left the net under-fitted on few images (6 painted: median proposal IoU patch 0.78-0.85, 1.00 at
# 400+; every kind's median up at 400-600; benchmarks/bench_proposals.py --steps, seeds 0-2): 1-3 s on a CPU
MIN_STEPS, MAX_STEPS = 400, 600
BATCH = 8
LR = 3e-3
FLIP = True  # mirror painted images (and masks) while fitting; see benchmarks/bench_proposals.py


class MaskNet(nn.Module):
    """Per-pixel spurious logit for [B, 3, H, W] images in [0, 1] (un-normalized).

    The image is resized to ``work_size``; a stride-2 stem halves it, four dilated 3x3 layers (1, 2, 4,
    8: a receptive field of the whole working image) see it with two coordinate channels, and a 1x1
    head's logits are resized back to H x W."""

    def __init__(self, width: int = 24, work_size: int = WORK_SIZE) -> None:
        super().__init__()
        self.work_size = work_size
        layers: list[nn.Module] = [nn.Conv2d(5, width, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(width),
                                   nn.ReLU(inplace=True)]
        for dilation in (1, 2, 4, 8):
            layers += [nn.Conv2d(width, width, 3, padding=dilation, dilation=dilation, bias=False),
                       nn.BatchNorm2d(width), nn.ReLU(inplace=True)]
        self.body = nn.Sequential(*layers)
        self.head = nn.Conv2d(width, 1, 1)

    def forward(self, x: Tensor) -> Tensor:
        h, w = x.shape[-2:]
        s = self.work_size
        small = F.interpolate(x, size=(s, s), mode="bilinear", align_corners=False, antialias=True) if (h, w) != (s, s) else x
        small = (small - 0.5) / 0.25
        b = small.shape[0]
        ys = torch.linspace(-1, 1, s, device=x.device, dtype=x.dtype).view(1, 1, s, 1).expand(b, 1, s, s)
        xs = torch.linspace(-1, 1, s, device=x.device, dtype=x.dtype).view(1, 1, 1, s).expand(b, 1, s, s)
        out = self.head(self.body(torch.cat([small, ys, xs], 1)))
        return F.interpolate(out, size=(h, w), mode="bilinear", align_corners=False)


@dataclass
class Proposal:
    """Propagated masks for N images: ``masks`` bool [N, 1, H, W], ``confidence`` float [N] in [0, 1]."""

    masks: Tensor
    confidence: Tensor


def _dice_bce(logits: Tensor, target: Tensor) -> Tensor:
    p = torch.sigmoid(logits)
    inter = (p * target).sum((1, 2, 3))
    dice = 1 - (2 * inter + 1) / (p.sum((1, 2, 3)) + target.sum((1, 2, 3)) + 1)
    return F.binary_cross_entropy_with_logits(logits, target) + dice.mean()


def train_mask_net(images: Tensor, masks: Tensor, *, steps: int | None = None, seed: int = 0,
                   device: str | torch.device = "cpu", flip: bool = FLIP) -> MaskNet:
    """Fit a ``MaskNet`` to painted images (uint8 or [0, 1] float [N, 3, H, W]) and their bool masks
    [N, 1, H, W] (AdamW, one-cycle lr, Dice + BCE; ``flip``: horizontal flips move image and mask together);
    ``steps``: default ``STEPS_PER_IMAGE`` per image within ``MIN_STEPS..MAX_STEPS``."""
    if images.shape[0] < 1:
        raise ValueError("train_mask_net needs at least one painted image")
    if steps is None:
        steps = min(MAX_STEPS, max(MIN_STEPS, STEPS_PER_IMAGE * images.shape[0]))
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    net = MaskNet(work_size=min(WORK_SIZE, int(images.shape[-1]))).to(device).train()
    opt = torch.optim.AdamW(net.parameters(), lr=LR, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=LR, total_steps=steps, pct_start=0.1)
    n = images.shape[0]
    for _ in range(steps):
        idx = torch.randint(n, (min(BATCH, max(n, 4)),), generator=gen)
        x = _as_float(images[idx]).to(device)
        m = masks[idx].to(device).float()
        if flip:
            x, m = _augment(x, m, gen)
        loss = _dice_bce(net(x), m)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
    return net.eval()


def _as_float(x: Tensor) -> Tensor:
    return x.float().div(255.0) if x.dtype == torch.uint8 else x.float()


def _augment(x: Tensor, m: Tensor, gen: torch.Generator) -> tuple[Tensor, Tensor]:
    flip = torch.rand(x.shape[0], generator=gen) < 0.5
    x = torch.where(flip.view(-1, 1, 1, 1).to(x.device), x.flip(-1), x)
    m = torch.where(flip.view(-1, 1, 1, 1).to(m.device), m.flip(-1), m)
    return x, m


@torch.inference_mode()
def predict_masks(net: MaskNet, images: Tensor, batch_size: int = 64) -> Proposal:
    """Propagated masks (p > 0.5) and per-image confidence for images [N, 3, H, W] (uint8 or float)."""
    net.eval()
    device = next(net.parameters()).device
    masks, conf = [], []
    for chunk in images.split(batch_size):
        p = torch.sigmoid(net(_as_float(chunk).to(device))).cpu()
        masks.append(p > 0.5)
        conf.append((2 * p - 1).abs().mean((1, 2, 3)))
    if not masks:
        h, w = images.shape[-2:]
        return Proposal(torch.zeros(0, 1, h, w, dtype=torch.bool), torch.zeros(0))
    return Proposal(torch.cat(masks), torch.cat(conf))


def iou(pred: Tensor, true: Tensor) -> Tensor:
    """Per-image IoU of bool masks [N, 1, H, W]; 1 where both are empty."""
    inter = (pred & true).flatten(1).sum(1).float()
    union = (pred | true).flatten(1).sum(1).float()
    return torch.where(union > 0, inter / union.clamp(min=1), torch.ones_like(union))


def net_path(store_root: Path, version: str) -> Path:
    """Where a project's version keeps its mask net (beside the checkpoints)."""
    return Path(store_root) / "mask_nets" / f"{version}.pt"


def proposals_path(store_root: Path, version: str) -> Path:
    """Where the proposal job (``ml_backend.jobs.propose_job``) keeps the net it fitted for the served
    ``version`` between trainings; served instead of the version's own net when newer."""
    return Path(store_root) / "mask_nets" / f"{version}.proposals.pt"


def newest_net_path(store_root: Path, version: str) -> Path | None:
    """The newer of the version's net and its proposals net (None: neither exists)."""
    found = []
    for path in (net_path(store_root, version), proposals_path(store_root, version)):
        try:
            found.append((path.stat().st_mtime_ns, path))
        except OSError:
            continue
    return max(found)[1] if found else None


def save(net: MaskNet, path: Path, info: dict) -> Path:
    path = Path(path)
    atomic_write(path, lambda f: torch.save({"state_dict": net.state_dict(), "work_size": net.work_size, "info": info}, f),
                 durable=False)
    return path


def load(path: Path, device: str | torch.device = "cpu") -> MaskNet | None:
    """The mask net saved at ``path``, or None when there is none."""
    path = Path(path)
    if not path.is_file():
        return None
    blob = torch.load(path, map_location=device, weights_only=True)
    net = MaskNet(work_size=int(blob.get("work_size", WORK_SIZE)))
    net.load_state_dict(blob["state_dict"])
    return net.to(device).eval()


def with_masks(train, rows: Tensor, masks: Tensor, weights: Tensor):
    """``train`` with the masks of ``rows`` set to ``masks`` and their twin weights to ``weights``."""
    from training.dataset import PairedDataset
    from training.loader import PackedMasks

    if isinstance(train.masks, PackedMasks):
        by_row = {int(i): train.masks[int(i)][0].numpy() for i in train.painted.nonzero().squeeze(1)}
        by_row.update({int(r): m[0].numpy() for r, m in zip(rows, masks)})
        new_masks = PackedMasks(by_row, len(train), train.image_size)
    else:
        new_masks = train.masks.clone()
        new_masks[rows.to(new_masks.device)] = masks.to(new_masks.device)
    weight = train.mask_weight.clone()
    weight[rows.to(weight.device)] = weights.to(weight.device, weight.dtype)
    return PairedDataset(train.images, new_masks, train.targets, train.task_ids, weight)


def propagation_step(train, policy: str, min_confidence: float, *, seed: int = 0,
                     device: str | torch.device = "cpu") -> tuple[object, MaskNet | None, dict]:
    """The training job's propagation: fit the net on ``train``'s painted images, propose masks for the
    others and, per ``policy`` (``off`` / ``confident`` / ``all``), train with them.

    Returns ``(train with the used proposals, net or None, counts)``; counts: ``propagated`` (proposals
    made), ``propagated_used``, ``propagated_confidence`` (mean), ``propagation_s``."""
    counts: dict = {"propagated": 0, "propagated_used": 0}
    if policy == "off" or train.n_painted < MIN_PAINTED or train.n_painted == len(train):
        return train, None, counts
    t = time.perf_counter()
    painted = train.painted.cpu()
    idx = painted.nonzero().squeeze(1)
    rest = (~painted).nonzero().squeeze(1)
    # the net is tiny: on a CPU one thread is as fast idle and many times faster when other processes
    # share the cores (2 threads' barriers then wait on descheduled threads: 12-14 s against 3-7 s a fit)
    with torch_threads(1 if torch.device(device).type == "cpu" else None):
        net = train_mask_net(train.images[idx], train.masks[idx], seed=seed, device=device)
        chunks = [predict_masks(net, train.images[c]) for c in rest.split(256)]
    proposal = Proposal(torch.cat([c.masks for c in chunks]), torch.cat([c.confidence for c in chunks]))
    nonempty = proposal.masks.flatten(1).any(1)
    use = nonempty if policy == "all" else nonempty & (proposal.confidence >= min_confidence)
    counts.update(propagated=int(nonempty.sum()), propagated_used=int(use.sum()),
                  propagated_confidence=round(float(proposal.confidence.mean()), 4) if rest.numel() else None)
    if use.any():
        train = with_masks(train, rest[use], proposal.masks[use], proposal.confidence[use])
    counts["propagation_s"] = round(time.perf_counter() - t, 3)
    log.info("mask propagation: %d painted -> %d proposals, %d used (%s, confidence >= %.2f) in %.1fs",
             idx.numel(), counts["propagated"], counts["propagated_used"], policy, min_confidence,
             counts["propagation_s"])
    return train, net.cpu(), counts
