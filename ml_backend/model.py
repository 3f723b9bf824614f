"""RobustarModel: the label-studio-ml style model that answers predictions and training events."""

from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable

from PIL import Image

from label_config.render import ParsedConfig, parse_config
from ml_backend.base import LabelStudioMLBase
from ml_backend.classifier import choices_region, classify
from ml_backend.config import Settings
from ml_backend.images import ImageError, ImageFetcher
from ml_backend.parts import PartOutput, PredictContext, PredictionPart
from ml_backend.serving import ModelRegistry

log = logging.getLogger(__name__)


class RobustarModel(LabelStudioMLBase):
    """Classifier + guidance parts for one Label Studio project."""

    def __init__(
        self,
        project_id: int,
        label_config: str,
        settings: Settings,
        registry: ModelRegistry,
        parts: list[PredictionPart] | None = None,
        hostname: str | None = None,
        access_token: str | None = None,
        enqueue_training: Callable[[int, str, dict], dict] | None = None,
    ) -> None:
        super().__init__(project_id, label_config)
        self.settings = settings
        self.registry = registry
        self.parts = parts or []
        self.config: ParsedConfig = parse_config(label_config)
        if settings.label_studio_url:
            base, key = settings.label_studio_url, settings.label_studio_api_key or access_token
        else:  # the host and token Label Studio sent to /setup go together (no configured key to another host)
            base, key = hostname, access_token or settings.label_studio_api_key
        self.fetcher = ImageFetcher(
            base,
            key,
            settings.fetch_timeout,
            allowed_hosts=settings.allowed_image_hosts,
            image_root=settings.image_root,
            max_bytes=settings.max_image_bytes,
        )
        self._enqueue_training = enqueue_training

    @property
    def model_version(self) -> str:
        return self.registry.current_version(self.project_id, self.config.classes)

    def setup(self) -> None:
        self.registry.get(self.project_id, self.config.classes)

    def _fetch_all(self, tasks: list[dict]) -> list[Image.Image | ImageError]:
        def one(task: dict) -> Image.Image | ImageError:
            url = (task.get("data") or {}).get(self.config.image_value)
            if not isinstance(url, str) or not url:
                return ImageError(f"task data has no {self.config.image_value!r} image URL")
            try:
                return self.fetcher.fetch(url)
            except ImageError as e:
                return e

        if len(tasks) <= 1:
            return [one(t) for t in tasks]
        with ThreadPoolExecutor(max_workers=min(self.settings.fetch_workers, len(tasks))) as pool:
            return list(pool.map(one, tasks))

    def predict(
        self, tasks: list[dict], context: dict | None = None, errors: list[tuple[int, str]] | None = None, **kwargs: Any
    ) -> list[dict]:
        """One prediction per task, in order; a task whose image fails gets an empty result (logged,
        and appended to ``errors`` as ``(task index, message)`` when a list is given)."""
        served = self.registry.get(self.project_id, self.config.classes)
        fetched = self._fetch_all(tasks)
        ok = [i for i, f in enumerate(fetched) if not isinstance(f, ImageError)]
        for i, f in enumerate(fetched):
            if isinstance(f, ImageError):
                log.warning("project %s task %s: no prediction: %s", self.project_id, tasks[i].get("id"), f)
                if errors is not None:
                    errors.append((i, str(f)))
        results: list[dict] = [{"result": [], "score": 0.0, "model_version": served.version} for _ in tasks]
        if not ok:
            return results
        images = [fetched[i] for i in ok]
        probs = classify(served, images, self.settings.predict_batch_size)
        conf, idx = probs.max(dim=1)
        for j, i in enumerate(ok):
            label = served.meta.classes[int(idx[j])]
            results[i]["result"].append(
                choices_region(self.config.class_control, self.config.image_name, label, float(conf[j]))
            )
            results[i]["score"] = float(conf[j])
        ctx = PredictContext(
            project_id=self.project_id,
            settings=self.settings,
            config=self.config,
            served=served,
            tasks=[tasks[i] for i in ok],
            images=images,
            probs=probs,
        )
        for part in self.parts:
            try:
                out: PartOutput = part(ctx)
            except Exception:  # one part failing degrades only that part
                ids = [t.get("id") for t in ctx.tasks]
                log.exception("project %s: prediction part %r failed for tasks %s", self.project_id, part.name, ids)
                continue
            for j, i in enumerate(ok):
                results[i]["result"].extend(out.regions[j])
                if out.scores is not None and out.scores[j] is not None:
                    results[i]["score"] = float(out.scores[j])
        return results

    def fit(self, event: str, data: dict, **kwargs: Any) -> dict:
        """Queue training for this project (never trains in the request)."""
        if self._enqueue_training is None:
            return {"status": "ignored", "reason": "no training queue configured"}
        return self._enqueue_training(self.project_id, event, data)
