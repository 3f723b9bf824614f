"""Influence part: for test tasks the training tasks that most influenced the prediction, for training
tasks a suspicion score (``ml_backend.suspicion``), from a per-version index of gradient embeddings.

TracIn at the served checkpoint, restricted to the final linear layer (what captum's
``TracInCPFast`` computes). The gradient of the summed cross-entropy w.r.t. the head's weight is
the outer product ``delta (x) h`` of ``delta = softmax(logits) - onehot(label)`` (``C`` numbers)
and the head's input ``h`` (``D`` numbers), so ``<g_i, g_t> = (delta_i . delta_t)(h_i . h_t)`` and
a training task is stored as ``(delta_i, h_i)`` instead of a ``C*D`` gradient. A query for a batch
of test images is ``(Delta_q @ Delta.T) * (H_q @ H.T)``: one (factored) matrix product over the
whole training set. ``INFLUENCE_SCORE=tracin`` ranks by that raw product (identical to captum);
``cosine`` (default) by its renormalised form (see ``ml_backend.suspicion`` for why). Test tasks
use their *predicted* class as the label ("what made the model say this"), training tasks the
class they were trained on. As in captum, the head's bias is left out.

The index of version ``vN`` is ``<MODEL_DIR>/project-<id>/influence/vN.pt`` (temp file + rename).
It is built by ``build_influence_index`` — from the training job right after it publishes a version
(cheapest: the images are already in memory), or lazily by the backend (``INFLUENCE_BUILD``:
``background`` builds it in a thread behind a lock while predictions go out without influence,
``sync`` builds it inside the first request, ``off`` never builds it in the backend).
"""

from __future__ import annotations

import copy
import logging
import numbers
import threading
import time
import weakref
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Sequence

import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from ml_backend.classifier import normalize, to_tensor
from ml_backend.parts import PartOutput, PredictContext
from ml_backend.suspicion import SCORES, SELF, pair_scores, suspicion
from training.checkpoints import CheckpointMeta, CheckpointStore, _atomic_write, version_number
from training.models import classifier_head

log = logging.getLogger(__name__)

SIGNS = ("both", "proponents", "opponents", "abs")
BUILD_MODES = ("background", "sync", "off")
INDEX_DIR = "influence"
TRAIN_SPLIT = "train"


