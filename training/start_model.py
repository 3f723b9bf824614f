"""The model a training job starts from (``start_model``): the parent fine-tuned (a new head when the
classes changed; an untrained v0 replaced by the architecture the images call for), a random init, or
pretrained weights from a file, with where its weights came from said in words."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from training.checkpoints import IMAGENET_MEAN, IMAGENET_STD, CheckpointMeta, ModelDefaults
from training.input_size import InputSize
from training.models import build_model, classifier_head, load_pretrained_backbone
from training.options import OptionsError, TrainOptions
from training.recipe import choose_arch

log = logging.getLogger(__name__)


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
    size: InputSize | None = None  # how image_size was chosen (training.input_size)


def _head_keys(model: nn.Module) -> set[str]:
    head = classifier_head(model)
    prefix = next(name for name, mod in model.named_modules() if mod is head)
    return {f"{prefix}.{k}" for k in head.state_dict()}


def is_untrained(meta: CheckpointMeta) -> bool:
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
    if is_untrained(pmeta) and not opts.arch:
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
