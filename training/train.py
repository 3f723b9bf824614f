"""Paired fine-tuning of a project's model: records -> images -> train -> evaluate -> new version.

``run_pipeline`` is the part of the RQ job that needs no Label Studio: it takes the parsed export
(``training.export.ExportResult``), fetches the images, trains with ``training.paired.paired_step``,
evaluates the parent and the new model on every split, writes the checkpoint as the next version and
publishes it. Per run it leaves TensorBoard event files, ``curves.png`` and ``summary.json`` under
``<model_dir>/project-<id>/runs/<version>/``.
"""

from __future__ import annotations

import json
import logging
import math
import shutil
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ml_backend.config import Settings
from ml_backend.images import ImageFetcher
from training.checkpoints import IMAGENET_MEAN, IMAGENET_STD, CheckpointMeta, CheckpointStore
from training.dataset import PairedDataset, load_splits
from training.evaluate import evaluate, evaluate_splits
from training.export import TRAIN_SPLIT, ExportResult
from training.models import build_model, classifier_head, load_pretrained_backbone
from training.options import OptionsError, TrainOptions
from training.paired import make_normalizer, paired_step
from training.progress import Progress

log = logging.getLogger(__name__)


GPU_RESIDENT_BYTES = 4 << 30  # a training split up to this size (uint8 images + masks) is kept on the GPU


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


def ensure_parent(store: CheckpointStore, settings: Settings, classes: list[str]) -> str:
    """The published version; creates and publishes v0 (the configured checkpoint) when none is."""
    version = store.published()
    if version is None:
        from ml_backend.serving import create_initial_version

        create_initial_version(store, settings, classes)
        version = store.published()
    return version


def _head_keys(model: nn.Module) -> set[str]:
    head = classifier_head(model)
    prefix = next(name for name, mod in model.named_modules() if mod is head)
    return {f"{prefix}.{k}" for k in head.state_dict()}


def build_start_model(
    opts: TrainOptions,
    settings: Settings,
    classes: list[str],
    parent: tuple[nn.Module, CheckpointMeta] | None,
) -> StartModel:
    """Build the model for ``opts.mode``: finetune the parent, random init, or pretrained weights."""
    if opts.mode == "finetune":
        if parent is None:
            raise OptionsError("mode finetune needs a published version to start from")
        pmodel, pmeta = parent
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
        size = opts.image_size or pmeta.image_size
        return StartModel(model, pmeta.arch, size, tuple(pmeta.mean), tuple(pmeta.std), init)

    torch.manual_seed(opts.seed)
    arch = opts.arch or settings.model_arch
    model = build_model(arch, len(classes))
    size = opts.image_size or settings.image_size
    if opts.pretrained_path:
        path = Path(opts.pretrained_path)
        if not path.is_file():
            raise OptionsError(f"mode pretrained: no weights file at {path}")
        skipped = load_pretrained_backbone(model, path)
        init = f"pretrained weights {path} (not loaded: {skipped or 'none'})"
    else:
        init = f"random init (seed {opts.seed})"
    return StartModel(model, arch, size, IMAGENET_MEAN, IMAGENET_STD, init)


def make_optimizer(model: nn.Module, opts: TrainOptions) -> torch.optim.Optimizer:
    params = [p for p in model.parameters() if p.requires_grad]
    if opts.optimizer == "adam":
        return torch.optim.Adam(params, lr=opts.lr, weight_decay=opts.weight_decay)
    return torch.optim.SGD(params, lr=opts.lr, momentum=opts.momentum, weight_decay=opts.weight_decay)


def _open_writer(run_dir: Path):
    try:
        from torch.utils.tensorboard import SummaryWriter

        return SummaryWriter(log_dir=str(run_dir))
    except Exception as e:  # tensorboard missing or unwritable: train anyway
        log.warning("no TensorBoard event files for %s: %s", run_dir, e)
        return None


