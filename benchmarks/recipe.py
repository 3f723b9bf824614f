"""Recipe: the product's default training job against a plain reference loop, on the same data.

    python -m benchmarks.recipe              # CPU default (~15 CPU min): 32/64 px, 300/1000 images, 1 seed
    python -m benchmarks.recipe --smoke      # seconds: CI's smoke size
    python -m benchmarks.recipe --full       # a GPU: 32-224 px, 300-10 000 images, all three kinds, with old defaults
    python -m benchmarks.recipe --out DIR    # also write recipe.md / recipe.json there
    python -m benchmarks.recipe --rows background:64:120 patch:128:60 --classes 5   # kind:px:images per class

Data (``training.synthetic.make_spurious_dataset``, nothing downloaded): one shape per class on a
noisy background and a spurious feature (patch / background / texture). Per row (kind, px, images),
two training sets and one shared test set (feature random in test):

- ``oracle``: the feature is present but random (uncorrelated with the label), as in benchmarks/efficacy;
- ``ERM``: the shortcut set (feature = label for 95% of the images), trained plainly (nothing painted).

Columns:

- ``product``: ``training.pipeline.run_pipeline`` as a Start Training job runs it with no ``TRAIN_*``
  set (mode finetune of the random-init v0 of ``MODEL_ARCH=resnet-18``, the README default, at the
  row's ``IMAGE_SIZE``; every ``auto`` default: ``training.recipe`` chooses the architecture too),
  only ``eval_every_epoch`` off (per-epoch curves are not training);
- ``old defaults`` (``--old``; on in smoke and full): the same job with the earlier fixed defaults
  (SGD 0.01 momentum 0.9, cosine, 10 epochs, no augmentation, the ImageNet-stem resnet-18);
- ``plain``: a torchvision-references-style loop outside the product: a 4-layer CNN (3x3
  conv-BN-ReLU x4, 32..256 channels), Adam 1e-3, batch 32, no augmentation, on the same uint8
  tensors, for the issue's 20-30 epochs: one 30-epoch run evaluated after epochs 20 and 30 (constant
  lr, so its first 20 epochs are a 20-epoch run).

Accuracy on the test set; ``Δ`` = product − the better of plain's two (the reference's accuracy
is chosen on the test set: optimistic for it). Training time: ``timings["train"]`` of the job, the
loop's epochs for plain (evaluation excluded); on a CPU also the CPU seconds of the training thread
(one torch thread: the work itself, not what other processes on a shared machine take).
``time ×`` = product / the plain 30-epoch run (CPU seconds on a CPU, wall seconds on a GPU);
``time × 20`` = product / its first 20 epochs.
"""

from __future__ import annotations

import argparse
import importlib
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

from label_config.export import TEST_SPLIT, TRAIN_SPLIT, ExportResult, TaskRecord
from training.checkpoints import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    CheckpointStore,
    ModelDefaults,
)
from training.dataset import PairedDataset
from training.engine import evaluate
from training.images import make_normalizer
from training.models import SmallCNN
from training.options import TrainOptions
from training.pipeline import run_pipeline
from training.progress import Progress
from training.synthetic import KINDS, SHAPES, make_spurious_dataset

OLD_DEFAULTS = {"optimizer": "sgd", "lr": 0.01, "lr_schedule": "cosine", "epochs": 10, "weight_decay": 5e-4,
                "augment": "none", "backbone_lr_scale": 1.0}


@dataclass(frozen=True)
class Preset:
    rows: tuple[tuple[str, int, int], ...]  # (kind, image px, training images per class): one table row per set
    n_classes: int
    n_test: int  # per class
    arch: str  # MODEL_ARCH of the product's job
    plain_epochs: tuple[int, ...]  # the plain loop runs max() epochs, evaluated after each of these
    seeds: int
    old_defaults: bool  # also run the job with the earlier fixed defaults
    product_overrides: tuple[tuple[str, Any], ...] = ()  # smoke only: keep CI fast


