"""How much of a model's attention falls on the pixels the expert marked spurious: the report's one number
for the product's purpose ("the model stopped looking at the shortcut", measured).

For an image with a spurious mask ``M`` (painted, or a propagated proposal the job trained with) and the
model's saliency map ``s`` for its predicted class at the model's input size (``training.saliency``, the
method the backend shows), the **attention-on-spurious share** is ``Σ_{p∈M} s(p) / Σ_p s(p)``: 1 when the
model looks only at the marked pixels, the mask's area share when it looks everywhere alike. The report
gives its mean over the images of each (true) class and over all of them, for the parent and the new
version, beside the mean area share (what uniform attention would score).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from training.dataset import PairedDataset
from training.images import normalize, resize_batch
from training.saliency import attribution_copy, saliency_maps

MAX_IMAGES = 256  # images with a mask the share is measured on, at most (evenly spaced over the split)
BATCH = 32


@dataclass
class Looker:
    """A model as the report looks through it: a frozen copy, its normalisation and input size, a method."""

    model: nn.Module
    mean: Sequence[float]
    std: Sequence[float]
    image_size: int
    method: str
    device: str | torch.device = "cpu"

    @classmethod
    def of(cls, model: nn.Module, mean: Sequence[float], std: Sequence[float], image_size: int, method: str,
           device: str | torch.device = "cpu") -> "Looker":
        return cls(attribution_copy(model).to(device), tuple(mean), tuple(std), int(image_size), method, device)

    def inputs(self, x: torch.Tensor) -> torch.Tensor:
        """A [0, 1] batch as this model's input: on its device, at its size, normalised."""
        return normalize(resize_batch(x.to(self.device), self.image_size), self.mean, self.std)

    def probabilities(self, x: torch.Tensor) -> torch.Tensor:
        """Class probabilities (N x C, on the CPU) of a [0, 1] batch."""
        with torch.no_grad():
            return self.model(self.inputs(x)).float().softmax(1).cpu()

    def look(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(probabilities N x C, saliency N x S x S)`` of a [0, 1] batch ``x`` at its own size ``S``, for each
        image's predicted class (the batch is resized to the model's size and the maps back)."""
        size = x.shape[-1]
        xin = self.inputs(x)
        with torch.no_grad():
            probs = self.model(xin).float().softmax(1)
        baseline = normalize(torch.zeros(1, 3, 1, 1, device=xin.device), self.mean, self.std)
        sal = saliency_maps(self.model, xin, probs.argmax(1), self.method, baseline=baseline)
        if sal.shape[-1] != size:
            sal = F.interpolate(sal[:, None], size=(size, size), mode="bilinear", align_corners=False)[:, 0]
        return probs.cpu(), sal.cpu()


def spurious_share(saliency: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """Per image, the share of the saliency mass (``N x H x W``, non-negative) inside ``masks`` (bool, same
    shape; a leading channel of 1 is dropped); NaN where a map is all zero."""
    s = saliency.float().clamp_min(0).flatten(1)
    m = masks.reshape(s.shape).float()
    total = s.sum(1)
    return torch.where(total > 0, (s * m).sum(1) / total.clamp_min(1e-30), torch.full_like(total, float("nan")))


def evenly(indices: torch.Tensor, most: int) -> torch.Tensor:
    """At most ``most`` of ``indices``, evenly spaced (deterministic)."""
    if indices.numel() <= most:
        return indices
    return indices[torch.linspace(0, indices.numel() - 1, most).round().long().unique()]


def shares(lookers: dict[str, Looker], dataset: PairedDataset, indices: torch.Tensor) -> dict[str, torch.Tensor]:
    """Each looker's per-image share on ``dataset[indices]``, and the masks' ``area`` share."""
    out: dict[str, list[torch.Tensor]] = {name: [] for name in [*lookers, "area"]}
    for x, m, _ in dataset.batches(BATCH, "cpu", order=indices):
        out["area"].append(m.flatten(1).float().mean(1))
        for name, looker in lookers.items():
            out[name].append(spurious_share(looker.look(x)[1], m[:, 0]))
    return {k: torch.cat(v) if v else torch.zeros(0) for k, v in out.items()}


def _mean(values: torch.Tensor) -> float | None:
    values = values[~values.isnan()]
    return round(float(values.mean()), 4) if values.numel() else None


def table(per_image: dict[str, torch.Tensor], targets: torch.Tensor, classes: list[str]) -> dict[str, Any]:
    """``{"classes": {name: row}, "overall": row}``, a row: the mean share of each looker (``before``,
    ``after``), the mean mask ``area`` and the number of ``images``; classes without a masked image left out."""
    def row(keep: torch.Tensor) -> dict[str, Any]:
        return {**{k: _mean(v[keep]) for k, v in per_image.items()}, "images": int(keep.sum())}

    rows = {name: row(targets == ci) for ci, name in enumerate(classes) if bool((targets == ci).any())}
    return {"classes": rows, "overall": row(torch.ones_like(targets, dtype=torch.bool))}


def attention_on_spurious(before: Looker | None, after: Looker, train: PairedDataset, painted: torch.Tensor,
                          classes: list[str], most: int = MAX_IMAGES) -> dict[str, Any]:
    """The attention-on-spurious share of the parent (``before``; None: not comparable) and the new model
    (``after``) on the training images with a mask (``train``'s masks: painted, or proposals trained with;
    ``painted``: which the expert painted), per class and overall."""
    masked = train.painted.cpu()  # any mask: painted or proposed
    idx = evenly(masked.nonzero().squeeze(1), most)
    info: dict[str, Any] = {"method": after.method, "target": "predicted class", "split": "train",
                            "masked": int(masked.sum()), "measured": int(idx.numel()),
                            "painted": int(painted.cpu()[idx].sum()) if idx.numel() else 0}
    if not idx.numel():
        return {**info, "note": "no training image has a painted or proposed spurious mask", "classes": {},
                "overall": None}
    lookers = {"after": after} if before is None else {"before": before, "after": after}
    per_image = shares(lookers, train, idx)
    return {**info, **table(per_image, train.targets.cpu()[idx], classes)}