def train_model(
    model: nn.Module,
    train: PairedDataset,
    opts: TrainOptions,
    mean,
    std,
    device: str,
    eval_sets: dict[str, PairedDataset] | None = None,
    progress: Progress | None = None,
    writer=None,
) -> dict[str, Any]:
    """Paired training for ``opts.epochs`` epochs; returns per-step and per-epoch history.

    ``eval_sets`` (e.g. the test split) are evaluated after every epoch for the curves when
    ``opts.eval_every_epoch``.
    """
    progress = progress or Progress(job=None)
    model.to(device).train()
    if torch.device(device).type == "cuda" and train.nbytes() <= GPU_RESIDENT_BYTES:
        train = train.to(device)  # uint8 images on the GPU: no per-batch host copies
    optimizer = make_optimizer(model, opts)
    steps_per_epoch = math.ceil(len(train) / opts.batch_size)
    total = steps_per_epoch * opts.epochs
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(total, 1)) if opts.lr_schedule == "cosine" else None
    norm = make_normalizer(mean, std)
    shuffle_gen = torch.Generator().manual_seed(opts.seed)
    noise_gen = torch.Generator(device=device).manual_seed(opts.seed + 1)
    use_amp = opts.amp and torch.device(device).type == "cuda"
    amp_ctx = (lambda: torch.autocast("cuda", dtype=torch.bfloat16)) if use_amp else nullcontext

    steps: list[dict[str, float]] = []
    epochs: list[dict[str, Any]] = []
    step = 0
    t0 = time.perf_counter()
    progress.update(force=True, epoch=0, epochs=opts.epochs, step=0, total_steps=total, loss=None, eta_s=None)
    for epoch in range(1, opts.epochs + 1):
        sums: dict[str, float] = {}
        seen = 0
        for x, m, y in train.batches(opts.batch_size, device, shuffle=True, generator=shuffle_gen):
            with amp_ctx():
                stats = paired_step(model, optimizer, norm, x, m, y, opts.lam, opts.noise_mode, noise_gen)
            if scheduler is not None:
                scheduler.step()
            if not math.isfinite(stats["loss"]):
                raise FloatingPointError(
                    f"training diverged at epoch {epoch} step {step + 1} (loss {stats['loss']}); "
                    f"try a lower lr than {opts.lr} or a smaller lam than {opts.lam}"
                )
            step += 1
            b = x.shape[0]
            seen += b
            for k, v in stats.items():
                sums[k] = sums.get(k, 0.0) + v * (b if k != "n_paired" else 1)
            steps.append({"step": step, "epoch": epoch, **{k: round(v, 6) for k, v in stats.items()}})
            if writer is not None:
                for k in ("loss", "ce", "ce_tilde", "align", "acc"):
                    if k in stats:
                        writer.add_scalar(f"step/{k}", stats[k], step)
                writer.add_scalar("step/lr", optimizer.param_groups[0]["lr"], step)
            elapsed = time.perf_counter() - t0
            eta = elapsed / step * (total - step)
            progress.update(epoch=epoch, step=step, loss=round(stats["loss"], 5), eta_s=round(eta, 1))
            progress.log_every(10.0, "train epoch %d/%d step %d/%d loss %.4f (eta %.0fs)",
                               epoch, opts.epochs, step, total, stats["loss"], eta)
        row: dict[str, Any] = {"epoch": epoch, "step": step}
        for k, v in sums.items():
            row[f"train_{k}"] = v if k == "n_paired" else v / max(seen, 1)
        if opts.eval_every_epoch and eval_sets:
            for name, ds in eval_sets.items():
                if len(ds):
                    row[f"{name}_accuracy"] = evaluate(model, ds, mean, std, device)["accuracy"]
            model.train()
        row["seconds"] = round(time.perf_counter() - t0, 3)
        epochs.append(row)
        if writer is not None:
            for k, v in row.items():
                if k not in ("epoch", "step", "seconds") and isinstance(v, float):
                    writer.add_scalar(f"epoch/{k}", v, epoch)
            writer.flush()
        log.info("epoch %d/%d: %s", epoch, opts.epochs,
                 ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items() if k != "epoch"))
        progress.update(force=True, epoch=epoch)
    return {"steps": steps, "epochs": epochs, "total_steps": total, "seconds": time.perf_counter() - t0}


