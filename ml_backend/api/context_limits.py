"""Bounded work for an interactive ``/predict``: the expert's marks in ``params.context.result[]`` are
checked before any part runs (``ml_backend.predict.mask_proposals`` decodes brush strokes at their declared
size, then makes a float copy: a 14 KB RLE that declares 8192 x 8192 cost +320 MiB).

- at most ``MAX_CONTEXT_MARKS`` marks (keypoints, rectangles, strokes; 100,000 rectangles took 47 s);
- every brush stroke's ``original_width`` x ``original_height`` at most ``MAX_MASK_PIXELS``, and all
  strokes together too (the decoded size is what costs, not the RLE's length).

Over a cap: 413 naming the field; a declared size that is not a positive integer: 400.
"""

from __future__ import annotations

from typing import Any

from ml_backend.api.validation import PayloadError


def _dimension(mark: dict, field: str, where: str) -> int | None:
    value = mark.get(field)
    if value is None:
        return None  # the part uses the image's decoded size
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value != int(value) or value < 1:
        raise PayloadError(f"{where}.{field} must be a positive integer, got {str(value)[:40]!r}")
    return int(value)


def validate_context(context: dict | None, max_marks: int, max_mask_pixels: int) -> None:
    """Refuse a context whose marks would cost more than the caps (see the module docstring)."""
    if not context:
        return
    marks: Any = context.get("result")
    if marks is None:
        return
    if not isinstance(marks, list):
        raise PayloadError(f"'params.context.result' must be a list of marks, got {type(marks).__name__}")
    if max_marks and len(marks) > max_marks:
        raise PayloadError(f"'params.context.result': {len(marks)} marks in one request, at most {max_marks} "
                           "(MAX_CONTEXT_MARKS)", 413)
    total = 0
    for i, mark in enumerate(marks):
        if not isinstance(mark, dict) or mark.get("type") != "brushlabels":
            continue
        where = f"params.context.result[{i}]"
        width, height = _dimension(mark, "original_width", where), _dimension(mark, "original_height", where)
        if (width is None) != (height is None):
            raise PayloadError(f"{where}: original_width and original_height go together")
        pixels = width * height if width and height else 0
        if max_mask_pixels and pixels > max_mask_pixels:
            raise PayloadError(f"{where}: a brush mask of {width} x {height} pixels is more than {max_mask_pixels} "
                               "(MAX_MASK_PIXELS)", 413)
        total += pixels
        if max_mask_pixels and total > max_mask_pixels:
            raise PayloadError(f"params.context.result: the brush masks declare {total} pixels together, more than "
                               f"{max_mask_pixels} (MAX_MASK_PIXELS)", 413)
