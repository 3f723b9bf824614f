"""Recipe: the product's default training job against a plain reference loop, on the same data.

    python -m benchmarks.recipe              # CPU-sized default (a few minutes on 2 cores)
    python -m benchmarks.recipe --smoke      # seconds: CI's smoke size
    python -m benchmarks.recipe --full       # a GPU: resnet-18 at 32/64 px, 600-10k images, 3 kinds
    python -m benchmarks.recipe --out DIR    # also write recipe.md / recipe.json there
    python -m benchmarks.recipe --arch resnet-18 --size 32 --n-train 75 --kinds patch   # the README's MODEL_ARCH

Data (``training.synthetic.make_spurious_dataset``, nothing downloaded): one shape per class on a
noisy background and a spurious feature (``--kinds``: patch / background / texture). Two training
sets per kind, size and seed, one shared test set (feature random in test):

- ``oracle``: the feature is present but random (uncorrelated with the label), as in benchmarks/efficacy;
- ``ERM``: the shortcut set (feature = label for 95% of the images), trained plainly (nothing painted).

Columns:

- ``product``: ``training.pipeline.run_pipeline`` as a Start Training job runs it with no ``TRAIN_*``
  set (mode finetune of v0, MODEL_ARCH / IMAGE_SIZE of the preset, every ``auto`` default: the
  recipe of ``training.recipe``), only ``eval_every_epoch`` off (per-epoch curves are not training);
- ``old defaults``: the same job with the earlier fixed defaults (SGD 0.01 momentum 0.9, cosine,
  10 epochs, no augmentation, the ImageNet stem);
- ``plain``: a torchvision-references-style loop outside the product: a 4-layer CNN (3x3 conv-BN-ReLU
  x4, 32..256 channels), Adam 1e-3, ``plain_epochs`` epochs, batch 32, no augmentation, on the same
  uint8 tensors;
- ``recipe on the plain CNN``: ``training.engine.fit`` with the job's default (``auto``) options on
  that same 4-layer CNN: the recipe alone, without the architecture difference.

Wall time is the training time (``timings["train"]`` of the job; the loop for plain), one thread on CPU.
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from label_config.export import TEST_SPLIT, TRAIN_SPLIT, ExportResult, TaskRecord
from training.checkpoints import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    CheckpointStore,
    ModelDefaults,
)
from training.dataset import PairedDataset
from training.engine import evaluate, fit
from training.images import make_normalizer
from training.options import TrainOptions
from training.pipeline import run_pipeline
from training.synthetic import KINDS, SHAPES, make_spurious_dataset

OLD_DEFAULTS = {"optimizer": "sgd", "lr": 0.01, "lr_schedule": "cosine", "epochs": 10, "weight_decay": 5e-4,
                "augment": "none", "backbone_lr_scale": 1.0}


@dataclass(frozen=True)
class Preset:
    kinds: tuple[str, ...]
    n_classes: int
    n_train: tuple[int, ...]  # training images per class (one row per value)
    n_test: int  # per class
    size: int
    arch: str  # MODEL_ARCH of the product's job
    plain_epochs: int
    seeds: int
    old_defaults: bool  # also run the job with the earlier fixed defaults
    product_overrides: tuple[tuple[str, Any], ...] = ()  # smoke only: keep CI fast


PRESETS = {
    "smoke": Preset(kinds=("patch",), n_classes=3, n_train=(8,), n_test=4, size=16, arch="tiny-cnn",
                    plain_epochs=2, seeds=1, old_defaults=True, product_overrides=(("epochs", 2),)),
    "default": Preset(kinds=("patch", "background"), n_classes=4, n_train=(50, 125), n_test=50, size=24,
                      arch="tiny-cnn", plain_epochs=30, seeds=1, old_defaults=True),
    "full": Preset(kinds=KINDS, n_classes=5, n_train=(120, 600, 2000), n_test=100, size=64, arch="resnet-18",
                   plain_epochs=30, seeds=1, old_defaults=True),
}


class PlainCNN(nn.Module):
    """The reference: four 3x3 conv-BN-ReLU blocks (max-pool between), global pooling, a linear head."""

    def __init__(self, num_classes: int) -> None:
        super().__init__()
        layers, c = [], 3
        for i, w in enumerate((32, 64, 128, 256)):
            layers += [nn.Conv2d(c, w, 3, padding=1, bias=False), nn.BatchNorm2d(w), nn.ReLU(inplace=True)]
            if i < 3:
                layers.append(nn.MaxPool2d(2))
            c = w
        self.features = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.fc = nn.Linear(c, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(x))


def train_plain(train: PairedDataset, n_classes: int, epochs: int, seed: int, device: str) -> nn.Module:
    """torchvision references' loop, reduced: shuffle, normalize, CE, Adam 1e-3, fixed epochs."""
    torch.manual_seed(seed)
    model = PlainCNN(n_classes).to(device).train()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    norm = make_normalizer(IMAGENET_MEAN, IMAGENET_STD)
    gen = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        for x, _, y in train.batches(32, device, shuffle=True, generator=gen):
            opt.zero_grad(set_to_none=True)
            F.cross_entropy(model(norm(x)), y).backward()
            opt.step()
    return model


