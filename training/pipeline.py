"""Records + an image source -> a new published version (the part of a training job that needs no
Label Studio, no HTTP and no queue).

``run_pipeline`` reads top to bottom: start model (``training.start_model``), images (``load_splits``), parent
metrics, paired training (``engine.fit``), new metrics, checkpoint vN saved and published
(``save_version``), report (``curves.png``, ``summary.json`` under ``runs/<version>/``).

Under torchrun (``training.distributed.init`` called first) every rank loads the images and trains
its shard in DDP (``engine.fit``); only rank 0 creates v0 when there is none, evaluates, saves and
publishes the checkpoint and writes the report, while the other ranks wait at a barrier, so exactly
one version appears. The store (``MODEL_DIR``) must be the same directory on every node.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from torch import nn

from label_config.export import TRAIN_SPLIT, VAL_SPLIT, ExportResult
from training import distributed as dist
from training import changes, input_size, propagation, report, stroke_snap
from training.checkpoints import (
    CheckpointMeta,
    CheckpointStore,
    ModelDefaults,
    create_initial_version,
)
from training.dataset import PairedDataset, load_splits
from training.engine import evaluate_splits, fit
from training.gate import decisions, gate
from training.image_cache import ImageCache, VersionedSource
from training.images import ImageSource
from training.input_size import InputSize
from training.options import TrainOptions
from training.progress import Progress
from training.recipe import Recipe, resolve_recipe
from training.start_model import StartModel, is_untrained, start_model

log = logging.getLogger(__name__)


class TrainingDataError(ValueError):
    """The project has nothing to train on (no usable training tasks); the message says why."""


@dataclass
class PipelineResult:
    """The job summary (JSON types) and what a caller may still use: the model, its meta, the splits."""

    summary: dict[str, Any]
    model: nn.Module
    meta: CheckpointMeta
    splits: dict[str, PairedDataset]
    device: str


def _open_writer(run_dir: Path):
    try:
        from torch.utils.tensorboard import SummaryWriter

        return SummaryWriter(log_dir=str(run_dir))
    except Exception as e:  # tensorboard missing or unwritable: train anyway
        log.warning("no TensorBoard event files for %s: %s", run_dir, e)
        return None


def _fresh_run_dir(run_dir: Path, version: str) -> Path:
    if run_dir.exists():  # left by an earlier attempt at this version that failed before saving
        stale = run_dir.with_name(f"{version}-failed-{int(time.time())}")
        run_dir.rename(stale)
        log.info("moved the run folder of an unfinished earlier attempt to %s", stale)
    run_dir.mkdir(parents=True, exist_ok=True)
    return run_dir


def _parent_metrics(parent, classes, splits, device) -> dict[str, Any]:
    if parent is None:
        return {}
    pmodel, pmeta = parent
    if list(pmeta.classes) != list(classes):
        return {"note": "parent has other classes; not evaluated"}
    metrics = evaluate_splits(pmodel.to(device), splits, pmeta.mean, pmeta.std, device, image_size=pmeta.image_size)
    pmodel.cpu()
    return metrics


def _delta(new: dict[str, Any], parent: dict[str, Any]) -> dict[str, float]:
    return {
        s: new[s]["accuracy"] - parent[s]["accuracy"]
        for s in new
        if isinstance(parent.get(s), dict) and parent[s].get("accuracy") is not None and new[s].get("accuracy") is not None
    }


def save_version(store: CheckpointStore, model: nn.Module, meta: CheckpointMeta, run_dir: Path,
                 publish: bool = True) -> tuple[Path, CheckpointMeta, Path]:
    """Save ``meta.version`` (the next free name if another job took it meanwhile) and publish it
    (``publish=False``: kept beside the others, not served)."""
    for _ in range(5):
        try:
            path = store.save(model, meta)
            break
        except FileExistsError:  # another job wrote this version meanwhile: take the next one
            new_version = store.next_version()
            log.warning("version %s appeared meanwhile; saving as %s", meta.version, new_version)
            new_run = store.root / "runs" / new_version
            if run_dir.exists() and not new_run.exists():
                shutil.move(str(run_dir), str(new_run))
            meta.version, run_dir = new_version, new_run
    else:
        raise RuntimeError(f"could not find a free version name in {store.versions_dir}")
    if publish:
        store.publish(meta.version)
    return path, meta, run_dir


def _load_parent(store: CheckpointStore, defaults: ModelDefaults, classes: list[str],
                 main: bool) -> tuple[str, tuple[nn.Module, CheckpointMeta] | None]:
    """The published version to start from and its (model, meta) on the CPU; rank 0 creates v0 when there
    is none, the other ranks wait for it."""
    if main:
        parent_version = store.published() or create_initial_version(store, defaults, classes)
    dist.barrier()  # the other ranks read the v0 rank 0 created
    if not main:
        parent_version = store.published()
    return parent_version, store.load(parent_version, "cpu")


def _input_size(opts: TrainOptions, defaults: ModelDefaults, parent: tuple[nn.Module, CheckpointMeta] | None,
                export: ExportResult, load_image: ImageSource) -> InputSize:
    """The model's input size and why (``training.input_size.for_job``; measures the training images when
    neither IMAGE_SIZE nor the parent chose one)."""
    pmeta = parent[1] if parent is not None else None
    urls = [r.image_url for r in export.records if r.split == TRAIN_SPLIT]
    return input_size.for_job(opts.image_size, opts.mode == "finetune",
                              (pmeta.image_size, pmeta.config, is_untrained(pmeta)) if pmeta else None,
                              defaults.image_size, lambda: input_size.measure(urls, load_image))


def _setup(store: CheckpointStore, opts: TrainOptions, defaults: ModelDefaults, classes: list[str], main: bool,
           device: str, timings: dict[str, float], export: ExportResult, load_image: ImageSource,
           ) -> tuple[str, tuple[nn.Module, CheckpointMeta] | None, StartModel, str]:
    """``(parent_version, parent, start, version)``: the parent, the model to train and the new version's name."""
    t = time.perf_counter()
    parent_version, parent = _load_parent(store, defaults, classes, main)
    size = _input_size(opts, defaults, parent, export, load_image)
    start = start_model(replace(opts, image_size=size.size), defaults, classes, parent)
    start.size = size
    version = store.next_version()
    timings["setup"] = time.perf_counter() - t
    log.info("project store %s: training %s from %s (%s, %s, %dpx) on %s", store.root, version, parent_version,
             start.arch, start.init, start.image_size, device)
    return parent_version, parent, start, version


