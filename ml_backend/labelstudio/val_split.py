"""The validation split of an imported dataset: ``val/<class>/`` when the dataset has one, else a
stratified part of the test split set aside (and said so).

Val decides (the publish gate, the kept epoch, the suspicion ranking: ``training.gate``,
``training.best_epoch``); test is only reported. Which test images become val is a pure function of
their keys (a hash order per class), so a resumed or repeated import sets the same images aside.
"""

from __future__ import annotations

import hashlib
from collections import defaultdict
from typing import Protocol

VAL_FRACTION = 0.3  # of each class's test images, when the dataset has no val/ folder


class _Item(Protocol):
    key: str
    split: str
    label: str


def _order(key: str) -> str:
    return hashlib.sha1(key.encode()).hexdigest()


def set_aside_val(items: list[_Item], fraction: float = VAL_FRACTION) -> tuple[int, str]:
    """Give ``items`` a val split: ``(n_val, how)``. With val items already (a ``val/`` folder) nothing
    changes; else ``fraction`` of each class's test items (at least one, and at least one left in test,
    for a class with two or more) get ``split = "val"`` in place. ``fraction`` 0: no val split."""
    n_val = sum(it.split == "val" for it in items)
    if n_val:
        return n_val, f"val: {n_val} images from the dataset's val/ folder"
    if fraction <= 0:
        return 0, "val: none (--val-fraction 0): training will not gate a version, and says so"
    by_class: dict[str, list[_Item]] = defaultdict(list)
    for it in items:
        if it.split == "test":
            by_class[it.label].append(it)
    for group in by_class.values():
        if len(group) < 2:
            continue
        k = min(len(group) - 1, max(1, round(fraction * len(group))))
        for it in sorted(group, key=lambda i: _order(i.key))[:k]:
            it.split = "val"
            n_val += 1
    if not n_val:
        return 0, "val: none (no val/ folder and too few test images to set any aside): training will not gate"
    n_test = sum(it.split == "test" for it in items)
    return n_val, (f"val: no val/ folder, so {n_val} test images ({fraction:.0%} of each class) were set aside "
                   f"as val (data.split = 'val'; they decide), {n_test} stay test (reported only)")