def records(root: Path, classes: list[str], split: str, first_id: int) -> list[TaskRecord]:
    out, tid = [], first_id
    for cls in classes:
        for path in sorted((root / split / cls).glob("*.png")):
            out.append(TaskRecord(tid, str(path), split, cls, cls))
            tid += 1
    return out


def load_image(url: str) -> Image.Image:
    with Image.open(url) as im:
        return im.convert("RGB")


def run_job(base: Path, name: str, classes: list[str], recs: list[TaskRecord], preset: Preset, seed: int,
            device: str, overrides: dict) -> tuple[dict, dict]:
    """One Start Training job through ``run_pipeline`` (no Label Studio): its summary and splits."""
    store = CheckpointStore(base / "models" / name, 1)
    export = ExportResult(records=list(recs), n_tasks=len(recs))
    opts = TrainOptions.resolve({}, {"eval_every_epoch": False, "push_predictions": False, **overrides},
                                {"seed": seed, "device": device, "num_workers": 4})
    result = run_pipeline(store, classes, export, opts, load_image,
                          ModelDefaults(arch=preset.arch, image_size=preset.size, seed=seed))
    return result.summary, result.splits


def run(preset: Preset, device: str, base: Path, log=print) -> list[dict]:
    rows = []
    classes = list(SHAPES[: preset.n_classes])
    for kind in preset.kinds:
        for n in preset.n_train:
            for seed in range(preset.seeds):
                root = base / f"{kind}-{n}-s{seed}"
                make_spurious_dataset(root / "erm", tuple(classes), n, preset.n_test, preset.size, 0.95, seed=seed, kind=kind)
                make_spurious_dataset(root / "oracle", tuple(classes), n, 0, preset.size, 0.0, seed=seed, kind=kind)
                test = records(root / "erm", classes, TEST_SPLIT, 1_000_000)
                for tset in ("oracle", "ERM"):
                    train = records(root / ("erm" if tset == "ERM" else "oracle"), classes, TRAIN_SPLIT, 1)
                    row: dict[str, Any] = {"kind": kind, "set": tset, "n_train": len(train), "size": preset.size,
                                           "seed": seed}
                    t = time.perf_counter()
                    s, splits = run_job(root, f"{tset}-product", classes, train + test, preset, seed, device,
                                        dict(preset.product_overrides))
                    row.update(product_acc=s["metrics"]["new"]["test"]["accuracy"], product_s=s["timings"]["train"],
                               product_job_s=round(time.perf_counter() - t, 2), arch=s["arch"],
                               recipe={k: v[0] for k, v in s["recipe"].items()})
                    if preset.old_defaults:
                        old = {**OLD_DEFAULTS, **dict(preset.product_overrides)}
                        so, _ = run_job(root, f"{tset}-old", classes, train + test, preset, seed, device,
                                        {**old, "arch": preset.arch, "mode": "scratch"})
                        row.update(old_acc=so["metrics"]["new"]["test"]["accuracy"], old_s=so["timings"]["train"])
                    t = time.perf_counter()
                    torch.manual_seed(seed)
                    cnn = PlainCNN(len(classes))
                    ropts = TrainOptions.resolve({}, {"eval_every_epoch": False, **dict(preset.product_overrides)},
                                                 {"seed": seed, "device": device})
                    fit(cnn, splits[TRAIN_SPLIT], ropts, IMAGENET_MEAN, IMAGENET_STD, device)
                    if device == "cuda":
                        torch.cuda.synchronize()
                    row["recipe_cnn_s"] = round(time.perf_counter() - t, 2)
                    row["recipe_cnn_acc"] = evaluate(cnn, splits[TEST_SPLIT], IMAGENET_MEAN, IMAGENET_STD, device)["accuracy"]
                    t = time.perf_counter()
                    model = train_plain(splits[TRAIN_SPLIT], len(classes), preset.plain_epochs, seed, device)
                    if device == "cuda":
                        torch.cuda.synchronize()
                    row["plain_s"] = round(time.perf_counter() - t, 2)
                    row["plain_acc"] = evaluate(model, splits[TEST_SPLIT], IMAGENET_MEAN, IMAGENET_STD, device)["accuracy"]
                    rows.append(row)
                    log(f"  {kind} {tset} n={row['n_train']}: product {row['product_acc']:.3f} ({row['product_s']:.1f}s, "
                        f"{row['arch']}, {row['recipe']['epochs']} ep) recipe on CNN {row['recipe_cnn_acc']:.3f} "
                        f"({row['recipe_cnn_s']:.1f}s) plain {row['plain_acc']:.3f} ({row['plain_s']:.1f}s)"
                        + (f" old {row['old_acc']:.3f}" if "old_acc" in row else ""), flush=True)
    return rows