def save_curves(history: dict[str, Any], path: Path, title: str = "", baseline: dict[str, float] | None = None) -> Path | None:
    """PNG of the training loss per step and the accuracies per epoch (matplotlib Agg).

    ``baseline`` (split -> parent accuracy) is drawn at epoch 0.
    """
    try:
        import matplotlib

        matplotlib.use("Agg", force=False)
        import matplotlib.pyplot as plt
    except Exception as e:
        log.warning("no curves PNG: matplotlib unavailable: %s", e)
        return None
    steps, epochs = history["steps"], history["epochs"]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    xs = [s["step"] for s in steps]
    for key, label in (("loss", "loss"), ("ce", "CE(x)"), ("ce_tilde", "CE(x~) painted"), ("align", "||z-z~||² painted")):
        if steps and key in steps[0]:
            ax1.plot(xs, [s[key] for s in steps], label=label, lw=1)
    ax1.set_xlabel("step")
    ax1.set_yscale("symlog", linthresh=1e-2)
    ax1.set_title("training loss")
    ax1.legend(fontsize=8)
    ex = [e["epoch"] for e in epochs]
    for key in sorted({k for e in epochs for k in e if k.endswith("_accuracy") or k == "train_acc"}):
        xs_k, ys_k = list(ex), [e.get(key) for e in epochs]
        split = "train" if key == "train_acc" else key[: -len("_accuracy")]
        if baseline and baseline.get(split) is not None:
            xs_k, ys_k = [0] + xs_k, [baseline[split]] + ys_k
        ax2.plot(xs_k, ys_k, marker="o", label=key.replace("train_acc", "train (running)"))
    ax2.set_xlabel("epoch")
    from matplotlib.ticker import MaxNLocator

    ax2.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax2.set_ylim(0, 1.02)
    ax2.set_title("accuracy (epoch 0 = parent)")
    ax2.legend(fontsize=8)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def _jsonable(obj: Any) -> Any:
    """Plain JSON types only (what torch.load(weights_only=True) and RQ results accept)."""
    return json.loads(json.dumps(obj, default=lambda o: o.item() if hasattr(o, "item") else str(o)))


def _build_influence_index(store, version, splits, model, meta, device, settings, timings) -> str | None:
    """Build vN's influence index (training-sample gradient embeddings) beside the checkpoint, so the
    predictions pushed next carry influence and suspicion. Best effort: a failure is logged only."""
    if "influence" not in getattr(settings, "predict_parts", ()):
        return None
    t = time.perf_counter()
    try:
        from ml_backend.influence import build_influence_index

        build_influence_index(
            store, version, splits[TRAIN_SPLIT], splits.get("test"), model=model.eval(), meta=meta, device=device,
            batch_size=settings.influence_batch_size, score=settings.influence_score,
        )
        return "built"
    except Exception as e:  # the version is published; the backend can still build the index lazily
        log.warning("project store %s: influence index for %s not built: %s", store.root, version, e)
        return f"failed: {e}"
    finally:
        timings["index"] = time.perf_counter() - t


