"""What a new version changed on the test split: the images whose prediction it fixed (parent wrong, new
right) or broke (parent right, new wrong), a bounded few of each with a side-by-side PNG — the image, the
parent's heatmap, the new version's heatmap (``training.saliency``, each for its own predicted class) —
written beside the version's report (``runs/<version>/changes/{fixed,broken}-NN.png``).

Which are shown is deterministic: the largest changes of the true class's probability first (fixed: the
largest gains; broken: the largest losses), ties by position in the split.
"""

from __future__ import annotations

import io
import logging
import math
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from torch import nn

from label_config.export import TEST_SPLIT, TRAIN_SPLIT
from training.attention import BATCH, Looker, attention_on_spurious
from training.checkpoints import CheckpointMeta
from training.dataset import PairedDataset
from training.files import write_bytes_atomic
from training.saliency import overlay

log = logging.getLogger(__name__)

MAX_SHOWN = 12  # fixed and broken images with a picture, each at most
CHANGES_DIR = "changes"
FILE_NAME = re.compile(r"^(fixed|broken)-\d{2}\.png$")  # the only names the report serves from CHANGES_DIR
PANEL = (96, 192)  # a panel's side in the PNG: small images are enlarged to at least 96 px, large ones reduced to 192
GAP = 4


def select(targets: torch.Tensor, parent_probs: torch.Tensor, new_probs: torch.Tensor,
           most: int = MAX_SHOWN) -> dict[str, Any]:
    """``{"fixed": n, "broken": n, "shown": {"fixed": [index, ...], "broken": [...]}}``: how many test images
    each model change fixed or broke, and the (at most ``most``) indices shown, largest change first."""
    parent_pred, new_pred = parent_probs.argmax(1), new_probs.argmax(1)
    fixed = ((parent_pred != targets) & (new_pred == targets)).nonzero().squeeze(1).tolist()
    broken = ((parent_pred == targets) & (new_pred != targets)).nonzero().squeeze(1).tolist()
    rows = torch.arange(len(targets))
    gain = (new_probs[rows, targets] - parent_probs[rows, targets]).tolist()
    return {"fixed": len(fixed), "broken": len(broken),
            "shown": {"fixed": sorted(fixed, key=lambda i: (-gain[i], i))[:most],
                      "broken": sorted(broken, key=lambda i: (gain[i], i))[:most]}}


def _panel(rgb: np.ndarray) -> Image.Image:
    img = Image.fromarray(rgb, "RGB")
    side = img.width
    if side < PANEL[0]:
        return img.resize((side * math.ceil(PANEL[0] / side),) * 2, Image.NEAREST)
    if side > PANEL[1]:
        return img.resize((PANEL[1], PANEL[1]), Image.BILINEAR)
    return img


def side_by_side_png(rgb: np.ndarray, parent_map: np.ndarray, new_map: np.ndarray, alpha: float = 0.5) -> bytes:
    """A PNG of three panels: the image (``S x S x 3`` uint8), the parent's and the new model's heatmaps."""
    panels = [_panel(rgb), _panel(overlay(rgb, parent_map, alpha)), _panel(overlay(rgb, new_map, alpha))]
    side = panels[0].width
    out = Image.new("RGB", (3 * side + 2 * GAP, side), (255, 255, 255))
    for k, p in enumerate(panels):
        out.paste(p, (k * (side + GAP), 0))
    buf = io.BytesIO()
    out.save(buf, "PNG", optimize=False, compress_level=6)
    return buf.getvalue()


def what_changed(parent: Looker, new: Looker, test: PairedDataset, classes: list[str], run_dir: Path,
                 split: str = "test", most: int = MAX_SHOWN) -> dict[str, Any]:
    """Fixed and broken test images of ``new`` against ``parent``, the shown ones drawn into
    ``run_dir/changes/``; the summary's ``changes``."""
    if not len(test):
        return {"split": split, "method": new.method, "fixed": 0, "broken": 0, "shown": {"fixed": [], "broken": []}}
    probs: dict[str, list[torch.Tensor]] = {"parent": [], "new": []}
    for x, _, _ in test.batches(BATCH * 4, "cpu"):
        probs["parent"].append(parent.probabilities(x))
        probs["new"].append(new.probabilities(x))
    targets = test.targets.cpu()
    chosen = select(targets, torch.cat(probs["parent"]), torch.cat(probs["new"]), most)
    shown: dict[str, list[dict[str, Any]]] = {}
    for kind, indices in chosen["shown"].items():
        shown[kind] = _draw(kind, indices, parent, new, test, classes, run_dir)
    return {"split": split, "method": new.method, "fixed": chosen["fixed"], "broken": chosen["broken"],
            "shown": shown}


def _draw(kind: str, indices: list[int], parent: Looker, new: Looker, test: PairedDataset, classes: list[str],
          run_dir: Path) -> list[dict[str, Any]]:
    """Write the side-by-side PNG of each of ``indices``; their rows of the summary."""
    rows: list[dict[str, Any]] = []
    if not indices:
        return rows
    order = torch.tensor(indices)
    k = 0
    for x, _, y in test.batches(BATCH, "cpu", order=order):
        (pp, ps), (nprob, ns) = parent.look(x), new.look(x)
        rgb = (x.permute(0, 2, 3, 1) * 255).round().to(torch.uint8).numpy()
        for j in range(len(x)):
            name = f"{CHANGES_DIR}/{kind}-{k:02d}.png"
            write_bytes_atomic(run_dir / name, side_by_side_png(rgb[j], ps[j].numpy(), ns[j].numpy()))
            rows.append({"task": test.task_ids[indices[k]], "true": classes[int(y[j])],
                         "parent": classes[int(pp[j].argmax())], "new": classes[int(nprob[j].argmax())],
                         "image": name})
            k += 1
    return rows


def compare_versions(parent: tuple[nn.Module, CheckpointMeta] | None, new: Looker, splits: dict[str, PairedDataset],
                     train_fit: PairedDataset, classes: list[str], run_dir: Path) -> dict[str, Any]:
    """The summary's ``changes`` (fixed/broken test images, pictures in ``run_dir``) and ``attention`` (the
    attention-on-spurious share before/after on the training images with a mask: ``training.attention``).
    A parent with other classes is not compared (``changes`` None, ``attention`` of the new model only). A
    failure is logged and said in ``compare_error``, never raised: the report must not fail a published version."""
    pmodel, pmeta = parent if parent is not None else (None, None)
    out: dict[str, Any] = {"changes": None, "attention": None}
    try:
        before = None
        if pmeta is not None and list(pmeta.classes) == list(classes):
            before = Looker.of(pmodel, pmeta.mean, pmeta.std, pmeta.image_size, new.method, new.device)
        test = splits.get(TEST_SPLIT)
        if before is not None and test is not None:
            out["changes"] = what_changed(before, new, test, classes, run_dir, TEST_SPLIT)
        out["attention"] = attention_on_spurious(before, new, train_fit, splits[TRAIN_SPLIT].painted, classes)
    except Exception as e:
        log.warning("could not compare %s with its parent: %s", run_dir.name, e, exc_info=True)
        out["compare_error"] = str(e)[:300]
    return out
