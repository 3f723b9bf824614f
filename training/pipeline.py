"""Records + an image source -> a new published version (the part of a training job that needs no
Label Studio, no HTTP and no queue).

``run_pipeline`` reads top to bottom: start model (``start_model``), images (``load_splits``), parent
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
import math
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from label_config.export import TEST_SPLIT, TRAIN_SPLIT, ExportResult
from training import distributed as dist
from training import propagation, report
from training.checkpoints import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    CheckpointMeta,
    CheckpointStore,
    ModelDefaults,
    create_initial_version,
)
from training.dataset import PairedDataset, load_splits
from training.engine import evaluate_splits, fit
from training.image_cache import ImageCache, VersionedSource
from training.images import ImageSource
from training.models import build_model, classifier_head, load_pretrained_backbone
from training.options import OptionsError, TrainOptions
from training.progress import Progress
from training.recipe import choose_arch, resolve_recipe

log = logging.getLogger(__name__)


class TrainingDataError(ValueError):
    """The project has nothing to train on (no usable training tasks); the message says why."""


@dataclass
class StartModel:
    """The model training starts from, and what it inherits."""

    model: nn.Module
    arch: str
    image_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    init: str  # human-readable description of where the weights came from
    pretrained: bool = False  # the weights were trained elsewhere (MODEL_CHECKPOINT v0, pretrained:<path>)
    arch_reason: str = ""


@dataclass
class PipelineResult:
    """The job summary (JSON types) and what a caller may still use: the model, its meta, the splits."""

    summary: dict[str, Any]
    model: nn.Module
    meta: CheckpointMeta
    splits: dict[str, PairedDataset]
    device: str


def _head_keys(model: nn.Module) -> set[str]:
    head = classifier_head(model)
    prefix = next(name for name, mod in model.named_modules() if mod is head)
    return {f"{prefix}.{k}" for k in head.state_dict()}


def _untrained(meta: CheckpointMeta) -> bool:
    """A v0 of seeded random weights (no MODEL_CHECKPOINT): fine-tuning it is training from scratch."""
    return meta.version == "v0" and str((meta.config or {}).get("source", "")).startswith("random init")


def _given_weights(meta: CheckpointMeta) -> bool:
    """A v0 of the weights at MODEL_CHECKPOINT (trained elsewhere; ``create_initial_version`` names the file
    and what it did not load), as opposed to a random init or a v0 trained here (the demo's)."""
    return meta.version == "v0" and "(not loaded:" in str((meta.config or {}).get("source", ""))


def _finetune_parent(opts: TrainOptions, classes: list[str], parent: tuple[nn.Module, CheckpointMeta] | None) -> StartModel:
    if parent is None:
        raise OptionsError("mode finetune needs a published version to start from")
    pmodel, pmeta = parent
    size = opts.image_size or pmeta.image_size
    if _untrained(pmeta) and not opts.arch:
        arch, why = choose_arch(None, pmeta.arch, size)
        if arch != pmeta.arch:  # nothing to keep from random weights: start the better-suited model
            torch.manual_seed(opts.seed)
            init = f"random init (seed {opts.seed}; {pmeta.version} is untrained)"
            return StartModel(build_model(arch, len(classes)), arch, size, tuple(pmeta.mean), tuple(pmeta.std), init,
                              arch_reason=f"{pmeta.version} is untrained; {why}")
    if opts.arch and opts.arch != pmeta.arch:
        raise OptionsError(
            f"mode finetune keeps the parent's architecture ({pmeta.arch}); "
            f"use mode scratch or pretrained:<path> to train a {opts.arch}"
        )
    model = build_model(pmeta.arch, len(classes))
    state = pmodel.state_dict()
    if list(pmeta.classes) == list(classes):
        model.load_state_dict(state)
        init = f"fine-tuned from {pmeta.version}"
    else:
        head = _head_keys(model)
        model.load_state_dict({k: v for k, v in state.items() if k not in head}, strict=False)
        init = f"fine-tuned from {pmeta.version} with a new classifier head (classes {pmeta.classes} -> {classes})"
        log.warning("finetune: %s", init)
    given = _given_weights(pmeta)
    return StartModel(model, pmeta.arch, size, tuple(pmeta.mean), tuple(pmeta.std), init, pretrained=given,
                      arch_reason=f"finetune keeps the parent's ({pmeta.version})")


def start_model(opts: TrainOptions, defaults: ModelDefaults, classes: list[str],
                parent: tuple[nn.Module, CheckpointMeta] | None) -> StartModel:
    """Build the model for ``opts.mode``: finetune the parent, random init, or pretrained weights."""
    if opts.mode == "finetune":
        return _finetune_parent(opts, classes, parent)
    torch.manual_seed(opts.seed)
    size = opts.image_size or defaults.image_size
    arch, arch_reason = choose_arch(opts.arch, defaults.arch, size, fresh=not opts.pretrained_path)
    model = build_model(arch, len(classes))
    if opts.pretrained_path:
        path = Path(opts.pretrained_path)
        if not path.is_file():
            raise OptionsError(f"mode pretrained: no weights file at {path}")
        skipped = load_pretrained_backbone(model, path)
        init = f"pretrained weights {path} (not loaded: {skipped or 'none'})"
    else:
        init = f"random init (seed {opts.seed})"
    return StartModel(model, arch, size, IMAGENET_MEAN, IMAGENET_STD, init, pretrained=bool(opts.pretrained_path),
                      arch_reason=arch_reason)


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


def regression(new: dict[str, Any], parent: dict[str, Any], max_drop: float) -> str | None:
    """Why a new version must not be published (None: publish): its accuracy on the held-out split fell
    below its parent's by more than ``max_drop`` and more than the split's size can explain (1/√n, about
    two binomial standard deviations at 50%, so a handful of test images never blocks a version)."""
    n, old = new.get(TEST_SPLIT, {}), parent.get(TEST_SPLIT)
    if not (isinstance(old, dict) and old.get("accuracy") is not None and n.get("accuracy") is not None and n.get("n")):
        return None
    allowed = max(max_drop, 1.0 / math.sqrt(n["n"]))
    drop = old["accuracy"] - n["accuracy"]
    if drop <= allowed:
        return None
    return (f"{TEST_SPLIT} accuracy {n['accuracy']:.3f} is {drop:.3f} below the parent's {old['accuracy']:.3f} "
            f"(allowed {allowed:.3f}: TRAIN_MAX_REGRESSION {max_drop:g}, 1/sqrt({n['n']}) test images)")


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
) -> PipelineResult:
    """Records -> new published version. ``summary`` keys: version, parent, published, arch,
    image_size, classes, init, device, metrics (parent/new/delta_accuracy), counts, history,
    timings, options (as used: no ``auto`` left), recipe (per chosen option ``[value, reason]``),
    checkpoint, run_dir, curves, data (per split ``memory`` or ``stream``; ``cache``: its counts).

    ``cache``: images go through this on-disk cache, fetched with ``source`` (the worker's
    ``ImageFetcher.fetch_versioned``; default ``load_image``, always fetched), and a split larger than
    ``opts.memory_budget`` streams from it (``training.dataset.load_splits``); the cache is pruned to its
    bound after training."""
    progress = progress or Progress()
    device = opts.torch_device()
    timings: dict[str, float] = {}

    t = time.perf_counter()
    main = dist.is_main()
    if main:
        parent_version = store.published() or create_initial_version(store, defaults, classes)
    dist.barrier()  # the other ranks read the v0 rank 0 created
    if not main:
        parent_version = store.published()
    parent = store.load(parent_version, "cpu")
    start = start_model(opts, defaults, classes, parent)
    version = store.next_version()
    timings["setup"] = time.perf_counter() - t
    log.info("project store %s: training %s from %s (%s, %s, %dpx) on %s", store.root, version, parent_version,
             start.arch, start.init, start.image_size, device)

    progress.phase("images", records=len(export.records))
    t = time.perf_counter()
    data: dict[str, Any] = {}
    splits = load_splits(export, load_image, start.image_size, classes, opts.num_workers, cache=cache, source=source,
                         memory_budget=opts.memory_budget, progress=progress, stats=data)
    timings["images"] = time.perf_counter() - t
    train = splits.get(TRAIN_SPLIT)
    if train is None or len(train) == 0:
        raise TrainingDataError(
            f"no usable training tasks (data.split == {TRAIN_SPLIT!r} with a known class and a readable image); "
            f"export counts: {export.counts()['by_split']}, skipped: {export.counts()['skipped'] or 'none'}"
        )

    recipe = resolve_recipe(opts, len(train), pretrained=start.pretrained)
    recipe.reasons = {"arch": [start.arch, start.arch_reason], **recipe.reasons}
    opts = recipe.opts
    t = time.perf_counter()
    # trained with the propagated masks; evaluated, indexed and counted as the expert painted it
    train_fit, mask_net, propagated = propagation.propagation_step(
        train, opts.propagated_masks, opts.propagation_confidence, seed=opts.seed, device=device)
    timings["propagate"] = time.perf_counter() - t
    log.info("recipe: %s", "; ".join(f"{k}={v[0]} ({v[1]})" for k, v in recipe.reasons.items()))

    progress.phase("eval", which="parent")
    t = time.perf_counter()
    parent_metrics = _parent_metrics(parent, classes, splits, device) if main else {}
    timings["eval_parent"] = time.perf_counter() - t
    parent = None  # release

    progress.phase("train", epochs=opts.epochs)
    run_dir = _fresh_run_dir(store.root / "runs" / version, version) if main else store.root / "runs" / version
    writer = _open_writer(run_dir) if main else None
    if writer is not None:
        writer.add_text("config", "```\n" + json.dumps({"options": opts.to_dict(), "init": start.init,
                                                         "parent": parent_version, **(extra_config or {})},
                                                        indent=1, default=str) + "\n```")
    eval_sets = {k: v for k, v in splits.items() if k != TRAIN_SPLIT}
    t = time.perf_counter()
    try:
        history = fit(start.model, train_fit, opts, start.mean, start.std, device, eval_sets, progress, writer)
    finally:
        if writer is not None:
            writer.close()
    timings["train"] = time.perf_counter() - t
    if not main:  # rank 0 evaluates, saves, publishes and reports; wait until it has
        dist.barrier()
        summary = {"version": store.published(), "parent": parent_version, "published": False, "rank": dist.rank(),
                   "world_size": dist.world_size(), "timings": {k: round(v, 3) for k, v in timings.items()}}
        return PipelineResult(summary, start.model, None, splits, device)  # type: ignore[arg-type]

    progress.phase("eval", which="new")
    t = time.perf_counter()
    new_metrics = evaluate_splits(start.model, splits, start.mean, start.std, device)
    timings["eval_new"] = time.perf_counter() - t
    timings["eval"] = timings["eval_parent"] + timings["eval_new"]

    progress.phase("save")
    t = time.perf_counter()
    counts = export.counts()
    counts.update(train_images=len(train), train_painted=train.n_painted, **propagated)
    delta = _delta(new_metrics, parent_metrics)
    config = {"options": opts.to_dict(), "recipe": recipe.reasons, "init": start.init, "device": device,
              "counts": {k: v for k, v in counts.items() if k != "skipped_ids"}, **(extra_config or {})}
    metrics = {**new_metrics, "parent": parent_metrics, "delta_accuracy": delta, "epochs": history["epochs"]}
    meta = CheckpointMeta(
        version=version, arch=start.arch, classes=list(classes), image_size=start.image_size,
        mean=tuple(start.mean), std=tuple(start.std), parent_version=parent_version,
        config=report.jsonable(config), metrics=report.jsonable(metrics),
    )
    start.model.cpu()
    held_back = regression(new_metrics, parent_metrics, opts.max_regression)
    path, meta, run_dir = save_version(store, start.model, meta, run_dir, publish=held_back is None)
    version = meta.version
    if mask_net is not None:
        propagation.save(mask_net, propagation.net_path(store.root, version), {"version": version, **propagated})
    timings["save"] = time.perf_counter() - t
    if cache is not None:  # keep the cache within its bound (entries of running jobs are spared)
        data["cache"]["pruned"] = cache.prune()[0]
    if held_back:
        log.warning("project store %s: %s kept but NOT published (%s serves on): %s", store.root, version,
                    parent_version, held_back)
    log.info("project store %s: %s %s (parent %s): %s", store.root, "kept" if held_back else "published", version,
             parent_version,
             ", ".join(f"{s} {parent_metrics.get(s, {}).get('accuracy') if isinstance(parent_metrics.get(s), dict) else None}"
                       f" -> {m['accuracy']}" for s, m in new_metrics.items()))

    summary = {
        "version": version, "parent": parent_version, "published": held_back is None,
        "not_published": held_back,
        "arch": start.arch, "image_size": start.image_size, "classes": list(classes), "init": start.init,
        "device": device,
        "metrics": {"parent": parent_metrics, "new": new_metrics, "delta_accuracy": delta},
        "counts": counts, "history": history["epochs"],
        "timings": {k: round(v, 3) for k, v in timings.items()},
        "options": opts.to_dict(), "recipe": recipe.reasons, "checkpoint": str(path), "run_dir": str(run_dir),
        "data": data,
    }
    t = time.perf_counter()
    title = f"{store.root.name} {version} (from {parent_version}, {start.arch}, λ={opts.lam}, {opts.noise_mode})"
    try:
        baseline = {k: v.get("accuracy") for k, v in parent_metrics.items() if isinstance(v, dict)}
        png = report.save_curves(history, run_dir / "curves.png", title, baseline)
        summary["curves"] = str(png) if png else None
        report.write_summary(run_dir, summary)
    except Exception as e:  # reporting must not fail a published version
        log.warning("could not write curves/summary under %s: %s", run_dir, e)
    summary["timings"]["report"] = round(time.perf_counter() - t, 3)
    if dist.active():
        summary["world_size"] = dist.world_size()
        dist.barrier()  # the checkpoint and the report are there: the other ranks may return
    return PipelineResult(report.jsonable(summary), start.model, meta, splits, device)
