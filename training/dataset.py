"""Task images + spurious masks, resized to the model input, per split: in memory, or streamed from the
on-disk image cache when the split is larger than the job's memory budget.

Images are resized exactly as the backend does for predictions (``training.images.resize_rgb``:
PIL bilinear to ``size x size``), masks with nearest-neighbour (``resize_mask``). A split in memory is
kept as uint8/bool tensors (3 bytes + 1 byte per pixel; 10k images at 224 px take ~2 GB); batches are
sliced from these tensors and moved to the device as a whole, with no per-sample Python work (the fast
path of small jobs). With an ``ImageCache`` (``training.image_cache``: the worker's), images are fetched
into the cache first (a second job re-fetches only new or changed images) and a split that does not fit
``memory_budget`` stays on disk: its ``images`` are a ``training.loader.CachedImages``, its masks
bit-packed (``PackedMasks``), and its batches come from a ``DataLoader`` (``training.loader``).
"""

from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Iterator

import numpy as np
import torch
from torch.utils.data import Dataset

from label_config.export import TRAIN_SPLIT, ExportResult, TaskRecord
from training.image_cache import Entry, ImageCache, VersionedSource, read_pixels, unversioned
from training.images import ImageError, ImageSource, resize_mask, resize_rgb
from training.loader import CachedImages, PackedMasks, stream_batches
from training.progress import Progress

log = logging.getLogger(__name__)


class PairedDataset(Dataset):
    """Images (uint8 [N,3,S,S]), masks (bool [N,1,S,S]), targets, painted flags and mask weights.

    ``images``/``masks`` are tensors (in memory) or, for a streamed split, ``CachedImages``/``PackedMasks``
    that index the same way. ``mask_weight`` (float32 [N]): how much each image's painted mask counts in
    the paired step; default 1.0 where painted, 0 elsewhere.

    ``dataset[i]`` -> ``(image float [3,S,S] in [0,1], mask bool [1,S,S], target int, painted bool)``.
    """

    def __init__(self, images, masks, targets: torch.Tensor, task_ids: list,
                 mask_weight: torch.Tensor | None = None) -> None:
        n = images.shape[0]
        if masks.shape[0] != n or targets.shape[0] != n or len(task_ids) != n:
            raise ValueError("images, masks, targets and task_ids must have the same length")
        self.images = images
        self.masks = masks
        self.targets = targets
        self.task_ids = list(task_ids)
        if isinstance(masks, PackedMasks):
            self.painted = masks.painted()
        else:
            self.painted = masks.reshape(n, -1).any(dim=1) if n else torch.zeros(0, dtype=torch.bool, device=masks.device)
        if mask_weight is None:
            mask_weight = self.painted.float()
        if mask_weight.shape != (n,):
            raise ValueError(f"mask_weight must have shape ({n},), got {tuple(mask_weight.shape)}")
        self.mask_weight = mask_weight.to(torch.float32)

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

    @property
    def streaming(self) -> bool:
        """The images stay in the on-disk cache (batches come from a DataLoader)."""
        return isinstance(self.images, CachedImages)

    def batches(
        self,
        batch_size: int,
        device: str | torch.device = "cpu",
        shuffle: bool = False,
        generator: torch.Generator | None = None,
        order: torch.Tensor | None = None,
        weights: bool = False,
        workers: int = 2,
    ) -> Iterator[tuple[torch.Tensor, ...]]:
        """Yield ``(images float [0,1], masks bool, targets long)`` batches on ``device`` (``weights``: and
        the ``mask_weight`` of each sample, float32).

        ``order``: the indices to visit, in order (e.g. a torchrun shard); else all, shuffled with
        ``generator`` (a CPU generator) when ``shuffle``. When the dataset already lives on the device
        (``to``), batches are gathered there without host copies. A streamed split is read by a
        ``DataLoader`` with ``workers`` processes; the batches are the same as in memory.
        """
        n = len(self)
        if order is None:
            order = torch.randperm(n, generator=generator) if shuffle else torch.arange(n)
        target = torch.device(device)
        if self.streaming:
            for x, m, y, w in stream_batches(self.images, self.masks, self.targets, self.mask_weight, order,
                                             batch_size, target, workers):
                yield (x, m, y, w) if weights else (x, m, y)
            return
        resident = self.images.device.type == target.type and target.type != "cpu"
        pin = target.type == "cuda" and not resident
        for idx in order.split(batch_size):
            if resident:
                idx = idx.to(self.images.device)
            x, m, y, w = self.images[idx], self.masks[idx], self.targets[idx], self.mask_weight[idx]
            if pin:
                x, m, y, w = x.pin_memory(), m.pin_memory(), y.pin_memory(), w.pin_memory()
            x = x.to(target, non_blocking=True).float().div_(255.0)
            m, y, w = m.to(target, non_blocking=True), y.to(target, non_blocking=True), w.to(target, non_blocking=True)
            yield (x, m, y, w) if weights else (x, m, y)

    def nbytes(self) -> int:
        """Bytes held in memory (a streamed split: its packed masks and targets only)."""
        images = 0 if self.streaming else self.images.nbytes
        return images + self.masks.nbytes + self.targets.nbytes

    def to(self, device: str | torch.device) -> "PairedDataset":
        """The same data on ``device`` (e.g. the whole training split on the GPU when it fits); a streamed
        split stays where it is."""
        if self.streaming:
            return self
        return PairedDataset(self.images.to(device), self.masks.to(device), self.targets.to(device), self.task_ids,
                             self.mask_weight.to(device))

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
    cache: ImageCache | None = None,
    source: VersionedSource | None = None,
    memory_budget: int | None = None,
    progress: Progress | None = None,
    stats: dict | None = None,
) -> dict[str, PairedDataset]:
    """Load every record's image (threads), resize image and mask, group by split.

    Without ``cache`` every split is held in memory. With one, images go through the cache (fetched with
    ``source``, default ``load_image`` without version keys) and splits are kept in memory while they fit
    ``memory_budget`` bytes together (the training split first; None: no limit), the rest streamed from
    the cache. ``stats`` (a dict, filled in): per split ``memory`` or ``stream``, and the cache counts.

    Records whose image cannot be fetched/decoded or whose mask does not match the image size are
    skipped (logged, added to ``export.skipped`` and removed from ``export.records``).
    """
    if cache is not None:
        return _load_cached(export, cache, source or unversioned(load_image), image_size, classes, num_workers,
                            memory_budget, progress, stats if stats is not None else {})
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
    if stats is not None:
        stats.update({s: "memory" for s in splits})
    _log_splits(splits, image_size)
    return splits


