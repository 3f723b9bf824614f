"""The influence index of one version: every training task's gradient factors and suspicion, stored
beside the checkpoint at ``<MODEL_DIR>/project-<id>/influence/vN.pt``; a query is one matrix product."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ml_backend.predict.influence.embedding import delta_for, embed_records
from ml_backend.predict.influence.suspicion import SCORES, SELF, pair_scores, suspicion
from training.checkpoints import CheckpointMeta, CheckpointStore, version_number
from training.files import atomic_write

log = logging.getLogger(__name__)

INDEX_DIR = "influence"


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

    def class_rank(self, value: float, target: int) -> float:
        """Where a suspicion ``value`` stands among the indexed training tasks of class ``target``: the
        share of them it exceeds (ties count half), in [0, 1]. Sorting by it puts the most suspicious
        images of every class first, in turn — painting the top of a raw ranking covered few classes
        and taught less than painting at random (benchmarks: patch 0.56 vs 0.82 test accuracy at 10%)."""
        same = self.suspicion[self.targets == target]
        if not same.numel():
            return float(value)
        below = float((same < value).sum()) + 0.5 * float((same == value).sum())
        return below / same.numel()

    def ranking(self, balanced: bool = True) -> list[int]:
        """Indexed task ids, most suspicious first (``balanced``: by ``class_rank``, as the score)."""
        keys = [self.class_rank(float(v), int(t)) if balanced else float(v)
                for v, t in zip(self.suspicion.tolist(), self.targets.tolist())]
        order = sorted(range(len(keys)), key=lambda i: (-keys[i], -float(self.suspicion[i])))
        return [int(self.task_ids[i]) for i in order]

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
        atomic_write(path, lambda f: torch.save(payload, f))
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
    ranked_on: str | None = None,
) -> InfluenceIndex:
    """Embed every training record with the checkpoint ``version`` and store the index beside it.

    ``records``: the training tasks — the training job's ``PairedDataset`` (``images``,
    ``targets``, ``task_ids``), or ``TaskRecord``/``InfluenceRecord``-like items (``task_id``,
    ``target`` class name or index, ``image`` or ``image_url`` + ``fetcher``). ``test_records``
    (same forms, ground-truth ``target``) feed the harmful-influence suspicion: the job and the backend
    pass the **val** split (``ranked_on="val"``, recorded in ``info``), never test, which is only
    reported; without them the suspicion is self-influence. Records whose class is not one of the model's are skipped.
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
              "built_at": time.time(), "seconds": round(time.perf_counter() - t0, 3), "arch": meta.arch,
              "ranked_on": ranked_on if test_records is not None else None},
    )
    if save:
        index.save(index_path(store, version))
    log.info("influence index %s: %d training tasks, suspicion=%s (%d misclassified tests), %.1fs", version,
             len(index), formula, int(t_ids.numel()), time.perf_counter() - t0)
    return index
