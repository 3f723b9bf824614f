"""Training options: defaults (the ``TRAIN_*`` variables, read by ``ml_backend.settings``) overridden
per job (webhook / API options).

Variables (all optional):

====================  =============  ==========================================================
variable              default        meaning
====================  =============  ==========================================================
TRAIN_MODE            finetune       ``finetune`` (the published version), ``scratch``, or
                                     ``pretrained:<path>`` (a torchvision state_dict file)
TRAIN_ARCH            (MODEL_ARCH)   architecture for scratch/pretrained (finetune keeps the
                                     parent's); unset: a fresh resnet-18 at <= 96 px becomes small-cnn(-5/-6)
TRAIN_EPOCHS          auto           the most epochs over the training split; ``auto``: enough for ~600
                                     optimizer steps, 10..30 epochs, doubled (at most 60) when the project
                                     has a val split, which stops training when it no longer improves
                                     (training.recipe, training.best_epoch)
TRAIN_PATIENCE        auto           with a val split: stop after this many epochs without a val improvement
                                     (never before half of TRAIN_EPOCHS; 0: never early); the best val epoch
                                     is kept either way; ``auto``: max(5, a third of the un-doubled epochs)
                                     when TRAIN_EPOCHS is auto, else 0
TRAIN_BATCH_SIZE      32
TRAIN_LR              auto           ``auto``: AdamW 1e-3 x sqrt(batch/32), SGD 0.1 x batch/256
TRAIN_OPTIMIZER       auto           ``adamw``, ``sgd`` (momentum), ``adam``; ``auto``: adamw (sgd when
                                     TRAIN_LR is set alone: the optimizer an explicit lr always meant)
TRAIN_LR_SCHEDULE     auto           ``warmup_cosine`` (linear warm-up over 5% of the steps, then cosine
                                     to 0), ``cosine``, ``constant``; ``auto``: warmup_cosine
TRAIN_MOMENTUM        0.9            SGD momentum
TRAIN_WEIGHT_DECAY    auto           ``auto``: 0.05 for adamw, 0.0005 for sgd/adam
TRAIN_AUGMENT         auto           ``crop_flip`` (random resized crop 80-100% + horizontal flip, image
                                     and painted mask together), ``flip``, ``none``; ``auto``: crop_flip
TRAIN_BACKBONE_LR_SCALE auto         backbone lr = lr x this (the head gets lr); ``auto``: 0.1 when the
                                     start weights were trained elsewhere (MODEL_CHECKPOINT v0,
                                     pretrained:<path>), else 1
TRAIN_LAMBDA          1.0            λ: weight of the paired logit-alignment term
TRAIN_NOISE_MODE      counterfactual how painted pixels are replaced (training.counterfactual.FILL_MODES:
                      _mixture       Robustar's noise modes, or counterfactual, counterfactual_any,
                                     counterfactual_mix, counterfactual_mixture: another painted
                                     image's painted pixels); the default measured best on every
                                     kind of the efficacy benchmark (docs/benchmarks.md)
TRAIN_ALIGN           kl             the alignment term: ``kl`` (symmetric KL of the two predictions; stable
                                     on a converged model's large logits) or ``l2`` (Robustar's ||z - z~||^2)
TRAIN_PAINTED_SHARE   0.5            the least share of every batch taken by painted images (drawn again
                                     when there are few): a few painted images count in every step; 0: none
TRAIN_PROPAGATED_MASKS confident     mask propagation (training.propagation): a small segmentation net fitted
                                     to the painted masks proposes the spurious region of every unpainted
                                     training image; ``confident``: train with the proposals whose
                                     confidence >= TRAIN_PROPAGATION_CONFIDENCE, ``all``: every proposal
                                     (weighted by confidence), ``off``: painted masks only
TRAIN_PROPAGATION_CONFIDENCE 0.5     the confidence ``confident`` needs (mean |2p - 1| over the pixels)
TRAIN_STROKE_SNAP     colour         ``colour``: every painted mask is snapped to the colour region it covers
                                     before it trains the mask net and the paired loss (training.stroke_snap:
                                     rough strokes -> median IoU 0.21-0.45 -> 0.93-1.0, exact masks kept;
                                     benchmarks/bench_proposals.py); ``off``: masks as painted
TRAIN_IMAGE_SIZE      (parent/       model input size; finetune defaults to the parent's
                      IMAGE_SIZE)
TRAIN_SEED            (SEED) 0       seeds init, shuffling and noise
TRAIN_DEVICE          (DEVICE) auto  ``auto`` = cuda when available, else cpu
TRAIN_NUM_WORKERS     (FETCH_        threads that download/decode task images
                      WORKERS) 8
TRAIN_MEMORY_BUDGET   2147483648     bytes of decoded images (+ masks) a job keeps in memory; with the
                                     worker's image cache, splits beyond it stream from disk
                                     (training.loader); 0: always stream
TRAIN_LOADER_WORKERS  4              DataLoader worker processes of a streamed split (0: in the job's
                                     process)
TRAIN_LABEL_SOURCE    annotation     ``annotation``: train on the annotation's class choice when
                                     there is one; ``data``: always the task-data label
TRAIN_EVAL_EVERY_EPOCH true          evaluate the test split after every epoch (curves)
TRAIN_PUSH_PREDICTIONS true          push the new version's predictions to Label Studio and
                                     set the project's model_version
TRAIN_AMP             true           bf16 autocast on CUDA (ignored on CPU)
TRAIN_MAX_REGRESSION  0.02           a version whose val split accuracy falls more than this -- and
                                     more than 1/sqrt(n val images) -- below its parent's is kept but
                                     not published (training.gate); no val split: not gated, and the
                                     result says so; ``inf``: always publish
====================  =============  ==========================================================

One set of defaults: the field defaults of ``TrainOptions`` are exactly what a job runs (``resolve``
with no ``TRAIN_*`` and no job options gives ``TrainOptions()``; a test holds it). ``auto`` values are
turned into concrete values from the data by ``training.recipe.resolve_recipe`` (which records why).
Robustar's original method is the named preset ``TrainOptions.preset("robustar")`` (noise fill, l2, no
painted share, no propagation); the benchmarks compare the defaults against it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any

AUTO = "auto"
OPTIMIZERS = ("sgd", "adam", "adamw")
LR_SCHEDULES = ("cosine", "constant", "warmup_cosine")
AUGMENTS = ("none", "flip", "crop_flip")
# what a job gets when neither TRAIN_* nor the job options set a value: chosen from the data
JOB_DEFAULTS = {"epochs": AUTO, "lr": AUTO, "optimizer": AUTO, "lr_schedule": AUTO, "weight_decay": AUTO,
                "augment": AUTO, "backbone_lr_scale": AUTO, "patience": AUTO}
AUTO_FIELDS = tuple(JOB_DEFAULTS)
# a job's fill when neither TRAIN_NOISE_MODE nor the job options set one (benchmarks/efficacy.py)
JOB_NOISE_MODE = "counterfactual_mixture"
# a job's version whose val accuracy falls more than this (or than the split's size explains) below its
# parent's is kept but not published (training.gate)
JOB_MAX_REGRESSION = 0.02
LABEL_SOURCES = ("annotation", "data")
PROPAGATED_MASKS = ("off", "confident", "all")
STROKE_SNAPS = ("off", "colour")  # training.stroke_snap
# a job's paired-training defaults (benchmarks/efficacy.py)
JOB_PAIRED = {"align": "kl", "painted_share": 0.5, "propagated_masks": "confident"}
# Robustar's original method (noise fill, ||z - z~||^2, no painted share, painted masks only): a named
# preset (``TrainOptions.preset("robustar")``) the benchmarks compare the defaults against
PRESETS: dict[str, dict[str, Any]] = {
    "robustar": {"noise_mode": "noise", "align": "l2", "painted_share": 0.0, "propagated_masks": "off",
                 "stroke_snap": "off"},
}


class OptionsError(ValueError):
    """A training option has an unusable value; the message names it."""


def parse_bool(value: Any, name: str) -> bool:
    """``true``/``1``/``yes``/``on`` (any case) -> True, ``false``/``0``/``no``/``off`` -> False, a bool as
    it is; anything else is an ``OptionsError`` (a ``ValueError``) naming ``name``. The one boolean parser
    (job options here, environment variables in ``ml_backend.settings``)."""
    if isinstance(value, bool):
        return value
    s = str(value).strip().lower()
    if s in ("1", "true", "yes", "on"):
        return True
    if s in ("0", "false", "no", "off"):
        return False
    raise OptionsError(f"{name} must be true or false, got {value!r}")


@dataclass
class TrainOptions:
    """Everything one training job is configured with (recorded in the checkpoint's metadata)."""

    mode: str = "finetune"
    arch: str | None = None
    epochs: int | str = AUTO
    batch_size: int = 32
    lr: float | str = AUTO
    optimizer: str = AUTO
    lr_schedule: str = AUTO
    momentum: float = 0.9
    weight_decay: float | str = AUTO
    augment: str = AUTO
    backbone_lr_scale: float | str = AUTO
    lam: float = 1.0
    noise_mode: str = JOB_NOISE_MODE
    align: str = JOB_PAIRED["align"]
    painted_share: float = JOB_PAIRED["painted_share"]
    propagated_masks: str = JOB_PAIRED["propagated_masks"]
    propagation_confidence: float = 0.5
    stroke_snap: str = "colour"  # snap painted masks to the colour region they cover (training.stroke_snap)
    patience: int | str = AUTO  # epochs without a val improvement before training stops (0: never early)
    image_size: int | None = None
    seed: int = 0
    device: str = "auto"
    num_workers: int = 8
    label_source: str = "annotation"
    eval_every_epoch: bool = True
    push_predictions: bool = True
    amp: bool = True
    max_regression: float = JOB_MAX_REGRESSION  # a version this much worse on val is kept, not published
    memory_budget: int = 2 << 30  # bytes of images a job keeps in memory (with an image cache: more streams)
    loader_workers: int = 4  # DataLoader processes of a streamed split

    ENV = {
        "mode": "TRAIN_MODE",
        "arch": "TRAIN_ARCH",
        "epochs": "TRAIN_EPOCHS",
        "batch_size": "TRAIN_BATCH_SIZE",
        "lr": "TRAIN_LR",
        "optimizer": "TRAIN_OPTIMIZER",
        "lr_schedule": "TRAIN_LR_SCHEDULE",
        "momentum": "TRAIN_MOMENTUM",
        "weight_decay": "TRAIN_WEIGHT_DECAY",
        "augment": "TRAIN_AUGMENT",
        "backbone_lr_scale": "TRAIN_BACKBONE_LR_SCALE",
        "lam": "TRAIN_LAMBDA",
        "noise_mode": "TRAIN_NOISE_MODE",
        "align": "TRAIN_ALIGN",
        "painted_share": "TRAIN_PAINTED_SHARE",
        "propagated_masks": "TRAIN_PROPAGATED_MASKS",
        "propagation_confidence": "TRAIN_PROPAGATION_CONFIDENCE",
        "stroke_snap": "TRAIN_STROKE_SNAP",
        "patience": "TRAIN_PATIENCE",
        "image_size": "TRAIN_IMAGE_SIZE",
        "seed": "TRAIN_SEED",
        "device": "TRAIN_DEVICE",
        "num_workers": "TRAIN_NUM_WORKERS",
        "label_source": "TRAIN_LABEL_SOURCE",
        "eval_every_epoch": "TRAIN_EVAL_EVERY_EPOCH",
        "push_predictions": "TRAIN_PUSH_PREDICTIONS",
        "amp": "TRAIN_AMP",
        "max_regression": "TRAIN_MAX_REGRESSION",
        "memory_budget": "TRAIN_MEMORY_BUDGET",
        "loader_workers": "TRAIN_LOADER_WORKERS",
    }
    # accepted spellings of option keys in job/webhook options
    _ALIASES = {"lambda": "lam", "reg_coeff": "lam", "noise": "noise_mode", "batchsize": "batch_size",
                "learning_rate": "lr", "threads": "num_workers"}

    @classmethod
    def resolve(cls, env: dict[str, str] | None = None, overrides: dict | None = None,
                base: dict[str, Any] | None = None) -> "TrainOptions":
        """Job defaults (``JOB_DEFAULTS``: ``auto``) <- ``base`` (the backend's seed/device/fetch workers) <- ``env`` (``TRAIN_*`` values,
        as read by the settings module) <- ``overrides`` (job options). Raises OptionsError naming any
        bad or unknown option."""
        raw: dict[str, Any] = dict(base or {})  # the rest: the field defaults, which are the job's
        for name, var in cls.ENV.items():
            v = (env or {}).get(var)
            if v not in (None, ""):
                raw[name] = v
        known = {f.name for f in fields(cls)}
        for key, value in (overrides or {}).items():
            name = cls._ALIASES.get(key, key)
            if name not in known:
                raise OptionsError(f"unknown training option {key!r}; known: {sorted(known)}")
            if value is not None:
                raw[name] = value
        return cls.coerce(raw)

    @classmethod
    def preset(cls, name: str, **overrides: Any) -> "TrainOptions":
        """A named recipe (``PRESETS``: ``robustar``, the original method) over the defaults, then ``overrides``."""
        if name not in PRESETS:
            raise OptionsError(f"unknown preset {name!r}; choose one of {sorted(PRESETS)}")
        return cls.coerce({**PRESETS[name], **overrides})

    @classmethod
    def coerce(cls, raw: dict[str, Any]) -> "TrainOptions":
        """Build options from strings or values, validating each."""
        kw: dict[str, Any] = {}
        for f in fields(cls):
            if f.name not in raw:
                continue
            v = raw[f.name]
            try:
                if f.name in AUTO_FIELDS and isinstance(v, str) and v.strip().lower() == AUTO:
                    v = AUTO
                elif f.name in ("epochs", "batch_size", "seed", "num_workers", "image_size", "memory_budget",
                                "loader_workers", "patience"):
                    if isinstance(v, float) and not v.is_integer():
                        raise ValueError
                    v = int(v)
                elif f.name in ("lr", "momentum", "weight_decay", "lam", "backbone_lr_scale", "max_regression",
                                "painted_share", "propagation_confidence"):
                    v = float(v)
                elif f.name in ("eval_every_epoch", "push_predictions", "amp"):
                    v = parse_bool(v, f.name)
                else:
                    v = str(v).strip().lower() if f.name in ("optimizer", "lr_schedule", "augment", "align",
                                                             "propagated_masks", "stroke_snap") else str(v).strip()
            except (TypeError, ValueError):
                raise OptionsError(f"training option {f.name}={v!r} has the wrong type") from None
            kw[f.name] = v
        opts = cls(**kw)
        opts.validate()
        return opts

    def validate(self) -> None:
        from training.counterfactual import FILL_MODES
        from training.models import ARCHS

        if not (self.mode in ("finetune", "scratch") or self.mode.startswith("pretrained:")):
            raise OptionsError(f"mode must be finetune, scratch or pretrained:<path>, got {self.mode!r}")
        if self.mode.startswith("pretrained:") and not self.mode.split(":", 1)[1]:
            raise OptionsError("mode pretrained:<path> needs the path of a state_dict file")
        if self.arch is not None and self.arch not in ARCHS:
            raise OptionsError(f"unknown arch {self.arch!r}; choose one of {sorted(ARCHS)}")
        if self.optimizer not in (*OPTIMIZERS, AUTO):
            raise OptionsError(f"optimizer must be one of {OPTIMIZERS}, got {self.optimizer!r}")
        if self.noise_mode not in FILL_MODES:
            raise OptionsError(f"noise_mode must be one of {list(FILL_MODES)}, got {self.noise_mode!r}")
        if self.augment not in (*AUGMENTS, AUTO):
            raise OptionsError(f"augment must be one of {AUGMENTS} or auto, got {self.augment!r}")
        if self.lr_schedule not in (*LR_SCHEDULES, AUTO):
            raise OptionsError(f"lr_schedule must be one of {LR_SCHEDULES}, got {self.lr_schedule!r}")
        if self.align not in ("l2", "kl"):
            raise OptionsError(f"align must be l2 or kl, got {self.align!r}")
        if not 0.0 <= self.painted_share <= 1.0:
            raise OptionsError(f"painted_share must be in [0, 1], got {self.painted_share}")
        if self.propagated_masks not in PROPAGATED_MASKS:
            raise OptionsError(f"propagated_masks must be one of {PROPAGATED_MASKS}, got {self.propagated_masks!r}")
        if self.stroke_snap not in STROKE_SNAPS:
            raise OptionsError(f"stroke_snap must be one of {STROKE_SNAPS}, got {self.stroke_snap!r}")
        if not 0.0 <= self.propagation_confidence <= 1.0:
            raise OptionsError(f"propagation_confidence must be in [0, 1], got {self.propagation_confidence}")
        if self.label_source not in LABEL_SOURCES:
            raise OptionsError(f"label_source must be one of {LABEL_SOURCES}, got {self.label_source!r}")
        for name, low in (("epochs", 1), ("batch_size", 1), ("num_workers", 1), ("patience", 0)):
            if getattr(self, name) != AUTO and getattr(self, name) < low:
                raise OptionsError(f"{name} must be >= {low}, got {getattr(self, name)}")
        if self.image_size is not None and self.image_size < 8:
            raise OptionsError(f"image_size must be >= 8, got {self.image_size}")
        if self.lr != AUTO and not self.lr > 0:
            raise OptionsError(f"lr must be > 0, got {self.lr}")
        if self.weight_decay != AUTO and self.weight_decay < 0:
            raise OptionsError(f"weight_decay must be >= 0, got {self.weight_decay}")
        if self.backbone_lr_scale != AUTO and not self.backbone_lr_scale >= 0:
            raise OptionsError(f"backbone_lr_scale must be >= 0, got {self.backbone_lr_scale}")
        if self.lam < 0:
            raise OptionsError(f"lam (λ) must be >= 0, got {self.lam}")
        if self.memory_budget < 0 or self.loader_workers < 0:
            raise OptionsError(f"memory_budget and loader_workers must be >= 0, got {self.memory_budget}, "
                               f"{self.loader_workers}")
        if not self.max_regression >= 0:
            raise OptionsError(f"max_regression must be >= 0 (inf: always publish), got {self.max_regression}")

    @property
    def is_resolved(self) -> bool:
        """True when no option is ``auto`` (``training.recipe.resolve_recipe`` has run)."""
        return all(getattr(self, name) != AUTO for name in AUTO_FIELDS)

    @property
    def pretrained_path(self) -> str | None:
        return self.mode.split(":", 1)[1] if self.mode.startswith("pretrained:") else None

    def torch_device(self) -> str:
        from training.models import resolve_device

        return resolve_device(self.device)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
