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
from ml_backend.predict.mask_proposals import PropagationPart, grow, interactive_region, seed_mask
from training.images import original_size, resize_rgb

log = logging.getLogger(__name__)

MARK_TYPES = ("keypointlabels", "rectanglelabels", "brushlabels")
GROW_SIDE = 64  # regions are grown on a grid of at most this side (then snapped to the image's pixels)
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


def grow_size(width: int, height: int) -> tuple[int, int]:
    """(w, h) of the grid regions are grown on: the image's, scaled so its longer side is at most ``GROW_SIDE``."""
    scale = min(1.0, GROW_SIDE / max(width, height))
    return max(1, round(width * scale)), max(1, round(height * scale))


def resize_bool(mask: torch.Tensor, width: int, height: int) -> torch.Tensor:
    return F.interpolate(mask[None, None].float(), size=(height, width), mode="nearest")[0, 0] > 0


def small_seeds(seeds_full: np.ndarray, width: int, height: int) -> torch.Tensor:
    """The marks on the grow grid (a one-pixel mark lost in the downscale keeps its nearest cell)."""
    small = resize_bool(torch.from_numpy(seeds_full), width, height)
    if not small.any():
        ys, xs = np.nonzero(seeds_full)
        h, w = seeds_full.shape
        small[min(height - 1, int(ys.mean() * height / h)), min(width - 1, int(xs.mean() * width / w))] = True
    return small


def color_region(img: Image.Image, seeds: np.ndarray, box: tuple[int, int, int, int] | None = None) -> np.ndarray:
    """The pixels connected to ``seeds`` (bool, the image's size) whose colour is near the seeds' mean colour,
    inside ``box`` (x0, y0, x1, y1) when given; a region over ``MAX_SHARE`` of the image (or box) tightens
    the tolerance. Grown on a grid of at most ``GROW_SIDE`` px, then snapped to the image's own pixels."""
    w, h = img.size
    rgb_full = torch.from_numpy(np.asarray(img.convert("RGB"), dtype=np.float32) / 255.0)
    sw, sh = grow_size(w, h)
    small_img = img.convert("RGB").resize((sw, sh), Image.BILINEAR) if (sw, sh) != (w, h) else img.convert("RGB")
    x = torch.from_numpy(np.asarray(small_img, dtype=np.float32) / 255.0)
    seeds_t = torch.from_numpy(seeds)
    start = small_seeds(seeds, sw, sh) if (sw, sh) != (w, h) else seeds_t
    inside = torch.ones(sh, sw, dtype=torch.bool)
    inside_full = torch.ones(h, w, dtype=torch.bool)
    if box is not None:
        x0, y0, x1, y1 = box
        inside_full = torch.zeros(h, w, dtype=torch.bool)
        inside_full[y0:max(y0 + 1, y1), x0:max(x0 + 1, x1)] = True
        inside = resize_bool(inside_full, sw, sh) | start
    colour = rgb_full[seeds_t].mean(0)
    dist = (x - colour).norm(dim=-1)
    tol = COLOR_TOLERANCE
    region = start
    for _ in range(4):
        region = grow(start, (dist <= tol) & inside) | start
        if region.float().sum() <= MAX_SHARE * inside.float().sum():
            break
        tol /= 2
    if (sw, sh) == (w, h):
        return region.numpy()
    near = F.max_pool2d(resize_bool(region, w, h).float()[None, None], 2 * (w // sw) + 1, stride=1,
                        padding=w // sw)[0, 0] > 0  # the grown region, a grid cell wider
    close = (rgb_full - colour).norm(dim=-1) <= tol
    return (near & close & inside_full | seeds_t).numpy()  # near the connected region: no second flood fill


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
    if prob is not None:  # the net's probability on the grow grid
        seeds = seed_mask({"result": marks}, None, h, w)
        if seeds is not None:
            sh, sw = prob.shape
            start = small_seeds(seeds, sw, sh)
            region = torch.from_numpy(interactive_region(prob, start.numpy()))
            if region.sum() > start.sum():  # the net sees something at the marks
                return (resize_bool(region, w, h) | torch.from_numpy(seeds)).numpy()
    out = np.zeros((h, w), dtype=bool)
    for mark in marks:
        box = mark_box(mark, w, h)
        seeds = box_centre(box, h, w) if box is not None else seed_mask({"result": [mark]}, None, h, w)
        if seeds is not None:
            out |= color_region(img, seeds, box)
    return out


@torch.inference_mode()
def grid_probability(net, img: Image.Image, image_size: int) -> torch.Tensor:
    """The mask net's spurious probability for ``img`` on its grow grid (``grow_size``)."""
    x = torch.from_numpy(np.array(resize_rgb(img, image_size))).permute(2, 0, 1)[None].float().div(255)
    sw, sh = grow_size(*img.size)
    return F.interpolate(torch.sigmoid(net(x)), size=(sh, sw), mode="bilinear", align_corners=False)[0, 0]


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
            prob = grid_probability(net, img, image_size) if net is not None else None
            mask = propose_at_marks(img, marks, prob)
            if not mask.any():
                out.append([])
                continue
            score = None
            if prob is not None:
                sw, sh = grow_size(*img.size)
                score = float(prob[resize_bool(torch.from_numpy(mask), sw, sh)].mean().nan_to_num(0.0))
            out.append([regions.brush(mask, SPURIOUS_LABEL, config.spurious_control, config.image_name, score,
                                      region_id=f"spurious-{uuid.uuid4().hex[:12]}", size=original_size(img))])
        return out
