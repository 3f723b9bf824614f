"""RobustarModel: the label-studio-ml style model that answers predictions, and the parts it is built with."""

from __future__ import annotations

import logging
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from typing import Any
from urllib.parse import urlsplit

from PIL import Image

from label_config import regions
from label_config.render import ParsedConfig, parse_config
from ml_backend.predict.classifier import classify
from ml_backend.labelstudio.fetch import FetchPolicy, ImageError, ImageFetcher, RequestBudget
from ml_backend.predict.influence import InfluencePart
from ml_backend.predict.interactive import InteractiveProposer, spurious_marks
from ml_backend.labelstudio.client import label_studio_origin
from ml_backend.predict.parts import PartOutput, PredictContext, PredictionPart
from ml_backend.predict.mask_proposals import PropagationPart
from ml_backend.predict.saliency import SaliencyPart
from ml_backend.predict.segmentation import SegmentationPart
from ml_backend.predict.registry import ModelRegistry
from ml_backend.settings import Settings

log = logging.getLogger(__name__)

KNOWN_PARTS = ("saliency", "segmentation", "influence", "propagation")
SUSPICION, SUSPICION_BY = "suspicion", "suspicion_by"  # beside a prediction (never its score); the worker writes
# them into the task's data: the Data Manager's own sortable columns (ml_backend.jobs.task_columns)


def configured_parts(settings: Settings) -> list[PredictionPart]:
    """The prediction parts switched on by ``PREDICT_PARTS`` (default: saliency, influence, and
    segmentation when ``SEGMENTATION_WEIGHTS`` is set).

    A part that is asked for but cannot run (segmentation without weights) is left out and named,
    with the reason, in ``settings.extra["disabled_parts"]`` (reported by ``/health``). A bad value
    (unknown part or method) raises ValueError at startup.
    """
    wanted = [p.strip().lower() for p in settings.predict_parts if p.strip()]
    unknown = sorted(set(wanted) - set(KNOWN_PARTS))
    if unknown:
        raise ValueError(f"PREDICT_PARTS: unknown part(s) {unknown}; choose from {', '.join(KNOWN_PARTS)}")
    disabled: dict[str, str] = settings.extra.setdefault("disabled_parts", {})
    for name in KNOWN_PARTS:
        if name not in wanted:
            disabled[name] = "off (not in PREDICT_PARTS)"
    parts: list[PredictionPart] = []
    if "saliency" in wanted:
        parts.append(SaliencyPart.from_settings(settings))
    if "segmentation" in wanted:
        if settings.segmentation_weights is None:
            disabled["segmentation"] = "no weights: set SEGMENTATION_WEIGHTS to a local Mask R-CNN state_dict"
        elif not settings.segmentation_weights.is_file():
            disabled["segmentation"] = f"no weights: SEGMENTATION_WEIGHTS={settings.segmentation_weights} does not exist"
        else:
            parts.append(SegmentationPart.from_settings(settings))
    if "influence" in wanted:
        parts.append(InfluencePart.from_settings(settings))
    if "propagation" in wanted:
        parts.append(PropagationPart.from_settings(settings))
    for name, why in disabled.items():
        log.info("prediction part %s: %s", name, why)
    return parts


def unique_region_ids(result: list[dict]) -> list[dict]:
    """``result`` with every region id unique in it (a repeat gets ``-2``, ``-3`` ...): Label Studio takes
    results sharing an id for one region."""
    seen: set[str] = set()
    for region in result:
        rid = str(region.get("id") or region.get("from_name") or "region")
        base, n = rid, 1
        while rid in seen:
            n += 1
            rid = f"{base}-{n}"
        seen.add(rid)
        region["id"] = rid
    return result


def describe_key_destination(settings: Settings) -> str:
    """One start-up line: which origin the configured API key is sent to (for the log)."""
    if not settings.label_studio_api_key:
        return ("LABEL_STUDIO_API_KEY is not set: images are fetched from Label Studio with the access_token "
                "it sends to /setup")
    if settings.label_studio_url:
        o = urlsplit(settings.label_studio_url)
        origin = f"{o.scheme}://{o.netloc.rpartition('@')[2]}"  # never user info in a log line
        return f"LABEL_STUDIO_API_KEY is sent only to {origin} (LABEL_STUDIO_URL)"
    return ("LABEL_STUDIO_API_KEY is set but LABEL_STUDIO_URL is not: the key is sent to no host; images are fetched "
            "from the /setup hostname with the access_token that came with it (set LABEL_STUDIO_URL to use the key)")


