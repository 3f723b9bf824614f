"""Segmentation part: a Mask R-CNN proposal of the spurious pixels as a ``Spurious`` brush region.

torchvision ``maskrcnn_resnet50_fpn`` (or ``_v2``) is built with ``weights=None,
weights_backbone=None`` and loaded from ``SEGMENTATION_WEIGHTS``: a local state_dict (a fine-tuned
detector; the class count is read from the weights, so detectors with their own classes load too), or a
torchvision weights name, ``coco`` (the architecture's default COCO weights) or e.g.
``MaskRCNN_ResNet50_FPN_Weights.COCO_V1``, read from the torch hub cache and downloaded there once when a
network is at hand (``training.pretrained``).

Modes (``SEGMENTATION_MODE``):

- ``background`` (default): the complement of the union of the detected objects' masks whose score
  is at least ``SEGMENTATION_SCORE``, i.e. the image background. No detection -> no proposal.
- ``instances``: the union of the masks of detections of the classes in ``SEGMENTATION_CLASSES``
  (COCO names such as ``person,dog`` or class ids), e.g. rulers or text labels in medical images.

torchvision's Mask R-CNN pastes masks at the size of the image it was given: the task image as decoded
(at most ``PREDICT_MAX_SIDE``); regions carry ``original_width/height`` of the stored task image, the
mask upscaled (nearest) only while its RLE is encoded (``label_config.regions.brush`` with ``size``).
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
from PIL import Image

from ml_backend.predict.parts import PartOutput, PredictContext, no_regions, spurious_proposals
from training import pretrained

log = logging.getLogger(__name__)

ARCHS = ("maskrcnn_resnet50_fpn", "maskrcnn_resnet50_fpn_v2")
MODES = ("background", "instances")
MASK_THRESHOLD = 0.5  # per-pixel mask probability that counts as "object"


def coco_categories() -> list[str]:
    """The 91 COCO category names torchvision's detection weights use (index 0 = background)."""
    from torchvision.models.detection import MaskRCNN_ResNet50_FPN_Weights

    return list(MaskRCNN_ResNet50_FPN_Weights.COCO_V1.meta["categories"])


def _unwrap_state(payload: Any) -> dict[str, torch.Tensor]:
    if isinstance(payload, dict):
        for k in ("state_dict", "model"):
            if isinstance(payload.get(k), dict):
                return payload[k]
    if not isinstance(payload, dict):
        raise ValueError(f"expected a state_dict, got {type(payload).__name__}")
    return payload


def load_detector(
    weights: str | Path,
    arch: str = "maskrcnn_resnet50_fpn",
    min_size: int = 800,
    max_size: int = 1333,
    box_score_thresh: float = 0.05,
    device: str = "cpu",
    **detector_kwargs: Any,
) -> tuple[torch.nn.Module, list[str]]:
    """Build a torchvision Mask R-CNN from a local weights file; returns the model (eval) and class names.

    ``detector_kwargs`` go to torchvision's builder (e.g. ``rpn_post_nms_top_n_test``,
    ``box_detections_per_img``).
    """
    from torchvision.models import detection

    if arch not in ARCHS:
        raise ValueError(f"SEGMENTATION_ARCH={arch!r}: choose one of {', '.join(ARCHS)}")
    path = Path(weights)
    payload: Any = None
    if not path.is_file() and pretrained.looks_like_name(str(weights)):
        named = pretrained.resolve(arch, str(weights), "SEGMENTATION_WEIGHTS")
        state, path = pretrained.state_dict(named, "SEGMENTATION_WEIGHTS"), named.file
        payload = {"classes": list(named.categories)}
    elif not path.is_file():
        raise FileNotFoundError(f"SEGMENTATION_WEIGHTS={path} does not exist (a file, or a weights name such as coco)")
    else:
        payload = torch.load(path, map_location="cpu", weights_only=True)
        state = _unwrap_state(payload)
    key = "roi_heads.box_predictor.cls_score.weight"
    if key not in state:
        raise ValueError(f"{path} is not a Mask R-CNN state_dict (no {key})")
    num_classes = int(state[key].shape[0])
    builder = getattr(detection, arch)
    model = builder(weights=None, weights_backbone=None, num_classes=num_classes,
                    min_size=min_size, max_size=max_size, box_score_thresh=box_score_thresh, **detector_kwargs)
    try:
        model.load_state_dict(state)
    except RuntimeError as e:
        raise ValueError(f"{path} does not fit {arch} ({num_classes} classes): {str(e)[:300]}") from e
    names = None
    if isinstance(payload, dict) and isinstance(payload.get("classes"), list):
        names = [str(c) for c in payload["classes"]]
    if names is None or len(names) != num_classes:
        names = coco_categories() if num_classes == 91 else [f"class_{i}" for i in range(num_classes)]
    return model.to(device).eval(), names


def resolve_classes(wanted: Sequence[str], names: Sequence[str]) -> set[int]:
    """Class ids for ``SEGMENTATION_CLASSES`` entries (names, case-insensitive, or integer ids)."""
    lookup = {n.lower(): i for i, n in enumerate(names)}
    ids = set()
    for w in wanted:
        w = str(w).strip()
        if w.isdigit() and int(w) < len(names):
            ids.add(int(w))
        elif w.lower() in lookup:
            ids.add(lookup[w.lower()])
        else:
            raise ValueError(f"SEGMENTATION_CLASSES: unknown class {w!r} (the detector knows {len(names)} classes, "
                             f"e.g. {', '.join(list(names)[1:8])})")
    return ids


