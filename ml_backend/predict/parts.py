"""Pluggable parts of a prediction (classifier, segmentation, saliency, influence…).

Each part gets the whole batch at once and returns regions per task; a part that raises is
logged with the task ids and left out, so one failing part never breaks the response.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import torch
from PIL import Image

from label_config import regions as regions_lib
from label_config.render import SPURIOUS_LABEL, ParsedConfig
from ml_backend.predict.registry import ServedModel
from ml_backend.settings import Settings
from training.images import original_size

log = logging.getLogger(__name__)


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
    """Regions to add per task and, optionally, a score per task (None: none) with what it measures."""

    regions: list[list[dict]]
    scores: list[float | None] | None = None
    kind: str | None = None  # what the scores measure, when they are not a confidence (e.g. the suspicion's formula)


class PredictionPart(Protocol):
    """A part of the prediction; ``name`` appears in logs, ``/health`` and ``/metrics``."""

    name: str

    def __call__(self, ctx: PredictContext) -> PartOutput: ...


# A proposer gets (task, image, that image's item) and returns the proposed mask (None: nothing) and its score.
MaskProposer = Callable[[dict, Image.Image, Any], tuple[np.ndarray | None, float | None]]


def no_regions(ctx: PredictContext) -> PartOutput:
    """No region for any task (e.g. the config has no ``Spurious`` brush to put a proposal in)."""
    return PartOutput(regions=[[] for _ in ctx.tasks])


def spurious_proposals(ctx: PredictContext, items: Iterable[Any], propose: MaskProposer, region_id: str,
                       what: str) -> PartOutput:
    """One ``Spurious`` brush region per task where ``propose`` finds a mask, at the image's original size;
    a task whose proposal raises is logged (``what`` names the part) and gets none."""
    control = ctx.config.spurious_control
    regions: list[list[dict]] = []
    for task, img, item in zip(ctx.tasks, ctx.images, items):
        task_regions: list[dict] = []
        try:
            mask, score = propose(task, img, item)
            if mask is not None and mask.any():
                task_regions.append(regions_lib.brush(mask, SPURIOUS_LABEL, control, ctx.config.image_name, score,
                                                      region_id=region_id, size=original_size(img)))
        except Exception:
            log.exception("project %s task %s: %s proposal failed", ctx.project_id, task.get("id"), what)
        regions.append(task_regions)
    return PartOutput(regions=regions)