def reported_version(settings: Settings, registry: ModelRegistry, project_id: int, classes: list[str]) -> str:
    """The version /setup reports, without building or loading anything. A project with nothing published
    reports ``v0`` without writing it: v0 is created when a prediction (or a training job) needs it, so a
    /setup for any project id, known to Label Studio or not, costs no disk."""
    if not settings.pinned_version and registry.store(project_id).published() is None:
        return "v0"
    return registry.current_version(project_id, classes)


class RobustarModel:
    """Classifier + guidance parts for one Label Studio project (label-studio-ml's model interface:
    ``model_version`` for ``/setup``, ``predict`` for ``/predict``)."""

    def __init__(
        self,
        project_id: int,
        label_config: str,
        settings: Settings,
        registry: ModelRegistry,
        parts: list[PredictionPart] | None = None,
        hostname: str | None = None,
        access_token: str | None = None,
    ) -> None:
        self.project_id = project_id
        self.label_config = label_config
        self.settings = settings
        self.registry = registry
        self.parts = parts or []
        self.config: ParsedConfig = parse_config(label_config)
        self.label_studio = label_studio_origin(settings, hostname, access_token)
        self._interactive: InteractiveProposer | None = None
        self.fetcher = ImageFetcher(*self.label_studio, FetchPolicy.from_settings(settings), project_id=project_id)

    @property
    def model_version(self) -> str:
        """The version /setup reports (``reported_version``)."""
        return reported_version(self.settings, self.registry, self.project_id, self.config.classes)

    def max_side(self, input_size: int) -> int | None:
        """The longer side images are decoded at for a prediction: ``PREDICT_MAX_SIDE``, never below the model
        input size (0: full size)."""
        if not self.settings.predict_max_side:
            return None
        return max(int(self.settings.predict_max_side), int(input_size))

    def _fetch_all(self, tasks: list[dict], max_side: int | None = None) -> list[Image.Image | ImageError]:
        """Every task's image, downscaled at decode to ``max_side``, under one request budget
        (``PREDICT_MAX_PIXELS_PER_REQUEST`` decoded pixels: an image past it is a 413 for its task) and one
        deadline (``FETCH_TIMEOUT`` for all the request's images: what is not fetched by then fails its task)."""
        decode_share = self.settings.predict_max_decode_bytes // max(1, self.settings.predict_concurrency)
        budget = RequestBudget(self.settings.predict_max_pixels_per_request,
                               deadline=time.monotonic() + self.settings.fetch_timeout, decode_share=decode_share)

        def one(task: dict) -> Image.Image | ImageError:
            url = (task.get("data") or {}).get(self.config.image_value)
            if not isinstance(url, str) or not url:
                return ImageError(f"task data has no {self.config.image_value!r} image URL")
            try:
                return self.fetcher.fetch(url, max_side=max_side, budget=budget)
            except ImageError as e:
                return e

        if len(tasks) <= 1:
            return [one(t) for t in tasks]
        with ThreadPoolExecutor(max_workers=min(self.settings.fetch_workers, len(tasks))) as pool:
            return list(pool.map(one, tasks))

    def view_only(self, part: PredictionPart) -> bool:
        """The part's output is only a view the browser loads by URL (``$saliency``, ``$influence``), which
        ``ml_backend.predict.lazy_views`` can make on the first GET: the saliency heatmap when the config has no
        attention brush; the influence/suspicion page (its score is not a view) when it has the HyperText."""
        if part.name == "saliency":
            return self.config.has_saliency_view and not self.config.attention_control
        return False

    def predict_interactive(self, tasks: list[dict], context: dict, errors: list[tuple] | None = None) -> list[dict]:
        """Auto-Annotation: the ``Spurious`` region at the expert's marks per task, nothing else (no class,
        saliency, influence); a context without a ``Spurious`` mark gets empty results without fetching."""
        served = self.registry.get(self.project_id, self.config.classes)
        results: list[dict] = [{"result": [], "score": 0.0, "model_version": served.version} for _ in tasks]
        marks = spurious_marks(context)
        if not marks:
            return results
        fetched = self._fetch_all(tasks, self.max_side(served.meta.image_size))
        for i, f in enumerate(fetched):
            if isinstance(f, ImageError):
                log.warning("project %s task %s: no interactive proposal: %s", self.project_id, tasks[i].get("id"), f)
                if errors is not None:
                    errors.append((i, str(f), getattr(f, "status", 422)))
        if self._interactive is None:
            self._interactive = InteractiveProposer(self.settings)
        found = self._interactive.answer(self.project_id, self.config, served.version, served.meta.image_size,
                                         fetched, marks)
        for result, regions_ in zip(results, found):
            result["result"] = regions_
            result["score"] = float(regions_[0].get("score") or 0.0) if regions_ else 0.0
        return results

    def predict(
        self, tasks: list[dict], context: dict | None = None, errors: list[tuple] | None = None,
        only: tuple[str, ...] | None = None, lazy_views: bool = False, **kwargs: Any
    ) -> list[dict]:
        """One prediction per task, in order; a task whose image fails gets an empty result (logged,
        and appended to ``errors`` as ``(task index, message, status)`` when a list is given: 413 over a
        memory budget, 503 busy, else 422).

        ``only``: run just these parts (by name). ``lazy_views``: leave out what only a view shows (see
        ``view_only``; the influence part then gives scores without writing pages) — what the worker pushes
        after training (``PUSH_DETAIL=light``)."""
        if context is not None:  # Label Studio's interactive pre-annotation: only the region at the marks
            return self.predict_interactive(tasks, context, errors)
        parts = [p for p in self.parts if only is None or p.name in only]
        config = self.config
        if lazy_views:
            parts = [p for p in parts if not self.view_only(p)]
            config = replace(config, has_influence_view=False)  # influence: the suspicion score, no page
        served = self.registry.get(self.project_id, self.config.classes)
        fetched = self._fetch_all(tasks, self.max_side(served.meta.image_size))
        ok = [i for i, f in enumerate(fetched) if not isinstance(f, ImageError)]
        for i, f in enumerate(fetched):
            if isinstance(f, ImageError):
                log.warning("project %s task %s: no prediction: %s", self.project_id, tasks[i].get("id"), f)
                if errors is not None:
                    errors.append((i, str(f), getattr(f, "status", 422)))
        results: list[dict] = [{"result": [], "score": 0.0, "model_version": served.version} for _ in tasks]
        if not ok:
            return results
        images = [fetched[i] for i in ok]
        probs = classify(served, images, self.settings.predict_batch_size)
        conf, idx = probs.max(dim=1)
        for j, i in enumerate(ok):
            label = served.meta.classes[int(idx[j])]
            results[i]["result"].append(
                regions.choices(label, self.config.class_control, self.config.image_name, score=float(conf[j]))
            )
            results[i]["score"] = float(conf[j])
        ctx = PredictContext(
            project_id=self.project_id,
            settings=self.settings,
            config=config,
            served=served,
            tasks=[tasks[i] for i in ok],
            images=images,
            probs=probs,
            fetcher=self.fetcher,
            label_studio=self.label_studio,
            context=context or None,
        )
        for part in parts:
            try:
                out: PartOutput = part(ctx)
            except Exception:  # one part failing degrades only that part
                ids = [t.get("id") for t in ctx.tasks]
                log.exception("project %s: prediction part %r failed for tasks %s", self.project_id, part.name, ids)
                continue
            for j, i in enumerate(ok):
                results[i]["result"].extend(out.regions[j])
                if out.scores is not None and out.scores[j] is not None:  # one meaning per column: the score stays
                    results[i][SUSPICION] = float(out.scores[j])  # the confidence; a suspicion goes beside it
                    results[i][SUSPICION_BY] = out.kind
        for result in results:
            unique_region_ids(result["result"])
        return results