# --------------------------------------------------------------------------------------------------
# embeddings


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

    def delta(self, use_targets: bool = True) -> torch.Tensor:
        """Gradient factor w.r.t. the logits at the target (rows with unknown target: the prediction)."""
        t = torch.where(self.targets >= 0, self.targets, self.preds) if use_targets else self.preds
        return delta_for(self.probs, t)


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
            x = images[s : s + batch_size].float().div(255.0)
            if x.shape[-1] != size or x.shape[-2] != size:
                x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
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
            yield ([int(_field(r, "task_id")) for r, _ in ok], to_tensor([im for _, im in ok], size),
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


# --------------------------------------------------------------------------------------------------
# the index


@dataclass
class InfluenceIndex:
    """Last-layer gradient factors of every training task of one version, plus suspicion scores."""

    version: str
    classes: list[str]
    task_ids: torch.Tensor  # long N
    targets: torch.Tensor  # long N
    delta: torch.Tensor  # N x C
    feats: torch.Tensor  # N x D
    suspicion: torch.Tensor  # N, in [0, 1]
    suspicion_formula: str
    suspicion_scales: tuple[float, float]  # (max harm, max self-influence) of the indexed rows
    score: str = "cosine"  # the score the suspicion was computed with
    # the misclassified labelled test tasks the harmful-influence suspicion is measured on
    test_ids: torch.Tensor = field(default_factory=lambda: torch.zeros(0, dtype=torch.long))
    test_targets: torch.Tensor = field(default_factory=lambda: torch.zeros(0, dtype=torch.long))
    test_delta: torch.Tensor | None = None
    test_feats: torch.Tensor | None = None
    info: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        self._row = {int(t): i for i, t in enumerate(self.task_ids.tolist())}

    def __len__(self) -> int:
        return int(self.task_ids.shape[0])

    def row(self, task_id: Any) -> int | None:
        try:
            return self._row.get(int(task_id))
        except (TypeError, ValueError):
            return None

    def scores(self, delta_q: torch.Tensor, feats_q: torch.Tensor, score: str | None = None) -> torch.Tensor:
        """``B x N`` influence of every indexed training task on each query row."""
        return pair_scores(delta_q.float(), feats_q.float(), self.delta, self.feats, score or self.score)

    def top_k(self, delta_q: torch.Tensor, feats_q: torch.Tensor, k: int, sign: str = "proponents",
              score: str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """``(values B x k, row indices B x k)``: most positive, most negative or largest |score|."""
        return rank(self.scores(delta_q, feats_q, score), k, sign)

    def suspicion_for(self, delta: torch.Tensor, feats: torch.Tensor) -> torch.Tensor:
        """Suspicion of (new) training rows with the index's formula and scales."""
        tests = (None, None) if self.suspicion_formula == SELF else (self.test_delta, self.test_feats)
        return suspicion(delta, feats, *tests, self.score, tuple(self.suspicion_scales))[0]

    def harmed_tests(self, row: int, k: int) -> list[tuple[int, int, float]]:
        """The misclassified test tasks training row ``row`` harms most: ``(task id, class, score < 0)``."""
        if self.test_delta is None or not self.test_delta.shape[0]:
            return []
        s = pair_scores(self.delta[row : row + 1], self.feats[row : row + 1], self.test_delta, self.test_feats,
                        self.score)[0]
        vals, idx = rank(s[None], k, "opponents")
        return [(int(self.test_ids[i]), int(self.test_targets[i]), float(v))
                for v, i in zip(vals[0].tolist(), idx[0].tolist()) if v < 0]

    def to_payload(self) -> dict:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        payload = self.to_payload()
        _atomic_write(path, lambda f: torch.save(payload, f))
        return path

    @classmethod
    def load(cls, path: str | Path) -> "InfluenceIndex":
        payload = torch.load(path, map_location="cpu", weights_only=True)
        return cls(**{k: payload[k] for k in cls.__dataclass_fields__ if k in payload})


def rank(scores: torch.Tensor, k: int, sign: str = "proponents") -> tuple[torch.Tensor, torch.Tensor]:
    """Top ``k`` per row of a ``B x N`` score matrix: ``proponents`` (largest), ``opponents`` (most
    negative) or ``abs`` (largest magnitude); returns ``(values, column indices)``."""
    if sign not in ("proponents", "opponents", "abs"):
        raise ValueError(f"unknown ranking {sign!r}")
    k = min(int(k), scores.shape[1])
    key = scores.abs() if sign == "abs" else (scores if sign == "proponents" else -scores)
    idx = key.topk(k, dim=1).indices
    return scores.gather(1, idx), idx


def index_path(store: CheckpointStore, version: str) -> Path:
    version_number(version)
    return store.root / INDEX_DIR / f"{version}.pt"


def _as_store(store_or_paths: Any) -> CheckpointStore:
    """A CheckpointStore, or a project folder ``<MODEL_DIR>/project-<id>``, or ``(model_dir, project_id)``."""
    if isinstance(store_or_paths, CheckpointStore):
        return store_or_paths
    if isinstance(store_or_paths, (tuple, list)) and len(store_or_paths) == 2:
        return CheckpointStore(*store_or_paths)
    root = Path(store_or_paths)
    if not root.name.startswith("project-"):
        raise ValueError(f"{root} is not a project folder (<MODEL_DIR>/project-<id>)")
    return CheckpointStore(root.parent, root.name[len("project-"):])


def load_influence_index(store_or_paths: Any, version: str) -> InfluenceIndex | None:
    """The stored index of ``version``, or None when it was not built."""
    path = index_path(_as_store(store_or_paths), version)
    return InfluenceIndex.load(path) if path.is_file() else None


def build_influence_index(
    store_or_paths: Any,
    version: str,
    records: Any,
    test_records: Any = None,
    fetcher=None,
    device: str = "cpu",
    batch_size: int = 64,
    model: nn.Module | None = None,
    meta: CheckpointMeta | None = None,
    save: bool = True,
    score: str = "cosine",
) -> InfluenceIndex:
    """Embed every training record with the checkpoint ``version`` and store the index beside it.

    ``records``: the training tasks — the training job's ``PairedDataset`` (``images``,
    ``targets``, ``task_ids``), or ``TaskRecord``/``InfluenceRecord``-like items (``task_id``,
    ``target`` class name or index, ``image`` or ``image_url`` + ``fetcher``). ``test_records``
    (same forms, ground-truth ``target``) feed the harmful-influence suspicion; without them the
    suspicion is self-influence. Records whose class is not one of the model's are skipped.
    ``score`` (``cosine`` | ``tracin``) is the influence score the suspicion is computed with.
    """
    if score not in SCORES:
        raise ValueError(f"INFLUENCE_SCORE={score!r}: choose one of {', '.join(SCORES)}")
    t0 = time.perf_counter()
    store = _as_store(store_or_paths) if store_or_paths is not None else None
    if store is None and (save or model is None or meta is None):
        raise ValueError("build_influence_index needs a checkpoint store unless model, meta and save=False are given")
    if model is None or meta is None:
        model, meta = store.load(version, device)
    model.eval()
    train = embed_records(model, meta, records, device, batch_size, fetcher)
    known = train.targets >= 0
    if not bool(known.all()):
        log.warning("influence index %s: %d training task(s) without a known class skipped: %s", version,
                    int((~known).sum()), train.task_ids[~known][:20].tolist())
    delta = delta_for(train.probs[known], train.targets[known])
    feats = train.feats[known]
    t_ids, t_targets, t_delta, t_feats = torch.zeros(0, dtype=torch.long), torch.zeros(0, dtype=torch.long), None, None
    n_test = 0
    if test_records is not None:
        test = embed_records(model, meta, test_records, device, batch_size, fetcher)
        n_test = len(test.task_ids)
        wrong = (test.targets >= 0) & (test.preds != test.targets)
        t_ids, t_targets = test.task_ids[wrong], test.targets[wrong]
        t_delta, t_feats = delta_for(test.probs[wrong], t_targets), test.feats[wrong]
    values, formula, scales = suspicion(delta, feats, t_delta, t_feats, score)
    index = InfluenceIndex(
        version=version,
        classes=list(meta.classes),
        task_ids=train.task_ids[known],
        targets=train.targets[known],
        delta=delta,
        feats=feats,
        suspicion=values,
        suspicion_formula=formula,
        suspicion_scales=scales,
        score=score,
        test_ids=t_ids,
        test_targets=t_targets,
        test_delta=t_delta,
        test_feats=t_feats,
        info={"n_train": int(known.sum()), "n_test": n_test, "n_test_misclassified": int(t_ids.numel()),
              "built_at": time.time(), "seconds": round(time.perf_counter() - t0, 3), "arch": meta.arch},
    )
    if save:
        index.save(index_path(store, version))
    log.info("influence index %s: %d training tasks, suspicion=%s (%d misclassified tests), %.1fs", version,
             len(index), formula, int(t_ids.numel()), time.perf_counter() - t0)
    return index


# --------------------------------------------------------------------------------------------------
# where the backend gets the training tasks from


def label_studio_records(settings, project_id: int, image_value: str = "image"
                         ) -> tuple[list[InfluenceRecord], list[InfluenceRecord]]:
    """The project's training and test tasks (``data.split``), with ``data.label`` as class, via the SDK."""
    from training.export import make_client

    client = make_client(settings.label_studio_url, settings.label_studio_api_key)
    train, test = [], []
    for task in client.tasks.list(project=project_id, fields="task_only", page_size=1000):
        data = getattr(task, "data", None) or {}
        url = data.get(image_value)
        if not isinstance(url, str):
            continue
        rec = InfluenceRecord(int(task.id), data.get("label"), image_url=url)
        (train if data.get("split") == TRAIN_SPLIT else test).append(rec)
    return train, test


RecordSource = Callable[[int, Any], tuple[Iterable, Iterable]]


class IndexManager:
    """Loads each project's index of the served version once; builds a missing one lazily, once."""

    RETRY_AFTER_S = 300.0

    def __init__(self, settings, record_source: RecordSource | None = None, fetcher=None, mode: str | None = None) -> None:
        self.settings = settings
        self.mode = mode or settings.influence_build
        if self.mode not in BUILD_MODES:
            raise ValueError(f"INFLUENCE_BUILD={self.mode!r}: choose one of {', '.join(BUILD_MODES)}")
        self.record_source = record_source
        self.fetcher = fetcher
        self._lock = threading.Lock()
        self._build_locks: dict[tuple[int, str], threading.Lock] = {}
        self._loaded: dict[int, InfluenceIndex] = {}
        self._building: dict[tuple[int, str], threading.Thread] = {}
        self._failed: dict[tuple[int, str], float] = {}

    def _records(self, project_id: int, config) -> tuple[Iterable, Iterable]:
        if self.record_source is not None:
            return self.record_source(project_id, config)
        return label_studio_records(self.settings, project_id, config.image_value)

    def _fetcher(self):
        if self.fetcher is None:
            from ml_backend.images import ImageFetcher

            self.fetcher = ImageFetcher(self.settings.label_studio_url, self.settings.label_studio_api_key,
                                        self.settings.fetch_timeout)
        return self.fetcher

    def build(self, project_id: int, served, config) -> InfluenceIndex | None:
        """Build (once per project and version, behind a lock) and cache the index; None on failure."""
        key = (project_id, served.version)
        with self._lock:
            lock = self._build_locks.setdefault(key, threading.Lock())
        with lock:
            cached = self._loaded.get(project_id)
            if cached is not None and cached.version == served.version:
                return cached
            store = CheckpointStore(self.settings.model_dir, project_id)
            path = index_path(store, served.version)
            try:
                if path.is_file():
                    index = InfluenceIndex.load(path)
                else:
                    train, test = self._records(project_id, config)
                    index = build_influence_index(
                        store, served.version, train, test, fetcher=self._fetcher(), device=served.device,
                        batch_size=self.settings.influence_batch_size, model=served.model, meta=served.meta,
                        score=self.settings.influence_score,
                    )
            except Exception:
                self._failed[key] = time.monotonic()
                log.exception("project %s: building the influence index of %s failed (retry in %.0fs)",
                              project_id, served.version, self.RETRY_AFTER_S)
                return None
            self._loaded[project_id] = index
            return index

    def get(self, project_id: int, served, config) -> InfluenceIndex | None:
        """The index of the served version: from memory, from disk, or built per ``INFLUENCE_BUILD``."""
        cached = self._loaded.get(project_id)
        if cached is not None and cached.version == served.version:
            return cached
        path = index_path(CheckpointStore(self.settings.model_dir, project_id), served.version)
        if path.is_file():
            return self.build(project_id, served, config)  # loads it (once, under the lock)
        key = (project_id, served.version)
        failed_at = self._failed.get(key)
        if self.mode == "off" or (failed_at is not None and time.monotonic() - failed_at < self.RETRY_AFTER_S):
            return None
        if self.mode == "sync":
            return self.build(project_id, served, config)
        with self._lock:
            thread = self._building.get(key)
            if thread is None or not thread.is_alive():
                thread = threading.Thread(target=self.build, args=(project_id, served, config),
                                          name=f"influence-index-{project_id}-{served.version}", daemon=True)
                self._building[key] = thread
                thread.start()
                log.info("project %s: building the influence index of %s in the background", project_id,
                         served.version)
        return None

    def wait(self, project_id: int, version: str, timeout: float | None = None) -> None:
        """Wait for a background build (tests, CLI)."""
        thread = self._building.get((project_id, version))
        if thread is not None:
            thread.join(timeout)


# --------------------------------------------------------------------------------------------------
# the prediction part


def _split(task: dict) -> str | None:
    return (task.get("data") or {}).get("split")


def task_link(base_url: str | None, project_id: int, task_id: int) -> str:
    """The Data Manager URL that opens a task."""
    return f"{(base_url or '').rstrip('/')}/projects/{project_id}/data?task={task_id}"


class InfluencePart:
    """Prediction part: influence text for test tasks, suspicion score (+ text) for training tasks."""

    name = "influence"

    def __init__(self, settings, record_source: RecordSource | None = None, fetcher=None, top_k: int | None = None,
                 sign: str | None = None, score: str | None = None, mode: str | None = None) -> None:
        self.top_k = int(top_k if top_k is not None else settings.influence_top_k)
        self.sign = sign or settings.influence_sign
        self.score = score or settings.influence_score
        if self.top_k < 1:
            raise ValueError(f"INFLUENCE_TOP_K={self.top_k}: must be >= 1")
        if self.sign not in SIGNS:
            raise ValueError(f"INFLUENCE_SIGN={self.sign!r}: choose one of {', '.join(SIGNS)}")
        if self.score not in SCORES:
            raise ValueError(f"INFLUENCE_SCORE={self.score!r}: choose one of {', '.join(SCORES)}")
        self.manager = IndexManager(settings, record_source, fetcher, mode)

    @classmethod
    def from_settings(cls, settings) -> "InfluencePart":
        return cls(settings)

    def _embed(self, ctx: PredictContext) -> tuple[torch.Tensor, torch.Tensor]:
        meta, dev = ctx.served.meta, ctx.served.device
        probs, feats = [], []
        bs = max(1, ctx.settings.predict_batch_size)
        for s in range(0, len(ctx.images), bs):
            x = normalize(to_tensor(ctx.images[s : s + bs], meta.image_size).to(dev), meta.mean, meta.std)
            p, h = embed_batch(ctx.served.model, x)
            probs.append(p.cpu())
            feats.append(h.cpu())
        return torch.cat(probs), torch.cat(feats)

    def influence_lines(self, index: InfluenceIndex, scores: torch.Tensor, pred: str, version: str,
                        base: str | None, project_id: int) -> list[str]:
        """The TextArea lines of one test task from its ``N`` scores against the index."""
        lines = [f"influence ({self.score}, {version}) on the prediction {pred!r}: + supports it, - opposes it"]
        signs = ("proponents", "opponents") if self.sign == "both" else (self.sign,)
        for sign in signs:
            values, idx = rank(scores[None], self.top_k, sign)
            for v, i in zip(values[0].tolist(), idx[0].tolist()):
                tid = int(index.task_ids[i])
                lines.append(f"#{tid} {index.classes[int(index.targets[i])]} {v:+.4g} {task_link(base, project_id, tid)}")
        return lines

    def __call__(self, ctx: PredictContext) -> PartOutput:
        n = len(ctx.tasks)
        regions: list[list[dict]] = [[] for _ in range(n)]
        scores: list[float | None] = [None] * n
        index = self.manager.get(ctx.project_id, ctx.served, ctx.config)
        if index is None:
            log.info("project %s: no influence index for %s yet; influence and suspicion left out for tasks %s",
                     ctx.project_id, ctx.served.version, [t.get("id") for t in ctx.tasks])
            return PartOutput(regions=regions, scores=None, info={"index": "not built"})
        probs, feats = self._embed(ctx)
        preds = probs.argmax(dim=1)
        control = ctx.config.influence_control
        base = ctx.settings.label_studio_url
        test_rows = [j for j, t in enumerate(ctx.tasks) if _split(t) != TRAIN_SPLIT]
        train_rows = [j for j, t in enumerate(ctx.tasks) if _split(t) == TRAIN_SPLIT]

        if test_rows and control and len(index):
            rows = torch.tensor(test_rows)
            all_scores = index.scores(delta_for(probs[rows], preds[rows]), feats[rows], self.score)  # one product
            for r, j in enumerate(test_rows):
                try:
                    lines = self.influence_lines(index, all_scores[r], index.classes[int(preds[j])],
                                                 ctx.served.version, base, ctx.project_id)
                    regions[j].append(self._text(control, ctx.config.image_name, lines))
                except Exception:
                    log.exception("project %s task %s: influence text failed", ctx.project_id, ctx.tasks[j].get("id"))

        for j in train_rows:
            task = ctx.tasks[j]
            try:
                row = index.row(task.get("id"))
                if row is not None:
                    scores[j] = float(index.suspicion[row])
                else:  # a training task added after the index was built
                    target = _target_index((task.get("data") or {}).get("label"), index.classes)
                    t = torch.tensor([target if target >= 0 else int(preds[j])])
                    scores[j] = float(index.suspicion_for(delta_for(probs[j : j + 1], t), feats[j : j + 1])[0])
                if control:
                    lines = [f"suspicion {scores[j]:.3f} ({index.suspicion_formula}, {ctx.served.version})"]
                    if row is not None:
                        for tid, cls, v in index.harmed_tests(row, self.top_k):
                            lines.append(f"harms #{tid} {index.classes[cls]} {v:+.4g} {task_link(base, ctx.project_id, tid)}")
                    regions[j].append(self._text(control, ctx.config.image_name, lines))
            except Exception:
                log.exception("project %s task %s: suspicion failed", ctx.project_id, task.get("id"))
        return PartOutput(regions=regions, scores=scores, info={"index": index.version, "n_train": len(index)})

    @staticmethod
    def _text(control: str, to_name: str, lines: list[str]) -> dict:
        return {"id": control, "from_name": control, "to_name": to_name, "type": "textarea",
                "value": {"text": lines}}