def _log_splits(splits: dict[str, PairedDataset], image_size: int) -> None:
    log.info(
        "images loaded at %dpx: %s",
        image_size,
        ", ".join(f"{s}={len(d)} ({d.n_painted} painted, {'streamed' if d.streaming else 'in memory'})"
                  for s, d in sorted(splits.items())),
    )


def _checked(record: TaskRecord, got: Entry | ImageError, size: int) -> tuple[str | None, str | None, np.ndarray | None]:
    """``(skip reason, error, resized mask)`` of a record whose image went through the cache."""
    if isinstance(got, ImageError):
        return "image_error", str(got), None
    if record.mask is None:
        return None, None, None
    h, w = record.mask.shape
    if (w, h) != got.original_size:
        return "mask_size", f"painted mask is {w}x{h} but the image is {got.original_size[0]}x{got.original_size[1]}", None
    return None, None, resize_mask(record.mask, size)


def _in_memory(paths: list[str], masks: dict[int, np.ndarray], size: int) -> tuple[torch.Tensor, torch.Tensor]:
    images = torch.empty(len(paths), 3, size, size, dtype=torch.uint8)
    dense = torch.zeros(len(paths), 1, size, size, dtype=torch.bool)
    for i, path in enumerate(paths):
        images[i] = torch.from_numpy(read_pixels(path, size))
    for i, m in masks.items():
        dense[i, 0] = torch.from_numpy(m)
    return images, dense


def _load_cached(export: ExportResult, cache: ImageCache, source: VersionedSource, size: int, classes: list[str],
                 workers: int, memory_budget: int | None, progress: Progress | None, stats: dict) -> dict[str, PairedDataset]:
    class_index = {c: i for i, c in enumerate(classes)}
    records = export.records
    got = cache.fill([r.image_url for r in records], size, source, workers, progress)
    fetched = sum(isinstance(g, Entry) and g.fetched for g in got.values())
    stats["cache"] = {"dir": str(cache.root), "images": len(got), "fetched": fetched,
                      "cached": sum(isinstance(g, Entry) and not g.fetched for g in got.values())}
    by_split: dict[str, list[tuple[TaskRecord, str, np.ndarray | None]]] = {}
    kept: list[TaskRecord] = []
    for record in records:
        g = got[record.image_url]
        reason, error, mask = _checked(record, g, size)
        if reason is not None:
            export.skip(reason, record.task_id, error)
            continue
        kept.append(record)
        by_split.setdefault(record.split, []).append((record, str(g.path), mask))
    export.records = kept
    splits: dict[str, PairedDataset] = {}
    left = memory_budget if memory_budget is not None else float("inf")
    for split in sorted(by_split, key=lambda s: (s != TRAIN_SPLIT, s)):
        items = by_split[split]
        paths = [path for _, path, _ in items]
        masks = {i: m for i, (_, _, m) in enumerate(items) if m is not None}
        targets = torch.tensor([class_index[r.target] for r, _, _ in items], dtype=torch.long)
        ids = [r.task_id for r, _, _ in items]
        need = len(items) * 4 * size * size  # uint8 RGB + bool mask per pixel
        if need <= left:
            left -= need
            images, dense = _in_memory(paths, masks, size)
            splits[split] = PairedDataset(images, dense, targets, ids)
        else:
            splits[split] = PairedDataset(CachedImages(paths, size), PackedMasks(masks, len(items), size), targets, ids)
        stats[split] = "stream" if splits[split].streaming else "memory"
    _log_splits(splits, size)
    log.info("image cache %s: %d of %d images fetched, the rest unchanged", cache.root, fetched, len(got))
    return splits