def _require_train(splits: dict[str, PairedDataset], export: ExportResult) -> PairedDataset:
    """The training split; ``TrainingDataError`` when it is missing or empty."""
    train = splits.get(TRAIN_SPLIT)
    if train is None or len(train) == 0:
        raise TrainingDataError(
            f"no usable training tasks (data.split == {TRAIN_SPLIT!r} with a known class and a readable image); "
            f"export counts: {export.counts()['by_split']}, skipped: {export.counts()['skipped'] or 'none'}"
        )
    return train


def _load_images(export: ExportResult, load_image: ImageSource, image_size: int, classes: list[str],
                 opts: TrainOptions, cache: ImageCache | None, source: VersionedSource | None,
                 progress: Progress, timings: dict[str, float]) -> tuple[dict[str, PairedDataset], dict[str, Any]]:
    """Every split's images (``load_splits``) and the data stats (per split ``memory`` or ``stream``)."""
    progress.phase("images", records=len(export.records))
    t = time.perf_counter()
    data: dict[str, Any] = {}
    splits = load_splits(export, load_image, image_size, classes, opts.num_workers, cache=cache, source=source,
                         memory_budget=opts.memory_budget, progress=progress, stats=data)
    timings["images"] = time.perf_counter() - t
    return splits, data


def _recipe(opts: TrainOptions, n_train: int, start: StartModel, n_val: int = 0) -> Recipe:
    """The concrete options (no ``auto``) for this run, the architecture's reason first."""
    recipe = resolve_recipe(opts, n_train, pretrained=start.pretrained, n_val=n_val)
    size = [start.image_size, start.size.reason if start.size else ""]
    recipe.reasons = {"arch": [start.arch, start.arch_reason], "image_size": size, **recipe.reasons}
    return recipe


def _propagate(train: PairedDataset, opts: TrainOptions, device: str,
               timings: dict[str, float]) -> tuple[Any, Any, dict]:
    """``(train_fit, mask_net, propagated)``: the training set with its painted masks snapped to the regions
    they cover (``stroke_snap``) and propagated masks (``propagation_step``); the counts of both."""
    t = time.perf_counter()
    # trained with the snapped and propagated masks; evaluated, indexed and counted as the expert painted it
    snapped_train, snapped = stroke_snap.snap_painted(train, opts.stroke_snap)
    timings["snap"] = time.perf_counter() - t
    train_fit, net, propagated = propagation.propagation_step(
        snapped_train, opts.propagated_masks, opts.propagation_confidence, seed=opts.seed, device=device)
    timings["propagate"] = time.perf_counter() - t - timings["snap"]
    return train_fit, net, {**snapped, **propagated}


def _eval_parent(parent: tuple[nn.Module, CheckpointMeta] | None, classes: list[str],
                 splits: dict[str, PairedDataset], device: str, main: bool, progress: Progress,
                 timings: dict[str, float]) -> dict[str, Any]:
    """The parent's metrics on every split (rank 0 only; ``{}`` elsewhere)."""
    progress.phase("eval", which="parent")
    t = time.perf_counter()
    parent_metrics = _parent_metrics(parent, classes, splits, device) if main else {}
    timings["eval_parent"] = time.perf_counter() - t
    return parent_metrics


