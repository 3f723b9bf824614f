"""Training options: defaults (the ``TRAIN_*`` variables, read by ``ml_backend.settings``) overridden
per job (webhook / API options).

Variables (all optional):

====================  =============  ==========================================================
variable              default        meaning
====================  =============  ==========================================================
TRAIN_MODE            finetune       ``finetune`` (the published version), ``scratch``, or
                                     ``pretrained:<path>`` (a torchvision state_dict file)
TRAIN_ARCH            (MODEL_ARCH)   architecture for scratch/pretrained (finetune keeps the
                                     parent's)
TRAIN_EPOCHS          10             epochs over the training split
TRAIN_BATCH_SIZE      32
TRAIN_LR              0.01
TRAIN_OPTIMIZER       sgd            ``sgd`` (momentum 0.9) or ``adam``
TRAIN_LR_SCHEDULE     cosine         ``cosine`` (annealed to 0 over the job) or ``constant``
TRAIN_MOMENTUM        0.9            SGD momentum
TRAIN_WEIGHT_DECAY    0.0005
TRAIN_LAMBDA          1.0            λ: weight of the paired logit-alignment term
TRAIN_NOISE_MODE      noise          how painted pixels are replaced (training.noise.NOISE_MODES)
TRAIN_IMAGE_SIZE      (parent/       model input size; finetune defaults to the parent's
                      IMAGE_SIZE)
TRAIN_SEED            (SEED) 0       seeds init, shuffling and noise
TRAIN_DEVICE          (DEVICE) auto  ``auto`` = cuda when available, else cpu
TRAIN_NUM_WORKERS     (FETCH_        threads that download/decode task images
                      WORKERS) 8
TRAIN_LABEL_SOURCE    annotation     ``annotation``: train on the annotation's class choice when
                                     there is one; ``data``: always the task-data label
TRAIN_EVAL_EVERY_EPOCH true          evaluate the test split after every epoch (curves)
TRAIN_PUSH_PREDICTIONS true          push the new version's predictions to Label Studio and
                                     set the project's model_version
TRAIN_AMP             true           bf16 autocast on CUDA (ignored on CPU)
====================  =============  ==========================================================
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any

OPTIMIZERS = ("sgd", "adam")
LR_SCHEDULES = ("cosine", "constant")
LABEL_SOURCES = ("annotation", "data")


class OptionsError(ValueError):
    """A training option has an unusable value; the message names it."""


def _bool(value: Any, name: str) -> bool:
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
    epochs: int = 10
    batch_size: int = 32
    lr: float = 0.01
    optimizer: str = "sgd"
    lr_schedule: str = "cosine"
    momentum: float = 0.9
    weight_decay: float = 5e-4
    lam: float = 1.0
    noise_mode: str = "noise"
    image_size: int | None = None
    seed: int = 0
    device: str = "auto"
    num_workers: int = 8
    label_source: str = "annotation"
    eval_every_epoch: bool = True
    push_predictions: bool = True
    amp: bool = True

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
        "lam": "TRAIN_LAMBDA",
        "noise_mode": "TRAIN_NOISE_MODE",
        "image_size": "TRAIN_IMAGE_SIZE",
        "seed": "TRAIN_SEED",
        "device": "TRAIN_DEVICE",
        "num_workers": "TRAIN_NUM_WORKERS",
        "label_source": "TRAIN_LABEL_SOURCE",
        "eval_every_epoch": "TRAIN_EVAL_EVERY_EPOCH",
        "push_predictions": "TRAIN_PUSH_PREDICTIONS",
        "amp": "TRAIN_AMP",
    }
    # accepted spellings of option keys in job/webhook options
    _ALIASES = {"lambda": "lam", "reg_coeff": "lam", "noise": "noise_mode", "batchsize": "batch_size",
                "learning_rate": "lr", "threads": "num_workers"}

    @classmethod
    def resolve(cls, env: dict[str, str] | None = None, overrides: dict | None = None,
                base: dict[str, Any] | None = None) -> "TrainOptions":
        """Defaults <- ``base`` (the backend's seed/device/fetch workers) <- ``env`` (``TRAIN_*`` values,
        as read by the settings module) <- ``overrides`` (job options). Raises OptionsError naming any
        bad or unknown option."""
        raw: dict[str, Any] = dict(base or {})
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
    def coerce(cls, raw: dict[str, Any]) -> "TrainOptions":
        """Build options from strings or values, validating each."""
        kw: dict[str, Any] = {}
        for f in fields(cls):
            if f.name not in raw:
                continue
            v = raw[f.name]
            try:
                if f.name in ("epochs", "batch_size", "seed", "num_workers", "image_size"):
                    if isinstance(v, float) and not v.is_integer():
                        raise ValueError
                    v = int(v)
                elif f.name in ("lr", "momentum", "weight_decay", "lam"):
                    v = float(v)
                elif f.name in ("eval_every_epoch", "push_predictions", "amp"):
                    v = _bool(v, f.name)
                else:
                    v = str(v).strip()
            except (TypeError, ValueError):
                raise OptionsError(f"training option {f.name}={v!r} has the wrong type") from None
            kw[f.name] = v
        opts = cls(**kw)
        opts.validate()
        return opts

    def validate(self) -> None:
        from training.models import ARCHS
        from training.noise import NOISE_MODES

        if not (self.mode in ("finetune", "scratch") or self.mode.startswith("pretrained:")):
            raise OptionsError(f"mode must be finetune, scratch or pretrained:<path>, got {self.mode!r}")
        if self.mode.startswith("pretrained:") and not self.mode.split(":", 1)[1]:
            raise OptionsError("mode pretrained:<path> needs the path of a state_dict file")
        if self.arch is not None and self.arch not in ARCHS:
            raise OptionsError(f"unknown arch {self.arch!r}; choose one of {sorted(ARCHS)}")
        if self.optimizer not in OPTIMIZERS:
            raise OptionsError(f"optimizer must be one of {OPTIMIZERS}, got {self.optimizer!r}")
        if self.noise_mode not in NOISE_MODES:
            raise OptionsError(f"noise_mode must be one of {list(NOISE_MODES)}, got {self.noise_mode!r}")
        if self.lr_schedule not in LR_SCHEDULES:
            raise OptionsError(f"lr_schedule must be one of {LR_SCHEDULES}, got {self.lr_schedule!r}")
        if self.label_source not in LABEL_SOURCES:
            raise OptionsError(f"label_source must be one of {LABEL_SOURCES}, got {self.label_source!r}")
        for name, low in (("epochs", 1), ("batch_size", 1), ("num_workers", 1)):
            if getattr(self, name) < low:
                raise OptionsError(f"{name} must be >= {low}, got {getattr(self, name)}")
        if self.image_size is not None and self.image_size < 8:
            raise OptionsError(f"image_size must be >= 8, got {self.image_size}")
        if not self.lr > 0:
            raise OptionsError(f"lr must be > 0, got {self.lr}")
        if self.lam < 0:
            raise OptionsError(f"lam (λ) must be >= 0, got {self.lam}")

    @property
    def pretrained_path(self) -> str | None:
        return self.mode.split(":", 1)[1] if self.mode.startswith("pretrained:") else None

    def torch_device(self) -> str:
        from training.models import resolve_device

        return resolve_device(self.device)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
