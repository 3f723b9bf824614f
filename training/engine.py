"""The training engine, in the shape of torchvision's ``references/classification/train.py``:
``train_one_epoch`` (paired steps), ``evaluate`` (accuracy and loss on a split) and ``fit`` (the epochs,
with per-epoch evaluation for the curves).
"""

from __future__ import annotations

import math
import time
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from training import accel
from training import distributed as dist
from label_config.export import VAL_SPLIT
from training.augment import augment_batch
from training.best_epoch import BestEpoch
from training.dataset import PairedDataset
from training.images import make_normalizer, resize_batch
from training.loader import release_persistent_loaders
from training.models import classifier_head
from training.options import TrainOptions
from training.paired import paired_step
from training.progress import Progress
from training.sampling import epoch_batches, epoch_order

GPU_RESIDENT_BYTES = 4 << 30  # a training split up to this size (uint8 images + masks) is kept on the GPU
STEP_SCALARS = ("loss", "ce", "ce_tilde", "align", "acc")


def param_groups(model: nn.Module, lr: float, backbone_lr_scale: float = 1.0) -> list[dict[str, Any]]:
    """One group (``lr``) or, when ``backbone_lr_scale != 1``, the classifier head at ``lr`` and the rest
    (the backbone) at ``lr * backbone_lr_scale``."""
    params = [p for p in model.parameters() if p.requires_grad]
    if backbone_lr_scale == 1.0:
        return [{"params": params, "lr": lr}]
    head = {id(p) for p in classifier_head(model).parameters()}
    groups = [{"params": [p for p in params if id(p) not in head], "lr": lr * backbone_lr_scale, "name": "backbone"},
              {"params": [p for p in params if id(p) in head], "lr": lr, "name": "head"}]
    return [g for g in groups if g["params"]]


def make_optimizer(model: nn.Module, opts: TrainOptions) -> torch.optim.Optimizer:
    """The optimizer of resolved ``opts`` (``training.recipe.resolve_recipe``), with the backbone/head
    learning rates of ``opts.backbone_lr_scale``."""
    if not opts.is_resolved:
        raise ValueError("make_optimizer needs resolved options (training.recipe.resolve_recipe)")
    groups = param_groups(model, opts.lr, opts.backbone_lr_scale)
    if opts.optimizer == "adam":
        return torch.optim.Adam(groups, lr=opts.lr, weight_decay=opts.weight_decay)
    if opts.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=opts.lr, weight_decay=opts.weight_decay)
    return torch.optim.SGD(groups, lr=opts.lr, momentum=opts.momentum, weight_decay=opts.weight_decay)


def make_scheduler(optimizer: torch.optim.Optimizer, opts: TrainOptions, total: int):
    """``cosine`` (annealed to 0 over ``total`` steps), ``warmup_cosine`` (linear warm-up over 5% of
    the steps, then cosine to 0) or None (``constant``)."""
    if opts.lr_schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(total, 1))
    if opts.lr_schedule == "warmup_cosine":
        from training.recipe import warmup_steps

        warm = warmup_steps(total)

        def factor(step: int) -> float:
            if step < warm:
                return (step + 1) / warm
            return 0.5 * (1.0 + math.cos(math.pi * min(1.0, (step - warm) / max(1, total - warm))))

        return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
    return None