def _log_config(writer: Any, opts: TrainOptions, start: StartModel, parent_version: str,
                extra_config: dict | None) -> None:
    """The run's configuration as a TensorBoard text entry."""
    writer.add_text("config", "```\n" + json.dumps({"options": opts.to_dict(), "init": start.init,
                                                     "parent": parent_version, **(extra_config or {})},
                                                    indent=1, default=str) + "\n```")


def _train(store: CheckpointStore, version: str, start: StartModel, train_fit: Any,
           splits: dict[str, PairedDataset], opts: TrainOptions, device: str, progress: Progress,
           parent_version: str, extra_config: dict | None, main: bool,
           timings: dict[str, float]) -> tuple[dict[str, Any], Path]:
    """Paired training (``engine.fit``), logged to TensorBoard under ``runs/<version>/`` on rank 0;
    returns the history and the run folder."""
    progress.phase("train", epochs=opts.epochs)
    run_dir = _fresh_run_dir(store.root / "runs" / version, version) if main else store.root / "runs" / version
    writer = _open_writer(run_dir) if main else None
    if writer is not None:
        _log_config(writer, opts, start, parent_version, extra_config)
    eval_sets = {k: v for k, v in splits.items() if k != TRAIN_SPLIT}
    t = time.perf_counter()
    try:
        history = fit(start.model, train_fit, opts, start.mean, start.std, device, eval_sets, progress, writer)
    finally:
        if writer is not None:
            writer.close()
    timings["train"] = time.perf_counter() - t
    return history, run_dir


def _follower_result(store: CheckpointStore, parent_version: str, start: StartModel,
                     splits: dict[str, PairedDataset], device: str, timings: dict[str, float]) -> PipelineResult:
    """A rank other than 0: wait until rank 0 has evaluated, saved, published and reported."""
    dist.barrier()
    summary = {"version": store.published(), "parent": parent_version, "published": False, "rank": dist.rank(),
               "world_size": dist.world_size(), "timings": {k: round(v, 3) for k, v in timings.items()}}
    return PipelineResult(summary, start.model, None, splits, device)  # type: ignore[arg-type]


def _eval_new(start: StartModel, splits: dict[str, PairedDataset], device: str, progress: Progress,
              timings: dict[str, float]) -> dict[str, Any]:
    """The new model's metrics on every split."""
    progress.phase("eval", which="new")
    t = time.perf_counter()
    new_metrics = evaluate_splits(start.model, splits, start.mean, start.std, device)
    timings["eval_new"] = time.perf_counter() - t
    timings["eval"] = timings["eval_parent"] + timings["eval_new"]
    return new_metrics


def _version_meta(version: str, parent_version: str, start: StartModel, classes: list[str], recipe: Recipe,
                  device: str, counts: dict[str, Any], metrics: dict[str, Any],
                  extra_config: dict | None) -> CheckpointMeta:
    """The new version's checkpoint meta: what it is, how it was trained (``config``), its ``metrics``."""
    config = {"options": recipe.opts.to_dict(), "recipe": recipe.reasons, "init": start.init, "device": device,
              "input_size": start.size.to_dict() if start.size else None,
              "counts": {k: v for k, v in counts.items() if k != "skipped_ids"}, **(extra_config or {})}
    return CheckpointMeta(
        version=version, arch=start.arch, classes=list(classes), image_size=start.image_size,
        mean=tuple(start.mean), std=tuple(start.std), parent_version=parent_version,
        config=report.jsonable(config), metrics=report.jsonable(metrics),
    )


def _publish(store: CheckpointStore, model: nn.Module, meta: CheckpointMeta, run_dir: Path, held_back: str | None,
             mask_net: nn.Module | None, propagated: dict) -> tuple[Path, CheckpointMeta, Path]:
    """Save the new version (published unless ``held_back`` says why not) and its mask-propagation net."""
    model.cpu()
    path, meta, run_dir = save_version(store, model, meta, run_dir, publish=held_back is None)
    if mask_net is not None:
        propagation.save(mask_net, propagation.net_path(store.root, meta.version),
                         {"version": meta.version, **propagated})
    return path, meta, run_dir


def _log_outcome(store: CheckpointStore, version: str, parent_version: str, held_back: str | None,
                 parent_metrics: dict[str, Any], new_metrics: dict[str, Any]) -> None:
    """Log whether ``version`` was published and its accuracy per split against the parent's."""
    if held_back:
        log.warning("project store %s: %s kept but NOT published (%s serves on): %s", store.root, version,
                    parent_version, held_back)
    log.info("project store %s: %s %s (parent %s): %s", store.root, "kept" if held_back else "published", version,
             parent_version,
             ", ".join(f"{s} {parent_metrics.get(s, {}).get('accuracy') if isinstance(parent_metrics.get(s), dict) else None}"
                       f" -> {m['accuracy']}" for s, m in new_metrics.items()))


