"""Pretrained weights by name, through torchvision's weights API and the torch hub cache.

``MODEL_WEIGHTS=imagenet`` (or ``default``, a member like ``IMAGENET1K_V2``, or a full enum name such as
``ResNet18_Weights.IMAGENET1K_V1``) names the weights of the configured architecture's torchvision
builder; ``SEGMENTATION_WEIGHTS=coco`` (or ``MaskRCNN_ResNet50_FPN_Weights.COCO_V1``) the detector's.
The file is looked up in torch's hub cache (``$TORCH_HOME/hub/checkpoints/<file name of the URL>``,
torch reads ``TORCH_HOME`` itself; default ``~/.cache/torch``): downloaded once, on a machine with
internet, hash-checked by torch, and read from the cache offline afterwards. Without the file and
without a network, ``WeightsUnavailableError`` says which file to put where.

A named weight also says how its model was trained: the input resolution (``image_size``: the crop of
its evaluation transforms) and the normalisation (``mean``, ``std``), which v0 keeps.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

import torch

# zoo name -> torchvision builder name, for the architectures torchvision has weights for
TORCHVISION_BUILDERS = {"resnet-18": "resnet18", "resnet-34": "resnet34", "resnet-50": "resnet50",
                        "mobilenet-v2": "mobilenet_v2"}
ALIASES = {"imagenet": "DEFAULT", "coco": "DEFAULT", "default": "DEFAULT"}
_NAME_RE = re.compile(r"^([A-Za-z0-9]+(_[A-Za-z0-9]+)*_Weights\.)?[A-Za-z0-9_]+$")


class WeightsUnavailableError(ValueError):
    """Named weights are neither in the torch hub cache nor downloadable here; the message says what to do (a
    ValueError: the backend answers it as a 400 with the message, a job fails without a retry)."""


@dataclass(frozen=True)
class NamedWeights:
    """One torchvision weights enum member and where its file lives."""

    name: str  # "ResNet18_Weights.IMAGENET1K_V1"
    url: str
    file: Path  # in the torch hub cache
    image_size: int | None
    mean: tuple[float, float, float] | None
    std: tuple[float, float, float] | None
    categories: tuple[str, ...] = ()


def looks_like_name(value: str) -> bool:
    """Whether ``value`` is a weights name (``imagenet``, ``coco``, ``IMAGENET1K_V1``, ``X_Weights.Y``), not a path."""
    return value.lower() in ALIASES or bool(_NAME_RE.match(value)) and "/" not in value and not value.endswith(
        (".pt", ".pth", ".bin", ".safetensors"))


def cache_file(url: str) -> Path:
    """Where torch's hub keeps the file of ``url`` (``torch.hub.get_dir()/checkpoints/<basename>``)."""
    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(urlparse(url).path)


def resolve(builder: str, spec: str, variable: str = "MODEL_WEIGHTS") -> NamedWeights:
    """The torchvision weights named ``spec`` for the builder ``builder`` (e.g. ``resnet18``,
    ``maskrcnn_resnet50_fpn``); ``ValueError`` naming ``variable`` when there are none by that name."""
    from torchvision.models import get_model_weights, get_weight

    try:
        enum = get_model_weights(builder)
    except (ValueError, KeyError):
        raise ValueError(f"{variable}={spec}: torchvision has no weights for {builder}") from None
    member = ALIASES.get(spec.lower(), spec)
    try:
        weights = get_weight(member) if "." in member else enum[member.upper()]
    except (ValueError, KeyError, AttributeError):
        raise ValueError(f"{variable}={spec}: not a weights name of {builder}; choose imagenet/coco (the default) or "
                         f"one of {', '.join(f'{enum.__name__}.{m.name}' for m in enum)}") from None
    if not isinstance(weights, enum):
        raise ValueError(f"{variable}={spec}: {type(weights).__name__} are not weights of {builder} ({enum.__name__})")
    transforms = weights.transforms()
    crop = getattr(transforms, "crop_size", None)
    mean, std = getattr(transforms, "mean", None), getattr(transforms, "std", None)
    return NamedWeights(
        name=f"{enum.__name__}.{weights.name}", url=weights.url, file=cache_file(weights.url),
        image_size=int(crop[0]) if crop else None,
        mean=tuple(float(v) for v in mean) if mean else None, std=tuple(float(v) for v in std) if std else None,
        categories=tuple(weights.meta.get("categories") or ()))


def by_full_name(name: str) -> NamedWeights:
    """Weights by their full enum name (``ResNet50_Weights.IMAGENET1K_V2``), whatever the architecture."""
    from torchvision.models import get_weight

    try:
        weights = get_weight(name)
    except (ValueError, KeyError, AttributeError):
        raise ValueError(f"{name}: not a torchvision weights name (e.g. ResNet18_Weights.IMAGENET1K_V1)") from None
    return resolve(_builder_of(type(weights)), name)


def _builder_of(enum: type) -> str:
    """The torchvision builder whose weights ``enum`` are (``ResNet50_Weights`` -> ``resnet50``)."""
    from torchvision.models import get_model_weights, list_models

    return next(m for m in list_models() if get_model_weights(m) is enum)


def for_arch(arch: str, spec: str) -> NamedWeights:
    """``MODEL_WEIGHTS`` for a zoo architecture (``ValueError`` for those torchvision has no weights for)."""
    builder = TORCHVISION_BUILDERS.get(arch)
    if builder is None:
        raise ValueError(f"MODEL_WEIGHTS={spec}: torchvision has no pretrained weights for MODEL_ARCH={arch}; "
                         f"use one of {', '.join(TORCHVISION_BUILDERS)}")
    return resolve(builder, spec)


def state_dict(weights: NamedWeights, variable: str = "MODEL_WEIGHTS") -> dict[str, torch.Tensor]:
    """The weights' state dict from the hub cache, downloaded there first when missing (hash-checked);
    ``WeightsUnavailableError`` when it is missing and cannot be downloaded."""
    if not weights.file.is_file():
        try:
            return torch.hub.load_state_dict_from_url(weights.url, progress=False, check_hash=True,
                                                      map_location="cpu", weights_only=True)
        except Exception as e:  # URLError, HTTPError, socket errors, a hash mismatch
            raise WeightsUnavailableError(
                f"{variable}: {weights.name} is not in the torch hub cache ({weights.file}) and could not be "
                f"downloaded from {weights.url} ({type(e).__name__}: {e}). On a machine with internet run "
                f"`robustar fetch-weights {weights.name}` (or start once there), then copy {weights.file.name} "
                f"into {weights.file.parent} on this one (TORCH_HOME moves the cache), or use a local weights file "
                f"({'MODEL_CHECKPOINT' if variable == 'MODEL_WEIGHTS' else variable})") from e
    return torch.load(weights.file, map_location="cpu", weights_only=True)
