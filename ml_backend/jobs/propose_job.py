"""The RQ proposal job: ``propose_project(project_id)`` fits the mask net to the painted images and pushes
its proposals for every other training image, without training the classifier (issue 23).

export -> records (``label_config.export``) -> the training tasks' painted masks (latest annotation; an
expert's correction of a proposal is painted too) -> those images fetched and resized to the served
version's input size, strokes snapped as training does (``training.stroke_snap``, per
``TRAIN_STROKE_SNAP``) -> ``training.propagation.train_mask_net`` -> saved as the served version's
proposals net (``propagation.proposals_path``; ``PropagationPart`` serves it when newer than the
version's own) -> for every unpainted training task, the backend's full prediction of the served vN
(``backend_predictor``: class, score and the new ``Spurious`` proposal) replaces that task's old vN
prediction (``replace_predictions``: one prediction of vN per task; other versions' kept). The project's
``model_version`` stays vN; the model card says ``proposing masks: k of n``, then
``serving vN · proposals from K painted images``.

Skipped, with the reason in the result, when fewer than ``PROPOSE_AFTER_PAINTED`` (job option
``min_painted``) training images are painted, when no version is served, when nothing is left to propose
for, when the painted masks did not change since the last push, or when a newer version was published
while fitting.
"""

from __future__ import annotations

import hashlib
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from rq import get_current_job

from label_config.export import TRAIN_SPLIT, TaskRecord, parse_export
from label_config.render import parse_config
from ml_backend.jobs.model_card import VERSION_NAME, ModelCard
from ml_backend.jobs.push_predictions import PredictFn, backend_predictor, push_predictions
from ml_backend.jobs.replace_predictions import Replacing, version_predictions
from ml_backend.jobs.queue import rq_progress_sink
from ml_backend.jobs.train_job import job_options
from ml_backend.labelstudio.client import fetch_export, fetch_project, make_client
from ml_backend.labelstudio.fetch import FetchPolicy, ImageFetcher
from ml_backend.settings import Settings
from training import propagation
from training.checkpoints import CheckpointStore
from training.files import atomic_write
from training.images import resize_mask, resize_rgb
from training.models import torch_threads
from training.stroke_snap import snap_masks

log = logging.getLogger(__name__)

PUSH_BATCH = 64  # tasks predicted and stored per request


def propose_project(project_id: int, options: dict | None = None) -> dict[str, Any]:
    """Fit the mask net to a project's painted training images and push proposals for the others;
    returns a JSON summary (``status`` proposed | skipped, ``reason``, counts, ``timings``)."""
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    project_id = int(project_id)
    settings = Settings.from_env()
    client = make_client(settings.label_studio_url, settings.label_studio_api_key)
    store = CheckpointStore(settings.model_dir, project_id)
    served = settings.pinned_version or store.published()
    card = ModelCard.for_project(client, project_id, settings)
    card.served = served
    try:
        return _propose(settings, client, store, card, project_id, served, options or {})
    except Exception as e:
        card.show_failure("proposing masks", e, served=served)
        raise


def _skip(reason: str, summary: dict[str, Any]) -> dict[str, Any]:
    log.info("project %s: mask proposals skipped: %s", summary["project"], reason)
    return {**summary, "status": "skipped", "reason": reason}


def _propose(settings: Settings, client, store: CheckpointStore, card: ModelCard, project_id: int,
             served: str | None, options: dict) -> dict[str, Any]:
    t_start = time.perf_counter()
    timings: dict[str, float] = {}
    job = get_current_job()
    min_painted = int(options.get("min_painted") or settings.propose_after_painted or 1)
    summary: dict[str, Any] = {"project": project_id, "job_id": getattr(job, "id", None), "version": served,
                               "min_painted": min_painted}
    if not served or not VERSION_NAME.match(served):
        return _skip("no served version yet (the backend makes v0 when the project is connected)", summary)

    t = time.perf_counter()
    label_config = getattr(fetch_project(client, project_id), "label_config", None)
    if not label_config:
        raise ValueError(f"project {project_id} has no label config")
    tasks = fetch_export(client, project_id)
    timings["export"] = time.perf_counter() - t
    config = parse_config(label_config)
    train = [r for r in parse_export(tasks, config).records if r.split == TRAIN_SPLIT]
    painted = [r for r in train if r.painted]
    unpainted = [r for r in train if not r.painted]
    summary.update(tasks=len(tasks), train=len(train), painted=len(painted), unpainted=len(unpainted))
    if not config.spurious_control:
        return _skip("the label config has no Spurious brush", summary)
    if len(painted) < min_painted:
        return _skip(f"{len(painted)} of {min_painted} training images painted (PROPOSE_AFTER_PAINTED)", summary)
    if not unpainted:
        return _skip("every training image is painted", summary)
    fingerprint = painted_fingerprint(painted)
    if saved_fingerprint(store.root, served) == fingerprint:
        return _skip(f"the painted masks did not change since the last proposals of {served}", summary)

    card.show(f"serving {served} · proposing masks: fitting on {len(painted)} painted images", force=True)
    t = time.perf_counter()
    size = store.read_meta(served).image_size
    images, masks, unreadable = fetch_painted(settings, project_id, painted, size)
    timings["fetch"] = time.perf_counter() - t
    summary["unreadable"] = unreadable
    if len(images) < min_painted:
        return _skip(f"{len(images)} of {len(painted)} painted images could be read", summary)

    t = time.perf_counter()
    snap = job_options(settings, None).stroke_snap
    if snap != "off":
        masks = snap_masks(images, masks)
    with torch_threads(1):  # a tiny net: one thread is as fast, and fair to the backend on the same cores
        net = propagation.train_mask_net(images, masks, seed=settings.seed, device="cpu")
    path = propagation.save(net, propagation.proposals_path(store.root, served),
                            {"version": served, "painted": len(images), "stroke_snap": snap,
                             "job_id": summary["job_id"], "created": time.time()})
    timings["fit"] = time.perf_counter() - t
    summary.update(stroke_snap=snap, net=str(path))
    now = settings.pinned_version or store.published()
    if now != served:  # a training job published meanwhile: its own push carries its proposals
        return _skip(f"{now} was published while fitting; its predictions are the project's now", summary)

    t = time.perf_counter()
    by_id = {int(task["id"]): task for task in tasks if isinstance(task, dict) and "id" in task}
    targets = [by_id[r.task_id] for r in unpainted if r.task_id in by_id]
    pushed, replaced = push_proposals(settings, client, card, job, project_id, served, label_config, config,
                                      targets)
    save_fingerprint(store.root, served, fingerprint)  # after the push: a failed one is redone by the next event
    timings["push"] = time.perf_counter() - t
    timings["total"] = time.perf_counter() - t_start
    card.show(f"serving {served} · proposals from {len(images)} painted images", force=True)
    summary.update(status="proposed", predictions=pushed, replaced=replaced,
                   timings={k: round(v, 3) for k, v in timings.items()})
    log.info("project %s: proposals of %s for %d tasks from %d painted images; timings %s", project_id, served,
             pushed["pushed"], len(images), summary["timings"])
    return summary