def train_one_epoch(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler | None,
    train: PairedDataset,
    opts: TrainOptions,
    norm,
    device: str,
    epoch: int,
    state: dict[str, Any],
    progress: Progress,
    writer=None,
    shard: torch.Tensor | None = None,
) -> dict[str, float]:
    """One pass of paired steps over ``train``; returns the epoch's sample-weighted means.

    ``shard``: this rank's indices of ``train`` for the epoch (``training.distributed.shard_indices``,
    already shuffled), trained in that order with the per-rank batch of
    ``distributed.local_batch_size``; the means are then over all ranks' samples. None: all of
    ``train``, shuffled with ``state["shuffle_gen"]`` (the single-process job), painted images taking at least
    ``opts.painted_share`` of every batch (``training.sampling.epoch_order``).

    ``state`` carries what lives across epochs: ``step``, ``total``, ``t0``, the two generators
    (``shuffle_gen`` on the CPU, ``noise_gen`` on the device) and the list of per-step rows ``steps``.
    """
    sums: dict[str, float] = {}
    seen = 0
    if shard is None:
        order = epoch_order(train.painted.cpu(), opts.batch_size, state["shuffle_gen"], opts.painted_share)
        batch_size = opts.batch_size
    else:
        order, batch_size = shard, dist.local_batch_size(opts.batch_size)
    batches = train.batches(batch_size, device, order=order, weights=True, workers=opts.loader_workers)
    for x, m, y, w in batches:  # w: each sample's mask weight (PairedDataset.mask_weight)
        if opts.augment != "none":  # before the twin is built: the noise fills the augmented mask
            x, m = augment_batch(x, m, opts.augment, state.setdefault("aug_gen", torch.Generator().manual_seed(opts.seed + 2)))
        x = accel.prepare_batch(x)  # channels-last on CUDA
        with accel.autocast(device, opts.amp):  # bf16 on CUDA
            stats = paired_step(model, optimizer, norm, x, m, y, opts.lam, opts.noise_mode, state["noise_gen"],
                                align=opts.align, weights=w)
        if scheduler is not None:
            scheduler.step()
        if not math.isfinite(stats["loss"]):
            raise FloatingPointError(
                f"training diverged at epoch {epoch} step {state['step'] + 1} (loss {stats['loss']}); "
                f"try a lower lr than {opts.lr} or a smaller lam than {opts.lam}"
            )
        state["step"] += 1
        step, total, b = state["step"], state["total"], x.shape[0]
        seen += b
        for k, v in stats.items():
            sums[k] = sums.get(k, 0.0) + v * (b if k != "n_paired" else 1)
        state["steps"].append({"step": step, "epoch": epoch, **{k: round(v, 6) for k, v in stats.items()}})
        if writer is not None:
            for k in STEP_SCALARS:
                if k in stats:
                    writer.add_scalar(f"step/{k}", stats[k], step)
            writer.add_scalar("step/lr", optimizer.param_groups[0]["lr"], step)
        eta = (time.perf_counter() - state["t0"]) / step * (total - step)
        progress.update(epoch=epoch, step=step, loss=round(stats["loss"], 5), eta_s=round(eta, 1))
        progress.log_every(10.0, "train epoch %d/%d step %d/%d loss %.4f (eta %.0fs)",
                           epoch, opts.epochs, step, total, stats["loss"], eta)
    if shard is not None:  # per-shard sums -> sums over all ranks
        sums = dist.sum_across({**sums, "_seen": float(seen)})
        seen = int(sums.pop("_seen"))
    return {f"train_{k}": (v if k == "n_paired" else v / max(seen, 1)) for k, v in sums.items()}


