"""Model zoo: torchvision architectures (built untrained; named weights: ``training.pretrained``) plus small models
for tests and small images."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Callable

import torch
from torch import nn
from torchvision import models as tvm


class TinyCNN(nn.Module):
    """A small CNN for tests and CPU demos: three conv blocks, global pooling, a linear head."""

    def __init__(self, num_classes: int, width: int = 16) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(inplace=True), nn.MaxPool2d(2),
            nn.Conv2d(width, 2 * width, 3, padding=1), nn.BatchNorm2d(2 * width), nn.ReLU(inplace=True), nn.MaxPool2d(2),
            nn.Conv2d(2 * width, 4 * width, 3, padding=1), nn.BatchNorm2d(4 * width), nn.ReLU(inplace=True),
        )
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(4 * width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.pool(self.features(x)), 1))


SMALL_CNN_ARCHS = {4: "small-cnn", 5: "small-cnn-5", 6: "small-cnn-6"}  # blocks -> zoo name


class SmallCNN(nn.Module):
    """A compact CNN for small images (the recipe's choice at <= 96 px): 3x3 conv-BN-ReLU blocks of
    ``widths`` channels with a 2x2 max-pool between them, global pooling, a linear head.

    ``blocks`` (4, 5 or 6; widths 32, 64, 128, 256, then 256): each block about doubles the receptive
    field, 38, 78, 158 px, so the recipe picks the fewest that span the image (``small_cnn_for``)."""

    def __init__(self, num_classes: int, blocks: int = 4) -> None:
        super().__init__()
        widths = (32, 64, 128) + (256,) * (blocks - 3)
        layers: list[nn.Module] = []
        c = 3
        for i, w in enumerate(widths):
            layers += [nn.Conv2d(c, w, 3, padding=1, bias=False), nn.BatchNorm2d(w), nn.ReLU(inplace=True)]
            if i < len(widths) - 1:
                layers.append(nn.MaxPool2d(2))
            c = w
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(c, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.pool(self.features(x)), 1))


def small_cnn_receptive_field(blocks: int) -> int:
    """Receptive field (px) of ``blocks`` 3x3 conv blocks with a 2x2 max-pool between them: each conv
    adds 2 input strides, each pool 1 and doubles the stride."""
    return 5 * 2 ** (blocks - 1) - 2


def small_cnn_blocks(image_size: int) -> int:
    """The fewest blocks (4..6) whose receptive field spans ``image_size`` px: 4 to 38 px, 5 to 78 px, else 6."""
    return next((b for b in SMALL_CNN_ARCHS if small_cnn_receptive_field(b) >= image_size), max(SMALL_CNN_ARCHS))


def small_cnn_for(image_size: int) -> str:
    """The zoo name of the small CNN for ``image_size`` px (``small_cnn_blocks``)."""
    return SMALL_CNN_ARCHS[small_cnn_blocks(image_size)]


def _resnet18_32x32(num_classes: int) -> nn.Module:
    """ResNet-18 with a 3x3 stride-1 stem and no max-pool, as Robustar uses for 32x32 images."""
    model = tvm.resnet18(weights=None, num_classes=num_classes)
    model.conv1 = nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=1, bias=False)
    model.maxpool = nn.Identity()
    return model


ARCHS: dict[str, Callable[[int], nn.Module]] = {
    "tiny-cnn": lambda n: TinyCNN(n),
    "resnet-18": lambda n: tvm.resnet18(weights=None, num_classes=n),
    "resnet-34": lambda n: tvm.resnet34(weights=None, num_classes=n),
    "resnet-50": lambda n: tvm.resnet50(weights=None, num_classes=n),
    "mobilenet-v2": lambda n: tvm.mobilenet_v2(weights=None, num_classes=n),
    "resnet-18-32x32": _resnet18_32x32,
    "small-cnn": lambda n: SmallCNN(n, 4),
    "small-cnn-5": lambda n: SmallCNN(n, 5),
    "small-cnn-6": lambda n: SmallCNN(n, 6),
}


def build_model(arch: str, num_classes: int) -> nn.Module:
    """Build an untrained model of a zoo architecture with ``num_classes`` outputs."""
    try:
        return ARCHS[arch](num_classes)
    except KeyError:
        raise ValueError(f"unknown architecture {arch!r}; choose one of {sorted(ARCHS)}") from None


def classifier_head(model: nn.Module) -> nn.Linear:
    """Return the final linear layer (used to swap class counts and for influence gradients)."""
    for name in ("fc", "classifier"):
        head = getattr(model, name, None)
        if isinstance(head, nn.Sequential):
            head = head[-1]
        if isinstance(head, nn.Linear):
            return head
    raise ValueError(f"cannot find the classifier head of {type(model).__name__}")


def load_pretrained_backbone(model: nn.Module, path: str | Path) -> list[str]:
    """Load standard pretrained weights (e.g. ImageNet state_dict a user downloaded) from a local file.

    Tensors whose shape does not match (the classifier head when class counts differ) are skipped;
    returns the names of the skipped keys.
    """
    state = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(state, dict) and "state_dict" in state:
        state = state["state_dict"]
    return load_matching(model, state)


def load_matching(model: nn.Module, state: dict[str, torch.Tensor]) -> list[str]:
    """Load the tensors of ``state`` whose name and shape match ``model``'s; the names of the others."""
    own = model.state_dict()
    usable = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
    skipped = sorted(set(own) - set(usable))
    model.load_state_dict(usable, strict=False)
    return skipped


def resolve_device(name: str = "auto") -> str:
    """``auto`` -> ``cuda`` when a GPU is visible, else ``cpu``; any other name as given."""
    if name != "auto":
        return name
    return "cuda" if torch.cuda.is_available() else "cpu"


@contextmanager
def torch_threads(n: int | None) -> Iterator[None]:
    """torch's intra-op threads set to ``n`` for the block (None: unchanged), restored afterwards."""
    before = torch.get_num_threads()
    if n:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        if n:
            torch.set_num_threads(before)