PRESETS = {
    "smoke": Preset(rows=(("patch", 16, 8),), n_classes=3, n_test=4, arch="resnet-18", plain_epochs=(1, 2), seeds=1,
                    old_defaults=True, product_overrides=(("epochs", 2),)),
    "default": Preset(rows=(("patch", 32, 75), ("background", 32, 75), ("background", 64, 75), ("texture", 64, 75),
                            ("background", 32, 250)),
                      n_classes=4, n_test=50, arch="resnet-18", plain_epochs=(20, 30), seeds=1, old_defaults=False),
    "full": Preset(rows=tuple((k, px, n) for k in KINDS for px, n in ((32, 60), (32, 2000), (64, 120), (64, 600),
                                                                     (128, 200), (224, 60))),
                   n_classes=5, n_test=100, arch="resnet-18", plain_epochs=(20, 30), seeds=1, old_defaults=True),
}


class TrainClock(Progress):
    """The job's progress, also timing its ``train`` phase in CPU seconds of this thread (with one torch
    thread, the work itself; what other processes on a shared machine take is not counted)."""

    def __init__(self) -> None:
        super().__init__()
        self.start: float | None = None
        self.cpu_s = 0.0

    def phase(self, name: str, **fields: Any) -> None:
        now = time.thread_time()
        if self.start is not None:
            self.cpu_s, self.start = now - self.start, None
        if name == "train":
            self.start = now
        super().phase(name, **fields)


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def train_plain(train: PairedDataset, test: PairedDataset, n_classes: int, epochs: tuple[int, ...], seed: int,
                device: str) -> dict[int, tuple[float, float, float]]:
    """torchvision references' loop, reduced: shuffle, normalize, CE, Adam 1e-3, constant lr.

    Returns ``{epoch: (test accuracy, training seconds so far, training CPU seconds so far)}`` for each
    epoch in ``epochs``."""
    torch.manual_seed(seed)
    model = SmallCNN(n_classes, blocks=4).to(device)  # the plain reference: the 4-block CNN
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    norm = make_normalizer(IMAGENET_MEAN, IMAGENET_STD)
    gen = torch.Generator().manual_seed(seed)
    out, seconds, cpu = {}, 0.0, 0.0
    for epoch in range(1, max(epochs) + 1):
        t, c = time.perf_counter(), time.thread_time()
        model.train()
        for x, _, y in train.batches(32, device, shuffle=True, generator=gen):
            opt.zero_grad(set_to_none=True)
            F.cross_entropy(model(norm(x)), y).backward()
            opt.step()
        sync(device)
        seconds, cpu = seconds + time.perf_counter() - t, cpu + time.thread_time() - c
        if epoch in epochs:
            acc = evaluate(model, test, IMAGENET_MEAN, IMAGENET_STD, device)["accuracy"]
            out[epoch] = (acc, round(seconds, 2), round(cpu, 2))
    return out


def best_plain(results: dict[int, tuple[float, float, float]]) -> tuple[int, float]:
    """``(epochs, accuracy)`` of the best evaluated epoch (the fewer epochs on a tie)."""
    epoch = max(results, key=lambda e: (results[e][0], -e))
    return epoch, results[epoch][0]


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


def run_job(base: Path, name: str, classes: list[str], recs: list[TaskRecord], arch: str, size: int, seed: int,
            device: str, overrides: dict) -> tuple[dict, dict, float]:
    """One Start Training job through ``run_pipeline`` (no Label Studio): its summary, its splits and the
    CPU seconds of its training phase."""
    store = CheckpointStore(base / "models" / name, 1)
    export = ExportResult(records=list(recs), n_tasks=len(recs))
    opts = TrainOptions.resolve({}, {"eval_every_epoch": False, "push_predictions": False, **overrides},
                                {"seed": seed, "device": device, "num_workers": 4})
    clock = TrainClock()
    result = run_pipeline(store, classes, export, opts, load_image,
                          ModelDefaults(arch=arch, image_size=size, seed=seed), clock)
    return result.summary, result.splits, round(clock.cpu_s, 2)


