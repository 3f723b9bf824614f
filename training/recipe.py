"""The training recipe: the ``auto`` job options turned into concrete values from the data, with the
reason for each choice (recorded as ``summary["recipe"]`` and in the checkpoint's config).

A user does not tune optimizers, so a job's defaults are chosen from what it trains on:

- **architecture** (``choose_arch``), only when TRAIN_ARCH is unset and MODEL_ARCH is ``resnet-18``
  (the default): a fresh start (random init; finetune of an untrained v0 counts) on images of at most
  ``SMALL_IMAGE_MAX`` px trains a small CNN (3x3 conv blocks, 32..256 channels) deep enough that its
  receptive field spans the image (``models.small_cnn_for``: ``small-cnn`` to 38 px, ``small-cnn-5`` to
  78 px, ``small-cnn-6`` above), so a shape can be told from the whole image and not only from a
  background colour or texture that every pixel carries. ResNet-18's ImageNet stem (7x7 stride 2 +
  max-pool) shrinks a 64 px image to 2x2 before the last block, and its small-image stem
  (``resnet-18-32x32``) costs ~37x small-cnn's compute (minutes per epoch on a CPU). Weights trained
  elsewhere keep the architecture they were trained for;
- **optimizer** ``adamw`` (decoupled weight decay 0.05), learning rate 1e-3 x sqrt(batch/32), which
  trains from scratch and fine-tunes without tuning across data sizes; SGD (momentum) when TRAIN_LR is
  set without TRAIN_OPTIMIZER (an explicit lr has always meant SGD here), lr 0.1 x batch/256;
- **schedule** ``warmup_cosine``: linear warm-up over 5% of the steps (at least 1), then cosine to 0;
- **epochs**: enough for ``TARGET_STEPS`` optimizer steps, bounded to ``EPOCH_BOUNDS`` (a 300-image
  set gets 30 epochs, 10k images 10); with a val split twice that (at most ``VAL_EPOCH_CAP``) as a
  budget: training stops when val has not improved for ``patience`` epochs and the best val epoch is
  kept (``training.best_epoch``), so it trains until learned, decided on val;
- **augmentation** ``crop_flip`` (``training.augment``: mild random resized crop + horizontal flip,
  image and painted mask together);
- **backbone lr scale** 0.1 when the start weights were trained elsewhere (``MODEL_CHECKPOINT`` v0,
  ``pretrained:<path>``): the backbone moves slowly, the (possibly re-initialised) head at full lr.

Anything set explicitly (``TRAIN_*`` or a job option) is kept as given.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Any

from training.models import SMALL_CNN_ARCHS, small_cnn_blocks, small_cnn_receptive_field
from training.options import AUTO, TrainOptions

SMALL_IMAGE_MAX = 96
SMALL_IMAGE_DEFAULTS = ("resnet-18",)  # MODEL_ARCH values a fresh start replaces by a small CNN at <= SMALL_IMAGE_MAX px
TARGET_STEPS = 600
EPOCH_BOUNDS = (10, 30)
VAL_EPOCH_FACTOR, VAL_EPOCH_CAP = 2, 60  # with a val split: up to twice the epochs, stopped when val stops improving
MIN_PATIENCE = 5
ADAMW_LR, ADAMW_WD = 1e-3, 0.05
SGD_LR_PER_256, SGD_WD, ADAM_WD = 0.1, 5e-4, 5e-4
LR_CAP = {"adamw": 4e-3, "adam": 4e-3, "sgd": 0.4}
WARMUP_FRACTION = 0.05
PRETRAINED_BACKBONE_LR_SCALE = 0.1
DEFAULT_AUGMENT = "crop_flip"


@dataclass
class Recipe:
    """Concrete options (no ``auto``) and, per chosen option, ``[value, reason]``."""

    opts: TrainOptions
    reasons: dict[str, list[Any]] = field(default_factory=dict)


def choose_arch(requested: str | None, default: str, image_size: int, *, fresh: bool = True) -> tuple[str, str]:
    """``(arch, reason)``: the explicit TRAIN_ARCH as given; else ``default`` (MODEL_ARCH), except that a
    ``fresh`` start (random init) of a ``SMALL_IMAGE_DEFAULTS`` architecture on images of at most
    ``SMALL_IMAGE_MAX`` px trains the small CNN whose receptive field spans the image. Not ``fresh``
    (weights trained elsewhere): the weights' architecture, kept."""
    if requested:
        return requested, "TRAIN_ARCH / job option"
    if default not in SMALL_IMAGE_DEFAULTS:
        return default, "MODEL_ARCH"
    if not fresh:
        return default, "MODEL_ARCH: the given weights are for it"
    if image_size <= SMALL_IMAGE_MAX:
        blocks = small_cnn_blocks(image_size)
        small = SMALL_CNN_ARCHS[blocks]
        side = max(1, image_size // 32)
        return small, (f"image_size {image_size} <= {SMALL_IMAGE_MAX} and no weights to keep: {small} ({blocks} conv "
                       f"blocks, 32..256 channels; its {small_cnn_receptive_field(blocks)} px receptive field is the "
                       f"smallest that spans the image) instead of {default}, whose ImageNet stem leaves {side}x{side} "
                       f"px at its last block and whose small-image stem costs tens of times the compute; "
                       f"TRAIN_ARCH={default} keeps it")
    return default, f"MODEL_ARCH (image_size {image_size} > {SMALL_IMAGE_MAX}: the ImageNet stem fits)"


def warmup_steps(total: int) -> int:
    return max(1, round(WARMUP_FRACTION * total)) if total > 1 else 0


def _epochs_and_patience(opts: TrainOptions, n_train: int, steps_per_epoch: int, n_val: int,
                         reasons: dict[str, list[Any]], chosen: dict[str, Any]) -> None:
    """``epochs`` (the budget) and ``patience`` (early stopping on val, ``training.best_epoch``)."""
    set_by_user = "set (TRAIN_* / job option)"
    lo, hi = EPOCH_BOUNDS
    base = min(hi, max(lo, math.ceil(TARGET_STEPS / steps_per_epoch)))
    if opts.epochs == AUTO:
        why = (f"{n_train} images / batch {opts.batch_size} = {steps_per_epoch} steps per epoch; "
               f"~{TARGET_STEPS} steps, bounded to {lo}..{hi} epochs")
        epochs = base
        if n_val:
            epochs = min(VAL_EPOCH_CAP, VAL_EPOCH_FACTOR * base)
            why = f"up to {epochs} epochs ({base} = {why}; x{VAL_EPOCH_FACTOR}, at most {VAL_EPOCH_CAP}, as val decides)"
        chosen["epochs"] = epochs
        reasons["epochs"] = [epochs, why]
    else:
        reasons["epochs"] = [opts.epochs, set_by_user]
    if opts.patience == AUTO:
        if n_val and opts.epochs == AUTO:
            patience = max(MIN_PATIENCE, base // 3)
            why = (f"{n_val} val images decide: stop after {patience} epochs without a val improvement "
                   f"(not before epoch {max(1, chosen['epochs'] // 2)}); the best val epoch is kept")
        elif n_val:
            patience, why = 0, "epochs set: all of them run; the best val epoch is kept"
        else:
            patience, why = 0, "no val split: every epoch runs and the last one is kept"
        chosen["patience"] = patience
        reasons["patience"] = [patience, why]
    else:
        reasons["patience"] = [opts.patience, set_by_user]


def resolve_recipe(opts: TrainOptions, n_train: int, *, pretrained: bool = False, n_val: int = 0) -> Recipe:
    """Turn every ``auto`` option into a value for a training split of ``n_train`` images (``n_val``:
    images in the val split, which decides the epoch; none: a fixed number of epochs).

    ``pretrained``: the start weights were trained elsewhere (lower backbone lr). Explicit options are
    kept and reported as set."""
    reasons: dict[str, list[Any]] = {}
    set_by_user = "set (TRAIN_* / job option)"
    chosen: dict[str, Any] = {}

    optimizer = opts.optimizer
    if optimizer == AUTO:
        if opts.lr != AUTO:
            optimizer, why = "sgd", "lr set without an optimizer: SGD with momentum, as an explicit lr always meant"
        else:
            optimizer, why = "adamw", "AdamW trains from scratch and fine-tunes without tuning"
        chosen["optimizer"] = optimizer
        reasons["optimizer"] = [optimizer, why]
    else:
        reasons["optimizer"] = [optimizer, set_by_user]

    b = opts.batch_size
    if opts.lr == AUTO:
        if optimizer == "sgd":
            lr, why = SGD_LR_PER_256 * b / 256, f"SGD: 0.1 x batch {b} / 256 (linear scaling)"
        else:
            lr, why = ADAMW_LR * math.sqrt(b / 32), f"{optimizer}: 1e-3 x sqrt(batch {b} / 32)"
        lr = min(lr, LR_CAP[optimizer])
        chosen["lr"] = float(f"{lr:.3g}")
        reasons["lr"] = [chosen["lr"], why]
    else:
        reasons["lr"] = [opts.lr, set_by_user]

    if opts.weight_decay == AUTO:
        wd = {"adamw": ADAMW_WD, "sgd": SGD_WD, "adam": ADAM_WD}[optimizer]
        chosen["weight_decay"] = wd
        reasons["weight_decay"] = [wd, f"{optimizer}'s usual weight decay"]
    else:
        reasons["weight_decay"] = [opts.weight_decay, set_by_user]

    steps_per_epoch = max(1, math.ceil(n_train / b))
    _epochs_and_patience(opts, n_train, steps_per_epoch, n_val, reasons, chosen)
    total = steps_per_epoch * chosen.get("epochs", opts.epochs)

    if opts.lr_schedule == AUTO:
        chosen["lr_schedule"] = "warmup_cosine"
        reasons["lr_schedule"] = ["warmup_cosine", (f"linear warm-up over {warmup_steps(total)} of {total} steps, "
                                                    "then cosine to 0")]
    else:
        reasons["lr_schedule"] = [opts.lr_schedule, set_by_user]

    if opts.augment == AUTO:
        chosen["augment"] = DEFAULT_AUGMENT
        reasons["augment"] = [DEFAULT_AUGMENT, ("random resized crop (80-100% of the area) + horizontal flip, "
                                                "image and painted mask together")]
    else:
        reasons["augment"] = [opts.augment, set_by_user]

    if opts.backbone_lr_scale == AUTO:
        scale = PRETRAINED_BACKBONE_LR_SCALE if pretrained else 1.0
        chosen["backbone_lr_scale"] = scale
        reasons["backbone_lr_scale"] = [scale, "start weights trained elsewhere: backbone at 0.1 x lr, head at lr"
                                        if pretrained else "no weights from elsewhere: one lr for all layers"]
    else:
        reasons["backbone_lr_scale"] = [opts.backbone_lr_scale, set_by_user]

    return Recipe(replace(opts, **chosen), reasons)
