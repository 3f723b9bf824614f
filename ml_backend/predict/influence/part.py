"""The influence prediction part: influence text for test tasks, suspicion score (+ text) for training tasks."""

from __future__ import annotations

import logging

import torch

from label_config import regions as regions_lib
from label_config.export import TRAIN_SPLIT
from ml_backend.predict.influence.embedding import _target_index, delta_for, embed_batch
from ml_backend.predict.influence.index import InfluenceIndex, rank
from ml_backend.predict.influence.manager import IndexManager, RecordSource
from ml_backend.predict.pages import Neighbour, influence_page, report_url, suspicion_page
from ml_backend.predict.parts import PartOutput, PredictContext
from ml_backend.predict.influence.suspicion import SCORES
from ml_backend.predict.task_files import InfluencePages, task_key
from training.checkpoints import CheckpointStore
from training.images import normalize, to_batch

log = logging.getLogger(__name__)

SIGNS = ("both", "proponents", "opponents", "abs")
RANKINGS = ("class_balanced", "raw")  # what a training task's prediction score is: its suspicion's rank in its class, or the suspicion


def _split(task: dict) -> str | None:
    return (task.get("data") or {}).get("split")


def task_link(base_url: str | None, project_id: int, task_id: int) -> str:
    """The Data Manager URL that opens a task (relative to Label Studio's page when its URL is unknown)."""
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
        self.ranking = settings.suspicion_ranking
        if self.ranking not in RANKINGS:
            raise ValueError(f"SUSPICION_RANKING={self.ranking!r}: choose one of {', '.join(RANKINGS)}")
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

    def neighbours(self, index: InfluenceIndex, scores: torch.Tensor, base: str | None,
                   project_id: int) -> dict[str, list[Neighbour]]:
        """The top-k training tasks of one test task (from its ``N`` scores), per ranking."""
        signs = ("proponents", "opponents") if self.sign == "both" else (self.sign,)
        out = {}
        for sign in signs:
            values, idx = rank(scores[None], self.top_k, sign)
            out[sign] = [Neighbour(int(index.task_ids[i]), index.classes[int(index.targets[i])], v,
                                   task_link(base, project_id, int(index.task_ids[i])))
                         for v, i in zip(values[0].tolist(), idx[0].tolist())]
        return out

    def _influence_output(self, ctx: PredictContext, j: int, version: str, pred: str,
                          near: dict[str, list[Neighbour]]) -> list[dict]:
        """The page of a test task (HyperText view), or TextArea lines (older configs)."""
        if ctx.config.has_influence_view:
            html = influence_page(version, pred, self.score, near.get("proponents", []) + near.get("abs", []),
                                  near.get("opponents", []), self._report(ctx))
            self.pages(ctx).write(version, task_key(ctx.tasks[j]), html.encode())
            return []
        lines = [f"influence ({self.score}, {version}) on the prediction {pred!r}: + supports it, - opposes it"]
        lines += [f"#{n.task_id} {n.label} {n.value:+.4g} {n.url}" for ns in near.values() for n in ns]
        return [regions_lib.text(lines, ctx.config.influence_control, ctx.config.image_name)]

    def _suspicion_output(self, ctx: PredictContext, j: int, index: InfluenceIndex, value: float, score: float,
                          harmed: list[Neighbour]) -> list[dict]:
        version = ctx.served.version
        if ctx.config.has_influence_view:
            rank = score if self.ranking == "class_balanced" else None
            html = suspicion_page(version, value, index.suspicion_formula, harmed, self._report(ctx), rank)
            self.pages(ctx).write(version, task_key(ctx.tasks[j]), html.encode())
            return []
        lines = [f"suspicion {value:.3f} ({index.suspicion_formula}, {version})"]
        lines += [f"harms #{n.task_id} {n.label} {n.value:+.4g} {n.url}" for n in harmed]
        return [regions_lib.text(lines, ctx.config.influence_control, ctx.config.image_name)]

    @staticmethod
    def _report(ctx: PredictContext) -> str | None:
        """The served version's report page, when it was trained by a job (v0 has none)."""
        run = CheckpointStore(ctx.settings.model_dir, ctx.project_id).root / "runs" / ctx.served.version
        return report_url(ctx.settings, ctx.project_id, ctx.served.version) if (run / "summary.json").is_file() else None

    @staticmethod
    def pages(ctx: PredictContext) -> InfluencePages:
        return InfluencePages(ctx.settings.model_dir, ctx.project_id)

    def __call__(self, ctx: PredictContext) -> PartOutput:
        n = len(ctx.tasks)
        regions: list[list[dict]] = [[] for _ in range(n)]
        scores: list[float | None] = [None] * n
        train_rows = [j for j, t in enumerate(ctx.tasks) if _split(t) == TRAIN_SPLIT]
        # a training task's score is its suspicion, never a confidence: wait for the index when one is in the batch
        index = self.manager.get(ctx.project_id, ctx.served, ctx.config, wait=bool(train_rows),
                                 origin=ctx.label_studio, fetcher=ctx.fetcher)
        if index is None:
            log.info("project %s: no influence index for %s yet; influence and suspicion left out for tasks %s",
                     ctx.project_id, ctx.served.version, [t.get("id") for t in ctx.tasks])
            return PartOutput(regions=regions, scores=None)
        probs, feats = self._embed(ctx)
        preds = probs.argmax(dim=1)
        shown = ctx.config.influence_control or ctx.config.has_influence_view
        base = ctx.settings.label_studio_url
        test_rows = [j for j, t in enumerate(ctx.tasks) if _split(t) != TRAIN_SPLIT]

        if test_rows and shown and len(index):
            rows = torch.tensor(test_rows)
            all_scores = index.scores(delta_for(probs[rows], preds[rows]), feats[rows], self.score)  # one product
            for r, j in enumerate(test_rows):
                try:
                    near = self.neighbours(index, all_scores[r], base, ctx.project_id)
                    regions[j] += self._influence_output(ctx, j, ctx.served.version, index.classes[int(preds[j])], near)
                except Exception:
                    log.exception("project %s task %s: influence text failed", ctx.project_id, ctx.tasks[j].get("id"))

        for j in train_rows:
            task = ctx.tasks[j]
            try:
                row = index.row(task.get("id"))
                if row is not None:
                    raw, target = float(index.suspicion[row]), int(index.targets[row])
                else:  # a training task added after the index was built
                    target = _target_index((task.get("data") or {}).get("label"), index.classes)
                    target = target if target >= 0 else int(preds[j])
                    raw = float(index.suspicion_for(delta_for(probs[j : j + 1], torch.tensor([target])),
                                                    feats[j : j + 1])[0])
                scores[j] = index.class_rank(raw, target) if self.ranking == "class_balanced" else raw
                if shown:
                    harmed = [Neighbour(tid, index.classes[cls], v, task_link(base, ctx.project_id, tid))
                              for tid, cls, v in (index.harmed_tests(row, self.top_k) if row is not None else [])]
                    regions[j] += self._suspicion_output(ctx, j, index, raw, scores[j], harmed)
            except Exception:
                log.exception("project %s task %s: suspicion failed", ctx.project_id, task.get("id"))
        return PartOutput(regions=regions, scores=scores, kind=index.suspicion_formula)