def run_row(preset: Preset, kind: str, size: int, n: int, seed: int, device: str, base: Path, log=print) -> list[dict]:
    """The oracle and ERM rows of one (kind, px, images per class) for one seed."""
    classes = list(SHAPES[: preset.n_classes])
    root = base / f"{kind}-{size}-{n}-s{seed}"
    make_spurious_dataset(root / "erm", tuple(classes), n, preset.n_test, size, 0.95, seed=seed, kind=kind)
    make_spurious_dataset(root / "oracle", tuple(classes), n, 0, size, 0.0, seed=seed, kind=kind)
    test = records(root / "erm", classes, TEST_SPLIT, 1_000_000)
    rows = []
    for tset in ("oracle", "ERM"):
        train = records(root / ("erm" if tset == "ERM" else "oracle"), classes, TRAIN_SPLIT, 1)
        row: dict[str, Any] = {"kind": kind, "set": tset, "n_train": len(train), "size": size, "seed": seed}
        s, splits, cpu = run_job(root, f"{tset}-product", classes, train + test, preset.arch, size, seed, device,
                            dict(preset.product_overrides))
        row.update(product_acc=s["metrics"]["new"]["test"]["accuracy"], product_s=round(s["timings"]["train"], 2),
                   product_cpu_s=cpu,
                   arch=s["arch"], recipe={k: v[0] for k, v in s["recipe"].items()},
                   reasons={k: v[1] for k, v in s["recipe"].items()})
        if preset.old_defaults:
            old = {**OLD_DEFAULTS, **dict(preset.product_overrides)}
            so, _, _ = run_job(root, f"{tset}-old", classes, train + test, preset.arch, size, seed, device,
                            {**old, "arch": preset.arch, "mode": "scratch"})
            row.update(old_acc=so["metrics"]["new"]["test"]["accuracy"], old_s=round(so["timings"]["train"], 2))
        plain = train_plain(splits[TRAIN_SPLIT], splits[TEST_SPLIT], len(classes), preset.plain_epochs, seed, device)
        row["plain"] = {str(e): list(v) for e, v in plain.items()}
        row["plain_epochs"], row["plain_acc"] = best_plain(plain)
        lo, hi = min(plain), max(plain)
        row.update(plain_lo_acc=plain[lo][0], plain_lo_s=plain[lo][1], plain_lo_cpu_s=plain[lo][2],
                   plain_hi_acc=plain[hi][0], plain_s=plain[hi][1], plain_cpu_s=plain[hi][2])
        rows.append(row)
        log(f"  {kind} {tset} {row['n_train']} img {size}px: product {row['product_acc']:.3f} ({row['product_s']:.1f}s, "
            f"{row['arch']}, {row['recipe']['epochs']} ep, CPU {row['product_cpu_s']:.1f}s) plain {row['plain_acc']:.3f} "
            f"({max(plain)} ep: {row['plain_s']:.1f}s, CPU {row['plain_cpu_s']:.1f}s; best at "
            f"{row['plain_epochs']} ep)" + (f" old {row['old_acc']:.3f} ({row['old_s']:.1f}s)" if "old_acc" in row else ""),
            flush=True)
    return rows


def run(preset: Preset, device: str, base: Path, log=print) -> list[dict]:
    return [r for kind, size, n in preset.rows for seed in range(preset.seeds)
            for r in run_row(preset, kind, size, n, seed, device, base, log)]


