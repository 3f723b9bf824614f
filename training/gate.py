"""The publish gate: a new version is held back when it got worse on the validation split.

Only the ``val`` split decides (``label_config.export.VAL_SPLIT``: tasks with ``data.split == "val"``,
imported from ``val/<class>/`` or set aside from the test split by ``robustar import``). The test split
is reported, never used to decide: a split that selects is no longer held-out. A project without a
val split is not gated, and the job result, the model card and the report page say so.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from label_config.export import TEST_SPLIT, VAL_SPLIT

NO_VAL = f"not gated: the project has no {VAL_SPLIT} split (tasks with data.split = {VAL_SPLIT!r})"


@dataclass
class GateDecision:
    """``held_back``: why the version is not published (None: publish); ``note``: what the gate did."""

    held_back: str | None
    note: str
    split: str | None  # the split that decided (None: nothing decided)

    def to_dict(self) -> dict[str, Any]:
        return {"split": self.split, "note": self.note, "held_back": self.held_back}


def _accuracy(metrics: dict[str, Any], split: str) -> tuple[float | None, int]:
    m = metrics.get(split)
    if not isinstance(m, dict):
        return None, 0
    return m.get("accuracy"), int(m.get("n") or 0)


def regression(new: dict[str, Any], parent: dict[str, Any], max_drop: float, split: str = VAL_SPLIT) -> str | None:
    """Why a new version must not be published (None: publish): its accuracy on ``split`` (val) fell
    below its parent's by more than ``max_drop`` and more than the split's size can explain (1/√n, about
    two binomial standard deviations at 50%, so a handful of val images never blocks a version)."""
    acc, n = _accuracy(new, split)
    old, _ = _accuracy(parent, split)
    if acc is None or old is None or not n:
        return None
    allowed = max(max_drop, 1.0 / math.sqrt(n))
    drop = old - acc
    if drop <= allowed:
        return None
    return (f"{split} accuracy {acc:.3f} is {drop:.3f} below the parent's {old:.3f} "
            f"(allowed {allowed:.3f}: TRAIN_MAX_REGRESSION {max_drop:g}, 1/sqrt({n}) {split} images)")


def gate(new: dict[str, Any], parent: dict[str, Any], max_drop: float) -> GateDecision:
    """The gate's decision on the val split, with a note saying what was compared (or why nothing was)."""
    acc, n = _accuracy(new, VAL_SPLIT)
    if acc is None or not n:
        return GateDecision(None, NO_VAL, None)
    if math.isinf(max_drop):
        return GateDecision(None, "not gated: TRAIN_MAX_REGRESSION is inf", None)
    old, _ = _accuracy(parent, VAL_SPLIT)
    if old is None:
        why = parent.get("note") if isinstance(parent.get("note"), str) else "the parent has no val accuracy"
        return GateDecision(None, f"not gated: {why}", None)
    held = regression(new, parent, max_drop, VAL_SPLIT)
    note = (f"gated on {VAL_SPLIT} ({n} images): {old:.3f} -> {acc:.3f}; "
            f"{'held back' if held else 'published'}; {TEST_SPLIT} is reported, not used to decide")
    return GateDecision(held, note, VAL_SPLIT)


def decisions(decision, history: dict[str, Any]) -> dict[str, Any]:
    """Which split decided what (the job result, the model card and the report page show it): the
    publish gate and the kept epoch on val; test is only reported. The suspicion ranking is added by
    the job when it builds the influence index."""
    return {"gate": decision.to_dict(), "epoch": history.get("selection"), "reported": TEST_SPLIT}