def fit(
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
    """Paired training for at most ``opts.epochs`` epochs; returns per-step and per-epoch history.

    With a ``val`` split in ``eval_sets`` (``training.best_epoch``) it is scored after every epoch, the
    best val epoch's weights are loaded into ``model`` at the end and training stops early after
    ``opts.patience`` epochs without a val improvement; the history's ``selection`` says what was kept
    and why. The test split never decides.

    ``auto`` options are resolved first (``training.recipe.resolve_recipe`` for ``len(train)`` images;
    the job pipeline resolves them itself, with the start weights' provenance, and records why);
    the history's ``options`` holds what was used.

    ``eval_sets`` (e.g. the test split) are evaluated after every epoch for the curves when
    ``opts.eval_every_epoch``.

    Under an initialised process group (``training.distributed.init``, from torchrun) the model is
    trained in DistributedDataParallel: each rank trains on its shard of ``train`` (a
    DistributedSampler-equivalent split with seed ``opts.seed + epoch``) with a per-rank batch of
    ``batch_size / world``, so the optimizer steps as often as in a single process; the train means
    are reduced over all ranks; only rank 0 runs the per-epoch evaluation (the others go on to the next
    epoch's first step, where DDP synchronises). ``model`` itself (not the wrapper) is trained in place.
    """
    progress = progress or Progress()
    val = (eval_sets or {}).get(VAL_SPLIT)
    if not opts.is_resolved:
        from training.recipe import resolve_recipe

        opts = resolve_recipe(opts, len(train), n_val=len(val) if val is not None else 0).opts
    best = BestEpoch(opts.epochs, opts.patience) if val is not None and len(val) else None
    accel.prepare_model(model, device).train()  # channels-last on CUDA
    if torch.device(device).type == "cuda" and train.nbytes() <= GPU_RESIDENT_BYTES:
        train = train.to(device)  # uint8 images on the GPU: no per-batch host copies
    sharded = dist.active()
    net = dist.wrap(model, device)  # DDP under a process group, else ``model``
    optimizer = make_optimizer(model, opts)
    total = _total_steps(train, opts, sharded)
    scheduler = make_scheduler(optimizer, opts, total)
    norm = make_normalizer(mean, std)
    state = _loop_state(opts, device, total)
    epochs: list[dict[str, Any]] = []
    progress.update(force=True, epoch=0, epochs=opts.epochs, step=0, total_steps=total, loss=None, eta_s=None)
    epoch = 0
    for epoch in range(1, opts.epochs + 1):
        row: dict[str, Any] = {"epoch": epoch}
        shard = dist.shard_indices(len(train), epoch, opts.seed) if sharded else None
        means = train_one_epoch(net, optimizer, scheduler, train, opts, norm, device, epoch, state, progress, writer,
                                shard=shard)
        row.update(step=state["step"], **means)
        stop = _score_epoch(model, row, eval_sets, best, opts, mean, std, device, epoch) if dist.is_main() else False
        if sharded and best is not None:
            stop = dist.broadcast(stop)  # rank 0 decides; every rank stops at the same epoch
        row["seconds"] = round(time.perf_counter() - state["t0"], 3)
        epochs.append(row)
        _log_epoch(row, opts.epochs, writer, progress)
        if stop:
            progress.log_every(0.0, "early stop at epoch %d/%d: %s has not improved for %d epochs", epoch,
                               opts.epochs, VAL_SPLIT, opts.patience)
            break
    release_persistent_loaders(train.images)  # a streamed split's workers end with the training
    if best is not None and dist.is_main():
        best.restore(model)  # the best val epoch's weights are the version
    selection = best.summary(epoch) if best is not None else BestEpoch(opts.epochs, 0).summary(epoch)
    return {"steps": state["steps"], "epochs": epochs, "total_steps": total,
            "seconds": time.perf_counter() - state["t0"], "options": opts.to_dict(), "selection": selection}


def _total_steps(train: PairedDataset, opts: TrainOptions, sharded: bool) -> int:
    """Optimizer steps of the whole run: a rank's shard in per-rank batches, or every unpainted image once
    per epoch with the painted share on top (``training.sampling.epoch_batches``)."""
    if sharded:
        return math.ceil(math.ceil(len(train) / dist.world_size()) / dist.local_batch_size(opts.batch_size)) * opts.epochs
    return epoch_batches(train.painted.cpu(), opts.batch_size, opts.painted_share) * opts.epochs


def _loop_state(opts: TrainOptions, device: str, total: int) -> dict[str, Any]:
    """The training loop's counters and random generators: each rank draws its own noise and augmentation
    (rank 0: the single-process draws)."""
    rank = dist.rank()
    state: dict[str, Any] = {
        "step": 0, "total": total, "t0": time.perf_counter(), "steps": [],
        "shuffle_gen": torch.Generator().manual_seed(opts.seed),
        "noise_gen": torch.Generator(device=device).manual_seed(opts.seed + 1 + 1000 * rank),
    }
    if rank:
        state["aug_gen"] = torch.Generator().manual_seed(opts.seed + 2 + 1000 * rank)
    return state


def _log_epoch(row: dict[str, Any], epochs: int, writer: Any, progress: Progress) -> None:
    """An epoch's row to TensorBoard (its float metrics), the log and the progress sink."""
    epoch = row["epoch"]
    if writer is not None:
        for k, v in row.items():
            if k not in ("epoch", "step", "seconds") and isinstance(v, float):
                writer.add_scalar(f"epoch/{k}", v, epoch)
        writer.flush()
    progress.log_every(0.0, "epoch %d/%d: %s", epoch, epochs,
                       ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                                 for k, v in row.items() if k != "epoch"))
    progress.update(force=True, epoch=epoch)


