"""A trained starting version: v0 from a short plain (ERM) run on an ImageFolder dataset.

``robustar demo`` starts its project from this v0 instead of a random init: trained on the generated
shortcut set (``training.synthetic.make_spurious_dataset``), v0 learns the class-coloured corner patch,
so the first predictions already show what Robustar is for: the model attends to the spurious patch,
and on test images whose patch disagrees with the class it predicts the patch's class.

The run is plain training (``training.engine.fit`` with no painted masks, so the paired loss is plain
cross-entropy), seeded (init, shuffling), on the ``train/<class>/*`` images decoded and resized exactly
as everywhere else (``training.images.decode_image`` + ``resize_rgb``). A store that already holds a
version is left alone: v0 is trained once per project.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from training.checkpoints import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    CheckpointMeta,
    CheckpointStore,
    ModelDefaults,
)
from training.dataset import PairedDataset
from training.engine import evaluate_splits, fit
from training.images import decode_image, resize_rgb
from training.models import build_model, load_pretrained_backbone, torch_threads
from training.options import TrainOptions
from training.progress import Progress

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp")
SOURCE_PREFIX = "demo: plain training on the shortcut set"  # CheckpointMeta.config["source"] starts with it
# the short plain run: tiny-cnn at 64 px on the demo's 90 images learns the patch (the simpler feature) in these
# 48 steps, about 2 s on one CPU thread; much longer runs go on to learn the shapes as well
DEFAULT_EPOCHS = 8
DEFAULT_BATCH_SIZE = 16
DEFAULT_LR = 1e-3


def load_image_folder(root: str | Path, split: str, classes: list[str], size: int) -> PairedDataset:
    """``<root>/<split>/<class>/*`` as a ``PairedDataset`` at ``size`` px (no masks: nothing painted).

    Task ids are the paths relative to ``root`` (``train/circle/circle_0000.png``), in sorted order."""
    root = Path(root)
    images, targets, keys = [], [], []
    for ci, name in enumerate(classes):
        folder = root / split / name
        if not folder.is_dir():
            continue
        for path in sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()):
            images.append(resize_rgb(decode_image(path.read_bytes(), str(path)), size))
            targets.append(ci)
            keys.append(path.relative_to(root).as_posix())
    if not images:
        return PairedDataset.empty(size)
    x = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).contiguous()
    masks = torch.zeros(len(images), 1, size, size, dtype=torch.bool)
    return PairedDataset(x, masks, torch.tensor(targets, dtype=torch.long), keys)


def plain_options(epochs: int, seed: int, device: str, batch_size: int = DEFAULT_BATCH_SIZE,
                  lr: float = DEFAULT_LR) -> TrainOptions:
    """The fixed recipe of the short plain run: AdamW, cosine to 0, no augmentation, no paired term."""
    return TrainOptions(mode="scratch", epochs=epochs, batch_size=batch_size, lr=lr, optimizer="adamw",
                        lr_schedule="cosine", weight_decay=1e-4, augment="none", backbone_lr_scale=1.0,
                        lam=0.0, seed=seed, device=device, eval_every_epoch=False, push_predictions=False,
                        amp=False)


def train_initial_version(
    store: CheckpointStore,
    defaults: ModelDefaults,
    classes: list[str],
    images_root: str | Path,
    epochs: int = DEFAULT_EPOCHS,
    seed: int | None = None,
    device: str = "cpu",
    progress: Progress | None = None,
    threads: int | None = 1,
    source: str = SOURCE_PREFIX,
) -> CheckpointMeta:
    """Train, write and publish v0 of ``store`` by plain training on ``<images_root>/train/<class>/*``.

    ``defaults`` gives the architecture and input size (``defaults.checkpoint``, when set, gives the
    start weights: ``MODEL_CHECKPOINT``); ``seed`` (default ``defaults.seed``) seeds the init and the
    shuffling. The test split, when present, is evaluated for the metadata's metrics. When the store
    already holds a version nothing is trained and the existing v0's metadata is returned (the oldest
    version's if v0 is gone). Raises ValueError when there are no training images (ImageError, a
    ValueError, for an unreadable one).

    The metadata's ``config["source"]`` is ``"<source>, <epochs> epochs"``; ``threads`` bounds torch's
    CPU threads during the run (one: deterministic, and on a busy 2-core machine far faster than two).
    """
    existing = store.versions()
    if existing:
        log.info("project store %s already holds %s: v0 is not trained again", store.root, ", ".join(existing))
        return store.read_meta("v0" if "v0" in existing else existing[0])
    seed = defaults.seed if seed is None else seed
    size = defaults.image_size
    t0 = time.perf_counter()
    splits = {s: load_image_folder(images_root, s, classes, size) for s in ("train", "test")}
    train = splits["train"]
    if not len(train):
        raise ValueError(f"{images_root}: no training images under train/<class>/ for classes {classes}")
    torch.manual_seed(seed)
    model = build_model(defaults.arch, len(classes))
    start = f"random init (seed {seed})"
    if defaults.checkpoint:
        skipped = load_pretrained_backbone(model, defaults.checkpoint)
        start = f"{defaults.checkpoint} (not loaded: {skipped or 'none'})"
    opts = plain_options(epochs, seed, device)
    with torch_threads(threads):
        history = fit(model, train, opts, IMAGENET_MEAN, IMAGENET_STD, device, progress=progress)
        model.eval()
        metrics = evaluate_splits(model, {k: v for k, v in splits.items() if len(v)}, IMAGENET_MEAN, IMAGENET_STD,
                                  device)
    seconds = round(time.perf_counter() - t0, 2)
    config: dict[str, Any] = {
        "source": f"{source}, {epochs} epochs",
        "trained_on": {"images": str(Path(images_root)), "split": "train", "n": len(train)},
        "start": start,
        "options": opts.to_dict(),
        "seconds": seconds,
    }
    meta = CheckpointMeta(version="v0", arch=defaults.arch, classes=list(classes), image_size=size,
                          config=config, metrics={**metrics, "epochs": history["epochs"]})
    try:
        store.save(model.cpu(), meta)
    except FileExistsError:  # another process wrote v0 meanwhile: serve theirs
        log.warning("project store %s: v0 appeared while training; keeping the existing one", store.root)
        return store.read_meta("v0")
    if store.published() is None:
        store.publish("v0")
    log.info("project store %s: trained v0 (%s) in %.1fs: %s", store.root, config["source"], seconds,
             ", ".join(f"{s} accuracy {m['accuracy']:.3f}" for s, m in metrics.items()))
    return meta
