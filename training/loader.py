"""The streaming data path: a split read from the image cache by a standard PyTorch ``DataLoader``.

``CachedImages`` stands in for the in-memory ``uint8 [N, 3, S, S]`` tensor of a ``PairedDataset``: it
indexes like one (``images[i]``, ``images[a:b]``, ``images[index_tensor]``) but reads the cache files
(``training.image_cache``) on demand. ``PackedMasks`` holds the painted masks only, one bit per pixel
(unpainted images cost nothing), and indexes like the ``bool [N, 1, S, S]`` mask tensor.

``stream_batches`` is the training loop's data path for such a split: a ``DataLoader`` over a given
index order (a plain sequence as its sampler: the caller decides the order, e.g. a shuffled permutation
or a torchrun shard), ``num_workers`` worker processes decoding nothing (the cache holds pixels), pinned
memory on CUDA; only a few batches are ever in memory.
"""

from __future__ import annotations

from typing import Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from training.accel import persistent_workers
from training.image_cache import read_pixels


def _indices(idx, n: int) -> list[int]:
    if isinstance(idx, slice):
        return list(range(n))[idx]
    if isinstance(idx, torch.Tensor):
        return idx.tolist()
    return [int(i) for i in idx]


class CachedImages:
    """``uint8 [N, 3, S, S]`` images read from cache files on demand (``images[i]`` -> ``[3, S, S]``)."""

    def __init__(self, paths: Sequence[str], size: int) -> None:
        self.paths = [str(p) for p in paths]
        self.size = int(size)
        self.dtype = torch.uint8
        self.device = torch.device("cpu")

    def __len__(self) -> int:
        return len(self.paths)

    @property
    def shape(self) -> torch.Size:
        return torch.Size((len(self.paths), 3, self.size, self.size))

    @property
    def nbytes(self) -> int:
        """Bytes the split would take in memory (it takes none)."""
        return len(self.paths) * 3 * self.size * self.size

    def read(self, i: int) -> torch.Tensor:
        return torch.from_numpy(read_pixels(self.paths[i], self.size))

    def __getitem__(self, idx) -> torch.Tensor:
        if isinstance(idx, (int, np.integer)) or (isinstance(idx, torch.Tensor) and idx.ndim == 0):
            return self.read(int(idx))
        items = [self.read(i) for i in _indices(idx, len(self))]
        return torch.stack(items) if items else torch.zeros(0, 3, self.size, self.size, dtype=torch.uint8)


class PackedMasks:
    """Painted masks only, bit-packed: indexes like a ``bool [N, 1, S, S]`` tensor."""

    def __init__(self, masks: dict[int, np.ndarray], n: int, size: int) -> None:
        self.size, self.n = int(size), int(n)
        self.slot = torch.full((n,), -1, dtype=torch.long)
        painted = sorted(i for i, m in masks.items() if m.any())
        self.packed = np.stack([np.packbits(masks[i].reshape(-1)) for i in painted]) if painted else \
            np.zeros((0, (size * size + 7) // 8), dtype=np.uint8)
        self.slot[painted] = torch.arange(len(painted))
        self.dtype = torch.bool
        self.device = torch.device("cpu")

    def __len__(self) -> int:
        return self.n

    @property
    def shape(self) -> torch.Size:
        return torch.Size((self.n, 1, self.size, self.size))

    @property
    def nbytes(self) -> int:
        return self.packed.nbytes + self.slot.nbytes

    def painted(self) -> torch.Tensor:
        return self.slot >= 0

    def read(self, i: int) -> torch.Tensor:
        s = int(self.slot[i])
        if s < 0:
            return torch.zeros(1, self.size, self.size, dtype=torch.bool)
        bits = np.unpackbits(self.packed[s], count=self.size * self.size)
        return torch.from_numpy(bits.astype(bool)).view(1, self.size, self.size)

    def __getitem__(self, idx) -> torch.Tensor:
        if isinstance(idx, (int, np.integer)) or (isinstance(idx, torch.Tensor) and idx.ndim == 0):
            return self.read(int(idx))
        items = [self.read(i) for i in _indices(idx, self.n)]
        return torch.stack(items) if items else torch.zeros(0, 1, self.size, self.size, dtype=torch.bool)


class _Samples(Dataset):
    """``(image uint8 [3,S,S], mask bool [1,S,S], target, weight)`` per index: what the DataLoader reads."""

    def __init__(self, images, masks, targets: torch.Tensor, weights: torch.Tensor) -> None:
        self.images, self.masks, self.targets, self.weights = images, masks, targets, weights

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, i: int):
        return self.images[i], self.masks[i], self.targets[i], self.weights[i]


class _EpochOrder(Sampler):
    """The indices of the current epoch, set before each pass (a persistent loader's sampler)."""

    def __init__(self) -> None:
        self.order: list[int] = []

    def __iter__(self):
        return iter(self.order)

    def __len__(self) -> int:
        return len(self.order)


def _persistent_loader(images, masks, targets, weights, batch_size: int, workers: int, pin: bool
                       ) -> tuple[_EpochOrder, DataLoader]:
    """One ``DataLoader`` per split, batch size and worker count, its workers alive across epochs (kept on
    the ``images`` object: they end with the split)."""
    loaders = images.__dict__.setdefault("_persistent_loaders", {})
    key = (batch_size, workers, pin, id(masks), id(targets), id(weights))
    if key not in loaders:
        sampler = _EpochOrder()
        loaders[key] = (sampler, DataLoader(_Samples(images, masks, targets.cpu(), weights.cpu()),
                                            batch_size=batch_size, sampler=sampler, num_workers=workers,
                                            pin_memory=pin, prefetch_factor=2, persistent_workers=True))
    return loaders[key]


def release_persistent_loaders(images) -> None:
    """Stop the worker processes the split ``images`` keeps for its persistent loaders (a forked worker
    holds copies of the parent's file descriptors: pipes to other processes stay open while it lives)."""
    for _, loader in getattr(images, "__dict__", {}).pop("_persistent_loaders", {}).values():
        iterator = getattr(loader, "_iterator", None)
        if iterator is not None and hasattr(iterator, "_shutdown_workers"):
            iterator._shutdown_workers()


def stream_batches(images, masks, targets: torch.Tensor, weights: torch.Tensor, order: torch.Tensor,
                   batch_size: int, device: torch.device, workers: int = 2, persistent: bool | None = None,
                   ) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]]:
    """``(x float [0,1], m bool, y long, w float)`` batches on ``device``, in ``order``, read by a
    ``DataLoader`` (``workers`` processes; 0: in this process; pinned memory on CUDA). ``persistent``
    (default: on CUDA, ``training.accel.persistent_workers``): the split's workers outlive the epoch, the
    next epoch's order is handed to the same loader."""
    cuda = device.type == "cuda"
    if persistent is None:
        persistent = persistent_workers(device, workers)
    if persistent and workers > 0:
        sampler, loader = _persistent_loader(images, masks, targets, weights, batch_size, workers, cuda)
        sampler.order = order.tolist()
    else:
        loader = DataLoader(_Samples(images, masks, targets.cpu(), weights.cpu()), batch_size=batch_size,
                            sampler=order.tolist(), num_workers=workers, pin_memory=cuda,
                            prefetch_factor=2 if workers else None)
    for x, m, y, w in loader:
        yield (x.to(device, non_blocking=True).float().div_(255.0), m.to(device, non_blocking=True),
               y.to(device, non_blocking=True), w.to(device, non_blocking=True))