def detections_to_mask(
    detection: dict[str, torch.Tensor],
    height: int,
    width: int,
    score_threshold: float,
    mode: str = "background",
    class_ids: set[int] | None = None,
) -> tuple[np.ndarray | None, float | None]:
    """The proposed spurious mask (bool ``height x width``) and its score from one image's detections.

    ``detection`` is torchvision's output: ``masks`` (K x 1 x H x W probabilities), ``scores``,
    ``labels``. Returns ``(None, None)`` when nothing qualifies.
    """
    scores = detection["scores"].detach().cpu()
    labels = detection["labels"].detach().cpu()
    keep = scores >= score_threshold
    if mode == "instances":
        ids = torch.tensor(sorted(class_ids or ()), dtype=labels.dtype)
        keep &= torch.isin(labels, ids)
    if not bool(keep.any()):
        return None, None
    masks = detection["masks"].detach().cpu()[keep]
    if masks.shape[-2:] != (height, width):
        raise ValueError(f"detector masks are {tuple(masks.shape[-2:])}, the image is {(height, width)}")
    union = (masks[:, 0] > MASK_THRESHOLD).any(dim=0).numpy()
    mask = ~union if mode == "background" else union
    if not mask.any() or mask.all():
        return None, None
    return mask, float(scores[keep].mean())


class SegmentationPart:
    """Prediction part: Mask R-CNN -> ``Spurious`` brush proposal per task."""

    name = "segmentation"

    def __init__(
        self,
        weights: str | Path | None = None,
        arch: str = "maskrcnn_resnet50_fpn",
        score_threshold: float = 0.5,
        mode: str = "background",
        classes: Sequence[str] = (),
        min_size: int = 800,
        max_size: int = 1333,
        batch_size: int = 16,
        device: str | None = None,
        detector: Callable[[list[torch.Tensor]], list[dict]] | None = None,
        class_names: Sequence[str] | None = None,
        detector_kwargs: dict[str, Any] | None = None,
    ) -> None:
        if mode not in MODES:
            raise ValueError(f"SEGMENTATION_MODE={mode!r}: choose one of {', '.join(MODES)}")
        if mode == "instances" and not classes:
            raise ValueError("SEGMENTATION_MODE=instances needs SEGMENTATION_CLASSES (names or ids)")
        if arch not in ARCHS:
            raise ValueError(f"SEGMENTATION_ARCH={arch!r}: choose one of {', '.join(ARCHS)}")
        if weights is None and detector is None:
            raise ValueError("the segmentation part needs SEGMENTATION_WEIGHTS (a local Mask R-CNN state_dict)")
        if weights is not None and not Path(weights).is_file():
            if not pretrained.looks_like_name(str(weights)):
                raise FileNotFoundError(f"SEGMENTATION_WEIGHTS={weights} does not exist (a file, or a weights name "
                                        "such as coco)")
            pretrained.resolve(arch, str(weights), "SEGMENTATION_WEIGHTS")  # a known name (loaded on first use)
        self.weights, self.arch, self.mode = weights, arch, mode
        self.score_threshold = float(score_threshold)
        self.classes = tuple(classes)
        self.min_size, self.max_size = int(min_size), int(max_size)
        self.batch_size = max(1, int(batch_size))
        self.device = device
        self._detector = detector
        self._names = list(class_names) if class_names is not None else None
        self._class_ids: set[int] | None = None
        self.detector_kwargs = dict(detector_kwargs or {})
        self._lock = threading.Lock()

    @classmethod
    def from_settings(cls, settings) -> "SegmentationPart":
        return cls(settings.segmentation_weights, settings.segmentation_arch, settings.segmentation_score,
                   settings.segmentation_mode, settings.segmentation_classes, settings.segmentation_min_size,
                   settings.segmentation_max_size, settings.predict_batch_size)

    def detector(self, device: str) -> Callable[[list[torch.Tensor]], list[dict]]:
        """The detector, loaded on first use (the app starts and answers /health without waiting)."""
        if self._detector is None:
            with self._lock:
                if self._detector is None:
                    # box_score_thresh = our threshold: weaker detections are dropped before the mask head
                    model, names = load_detector(self.weights, self.arch, self.min_size, self.max_size,
                                                 self.score_threshold, self.device or device,
                                                 **self.detector_kwargs)
                    self._names = names
                    self._detector = model
                    log.info("segmentation: loaded %s from %s (%d classes)", self.arch, self.weights, len(names))
        if self._class_ids is None and self.mode == "instances":
            names = self._names or coco_categories()
            self._class_ids = resolve_classes(self.classes, names)
        return self._detector

    @torch.inference_mode()
    def detect(self, images: Sequence[Image.Image], device: str) -> list[dict]:
        """Raw detections for every image (original sizes), in chunks of ``batch_size``."""
        model = self.detector(device)
        dev = self.device or device
        out: list[dict] = []
        for start in range(0, len(images), self.batch_size):
            batch = [
                torch.from_numpy(np.array(img.convert("RGB"), dtype=np.uint8)).permute(2, 0, 1).to(dev).float().div_(255)
                for img in images[start : start + self.batch_size]
            ]
            out.extend({k: v.cpu() for k, v in d.items()} for d in model(batch))
        return out

    def __call__(self, ctx: PredictContext) -> PartOutput:
        if not ctx.config.spurious_control:
            return no_regions(ctx)
        detections = self.detect(ctx.images, ctx.served.device)
        return spurious_proposals(ctx, detections, self.propose, f"maskrcnn-{self.mode}", "segmentation")

    def propose(self, task: dict, img: Image.Image, det: dict) -> tuple[np.ndarray | None, float | None]:
        """The mask of this image's detections (``mode``: instances of the classes, or the background)."""
        return detections_to_mask(det, img.height, img.width, self.score_threshold, self.mode, self._class_ids)
