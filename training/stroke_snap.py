"""Snap a rough painted stroke to the region it covers (issue 23).

The expert paints roughly: on the demo's 10 x 10 corner patch, strokes covered 31-64 of its 100 pixels and
spilled ~100 pixels outside. ``snap_stroke`` turns such a stroke into the colour region it covers, with a
GrabCut-like colour model (histograms instead of Gaussian mixtures, a connectivity constraint instead of the
graph cut):

1. colours are quantized to ``bins`` levels per channel;
2. the *region* histogram comes from the stroke's core: its deepest ``CORE_SHARE`` of pixels (depth =
   distance to the stroke's edge; the image border is no edge), where spill, a band along the stroke's
   edge, is rare;
3. the *other* histogram comes from every pixel outside the current region (first: outside the stroke),
   less the region's own histogram times the share of it the rest still holds (``unmix_share``: the
   uncovered part of the region is there too);
4. a pixel belongs to the region where its colour is likelier under the region's histogram than under the
   other's (log-ratio clamped to +-``CLAMP``, summed over its 3 x 3 neighbourhood with its own counting
   ``CENTRE_WEIGHT`` times, so lone pixels follow their neighbours), and only if connected
   (8-neighbourhood) to the stroke's core;
5. steps 3-4 repeat ``iterations`` times: the uncovered part of the region leaves the rest, which sharpens
   the next decision.

A stroke with (nearly) no pixels, or (nearly) all, or whose snapped region comes out empty, is kept as
painted. Pure torch; images ``uint8 [3, H, W]``, masks ``bool [H, W]``.
"""

from __future__ import annotations

import logging
import time

import torch
import torch.nn.functional as F
from torch import Tensor

log = logging.getLogger(__name__)

BINS = 8  # quantization levels per channel (8^3 = 512 colour bins)
ITERATIONS = 3
CORE_SHARE = 0.5  # the deepest share of the stroke's pixels that makes the region's histogram
PSEUDO_COUNT = 0.1  # added to every histogram bin
UNMIX_QUANTILE = 0.25  # of rest/region over the region's colours: how much of the region the rest holds
MIN_BIN_COUNT = 3  # region pixels a colour bin needs to count in that quantile
CLAMP = 1.0  # |log-ratio| cap before the neighbourhood vote
CENTRE_WEIGHT = 2.5  # a pixel's own log-ratio against its 8 neighbours' in the vote
MIN_PIXELS = 4  # a stroke with fewer pixels (or fewer left outside it) is kept as painted


def colour_bins(image: Tensor, bins: int = BINS) -> Tensor:
    """``[H, W]`` long: the colour bin of every pixel of a ``uint8 [3, H, W]`` image."""
    q = (image.long() * bins) // 256
    return (q[0] * bins + q[1]) * bins + q[2]


def depth(mask: Tensor) -> Tensor:
    """``[H, W]`` long: how many 3 x 3 erosions each pixel of ``mask`` survives, plus one (0 outside); the
    image border does not erode (a stroke along it has no edge there)."""
    out = torch.zeros(mask.shape, dtype=torch.long)
    cur = mask.float()[None, None]
    while cur.any():
        out += cur[0, 0].long()
        cur = -F.max_pool2d(F.pad(-cur, (1, 1, 1, 1), mode="replicate"), 3, stride=1)
    return out


def core(stroke: Tensor, share: float = CORE_SHARE) -> Tensor:
    """The deepest ``share`` of the stroke's pixels (at least its deepest layer)."""
    d = depth(stroke)
    inside = torch.sort(d[stroke], descending=True).values
    cut = inside[min(max(1, round(share * inside.numel())), inside.numel()) - 1]
    return stroke & (d >= max(int(cut), 1))


def log_ratio(codes: Tensor, region: Tensor, rest: Tensor, n_bins: int) -> Tensor:
    """``[H, W]`` float: log P(colour | region) - log P(colour | other), from Laplace-smoothed histograms.

    The rest still holds the region's uncovered part: ``other`` is the rest's histogram less ``alpha`` times
    the region's, ``alpha`` the ``UNMIX_QUANTILE`` of rest/region over the region's colours (about the
    region's share of the rest)."""
    inside = torch.bincount(codes[region], minlength=n_bins).float()
    outside = torch.bincount(codes[rest], minlength=n_bins).float()
    p_in, p_out = inside / inside.sum(), outside / outside.sum().clamp(min=1)
    alpha = unmix_share(p_in, p_out, inside >= MIN_BIN_COUNT)
    other = (p_out - alpha * p_in).clamp(min=0) * outside.sum() + PSEUDO_COUNT
    inside = inside + PSEUDO_COUNT
    per_bin = (inside / inside.sum()).log() - (other / other.sum()).log()
    return per_bin[codes]