def run_pipeline(
    store: CheckpointStore,
    classes: list[str],
    export: ExportResult,
    opts: TrainOptions,
    load_image: ImageSource,
    defaults: ModelDefaults,
    progress: Progress | None = None,
    extra_config: dict | None = None,
    cache: ImageCache | None = None,
    source: VersionedSource | None = None,
    saliency_method: str = "grad",
) -> PipelineResult:
    """Records -> new published version. ``summary`` keys: version, parent, published, arch, image_size,
    classes, init, device, metrics (parent/new/delta_accuracy), counts, history, timings, options (as used:
    no ``auto`` left), recipe (per chosen option ``[value, reason]``), checkpoint, run_dir, curves, data (per
    split ``memory`` or ``stream``; ``cache``: its counts), changes and attention (``training.changes``,
    with ``saliency_method``'s maps). ``cache``: images go through this on-disk cache, fetched with
    ``source`` (the worker's ``ImageFetcher.fetch_versioned``; default ``load_image``, always fetched), and a
    split larger than ``opts.memory_budget`` streams from it (``load_splits``); pruned after training."""
    progress = progress or Progress()
    device = opts.torch_device()
    timings: dict[str, float] = {}

    main = dist.is_main()
    parent_version, parent, start, version = _setup(store, opts, defaults, classes, main, device, timings, export,
                                                    load_image)

    splits, data = _load_images(export, load_image, start.image_size, classes, opts, cache, source, progress, timings)
    train = _require_train(splits, export)
    recipe = _recipe(opts, len(train), start, n_val=len(splits[VAL_SPLIT]) if VAL_SPLIT in splits else 0)
    opts = recipe.opts
    train_fit, mask_net, propagated = _propagate(train, opts, device, timings)
    log.info("recipe: %s", "; ".join(f"{k}={v[0]} ({v[1]})" for k, v in recipe.reasons.items()))

    parent_metrics = _eval_parent(parent, classes, splits, device, main, progress, timings)
    history, run_dir = _train(store, version, start, train_fit, splits, opts, device, progress, parent_version,
                              extra_config, main, timings)
    if not main:  # rank 0 evaluates, saves, publishes and reports; wait until it has
        return _follower_result(store, parent_version, start, splits, device, timings)
    new_metrics = _eval_new(start, splits, device, progress, timings)

    progress.phase("save")
    t = time.perf_counter()
    counts = export.counts()
    counts.update(train_images=len(train), train_painted=train.n_painted, **propagated)
    delta = _delta(new_metrics, parent_metrics)
    metrics = {**new_metrics, "parent": parent_metrics, "delta_accuracy": delta, "epochs": history["epochs"]}
    meta = _version_meta(version, parent_version, start, classes, recipe, device, counts, metrics, extra_config)
    decision = gate(new_metrics, parent_metrics, opts.max_regression)
    held_back = decision.held_back
    path, meta, run_dir = _publish(store, start.model, meta, run_dir, held_back, mask_net, propagated)
    version = meta.version
    timings["save"] = time.perf_counter() - t
    if cache is not None:  # keep the cache within its bound (entries of running jobs are spared)
        data["cache"]["pruned"] = cache.prune()[0]
    _log_outcome(store, version, parent_version, held_back, parent_metrics, new_metrics)
    t = time.perf_counter()
    compared = changes.compare_versions(parent, changes.Looker.of(start.model, start.mean, start.std, start.image_size,
                                        saliency_method, device), splits, train_fit, classes, run_dir)
    timings["compare"] = time.perf_counter() - t

    summary = {
        "version": version, "parent": parent_version, "published": held_back is None,
        "not_published": held_back,
        "arch": start.arch, "image_size": start.image_size,
        "input_size": start.size.to_dict() if start.size else None, "classes": list(classes), "init": start.init,
        "device": device,
        "metrics": {"parent": parent_metrics, "new": new_metrics, "delta_accuracy": delta},
        "counts": counts, "history": history["epochs"],
        "timings": {k: round(v, 3) for k, v in timings.items()},
        "options": opts.to_dict(), "recipe": recipe.reasons, "checkpoint": str(path), "run_dir": str(run_dir),
        "data": data, "decisions": decisions(decision, history), **compared,
    }
    report.write_version_report(store.root.name, summary, start.arch, opts, history, parent_metrics, run_dir)
    if dist.active():
        summary["world_size"] = dist.world_size()
        dist.barrier()  # the checkpoint and the report are there: the other ranks may return
    return PipelineResult(report.jsonable(summary), start.model, meta, splits, device)