def fetch_painted(settings: Settings, project_id: int, painted: list[TaskRecord],
                  size: int) -> tuple[torch.Tensor, torch.Tensor, list[int]]:
    """The painted images (uint8 [N, 3, size, size]) and their masks (bool [N, 1, size, size]), fetched under
    the backend's image policy; the ids of the unreadable ones."""
    fetcher = ImageFetcher(settings.label_studio_url, settings.label_studio_api_key, FetchPolicy.from_settings(settings),
                           project_id=project_id)

    def load(record: TaskRecord) -> tuple[np.ndarray, np.ndarray] | None:
        try:
            return resize_rgb(fetcher.fetch(record.image_url), size), resize_mask(record.mask, size)
        except Exception as e:
            log.warning("project %s task %s: painted image not read: %s", project_id, record.task_id, e)
            return None

    with ThreadPoolExecutor(max(1, settings.fetch_workers)) as pool:
        loaded = list(pool.map(load, painted))
    ok = [x for x in loaded if x is not None]
    bad = [r.task_id for r, x in zip(painted, loaded) if x is None]
    if not ok:
        return torch.zeros(0, 3, size, size, dtype=torch.uint8), torch.zeros(0, 1, size, size, dtype=torch.bool), bad
    images = torch.from_numpy(np.stack([np.asarray(x) for x, _ in ok])).permute(0, 3, 1, 2).contiguous()
    masks = torch.from_numpy(np.stack([m for _, m in ok]).astype(bool))[:, None]
    return images, masks, bad


def painted_fingerprint(painted: list[TaskRecord]) -> str:
    """A digest of the painted tasks and their masks: unchanged, a new fit would propose the same."""
    digest = hashlib.sha256()
    for r in sorted(painted, key=lambda r: r.task_id):
        digest.update(f"{r.task_id}:{r.mask.shape}:".encode())
        digest.update(np.packbits(r.mask).tobytes())
    return digest.hexdigest()


def _fingerprint_path(store_root: Path, version: str) -> Path:
    return propagation.proposals_path(store_root, version).with_suffix(".pushed")


def saved_fingerprint(store_root: Path, version: str) -> str | None:
    """The fingerprint of the painted masks whose proposals were last pushed for ``version`` (None: none)."""
    try:
        return _fingerprint_path(store_root, version).read_text().strip() or None
    except OSError:
        return None


def save_fingerprint(store_root: Path, version: str, fingerprint: str) -> None:
    atomic_write(_fingerprint_path(store_root, version), lambda f: f.write(fingerprint.encode()), durable=False)


def push_proposals(settings: Settings, client, card: ModelCard, job, project_id: int, version: str,
                   label_config: str, config, targets: list[dict]) -> tuple[dict[str, Any], int]:
    """``targets``' predictions of ``version`` replaced by the backend's (with the new proposals); returns
    ``push_predictions``' counts and how many old predictions were deleted."""
    old, others = version_predictions(client, project_id, version)
    predict = Replacing(proposal_predictor(settings, project_id, label_config, version, config),
                        client, project_id, old, others, progress(card, version, len(targets), job))
    pushed = push_predictions(client, project_id, targets, predict, version, batch_size=PUSH_BATCH,
                              set_project_version=False)
    return pushed, predict.replaced


def proposal_predictor(settings: Settings, project_id: int, label_config: str, version: str, config) -> PredictFn:
    """The backend's prediction of ``version`` as the training job pushes it, less the influence part when
    the config shows it as a page (it then adds no region, only the suspicion of a classifier this job does
    not change: already in the tasks' data, and scoring it would write every task again)."""
    parts = settings.predict_parts
    if config.has_influence_view:
        parts = tuple(p for p in parts if p.strip().lower() != "influence")
    return backend_predictor(replace(settings, predict_parts=parts), project_id, label_config, version)


def progress(card: ModelCard, version: str, total: int, job) -> Callable[[int], None]:
    """A callback for the tasks done: the card says ``proposing masks: k of n`` (rate-limited), the job's meta too."""
    sink = rq_progress_sink(job)

    def done(k: int) -> None:
        card.show(f"serving {version} · proposing masks: {k} of {total}", force=k >= total)
        if sink is not None:
            sink({"phase": "propose", "done": k, "total": total})

    return done