def run_pipeline(
    store: CheckpointStore,
    settings: Settings,
    classes: list[str],
    export: ExportResult,
    opts: TrainOptions,
    fetcher: ImageFetcher | None = None,
    progress: Progress | None = None,
    extra_config: dict | None = None,
) -> dict[str, Any]:
    """Records -> new published version. Returns the JSON-friendly summary (see module docstring)."""
    progress = progress or Progress(job=None)
    fetcher = fetcher or ImageFetcher(settings.label_studio_url, settings.label_studio_api_key, settings.fetch_timeout)
    device = opts.torch_device()
    timings: dict[str, float] = {}

    t = time.perf_counter()
    parent_version = ensure_parent(store, settings, classes)
    parent = store.load(parent_version, "cpu") if parent_version else None
    start = build_start_model(opts, settings, classes, parent)
    version = store.next_version()
    run_dir = store.root / "runs" / version
    timings["setup"] = time.perf_counter() - t
    log.info("project store %s: training %s from %s (%s, %s, %dpx) on %s", store.root, version, parent_version,
             start.arch, start.init, start.image_size, device)

    # images
    progress.phase("images", records=len(export.records))
    t = time.perf_counter()
    splits = load_splits(export, fetcher, start.image_size, classes, opts.num_workers)
    timings["images"] = time.perf_counter() - t
    train = splits.get(TRAIN_SPLIT)
    if train is None or len(train) == 0:
        raise TrainingDataError(
            f"no usable training tasks (data.split == {TRAIN_SPLIT!r} with a known class and a readable image); "
            f"export counts: {export.counts()['by_split']}, skipped: {export.counts()['skipped'] or 'none'}"
        )

    # parent metrics
    progress.phase("eval", which="parent")
    t = time.perf_counter()
    if parent is not None and list(parent[1].classes) == list(classes):
        pmodel, pmeta = parent
        parent_metrics = evaluate_splits(pmodel.to(device), splits, pmeta.mean, pmeta.std, device,
                                         image_size=pmeta.image_size)
        pmodel.cpu()
    else:
        parent_metrics = {"note": "parent has other classes; not evaluated"} if parent is not None else {}
    timings["eval_parent"] = time.perf_counter() - t
    parent = None  # release

    # train
    progress.phase("train", epochs=opts.epochs)
    if run_dir.exists():  # left by an earlier attempt at this version that failed before saving
        stale = run_dir.with_name(f"{version}-failed-{int(time.time())}")
        run_dir.rename(stale)
        log.info("moved the run folder of an unfinished earlier attempt to %s", stale)
    run_dir.mkdir(parents=True, exist_ok=True)
    writer = _open_writer(run_dir)
    if writer is not None:
        writer.add_text("config", "```\n" + json.dumps({"options": opts.to_dict(), "init": start.init,
                                                         "parent": parent_version, **(extra_config or {})},
                                                        indent=1, default=str) + "\n```")
    eval_sets = {k: v for k, v in splits.items() if k != TRAIN_SPLIT}
    t = time.perf_counter()
    try:
        history = train_model(start.model, train, opts, start.mean, start.std, device, eval_sets, progress, writer)
    finally:
        if writer is not None:
            writer.close()
    timings["train"] = time.perf_counter() - t

    # final metrics
    progress.phase("eval", which="new")
    t = time.perf_counter()
    new_metrics = evaluate_splits(start.model, splits, start.mean, start.std, device)
    timings["eval_new"] = time.perf_counter() - t
    timings["eval"] = timings["eval_parent"] + timings["eval_new"]

    # save + publish
    progress.phase("save")
    t = time.perf_counter()
    counts = export.counts()
    counts["train_images"] = len(train)
    counts["train_painted"] = train.n_painted
    metrics = {
        **{split: m for split, m in new_metrics.items()},
        "parent": parent_metrics,
        "delta_accuracy": {
            s: (new_metrics[s]["accuracy"] - parent_metrics[s]["accuracy"])
            for s in new_metrics
            if isinstance(parent_metrics.get(s), dict) and parent_metrics[s].get("accuracy") is not None
            and new_metrics[s].get("accuracy") is not None
        },
        "epochs": history["epochs"],
    }
    config = {
        "options": opts.to_dict(),
        "init": start.init,
        "device": device,
        "counts": {k: v for k, v in counts.items() if k != "skipped_ids"},
        **(extra_config or {}),
    }
    start.model.cpu()
    for _ in range(5):
        meta = CheckpointMeta(
            version=version, arch=start.arch, classes=list(classes), image_size=start.image_size,
            mean=tuple(start.mean), std=tuple(start.std), parent_version=parent_version,
            config=_jsonable(config), metrics=_jsonable(metrics),
        )
        try:
            path = store.save(start.model, meta)
            break
        except FileExistsError:  # another job wrote this version meanwhile: take the next one
            new_version = store.next_version()
            log.warning("version %s appeared meanwhile; saving as %s", version, new_version)
            new_run = store.root / "runs" / new_version
            if run_dir.exists() and not new_run.exists():
                shutil.move(str(run_dir), str(new_run))
            version, run_dir = new_version, new_run
    else:
        raise RuntimeError(f"could not find a free version name in {store.versions_dir}")
    store.publish(version)
    timings["save"] = time.perf_counter() - t
    log.info("project store %s: published %s (parent %s): %s", store.root, version, parent_version,
             ", ".join(f"{s} {parent_metrics.get(s, {}).get('accuracy') if isinstance(parent_metrics.get(s), dict) else None}"
                       f" -> {m['accuracy']}" for s, m in new_metrics.items()))

    influence = _build_influence_index(store, version, splits, start.model, meta, device, settings, timings)

    summary = {
        "version": version,
        "parent": parent_version,
        "published": True,
        "influence_index": influence,
        "arch": start.arch,
        "image_size": start.image_size,
        "classes": list(classes),
        "init": start.init,
        "device": device,
        "metrics": {"parent": parent_metrics, "new": new_metrics, "delta_accuracy": metrics["delta_accuracy"]},
        "counts": counts,
        "history": history["epochs"],
        "timings": {k: round(v, 3) for k, v in timings.items()},
        "options": opts.to_dict(),
        "checkpoint": str(path),
        "run_dir": str(run_dir),
    }
    t = time.perf_counter()
    title = f"{store.root.name} {version} (from {parent_version}, {start.arch}, λ={opts.lam}, {opts.noise_mode})"
    try:
        baseline = {k: v.get("accuracy") for k, v in parent_metrics.items() if isinstance(v, dict)}
        png = save_curves(history, run_dir / "curves.png", title, baseline)
        summary["curves"] = str(png) if png else None
        (run_dir / "summary.json").write_text(json.dumps(_jsonable(summary), indent=1))
    except Exception as e:  # reporting must not fail a published version
        log.warning("could not write curves/summary under %s: %s", run_dir, e)
    summary["timings"]["report"] = round(time.perf_counter() - t, 3)
    return _jsonable(summary)
