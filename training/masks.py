"""Spurious-pixel masks from Label Studio annotation results, ready for ``training.paired``.

A training task's annotation holds zero or more ``brushlabels`` results; those labelled with the
spurious label (``"Spurious"`` by default) are decoded (``training.rle``) and OR-ed into one mask at
the image's original size, then resized (nearest) to the training image size.
"""

from __future__ import annotations

from typing import Any, Iterable

import numpy as np
import torch
import torch.nn.functional as F

from training.rle import RLEError, decode_rle

__all__ = ["union_mask", "resize_mask", "masks_to_tensor"]


def union_mask(
    results: Iterable[dict[str, Any]],
    labels: Iterable[str] = ("Spurious",),
    from_name: str | None = None,
) -> np.ndarray | None:
    """OR of the brush regions in ``results`` whose brush label is in ``labels``.

    ``results`` is an annotation's ``result`` list as exported by Label Studio (each brush result
    has ``type == "brushlabels"``, ``value.format == "rle"``, ``value.rle``, ``value.brushlabels``,
    ``original_width`` / ``original_height``).  ``from_name`` restricts to one BrushLabels tag.

    Returns a bool ``original_height x original_width`` array, or None when no region matches.
    Raises RLEError for a malformed region, or one whose size differs from another region's.
    """
    wanted = set(labels)
    out: np.ndarray | None = None
    for r in results:
        if str(r.get("type", "")).lower() != "brushlabels":
            continue
        if from_name is not None and r.get("from_name") != from_name:
            continue
        value = r.get("value") or {}
        if not wanted.intersection(value.get("brushlabels") or []):
            continue
        if value.get("format", "rle") != "rle" or "rle" not in value:
            raise RLEError(f"brush result {r.get('id')!r} has no RLE (format {value.get('format')!r})")
        try:
            h, w = int(r["original_height"]), int(r["original_width"])
        except (KeyError, TypeError, ValueError) as exc:
            raise RLEError(f"brush result {r.get('id')!r} lacks original_width/original_height") from exc
        m = decode_rle(value["rle"], h, w)
        if out is None:
            out = m
        elif out.shape != m.shape:
            raise RLEError(f"brush regions of one image have different sizes: {out.shape} vs {m.shape}")
        else:
            out |= m
    return out


def resize_mask(mask: np.ndarray | torch.Tensor, size: int | tuple[int, int]) -> torch.Tensor:
    """Nearest-neighbour resize of an ``H x W`` mask to ``size`` (int = square); returns bool [h, w]."""
    t = torch.as_tensor(np.asarray(mask) if not isinstance(mask, torch.Tensor) else mask)
    if isinstance(size, int):
        size = (size, size)
    if tuple(t.shape) == tuple(size):
        return t.bool()
    r = F.interpolate(t.float()[None, None], size=size, mode="nearest-exact")
    return r[0, 0] > 0.5


def masks_to_tensor(masks: list[np.ndarray | torch.Tensor | None], size: int | tuple[int, int]) -> torch.Tensor:
    """Stack per-image masks (None = unpainted) into a bool [B, 1, h, w] tensor at ``size``."""
    if isinstance(size, int):
        size = (size, size)
    out = torch.zeros(len(masks), 1, *size, dtype=torch.bool)
    for i, m in enumerate(masks):
        if m is not None:
            out[i, 0] = resize_mask(m, size)
    return out
