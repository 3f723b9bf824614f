"""Propagation part: the served version's mask net proposes each task's spurious region.

After a training job (``training.propagation``: a small segmentation net fitted to the project's
painted masks, saved beside the version) or a proposal job (``ml_backend.jobs.propose_job``: the same
net refitted to the painted masks without training the classifier, served for the version when newer),
every prediction carries a ``Spurious`` brush proposal for the task's image, scored with the net's
confidence (mean ``|2p - 1|`` over the pixels), which the expert accepts, edits or deletes in Label Studio.
No downloaded weights: the net is the project's own.

Interactive (Label Studio's auto-annotation, ``/predict`` with ``params.context``): the expert's first
marks on the image — keypoints, rectangles or brush strokes of the ``Spurious`` label — arrive as
``context.result``; the answer is the part of the proposal connected to those marks (the whole
spurious region the marks point at), at the image's full size, in one pass of the net (milliseconds).
Where the net sees nothing spurious at the marks, the marks' region is grown over pixels the net
gives at least ``LOW`` probability; no net yet (before the first job): no proposal, said in the log.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from label_config.rle import RLEError, decode_rle
from ml_backend.predict.parts import PartOutput, PredictContext, no_regions, spurious_proposals
from training import propagation
from training.checkpoints import CheckpointStore
from training.images import resize_rgb

log = logging.getLogger(__name__)

HIGH = 0.5  # probability of a proposed pixel
LOW = 0.2  # interactive: where the marks point at nothing above HIGH, grow over pixels above this


def seed_mask(context: dict | None, control: str | None, height: int, width: int) -> np.ndarray | None:
    """The pixels the expert marked (bool ``height x width``) from an interactive request's context, or
    None when it has no mark of ``control`` (None: of any control).  Keypoints and rectangles are in percent of the image; brush
    strokes are RLE at the image's original size (decoded, then resized)."""
    results = (context or {}).get("result") or []
    seeds = np.zeros((height, width), dtype=bool)
    for r in results:
        if not isinstance(r, dict) or (control is not None and r.get("from_name") != control):
            continue
        value = r.get("value") or {}
        kind = r.get("type")
        if kind in ("keypointlabels", "rectanglelabels"):
            x, y = float(value.get("x", 0)) / 100 * width, float(value.get("y", 0)) / 100 * height
            w = float(value.get("width", 0)) / 100 * width if kind == "rectanglelabels" else 0
            h = float(value.get("height", 0)) / 100 * height if kind == "rectanglelabels" else 0
            x0, y0 = int(np.clip(x, 0, width - 1)), int(np.clip(y, 0, height - 1))
            seeds[y0:max(y0 + 1, int(np.ceil(y + h))), x0:max(x0 + 1, int(np.ceil(x + w)))] = True
        elif kind == "brushlabels" and value.get("format") == "rle":
            ow, oh = int(r.get("original_width") or width), int(r.get("original_height") or height)
            try:
                strokes = decode_rle(value["rle"], oh, ow)
            except (RLEError, KeyError, ValueError) as e:
                log.warning("interactive context: unreadable brush stroke ignored: %s", e)
                continue
            if (oh, ow) != (height, width):
                t = torch.from_numpy(strokes.astype(np.float32))[None, None]
                strokes = F.interpolate(t, size=(height, width), mode="nearest")[0, 0].numpy() > 0
            seeds |= strokes
    return seeds if seeds.any() else None


def grow(seeds: torch.Tensor, allowed: torch.Tensor, steps_per_check: int = 8) -> torch.Tensor:
    """The pixels of ``allowed`` (bool [H, W]) connected (8-neighbourhood) to ``seeds`` (several one-pixel
    dilations between the checks for a fixed point)."""
    region = (seeds & allowed).float()[None, None]
    allowed_f = allowed.float()[None, None]
    while True:
        bigger = region
        for _ in range(steps_per_check):
            bigger = F.max_pool2d(bigger, 3, stride=1, padding=1) * allowed_f
        if torch.equal(bigger, region):
            return region[0, 0] > 0
        region = bigger


def interactive_region(prob: torch.Tensor, seeds: np.ndarray) -> np.ndarray:
    """The proposal's part connected to the expert's marks, plus the marks (bool, the size of ``prob``)."""
    s = torch.from_numpy(seeds)
    region = grow(s, prob > HIGH)
    if not region.any():
        region = grow(s, prob > LOW)
    return (region | s).numpy()


class PropagationPart:
    """Prediction part: the served version's mask net -> ``Spurious`` brush proposal per task."""

    name = "propagation"

    def __init__(self, model_dir: str | Path) -> None:
        self.model_dir = Path(model_dir)
        self._nets: dict[tuple[int, str], tuple[tuple[Path, int], propagation.MaskNet | None]] = {}
        self._lock = threading.Lock()

    @classmethod
    def from_settings(cls, settings) -> "PropagationPart":
        return cls(settings.model_dir)

    def net(self, project_id: int, version: str) -> propagation.MaskNet | None:
        """The newest mask net of the version: its own (training job) or a proposal job's fit for it
        (``propagation.proposals_path``); reloaded when that file changes, not cached while missing."""
        key = (project_id, version)
        path = propagation.newest_net_path(CheckpointStore(self.model_dir, project_id).root, version)
        if path is None:
            return None
        try:
            stamp = (path, path.stat().st_mtime_ns)
        except OSError:
            return None
        with self._lock:
            cached = self._nets.get(key)
            if cached is None or cached[0] != stamp:
                self._nets[key] = (stamp, propagation.load(path))
            return self._nets[key][1]

    @torch.inference_mode()
    def probabilities(self, net: propagation.MaskNet, images, size: int) -> list[torch.Tensor]:
        """Per image, the net's spurious probability [H, W] at the image's decoded size."""
        out = []
        for img in images:
            x = torch.from_numpy(np.array(resize_rgb(img, size))).permute(2, 0, 1)[None].float().div(255)
            p = torch.sigmoid(net(x))
            out.append(F.interpolate(p, size=(img.height, img.width), mode="bilinear", align_corners=False)[0, 0])
        return out

    def __call__(self, ctx: PredictContext) -> PartOutput:
        if not ctx.config.spurious_control:
            return no_regions(ctx)
        net = self.net(ctx.project_id, ctx.served.version)
        if net is None:
            if ctx.context:
                log.info("project %s: no mask net for %s yet (a training job with painted images makes one); "
                         "no interactive proposal", ctx.project_id, ctx.served.version)
            return no_regions(ctx)
        probs = self.probabilities(net, ctx.images, ctx.served.meta.image_size)
        return spurious_proposals(ctx, probs, lambda task, img, prob: self.propose(ctx, img, prob), "propagated",
                                  "propagated")

    @staticmethod
    def propose(ctx: PredictContext, img, prob: torch.Tensor) -> tuple[np.ndarray, float | None]:
        """The region at the expert's marks (interactive), else every confidently spurious pixel."""
        seeds = seed_mask(ctx.context, ctx.config.spurious_control, img.height, img.width) if ctx.context else None
        if seeds is not None:
            mask = interactive_region(prob, seeds)
            return mask, (float(prob[torch.from_numpy(mask)].mean()) if mask.any() else None)
        return (prob > HIGH).numpy(), float((2 * prob - 1).abs().mean())
