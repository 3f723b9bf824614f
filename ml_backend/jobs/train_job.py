"""The RQ training job: ``train_project(project_id, options)``, and the part it shares with
``robustar train`` (``ml_backend.jobs.train_cli``): ``train_tasks`` (export tasks -> published version ->
index -> predictions -> summary).

export (label-studio-sdk JSON export) -> records (``label_config.export``) -> the training pipeline
(``training.pipeline``: images, paired training, evaluation, checkpoint vN saved and published) ->
influence index of vN -> (best effort) vN's predictions pushed to Label Studio and the project's
``model_version`` set to vN.

Configuration comes from ``Settings.from_env()`` (``TRAIN_*`` for the training options, which
``options`` overrides per job). Images are fetched under the same fetch policy as the backend's.
Progress goes to the RQ job's meta. A failure before the checkpoint is published raises (RQ keeps
the traceback; the last good version stays served); a failure of the index or of the push is
logged and reported in the result.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

from rq import get_current_job

from label_config.export import TRAIN_SPLIT, VAL_SPLIT, parse_export
from label_config.render import parse_config
from ml_backend.labelstudio.fetch import FetchPolicy, ImageFetcher
from ml_backend.predict.influence import build_influence_index
from ml_backend.jobs.queue import rq_progress_sink
from ml_backend.labelstudio.client import fetch_export, fetch_project, make_client
from ml_backend.jobs.model_card import ModelCard, decision_line, training_version
from ml_backend.predict.pages import report_url
from ml_backend.jobs.push_predictions import backend_predictor, push_predictions
from ml_backend.predict.registry import model_defaults
from ml_backend.settings import Settings
from ml_backend.jobs.versions import remember_selection
from training import distributed as dist
from training.checkpoints import CheckpointStore
from training.image_cache import ImageCache
from training.options import TrainOptions
from training.pipeline import PipelineResult, run_pipeline
from training.progress import Progress
from training.report import write_summary

log = logging.getLogger(__name__)


def job_options(settings: Settings, overrides: dict | None) -> TrainOptions:
    """``TRAIN_*`` defaults (falling back to the backend's SEED/DEVICE/FETCH_WORKERS) <- job options."""
    base = {"seed": settings.seed, "device": settings.device, "num_workers": settings.fetch_workers}
    return TrainOptions.resolve(settings.train_env, overrides, base)


def image_cache(settings: Settings, project_id: int | None = None) -> ImageCache:
    """The machine's training image cache: ``TRAIN_CACHE_DIR`` (default ``MODEL_DIR/cache``), pruned to
    ``TRAIN_CACHE_MAX_BYTES`` after each job, sparing entries used within ``TRAIN_JOB_TIMEOUT``. Its entries
    are the project's own (keyed by Label Studio's origin and the project as well as the URL): an image one
    project fetched is never handed to another without that project's own authorised fetch."""
    root = settings.train_cache_dir or Path(settings.model_dir) / "cache"
    namespace = f"{settings.label_studio_url or ''}|project-{project_id}" if project_id is not None else ""
    return ImageCache(root, settings.train_cache_max_bytes, grace_s=settings.train_job_timeout, namespace=namespace)


def suspicion_decision(result: PipelineResult) -> dict[str, Any]:
    """Which split the suspicion ranking is built from: the val split's errors, never test's."""
    val = result.splits.get(VAL_SPLIT)
    if val is not None and len(val):
        return {"split": VAL_SPLIT, "note": f"suspicion ranks training tasks by their harm to the misclassified "
                                            f"{VAL_SPLIT} tasks ({len(val)} val images); test is not used"}
    return {"split": None, "note": f"no {VAL_SPLIT} split: suspicion is self-influence only (test is not used)"}


def build_index(settings: Settings, store: CheckpointStore, result: PipelineResult) -> str | None:
    """Build vN's influence index from the images already in memory, so the predictions pushed next
    carry influence and suspicion (ranked on the val split's errors). Best effort: the backend can still
    build it lazily."""
    if "influence" not in settings.predict_parts:
        return None
    version = result.meta.version
    val = result.splits.get(VAL_SPLIT)
    try:
        build_influence_index(
            store, version, result.splits[TRAIN_SPLIT], val if val is not None and len(val) else None,
            model=result.model.eval(), meta=result.meta, device=result.device,
            batch_size=settings.influence_batch_size, score=settings.influence_score, ranked_on=VAL_SPLIT,
        )
        return "built"
    except Exception as e:
        log.warning("project store %s: influence index for %s not built: %s", store.root, version, e)
        return f"failed: {e}"


def _sinks(*sinks):
    """One progress sink feeding several."""
    live = [s for s in sinks if s is not None]

    def feed(state: dict) -> None:
        for sink in live:
            sink(state)

    return feed


def train_project(project_id: int, options: dict | None = None) -> dict[str, Any]:
    """Train a new model version for a Label Studio project; returns a JSON-serialisable summary.

    Summary keys: those of ``training.pipeline.run_pipeline`` plus ``project``, ``job_id``,
    ``influence_index``, ``predictions`` (push result) and ``report``; ``timings`` adds export,
    decode, index, predictions and total. Label Studio's model card shows the progress and the result.
    """
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    project_id = int(project_id)
    settings = Settings.from_env()
    client = make_client(settings.label_studio_url, settings.label_studio_api_key)
    store = CheckpointStore(settings.model_dir, project_id)
    card = ModelCard.for_project(client, project_id, settings)
    card.served = store.published()
    try:
        return _train(settings, client, store, card, project_id, options)
    except Exception as e:
        card.show_failure("training", e, served=store.published())
        raise


def _train(settings: Settings, client, store: CheckpointStore, card: ModelCard, project_id: int,
           options: dict | None) -> dict[str, Any]:
    t_start = time.perf_counter()
    opts = job_options(settings, options)
    job = get_current_job()
    card.training = training_version(store)
    progress = Progress(_sinks(rq_progress_sink(job), card.progress), project_id=project_id,
                        job_id=getattr(job, "id", None))

    progress.phase("export")
    t = time.perf_counter()
    label_config = getattr(fetch_project(client, project_id), "label_config", None)
    if not label_config:
        raise ValueError(f"project {project_id} has no label config")
    tasks = fetch_export(client, project_id)
    if settings.train_gpus > 1:  # TRAIN_GPUS=N: the same job under torchrun, N processes (ml_backend.jobs.launch)
        summary = train_under_torchrun(settings, project_id, label_config, tasks, options, progress,
                                       export_s=time.perf_counter() - t, t_start=t_start)
    else:
        summary = train_tasks(settings, store, project_id, label_config, tasks, opts, progress, client=client,
                              timings={"export": time.perf_counter() - t}, t_start=t_start)
    version = summary["version"]
    decided = decision_line(summary)
    if summary["published"]:
        card.show(f"serving {version}", force=True,
                  description=f"{version}: report {summary['report']} · {decided}" if summary["report"] else decided)
    else:
        card.show(f"serving {summary['parent']} · {version} kept, not published: {summary['not_published']}",
                  force=True, description=decided)
    return summary


def train_under_torchrun(settings: Settings, project_id: int, label_config: str, tasks: list[dict],
                         options: dict | None, progress: Progress, *, export_s: float, t_start: float) -> dict[str, Any]:
    """``train_tasks`` in ``TRAIN_GPUS`` processes (``robustar train`` under torchrun); rank 0's summary, with
    the export's and the whole job's seconds. Rank 0's progress reaches this job's sinks."""
    from ml_backend.jobs.launch import train_distributed

    t = time.perf_counter()
    summary = train_distributed(settings.train_gpus, project_id, label_config, tasks, options or {}, progress.sink,
                                job_id=progress.job_id)
    # torchrun: the processes' whole life (start-up, imports, rendezvous, the job); total: the whole RQ job
    summary.setdefault("timings", {}).update(export=round(export_s, 3), torchrun=round(time.perf_counter() - t, 3),
                                             total=round(time.perf_counter() - t_start, 3))
    try:
        write_summary(Path(summary["run_dir"]), summary)
    except (OSError, KeyError) as e:
        log.warning("could not update the run summary of %s: %s", summary.get("version"), e)
    return summary


def train_tasks(settings: Settings, store: CheckpointStore, project_id: int, label_config: str, tasks: list[dict],
                opts: TrainOptions, progress: Progress, *, client=None, timings: dict[str, float] | None = None,
                t_start: float | None = None) -> dict[str, Any]:
    """A Label Studio JSON export's ``tasks`` -> vN trained, published and indexed, and (with a Label
    Studio ``client`` and ``opts.push_predictions``) vN's predictions pushed; returns the job summary.

    The worker's job and ``robustar train`` both run this. Images are fetched under the backend's
    fetch policy. Under torchrun every rank trains; only rank 0 publishes, indexes, pushes and writes
    the summary, and the other ranks return the pipeline's short summary (``"published": False``).
    """
    t_start = time.perf_counter() if t_start is None else t_start
    timings = dict(timings or {})
    progress.phase("decode", tasks=len(tasks))
    t = time.perf_counter()
    config = parse_config(label_config)
    export = parse_export(tasks, config, label_source=opts.label_source)
    timings["decode"] = time.perf_counter() - t

    fetcher = ImageFetcher(settings.label_studio_url, settings.label_studio_api_key, FetchPolicy.from_settings(settings),
                           project_id=project_id)
    if settings.pinned_version and dist.is_main():
        log.warning("MODEL_VERSION=%s pins the served version; the new version is published but not served "
                    "until the pin is removed", settings.pinned_version)
    result = run_pipeline(store, config.classes, export, opts, fetcher.fetch, model_defaults(settings), progress,
                          extra_config={"project_id": project_id, "job_id": progress.job_id},
                          cache=image_cache(settings, project_id), source=fetcher.fetch_versioned,
                          saliency_method=settings.saliency_method)
    summary = result.summary
    if summary.get("rank", 0):  # a rank other than 0 under torchrun: rank 0 does the rest
        return summary
    version = summary["version"]
    timings.update(summary["timings"])

    t = time.perf_counter()
    summary["influence_index"] = build_index(settings, store, result) if summary["published"] else None
    if summary["influence_index"] is not None:
        summary.setdefault("decisions", {})["suspicion"] = suspicion_decision(result)
    timings["index"] = time.perf_counter() - t

    predictions: dict[str, Any] = {"skipped": "push_predictions is off"}
    if not summary["published"]:  # a regression is kept, never shown as the project's version
        predictions = {"skipped": f"{version} was not published: {summary['not_published']}"}
    elif opts.push_predictions and client is None:
        predictions = {"skipped": "no Label Studio project to push to (trained from an export file)"}
    elif opts.push_predictions:
        progress.phase("predictions", version=version)
        t = time.perf_counter()
        try:
            predict = backend_predictor(settings, project_id, label_config, version)
            predictions = push_predictions(client, project_id, tasks, predict, version, batch_size=64)
            remember_selection(store, version)  # the project now shows vN: not a user's choice to act on
        except Exception as e:
            log.exception("project %s: pushing predictions of %s failed (the version is published anyway)",
                          project_id, version)
            predictions = {"error": f"{type(e).__name__}: {e}"}
        timings["predictions"] = time.perf_counter() - t
    timings["total"] = time.perf_counter() - t_start

    summary.update(project=project_id, job_id=progress.job_id, predictions=predictions,
                   report=report_url(settings, project_id, version),
                   timings={k: round(v, 3) for k, v in timings.items()})
    try:
        write_summary(Path(summary["run_dir"]), summary)
    except OSError as e:
        log.warning("could not update the run summary of %s: %s", version, e)
    progress.phase("done", version=version)
    log.info("project %s: job done in %.1fs: %s %s (parent %s); timings %s", project_id, timings["total"],
             version, "published" if summary["published"] else "kept, not published", summary["parent"],
             summary["timings"])
    return summary
