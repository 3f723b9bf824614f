"""Pluggable parts of a prediction (classifier, segmentation, saliency, influence…).

Each part gets the whole batch at once and returns regions per task; a part that raises is
logged with the task ids and left out, so one failing part never breaks the response.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

import torch
from PIL import Image

from label_config.render import ParsedConfig
from ml_backend.serving import ServedModel
from ml_backend.settings import Settings


@dataclass
class PredictContext:
    """Everything a part may use: the served model, the batch of decoded images and their tasks."""

    project_id: int
    settings: Settings
    config: ParsedConfig
    served: ServedModel
    tasks: list[dict]
    images: list[Image.Image]
    probs: torch.Tensor  # N×C class probabilities from the classifier
    fetcher: Any = None  # the project's ImageFetcher (a part that needs other tasks' images uses it)
    label_studio: tuple[str | None, str | None] = (None, None)  # the project's Label Studio origin and credential
    context: dict | None = None  # interactive pre-annotation: Label Studio's params.context (the expert's marks)


@dataclass
class PartOutput:
    """Regions to add per task and, optionally, a prediction score per task (None keeps the default)."""

    regions: list[list[dict]]
    scores: list[float | None] | None = None


class PredictionPart(Protocol):
    """A part of the prediction; ``name`` appears in logs, ``/health`` and ``/metrics``."""

    name: str

    def __call__(self, ctx: PredictContext) -> PartOutput: ...