def table(rows: list[dict], preset: Preset) -> str:
    head = ["kind", "train set", "images", "px", "product (defaults)", "train s"]
    if preset.old_defaults:
        head += ["old defaults", "train s"]
    head += ["recipe on the plain CNN", "train s", f"plain CNN, Adam 1e-3, {preset.plain_epochs} ep", "train s",
             "product − plain", "recipe − plain (same CNN)"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault((r["kind"], r["set"], r["n_train"], r["size"]), []).append(r)

    def mean(rs, k):
        return sum(r[k] for r in rs) / len(rs)

    for (kind, tset, n, size), rs in groups.items():
        cells = [kind, tset, str(n), str(size), f"{mean(rs, 'product_acc'):.3f}", f"{mean(rs, 'product_s'):.1f}"]
        if preset.old_defaults:
            cells += [f"{mean(rs, 'old_acc'):.3f}", f"{mean(rs, 'old_s'):.1f}"]
        cells += [f"{mean(rs, 'recipe_cnn_acc'):.3f}", f"{mean(rs, 'recipe_cnn_s'):.1f}", f"{mean(rs, 'plain_acc'):.3f}", f"{mean(rs, 'plain_s'):.1f}",
                  f"{mean(rs, 'product_acc') - mean(rs, 'plain_acc'):+.3f}",
                  f"{mean(rs, 'recipe_cnn_acc') - mean(rs, 'plain_acc'):+.3f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    g = ap.add_mutually_exclusive_group()
    g.add_argument("--smoke", action="store_true")
    g.add_argument("--full", action="store_true")
    ap.add_argument("--kinds", nargs="+", choices=KINDS)
    ap.add_argument("--seeds", type=int)
    ap.add_argument("--arch", help="MODEL_ARCH of the product's job (e.g. resnet-18)")
    ap.add_argument("--size", type=int, help="image size (px)")
    ap.add_argument("--n-train", type=int, nargs="+", help="training images per class, one row each")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads (1: comparable timings)")
    ap.add_argument("--out", type=Path)
    args = ap.parse_args(argv)
    name = "smoke" if args.smoke else "full" if args.full else "default"
    preset = PRESETS[name]
    if args.kinds:
        preset = replace(preset, kinds=tuple(args.kinds))
    for key in ("seeds", "arch", "size"):
        if getattr(args, key):
            preset = replace(preset, **{key: getattr(args, key)})
    if args.n_train:
        preset = replace(preset, n_train=tuple(args.n_train))
    device = ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    torch.set_num_threads(args.threads)
    print(f"Recipe ({name} size): {preset.n_classes} classes, {preset.size} px, MODEL_ARCH={preset.arch}, "
          f"{preset.n_test}/class test, {preset.seeds} seed(s), {device}", flush=True)
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="bench-recipe-") as tmp:
        rows = run(preset, device, Path(tmp))
    md = table(rows, preset)
    recipe = rows[0]["recipe"] if rows else {}
    note = (f"\nTest accuracy (mean over {preset.seeds} seed(s)) and training seconds; product = run_pipeline with "
            f"no TRAIN_* set (arch {rows[0]['arch'] if rows else '?'}, recipe of the first row: {recipe}); "
            f"{device}, {platform.processor() or platform.machine()}, total {time.perf_counter() - t0:.0f}s.")
    print()
    print(md)
    print(note)
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "recipe.md").write_text(f"Recipe ({name} size)\n\n{md}\n{note}\n")
        (args.out / "recipe.json").write_text(json.dumps({"preset": name, "rows": rows}, indent=1, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