def table(rows: list[dict], preset: Preset, device: str) -> str:
    """One line per (kind, set, images, px), means over seeds. ``time ×`` compares CPU seconds on a CPU
    (robust to other processes on a shared machine) and wall seconds on a GPU."""
    lo, hi = min(preset.plain_epochs), max(preset.plain_epochs)
    clock = "CPU" if device == "cpu" else "wall"
    head = ["kind", "train set", "images", "px", "product arch", "product (defaults)", "train s", "CPU s"]
    if preset.old_defaults:
        head += ["old defaults", "train s"]
    head += [f"plain {lo} ep", f"plain {hi} ep", "train s", "CPU s", "Δ accuracy", f"time × ({clock})", f"time × {lo}"]
    if preset.seeds > 1:
        head += ["product per seed", "plain per seed (better)"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * 5 + "---:|" * (len(head) - 5)]
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault((r["kind"], r["set"], r["n_train"], r["size"]), []).append(r)

    def mean(rs, k):
        return sum(r[k] for r in rs) / len(rs)

    key = "cpu_s" if device == "cpu" else "s"
    for (kind, tset, n, size), rs in groups.items():
        cells = [kind, tset, str(n), str(size), rs[0]["arch"], f"{mean(rs, 'product_acc'):.3f}",
                 f"{mean(rs, 'product_s'):.1f}", f"{mean(rs, 'product_cpu_s'):.1f}"]
        if preset.old_defaults:
            cells += [f"{mean(rs, 'old_acc'):.3f}", f"{mean(rs, 'old_s'):.1f}"]
        cells += [f"{mean(rs, 'plain_lo_acc'):.3f}", f"{mean(rs, 'plain_hi_acc'):.3f}", f"{mean(rs, 'plain_s'):.1f}",
                  f"{mean(rs, 'plain_cpu_s'):.1f}", f"{mean(rs, 'product_acc') - mean(rs, 'plain_acc'):+.3f}",
                  f"{mean(rs, 'product_' + key) / max(mean(rs, 'plain_' + key), 1e-9):.2f}",
                  f"{mean(rs, 'product_' + key) / max(mean(rs, 'plain_lo_' + key), 1e-9):.2f}"]
        if preset.seeds > 1:
            cells += [" / ".join(f"{r['product_acc']:.2f}" for r in rs), " / ".join(f"{r['plain_acc']:.2f}" for r in rs)]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def parse_row(text: str) -> tuple[str, int, int]:
    """``kind:px:images-per-class`` -> a preset row."""
    try:
        kind, px, n = text.split(":")
        if kind not in KINDS:
            raise ValueError
        return kind, int(px), int(n)
    except ValueError:
        raise argparse.ArgumentTypeError(f"row {text!r}: expected kind:px:images-per-class, kind one of {KINDS}") from None


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    g = ap.add_mutually_exclusive_group()
    g.add_argument("--smoke", action="store_true")
    g.add_argument("--full", action="store_true")
    ap.add_argument("--rows", type=parse_row, nargs="+", help="kind:px:images-per-class, one row pair each")
    ap.add_argument("--classes", type=int, help="number of classes (shapes)")
    ap.add_argument("--seeds", type=int)
    ap.add_argument("--arch", help="MODEL_ARCH of the product's job (default resnet-18, the README's)")
    ap.add_argument("--old", action="store_true", help="also run the earlier fixed defaults")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads (1: comparable timings)")
    ap.add_argument("--out", type=Path)
    args = ap.parse_args(argv)
    name = "smoke" if args.smoke else "full" if args.full else "default"
    preset = PRESETS[name]
    if args.rows:
        preset = replace(preset, rows=tuple(args.rows))
    if args.classes:
        preset = replace(preset, n_classes=args.classes)
    if args.seeds:
        preset = replace(preset, seeds=args.seeds)
    if args.arch:
        preset = replace(preset, arch=args.arch)
    if args.old:
        preset = replace(preset, old_defaults=True)
    device = ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    torch.set_num_threads(args.threads)
    try:  # imported by the first job's TensorBoard writer: not training time
        importlib.import_module("torch.utils.tensorboard")
    except Exception:
        pass
    print(f"Recipe ({name} size): {preset.n_classes} classes, MODEL_ARCH={preset.arch}, {preset.n_test}/class test, "
          f"{preset.seeds} seed(s), {device}", flush=True)
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="bench-recipe-") as tmp:
        rows = run(preset, device, Path(tmp))
    md = table(rows, preset, device)
    recipes = {f"{r['arch']} {r['n_train']} img": r["recipe"] for r in rows if r["set"] == "oracle"}
    note = (f"\nTest accuracy (mean over {preset.seeds} seed(s)) and training seconds; product = run_pipeline with "
            f"no TRAIN_* set, MODEL_ARCH={preset.arch}; plain = 4-layer CNN, Adam 1e-3, evaluated after "
            f"{'/'.join(map(str, preset.plain_epochs))} epochs, Δ against the better; {device}, {platform.processor() or platform.machine()}, "
            f"{args.threads} torch thread(s), total {time.perf_counter() - t0:.0f}s.\nRecipes chosen: "
            + "; ".join(f"{k}: {v}" for k, v in recipes.items()))
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