def _score_epoch(model: nn.Module, row: dict[str, Any], eval_sets: dict[str, PairedDataset] | None,
                 best: BestEpoch | None, opts: TrainOptions, mean, std, device: str, epoch: int) -> bool:
    """Score the epoch into ``row``: every eval split for the curves (``opts.eval_every_epoch``), and the
    val split always when there is one (``best`` decides on it). True: stop training now."""
    stop = False
    for name, ds in (eval_sets or {}).items():
        if not len(ds) or (name != VAL_SPLIT or best is None) and not opts.eval_every_epoch:
            continue
        m = evaluate(model, ds, mean, std, device)
        row[f"{name}_accuracy"] = m["accuracy"]
        if name == VAL_SPLIT and best is not None:
            row[f"{name}_loss"] = m["loss"]
            stop = best.update(epoch, m["accuracy"], m["loss"], model)
    model.train()
    return stop


@torch.inference_mode()
def predict_logits(model: nn.Module, dataset: PairedDataset, mean: Sequence[float], std: Sequence[float],
                   device: str | torch.device = "cpu", batch_size: int = 128, image_size: int | None = None) -> torch.Tensor:
    """Logits (N x C, float32 on CPU) for every image of ``dataset``, in order.

    When ``image_size`` differs from the cached size (a parent trained at another size) the batch is
    resized on the device (bilinear, antialiased).
    """
    was_training = model.training
    model.eval()
    norm = make_normalizer(mean, std)
    out = []
    try:
        for x, _, _ in dataset.batches(batch_size, device):
            if image_size:
                x = resize_batch(x, image_size)
            out.append(model(norm(x)).float().cpu())
    finally:
        model.train(was_training)
    if not out:
        return torch.zeros(0, 0)
    return torch.cat(out)


def evaluate(
    model: nn.Module,
    dataset: PairedDataset,
    mean: Sequence[float],
    std: Sequence[float],
    device: str | torch.device = "cpu",
    batch_size: int = 128,
    image_size: int | None = None,
) -> dict[str, float | int | None]:
    """``{"accuracy", "loss", "n", "correct", "accuracy_painted", "n_painted"}`` on ``dataset``.

    ``accuracy`` is None for an empty split. ``accuracy_painted`` is the accuracy on the painted
    images only (clean images, not noised), None when none is painted.
    """
    n = len(dataset)
    if n == 0:
        return {"accuracy": None, "loss": None, "n": 0, "correct": 0, "accuracy_painted": None, "n_painted": 0}
    logits = predict_logits(model, dataset, mean, std, device, batch_size, image_size)
    targets = dataset.targets.cpu()
    right = logits.argmax(1) == targets
    painted = dataset.painted.cpu()
    n_p = int(painted.sum())
    return {
        "accuracy": float(right.float().mean()),
        "loss": float(F.cross_entropy(logits, targets)),
        "n": n,
        "correct": int(right.sum()),
        "accuracy_painted": float(right[painted].float().mean()) if n_p else None,
        "n_painted": n_p,
    }


def evaluate_splits(model: nn.Module, splits: dict[str, PairedDataset], mean, std, device="cpu",
                    batch_size: int = 128, image_size: int | None = None) -> dict[str, dict]:
    """``evaluate`` on every split, keyed by split name."""
    return {name: evaluate(model, ds, mean, std, device, batch_size, image_size) for name, ds in sorted(splits.items())}
