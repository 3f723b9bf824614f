"""Click-to-propose: Label Studio's interactive pre-annotation (``/predict`` with ``params.context``).

With Auto-Annotation on, a ``Spurious`` keypoint or box drawn with the config's smart tools
(``spurious_point``/``spurious_box``, ``smartOnly``: only in the toolbar's smart menu) makes Label Studio send the mark as
``context.result``; the answer is the one ``Spurious`` brush region at that mark — nothing else: no
class, saliency or influence (they belong to the stored predictions), and nothing at all for a context
without a ``Spurious`` mark (Label Studio sends such requests when a task opens).

Where the mark points: the served version's mask net (``training.propagation``, when a job has made
one) gives the part of its proposal connected to the mark; where it has none there (or no net yet),
the pixels of the mark's colour connected to it (``color_region``), so a click works on a fresh
project too.  Each answer's region id is new (``spurious-<hex>``): it never clashes with a stored
prediction's region (Label Studio resolves regions by id).
"""

from __future__ import annotations

import logging
import uuid

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from label_config import regions
from label_config.render import SPURIOUS_LABEL, ParsedConfig
from ml_backend.predict.mask_proposals import PropagationPart, interactive_region, seed_mask
from training.images import original_size

log = logging.getLogger(__name__)

MARK_TYPES = ("keypointlabels", "rectanglelabels", "brushlabels")
WORK_SIDE = 256  # colour growing runs at most at this side (then the mask is resized to the image)
COLOR_TOLERANCE = 0.18  # RGB distance (0..sqrt(3)) from the mark's colour still counted as the same region
MAX_SHARE = 0.5  # a colour region over this share of the image is background: the tolerance is halved


def spurious_marks(context: dict | None) -> list[dict]:
    """The ``Spurious`` marks (keypoint, box or brush stroke) in an interactive context."""
    out = []
    for r in (context or {}).get("result") or []:
        if not isinstance(r, dict) or r.get("type") not in MARK_TYPES:
            continue
        labels = (r.get("value") or {}).get(r["type"]) or []
        if SPURIOUS_LABEL in labels:
            out.append(r)
    return out


def grow_fast(seeds: torch.Tensor, allowed: torch.Tensor, steps_per_check: int = 8) -> torch.Tensor:
    """The pixels of ``allowed`` (bool [H, W]) 8-connected to ``seeds`` (several dilations between checks)."""
    region = (seeds & allowed).float()[None, None]
    allowed_f = allowed.float()[None, None]
    while True:
        bigger = region
        for _ in range(steps_per_check):
            bigger = F.max_pool2d(bigger, 3, stride=1, padding=1) * allowed_f
        if torch.equal(bigger, region):
            return region[0, 0] > 0
        region = bigger


def color_region(img: Image.Image, seeds: np.ndarray, box: tuple[int, int, int, int] | None = None) -> np.ndarray:
    """The pixels connected to ``seeds`` (bool, the image's size) whose colour is near the seeds' mean colour,
    inside ``box`` (x0, y0, x1, y1) when given; a region over ``MAX_SHARE`` of the image (or box) tightens
    the tolerance. Computed at most at ``WORK_SIDE`` px, returned at the image's size."""
    w, h = img.size
    scale = min(1.0, WORK_SIDE / max(w, h))
    sw, sh = max(1, round(w * scale)), max(1, round(h * scale))
    rgb = np.asarray(img.convert("RGB").resize((sw, sh), Image.BILINEAR) if scale < 1 else img.convert("RGB"),
                     dtype=np.float32) / 255.0
    x = torch.from_numpy(rgb)
    s = torch.from_numpy(seeds[None, None].astype(np.float32))
    small_seeds = F.interpolate(s, size=(sh, sw), mode="nearest")[0, 0] > 0 if scale < 1 else torch.from_numpy(seeds)
    if not small_seeds.any():  # a one-pixel mark lost in the downscale
        ys, xs = np.nonzero(seeds)
        small_seeds = torch.zeros(sh, sw, dtype=torch.bool)
        small_seeds[min(sh - 1, int(ys.mean() * scale)), min(sw - 1, int(xs.mean() * scale))] = True
    inside = torch.ones(sh, sw, dtype=torch.bool)
    if box is not None:
        x0, y0, x1, y1 = (int(v * scale) for v in box)
        inside = torch.zeros(sh, sw, dtype=torch.bool)
        inside[y0:max(y0 + 1, y1), x0:max(x0 + 1, x1)] = True
    colour = x[small_seeds].mean(0)
    dist = (x - colour).norm(dim=-1)
    tol = COLOR_TOLERANCE
    region = small_seeds
    for _ in range(4):
        region = grow_fast(small_seeds, (dist <= tol) & inside) | small_seeds
        if region.float().sum() <= MAX_SHARE * inside.float().sum():
            break
        tol /= 2
    if scale < 1:
        region = F.interpolate(region[None, None].float(), size=(h, w), mode="nearest")[0, 0] > 0
    return region.numpy()


