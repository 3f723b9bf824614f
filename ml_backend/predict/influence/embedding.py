"""Last-layer gradient factors of a task: ``delta = softmax(logits) - onehot(label)`` and the head's input
``h`` (see ``ml_backend.predict.influence``), for images from a cached dataset or from task URLs."""

from __future__ import annotations

import copy
import logging
import numbers
import threading
import weakref
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Iterator, Sequence

import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from training.checkpoints import CheckpointMeta
from training.images import normalize, resize_batch, to_batch
from training.models import classifier_head

log = logging.getLogger(__name__)


def _clone_replacing(module: nn.Module, path: list[str], new: nn.Module) -> nn.Module:
    """A shallow copy of ``module`` whose submodule at ``path`` is ``new``; parameters stay shared."""
    clone = copy.copy(module)
    clone._modules = dict(module._modules)
    child = module._modules[path[0]]
    clone._modules[path[0]] = new if len(path) == 1 else _clone_replacing(child, path[1:], new)
    return clone


_BODIES: "weakref.WeakKeyDictionary[nn.Module, tuple[nn.Module, nn.Linear]]" = weakref.WeakKeyDictionary()
_BODIES_LOCK = threading.Lock()


def split_head(model: nn.Module) -> tuple[nn.Module, nn.Linear]:
    """``(body, head)`` with ``head(body(x)) == model(x)``: the model with its final linear layer replaced
    by ``Identity`` (sharing all weights), and that layer. No hooks, so it is safe while other threads
    use the same model."""
    with _BODIES_LOCK:
        cached = _BODIES.get(model)
        if cached is None:
            head = classifier_head(model)
            name = next(n for n, m in model.named_modules() if m is head)
            cached = (_clone_replacing(model, name.split("."), nn.Identity()), head)
            _BODIES[model] = cached
    return cached


def delta_for(probs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """``softmax - onehot(target)``: the gradient of the summed cross-entropy w.r.t. the logits."""
    return probs - F.one_hot(targets.long(), probs.shape[1]).to(probs.dtype)


@torch.inference_mode()
def embed_batch(model: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(probs N x C, head inputs N x D)`` (float32, on the model's device) of a normalised batch."""
    body, head = split_head(model)
    feats = body(x).flatten(1)
    logits = head(feats)
    return torch.softmax(logits.float(), dim=1), feats.float()


@dataclass
class InfluenceRecord:
    """One task for the index: its id, class (name or index; None = unknown) and image or image URL."""

    task_id: int
    target: str | int | None
    image: Image.Image | None = None
    image_url: str | None = None


@dataclass
class Embeddings:
    """Per-task last-layer gradient factors."""

    task_ids: torch.Tensor  # long N
    targets: torch.Tensor  # long N (-1 = unknown)
    preds: torch.Tensor  # long N
    probs: torch.Tensor  # N x C
    feats: torch.Tensor  # N x D


def _target_index(target: Any, classes: Sequence[str]) -> int:
    if target is None or isinstance(target, bool):
        return -1
    if isinstance(target, torch.Tensor):
        target = int(target)
    if isinstance(target, numbers.Integral):
        return int(target) if 0 <= int(target) < len(classes) else -1
    try:
        return list(classes).index(str(target))
    except ValueError:
        return -1


def _field(rec: Any, name: str, default=None):
    if isinstance(rec, dict):
        return rec.get(name, default)
    return getattr(rec, name, default)


def _batches(records: Any, meta: CheckpointMeta, batch_size: int, fetcher=None,
             fetch_workers: int = 8) -> Iterator[tuple[list[int], torch.Tensor, list[int]]]:
    """Yield ``(task ids, images float [0,1] B x 3 x S x S, target indices)`` from any record source.

    Sources: a dataset with ``images`` (uint8 N x 3 x S x S), ``targets`` and ``task_ids`` (the
    training job's ``PairedDataset``), or records with ``task_id``, ``target`` and ``image`` (PIL)
    or ``image_url`` (fetched with ``fetcher``; a task whose image fails is skipped and logged).
    """
    size = meta.image_size
    if hasattr(records, "images") and hasattr(records, "targets") and hasattr(records, "task_ids"):
        images, targets, ids = records.images, records.targets, list(records.task_ids)
        for s in range(0, len(ids), batch_size):
            x = resize_batch(images[s : s + batch_size].float().div(255.0), size)
            yield [int(i) for i in ids[s : s + batch_size]], x, [int(t) for t in targets[s : s + batch_size]]
        return
    records = list(records)
    pool = ThreadPoolExecutor(max_workers=max(1, fetch_workers)) if fetcher is not None else None

    def load(rec) -> Image.Image | None:
        img = _field(rec, "image")
        if img is not None:
            return img
        url = _field(rec, "image_url")
        if url is None or fetcher is None:
            log.warning("influence index: task %s has neither an image nor a fetchable URL; skipped",
                        _field(rec, "task_id"))
            return None
        try:
            return fetcher.fetch(url)
        except Exception as e:  # one unreadable image never fails the index
            log.warning("influence index: task %s image %s: %s; skipped", _field(rec, "task_id"), url, e)
            return None

    try:
        for s in range(0, len(records), batch_size):
            chunk = records[s : s + batch_size]
            imgs = list(pool.map(load, chunk)) if pool is not None else [load(r) for r in chunk]
            ok = [(r, im) for r, im in zip(chunk, imgs) if im is not None]
            if not ok:
                continue
            yield ([int(_field(r, "task_id")) for r, _ in ok], to_batch([im for _, im in ok], size),
                   [_target_index(_field(r, "target"), meta.classes) for r, _ in ok])
    finally:
        if pool is not None:
            pool.shutdown(wait=False)


def embed_records(model: nn.Module, meta: CheckpointMeta, records: Any, device: str = "cpu", batch_size: int = 64,
                  fetcher=None) -> Embeddings:
    """Embeddings of every usable record (images normalised exactly as for predictions)."""
    ids, targets, preds, probs, feats = [], [], [], [], []
    for bid, x, bt in _batches(records, meta, batch_size, fetcher):
        p, h = embed_batch(model, normalize(x.to(device), meta.mean, meta.std))
        ids += bid
        targets += bt
        preds.append(p.argmax(dim=1).cpu())
        probs.append(p.cpu())
        feats.append(h.cpu())
    c = len(meta.classes)
    return Embeddings(
        task_ids=torch.tensor(ids, dtype=torch.long),
        targets=torch.tensor(targets, dtype=torch.long),
        preds=torch.cat(preds) if preds else torch.zeros(0, dtype=torch.long),
        probs=torch.cat(probs) if probs else torch.zeros(0, c),
        feats=torch.cat(feats) if feats else torch.zeros(0, 0),
    )