def unmix_share(p_in: Tensor, p_out: Tensor, seen: Tensor) -> float:
    """The ``UNMIX_QUANTILE`` of ``p_out / p_in`` over the ``seen`` bins, each weighted by its region mass
    (at most 1): about how much of the region's colour distribution the rest holds."""
    if not seen.any():
        return 0.0
    ratio, order = torch.sort(p_out[seen] / p_in[seen])
    weight = p_in[seen][order].cumsum(0)
    at = int(torch.searchsorted(weight, UNMIX_QUANTILE * weight[-1]))
    return min(float(ratio[min(at, ratio.numel() - 1)]), 1.0)


def neighbourhood_vote(score: Tensor) -> Tensor:
    """``score`` (float [H, W]) summed over each pixel's 3 x 3 neighbourhood, the pixel itself counting
    ``CENTRE_WEIGHT`` times: a lone pixel follows its neighbours, a corner pixel keeps its own colour's say."""
    kernel = torch.ones(1, 1, 3, 3, dtype=score.dtype)
    kernel[0, 0, 1, 1] = CENTRE_WEIGHT
    return F.conv2d(score[None, None], kernel, padding=1)[0, 0]


def connected_to(seeds: Tensor, allowed: Tensor) -> Tensor:
    """The pixels of ``allowed`` (bool [H, W]) connected (8-neighbourhood) to ``seeds`` within ``allowed``."""
    grown = (seeds & allowed).float()[None, None]
    room = allowed.float()[None, None]
    while True:
        nxt = F.max_pool2d(grown, 3, stride=1, padding=1) * room
        if torch.equal(nxt, grown):
            return grown[0, 0] > 0
        grown = nxt


def snap_stroke(image: Tensor, stroke: Tensor, iterations: int = ITERATIONS, bins: int = BINS) -> Tensor:
    """The region a rough ``stroke`` (bool [H, W]) covers in ``image`` (uint8 [3, H, W]); see the module doc."""
    stroke = stroke.bool()
    n = int(stroke.sum())
    if n < MIN_PIXELS or stroke.numel() - n < MIN_PIXELS:
        return stroke.clone()
    codes = colour_bins(image, bins)
    seeds = core(stroke)
    region = stroke
    for _ in range(iterations):
        score = log_ratio(codes, seeds, ~region, bins ** 3).clamp(-CLAMP, CLAMP)
        score = neighbourhood_vote(score)
        snapped = connected_to(seeds, score > 0)
        if not snapped.any() or snapped.all():
            return stroke.clone()
        if torch.equal(snapped, region):
            break
        region = snapped
    return region


def snap_masks(images: Tensor, masks: Tensor, iterations: int = ITERATIONS) -> Tensor:
    """``snap_stroke`` for each image of ``uint8 [N, 3, H, W]`` and its mask ``bool [N, 1, H, W]``."""
    return torch.stack([snap_stroke(x, m[0], iterations)[None] for x, m in zip(images, masks)])


def snap_painted(train, mode: str) -> tuple[object, dict]:
    """``train`` (a ``PairedDataset``) with every painted mask snapped (``mode`` ``colour``; ``off``: as
    painted), and counts for the job result: ``snapped`` (masks), ``snap_pixels`` (pixels changed), ``snap_s``."""
    from training.propagation import with_masks

    if mode == "off" or not train.n_painted:
        return train, {}
    t = time.perf_counter()
    rows = train.painted.cpu().nonzero().squeeze(1)
    masks = train.masks[rows].cpu().bool()
    snapped = snap_masks(train.images[rows].cpu(), masks)
    counts = {"snapped": int(rows.numel()), "snap_pixels": int((snapped != masks).sum()),
              "snap_s": round(time.perf_counter() - t, 3)}
    log.info("stroke snap (%s): %d painted masks, %d pixels changed in %.1fs", mode, counts["snapped"],
             counts["snap_pixels"], counts["snap_s"])
    return with_masks(train, rows, snapped, train.mask_weight[rows]), counts