def mark_box(mark: dict, width: int, height: int) -> tuple[int, int, int, int] | None:
    """A rectangle mark's pixel box (x0, y0, x1, y1); None for other marks."""
    if mark.get("type") != "rectanglelabels":
        return None
    v = mark.get("value") or {}
    x0, y0 = float(v.get("x", 0)) / 100 * width, float(v.get("y", 0)) / 100 * height
    x1, y1 = x0 + float(v.get("width", 0)) / 100 * width, y0 + float(v.get("height", 0)) / 100 * height
    return (int(np.clip(x0, 0, width - 1)), int(np.clip(y0, 0, height - 1)),
            int(np.clip(np.ceil(x1), 1, width)), int(np.clip(np.ceil(y1), 1, height)))


def box_centre(box: tuple[int, int, int, int], height: int, width: int) -> np.ndarray:
    seeds = np.zeros((height, width), dtype=bool)
    seeds[(box[1] + box[3] - 1) // 2, (box[0] + box[2] - 1) // 2] = True
    return seeds


def propose_at_marks(img: Image.Image, marks: list[dict], prob: torch.Tensor | None) -> np.ndarray:
    """The spurious region the marks point at (bool, the decoded image's size): the net's region connected to
    them when it has one, else each mark's colour region (a box: grown from its centre, inside the box)."""
    w, h = img.size
    if prob is not None:
        seeds = seed_mask({"result": marks}, None, h, w)
        if seeds is not None:
            region = interactive_region(prob, seeds)
            if region.sum() > seeds.sum():  # the net sees something at the marks
                return region
    out = np.zeros((h, w), dtype=bool)
    for mark in marks:
        box = mark_box(mark, w, h)
        seeds = box_centre(box, h, w) if box is not None else seed_mask({"result": [mark]}, None, h, w)
        if seeds is not None:
            out |= color_region(img, seeds, box)
    return out


class InteractiveProposer:
    """Answers interactive requests for one project: the mask net of the served version, cached."""

    def __init__(self, settings) -> None:
        self.nets = PropagationPart.from_settings(settings)

    def answer(self, project_id: int, config: ParsedConfig, version: str, image_size: int, images: list,
               marks: list[dict]) -> list[list[dict]]:
        """One list of regions per image (an ImageError image gets none)."""
        net = self.nets.net(project_id, version)
        out: list[list[dict]] = []
        for img in images:
            if not isinstance(img, Image.Image) or not config.spurious_control:
                out.append([])
                continue
            prob = self.nets.probabilities(net, [img], image_size)[0] if net is not None else None
            mask = propose_at_marks(img, marks, prob)
            if not mask.any():
                out.append([])
                continue
            score = float(prob[torch.from_numpy(mask)].mean()) if prob is not None else None
            out.append([regions.brush(mask, SPURIOUS_LABEL, config.spurious_control, config.image_name, score,
                                      region_id=f"spurious-{uuid.uuid4().hex[:12]}", size=original_size(img))])
        return out
