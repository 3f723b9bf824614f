"""The influence prediction part: influence text for test tasks, suspicion score (+ text) for training tasks."""

from __future__ import annotations

import logging

import torch

from label_config import regions as regions_lib
from label_config.export import TRAIN_SPLIT
from ml_backend.influence.embedding import _target_index, delta_for, embed_batch
from ml_backend.influence.index import InfluenceIndex, rank
from ml_backend.influence.manager import IndexManager, RecordSource
from ml_backend.parts import PartOutput, PredictContext
from ml_backend.suspicion import SCORES
from training.images import normalize, to_batch

log = logging.getLogger(__name__)

SIGNS = ("both", "proponents", "opponents", "abs")


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
            x = normalize(to_batch(ctx.images[s : s + bs], meta.image_size).to(dev), meta.mean, meta.std)
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
            return PartOutput(regions=regions, scores=None)
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
                    regions[j].append(regions_lib.text(lines, control, ctx.config.image_name))
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
                    regions[j].append(regions_lib.text(lines, control, ctx.config.image_name))
            except Exception:
                log.exception("project %s task %s: suspicion failed", ctx.project_id, task.get("id"))
        return PartOutput(regions=regions, scores=scores)
