"""The model's input size from the data, when ``IMAGE_SIZE`` is unset.

The size a project's model sees is chosen once, with its reason, in this order:

1. ``IMAGE_SIZE`` (or a job's ``image_size``), as given;
2. named pretrained weights (``MODEL_WEIGHTS``): the resolution they were trained at (224 for
   torchvision's ImageNet classifiers), so the backbone sees what it learned on;
3. measured: the median short side of the training images, rounded to a multiple of ``ROUND_TO`` and
   bounded to ``MIN_SIZE``..``MAX_SIZE`` (``from_image_sizes``). ``robustar import`` measures the files
   it imports (their headers only) and hands the choice to the backend, which makes v0 at that size;
   a project imported otherwise gets v0 at ``DEFAULT_IMAGE_SIZE`` (source ``default``) and its first
   job measures a sample of the training images (``measure``) and trains at the measured size;
4. ``DEFAULT_IMAGE_SIZE`` until something was measured.

Images smaller than the bound are upscaled rather than trained below 32 px; larger ones are reduced
to 224 px, which a CPU trains in minutes and a GPU in seconds (set ``IMAGE_SIZE`` for more detail).
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from typing import Any, Callable, Sequence

from PIL import Image

MIN_SIZE, MAX_SIZE, ROUND_TO = 32, 224, 8
DEFAULT_IMAGE_SIZE = 224
MEASURE_SAMPLE = 64  # training images a first job decodes to measure the set
SOURCES = ("IMAGE_SIZE", "weights", "measured", "default")
SETUP_PARAM = "robustar_input_size"  # /setup's extra_params key: robustar import's measurement for the backend


@dataclass(frozen=True)
class InputSize:
    """A chosen input size, why, and where it came from (one of ``SOURCES``)."""

    size: int
    reason: str
    source: str

    def to_dict(self) -> dict[str, Any]:
        return {"size": self.size, "reason": self.reason, "source": self.source}

    @classmethod
    def from_config(cls, config: dict[str, Any] | None, size: int) -> "InputSize":
        """The choice a checkpoint's ``config`` recorded (``input_size``); a checkpoint from before this
        existed counts as ``IMAGE_SIZE`` (it was configured)."""
        rec = (config or {}).get("input_size")
        if isinstance(rec, dict) and rec.get("source") in SOURCES:
            return cls(int(size), str(rec.get("reason", "")), str(rec["source"]))
        return cls(int(size), "the checkpoint's size", "IMAGE_SIZE")


def bounded(side: float) -> int:
    """``side`` rounded to a multiple of ``ROUND_TO`` and bounded to ``MIN_SIZE``..``MAX_SIZE``."""
    return int(min(MAX_SIZE, max(MIN_SIZE, ROUND_TO * round(side / ROUND_TO))))


def from_image_sizes(sizes: Sequence[tuple[int, int]], where: str) -> InputSize | None:
    """The input size for images of ``(width, height)`` ``sizes``: their median short side, rounded and
    bounded (None without sizes). ``where`` says which images (for the reason)."""
    shorts = [min(w, h) for w, h in sizes if w > 0 and h > 0]
    if not shorts:
        return None
    median = statistics.median(shorts)
    size = bounded(median)
    lo, hi = min(shorts), max(shorts)
    spread = f"{lo} px" if lo == hi else f"{lo}..{hi} px"
    note = "" if size == ROUND_TO * round(median / ROUND_TO) else f", bounded to {MIN_SIZE}..{MAX_SIZE}"
    return InputSize(size, (f"median short side {median:g} px of {len(shorts)} {where} ({spread}): {size} px "
                            f"(a multiple of {ROUND_TO}{note}); IMAGE_SIZE sets it"), "measured")


def file_sizes(paths: Sequence[Any]) -> list[tuple[int, int]]:
    """``(width, height)`` of image files from their headers (no pixel is decoded; unreadable files are
    left out), as displayed: EXIF orientations 5..8 swap the sides."""
    out = []
    for path in paths:
        try:
            with Image.open(path) as img:
                w, h = img.size
                orientation = img.getexif().get(0x0112, 1)
        except (OSError, ValueError, SyntaxError):
            continue
        out.append((h, w) if orientation in (5, 6, 7, 8) else (w, h))
    return out


def sample(items: Sequence[Any], n: int = MEASURE_SAMPLE) -> list[Any]:
    """At most ``n`` items spread evenly over ``items`` (all when there are fewer)."""
    if len(items) <= n:
        return list(items)
    step = len(items) / n
    return [items[int(i * step)] for i in range(n)]


def measure(urls: Sequence[str], load_image: Callable[[str], Image.Image],
            n: int = MEASURE_SAMPLE) -> InputSize | None:
    """Decode a sample of the training images (``load_image``: the job's image source) and choose the
    size from their stored sizes (``training.images.original_size``); unreadable ones are skipped."""
    from training.images import ImageError, original_size

    sizes = []
    for url in sample(list(dict.fromkeys(urls)), n):
        try:
            sizes.append(original_size(load_image(url)))
        except ImageError:
            continue
    return from_image_sizes(sizes, "training images (sampled by the first job)")


def for_initial_version(image_size: int | None, weights_size: int | None, weights_name: str | None,
                        hint: InputSize | None) -> InputSize:
    """The size of v0: ``IMAGE_SIZE``, else the named weights' resolution, else the importer's measurement
    (``hint``), else ``DEFAULT_IMAGE_SIZE`` (source ``default``: the first job measures)."""
    if image_size:
        return InputSize(int(image_size), f"IMAGE_SIZE={image_size}", "IMAGE_SIZE")
    if weights_size:
        return InputSize(int(weights_size), f"{weights_name} were trained at {weights_size} px: the backbone sees "
                                            f"its own resolution (IMAGE_SIZE sets another)", "weights")
    if hint is not None:
        return hint
    return InputSize(DEFAULT_IMAGE_SIZE, (f"nothing measured yet: {DEFAULT_IMAGE_SIZE} px until the first job measures "
                                          "the training images"), "default")


def for_job(requested: int | None, finetune: bool, parent: tuple[int, dict[str, Any] | None, bool] | None,
            configured: int | None, measure_images: Callable[[], InputSize | None]) -> InputSize:
    """The input size of a job's model.

    ``requested``: TRAIN_IMAGE_SIZE / the job's option (kept); ``finetune``: the job fine-tunes ``parent``
    = ``(image_size, config, untrained)``, whose size is kept unless it was a ``default`` of an untrained v0
    (then the images are measured); otherwise (scratch, pretrained:<path>) ``configured`` (IMAGE_SIZE),
    else measured, else ``DEFAULT_IMAGE_SIZE``. ``measure_images`` is only called when needed."""
    if requested:
        return InputSize(int(requested), f"TRAIN_IMAGE_SIZE / job option: {requested}", "IMAGE_SIZE")
    if finetune and parent is not None:
        size, config, untrained = parent
        kept = InputSize.from_config(config, size)
        if not (kept.source == "default" and untrained):
            return InputSize(size, f"the parent's: {kept.reason}", kept.source)
    elif configured:
        return InputSize(int(configured), f"IMAGE_SIZE={configured}", "IMAGE_SIZE")
    measured = measure_images()
    if measured is not None:
        return measured
    return InputSize(DEFAULT_IMAGE_SIZE, f"no training image could be measured: {DEFAULT_IMAGE_SIZE} px", "default")
