"""Task images + spurious masks, resized to the model input and cached in memory, per split.

Images are resized exactly as the backend does for predictions (``training.images.resize_rgb``:
PIL bilinear to ``size x size``), masks with nearest-neighbour (``resize_mask``). Everything is kept as uint8/bool
tensors (3 bytes + 1 byte per pixel), so a split of 10k images at 224 px takes ~2 GB; batches are
sliced from these tensors and moved to the device as a whole, with no per-sample Python work.
"""

from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Iterator

import numpy as np
import torch
from torch.utils.data import Dataset

from label_config.export import ExportResult, TaskRecord
from training.images import ImageError, ImageSource, resize_mask, resize_rgb

log = logging.getLogger(__name__)


class PairedDataset(Dataset):
    """In-memory images (uint8 [N,3,S,S]), masks (bool [N,1,S,S]), targets and painted flags.

    ``dataset[i]`` -> ``(image float [3,S,S] in [0,1], mask bool [1,S,S], target int, painted bool)``.
    """

    def __init__(self, images: torch.Tensor, masks: torch.Tensor, targets: torch.Tensor, task_ids: list) -> None:
        n = images.shape[0]
        if masks.shape[0] != n or targets.shape[0] != n or len(task_ids) != n:
            raise ValueError("images, masks, targets and task_ids must have the same length")
        self.images = images
        self.masks = masks
        self.targets = targets
        self.task_ids = list(task_ids)
        self.painted = masks.reshape(n, -1).any(dim=1) if n else torch.zeros(0, dtype=torch.bool, device=masks.device)

    def __len__(self) -> int:
        return self.images.shape[0]

    def __getitem__(self, i: int):
        return self.images[i].float().div(255.0), self.masks[i], int(self.targets[i]), bool(self.painted[i])

    @property
    def image_size(self) -> int:
        return int(self.images.shape[-1])

    @property
    def n_painted(self) -> int:
        return int(self.painted.sum())

    def batches(
        self,
        batch_size: int,
        device: str | torch.device = "cpu",
        shuffle: bool = False,
        generator: torch.Generator | None = None,
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        """Yield ``(images float [0,1], masks bool, targets long)`` batches on ``device``.

        The order is drawn on the CPU (``generator`` is a CPU generator); when the dataset already
        lives on the device (``to``), batches are gathered there without host copies.
        """
        n = len(self)
        order = torch.randperm(n, generator=generator) if shuffle else torch.arange(n)
        target = torch.device(device)
        resident = self.images.device.type == target.type and target.type != "cpu"
        pin = target.type == "cuda" and not resident
        for idx in order.split(batch_size):
            if resident:
                idx = idx.to(self.images.device)
            x, m, y = self.images[idx], self.masks[idx], self.targets[idx]
            if pin:
                x, m, y = x.pin_memory(), m.pin_memory(), y.pin_memory()
            x = x.to(target, non_blocking=True).float().div_(255.0)
            yield x, m.to(target, non_blocking=True), y.to(target, non_blocking=True)

    def nbytes(self) -> int:
        return self.images.nbytes + self.masks.nbytes + self.targets.nbytes

    def to(self, device: str | torch.device) -> "PairedDataset":
        """The same data on ``device`` (e.g. the whole training split on the GPU when it fits)."""
        return PairedDataset(self.images.to(device), self.masks.to(device), self.targets.to(device), self.task_ids)

    @classmethod
    def empty(cls, size: int) -> "PairedDataset":
        return cls(
            torch.zeros(0, 3, size, size, dtype=torch.uint8),
            torch.zeros(0, 1, size, size, dtype=torch.bool),
            torch.zeros(0, dtype=torch.long),
            [],
        )


@dataclass
class _Loaded:
    record: TaskRecord
    image: np.ndarray | None = None  # uint8 S x S x 3
    mask: np.ndarray | None = None  # bool S x S
    error: str | None = None
    reason: str | None = None


def _load_one(record: TaskRecord, load_image: ImageSource, size: int) -> _Loaded:
    try:
        img = load_image(record.image_url)
    except ImageError as e:
        return _Loaded(record, error=str(e), reason="image_error")
    except Exception as e:  # never let one task's image fail the job
        return _Loaded(record, error=f"{type(e).__name__}: {e}", reason="image_error")
    mask = None
    if record.mask is not None:
        h, w = record.mask.shape
        if (w, h) != img.size:
            return _Loaded(
                record,
                error=f"painted mask is {w}x{h} but the image is {img.size[0]}x{img.size[1]}",
                reason="mask_size",
            )
        mask = resize_mask(record.mask, size)
    return _Loaded(record, image=resize_rgb(img, size), mask=mask)


def load_splits(
    export: ExportResult,
    load_image: ImageSource,
    image_size: int,
    classes: list[str],
    num_workers: int = 8,
) -> dict[str, PairedDataset]:
    """Load every record's image with ``load_image`` (threads), resize image and mask, group by split.

    Records whose image cannot be fetched/decoded or whose mask does not match the image size are
    skipped (logged, added to ``export.skipped`` and removed from ``export.records``).
    """
    class_index = {c: i for i, c in enumerate(classes)}
    records = export.records
    if not records:
        return {}
    workers = max(1, min(num_workers, len(records)))
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="fetch") as pool:
        loaded = list(pool.map(_load_one, records, [load_image] * len(records), [image_size] * len(records)))
    by_split: dict[str, list[_Loaded]] = {}
    kept: list[TaskRecord] = []
    for item in loaded:
        if item.error is not None:
            export.skip(item.reason or "image_error", item.record.task_id, item.error)
            continue
        kept.append(item.record)
        by_split.setdefault(item.record.split, []).append(item)
    export.records = kept
    splits: dict[str, PairedDataset] = {}
    blank = np.zeros((image_size, image_size), dtype=bool)
    for split, items in by_split.items():
        images = torch.from_numpy(np.stack([it.image for it in items])).permute(0, 3, 1, 2).contiguous()
        masks = torch.from_numpy(np.stack([it.mask if it.mask is not None else blank for it in items])).unsqueeze(1)
        targets = torch.tensor([class_index[it.record.target] for it in items], dtype=torch.long)
        splits[split] = PairedDataset(images, masks, targets, [it.record.task_id for it in items])
    log.info(
        "images loaded at %dpx: %s",
        image_size,
        ", ".join(f"{s}={len(d)} ({d.n_painted} painted)" for s, d in sorted(splits.items())),
    )
    return splits
