"""The RQ training job: ``train_project(project_id, options)``.

export (label-studio-sdk JSON export) -> decode (records + RLE masks) -> images -> paired training
-> evaluation (parent and new, every split) -> checkpoint vN saved and published -> (best effort)
predictions of vN pushed to Label Studio and the project's ``model_version`` set to vN.

Configuration comes from the environment (``ml_backend.config.Settings.from_env`` and the
``TRAIN_*`` variables of ``training.options``); ``options`` overrides the training options per job.
Progress is written to the RQ job's meta (``training.progress``). A failure before the checkpoint
is published raises (RQ keeps the traceback; the last good version stays served); a failure while
pushing predictions is logged and reported in the result.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from label_config.render import parse_config
from ml_backend.config import Settings
from ml_backend.images import ImageFetcher
from training.checkpoints import CheckpointStore
from training.export import fetch_export, fetch_project, make_client, parse_export
from training.options import TrainOptions
from training.progress import Progress
from training.publish_predictions import backend_predictor, push_predictions
from training.train import run_pipeline

log = logging.getLogger(__name__)


def train_project(project_id: int, options: dict | None = None) -> dict[str, Any]:
    """Train a new model version for a Label Studio project; returns a JSON-serialisable summary.

    Summary keys: ``project``, ``job_id``, ``version``, ``parent``, ``published``, ``metrics``
    (``parent`` / ``new`` accuracy per split, ``delta_accuracy``), ``counts`` (tasks, records per
    split, painted, skipped by reason with task ids), ``timings`` (seconds: export, decode, setup,
    images, eval_parent, train, eval_new, eval, save, report, predictions, total), ``history`` (per epoch), ``options``, ``checkpoint``,
    ``run_dir`` (TensorBoard events, curves.png, summary.json), ``predictions`` (push result).
    """
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    t_start = time.perf_counter()
    project_id = int(project_id)
    settings = Settings.from_env()
    opts = TrainOptions.from_env(options, settings)
    progress = Progress(project_id=project_id)
    timings: dict[str, float] = {}

    progress.phase("export")
    t = time.perf_counter()
    client = make_client(settings.label_studio_url, settings.label_studio_api_key)
    project = fetch_project(client, project_id)
    label_config = getattr(project, "label_config", None)
    if not label_config:
        raise ValueError(f"project {project_id} has no label config")
    config = parse_config(label_config)
    tasks = fetch_export(client, project_id)
    timings["export"] = time.perf_counter() - t

    progress.phase("decode", tasks=len(tasks))
    t = time.perf_counter()
    export = parse_export(tasks, config, label_source=opts.label_source)
    timings["decode"] = time.perf_counter() - t

    store = CheckpointStore(settings.model_dir, project_id)
    fetcher = ImageFetcher(settings.label_studio_url, settings.label_studio_api_key, settings.fetch_timeout)
    if settings.pinned_version:
        log.warning("MODEL_VERSION=%s pins the served version; the new version is published but not served "
                    "until the pin is removed", settings.pinned_version)
    summary = run_pipeline(
        store, settings, config.classes, export, opts, fetcher, progress,
        extra_config={"project_id": project_id, "job_id": progress.job_id},
    )
    timings.update(summary["timings"])

    predictions: dict[str, Any] = {"skipped": "push_predictions is off"}
    if opts.push_predictions:
        progress.phase("predictions", version=summary["version"])
        t = time.perf_counter()
        try:
            predict = backend_predictor(settings, project_id, label_config, summary["version"])
            predictions = push_predictions(client, project_id, tasks, predict, summary["version"], batch_size=64)
        except Exception as e:
            log.exception("project %s: pushing predictions of %s failed (the version is published anyway)",
                          project_id, summary["version"])
            predictions = {"error": f"{type(e).__name__}: {e}"}
        timings["predictions"] = time.perf_counter() - t
    timings["total"] = time.perf_counter() - t_start

    summary.update(
        project=project_id,
        job_id=progress.job_id,
        predictions=predictions,
        timings={k: round(v, 3) for k, v in timings.items()},
    )
    progress.phase("done", version=summary["version"])
    log.info("project %s: job done in %.1fs: %s published (parent %s); timings %s", project_id, timings["total"],
             summary["version"], summary["parent"], summary["timings"])
    return summary
