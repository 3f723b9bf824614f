"""The demo's attention-on-spurious share before (v0) and after (v1): the report's number for the product's
purpose, measured on the data ``robustar demo`` generates, without Label Studio.

    python -m benchmarks.demo_attention                  # 3 painted images (one per class), as the browser test paints
    python -m benchmarks.demo_attention --painted 9 --seed 1 --out /tmp/demo-attention

As ``robustar demo`` and a Start Training job do it: the demo's generated set (``make_spurious_dataset``: 30
train / 15 test images per class at 64 px, a class-coloured corner patch on 95 % of them), v0 trained by the
demo's short plain run (``training.bootstrap``: it learns the patch), 30 % of each class's test images set
aside as val (``robustar import``), ``--painted`` training images painted with their true patch mask (the
first of each class in turn), then ``training.pipeline.run_pipeline`` with the job's defaults (no ``TRAIN_*``:
mask propagation proposes the other images' patches) and the demo's ``SALIENCY_METHOD=gradcam``. Prints the
attention table and what v1 fixed and broke; the run folder (summary.json, changes/*.png) is under ``--out``.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
from PIL import Image

from devkit.builders import annotation, data_uri, export_task
from label_config import regions
from label_config.export import parse_export
from label_config.render import parse_config, render_config
from ml_backend.labelstudio.fetch import FetchPolicy, ImageFetcher
from ml_backend.labelstudio.val_split import set_aside_val
from ml_backend.predict.registry import model_defaults
from ml_backend.settings import Settings
from training.bootstrap import train_initial_version
from training.checkpoints import CheckpointStore
from training.options import TrainOptions
from training.pipeline import run_pipeline
from training.synthetic import make_spurious_dataset

SIZE, ARCH, METHOD = 64, "tiny-cnn", "gradcam"  # the demo's IMAGE_SIZE, MODEL_ARCH and SALIENCY_METHOD


def demo_export(dataset: Path, classes: list[str], painted: int) -> list[dict]:
    """Label Studio's export of the demo project: val set aside as the importer does, ``painted`` training
    images painted with their true mask (one per class in turn)."""
    items = [SimpleNamespace(key=p.relative_to(dataset).as_posix(), split=split, label=cls, path=p)
             for split in ("train", "test") for cls in classes for p in sorted((dataset / split / cls).glob("*.png"))]
    set_aside_val(items)
    train = [it for it in items if it.split == "train"]
    by_class = [[it for it in train if it.label == c] for c in classes]
    chosen = set()
    for i in range(painted):  # the first image of each class, then the second of each, ...
        group, k = by_class[i % len(classes)], i // len(classes)
        if k < len(group):
            chosen.add(group[k].key)
    tasks = []
    for tid, it in enumerate(items, start=1):
        anns = []
        if it.key in chosen:
            mask = np.asarray(Image.open(dataset / "masks" / it.key)) > 127
            anns = [annotation(tid, tid, [regions.brush(mask), regions.choices(it.label)])]
        tasks.append(export_task(tid, data_uri(it.path.read_bytes()), split=it.split, label=it.label, annotations=anns))
    return tasks


def measure(out: Path, painted: int, seed: int) -> dict:
    """Generate, train v0 and v1, return v1's summary."""
    dataset = out / "dataset"
    make_spurious_dataset(dataset, n_train=30, n_test=15, size=SIZE, seed=seed)
    classes = sorted(p.name for p in (dataset / "train").iterdir())
    settings = Settings(model_dir=out / "models", model_arch=ARCH, image_size=SIZE, seed=seed,
                        saliency_method=METHOD)
    store = CheckpointStore(settings.model_dir, 1)
    train_initial_version(store, model_defaults(settings), classes, dataset)
    export = parse_export(demo_export(dataset, classes, painted), parse_config(render_config(classes)))
    opts = TrainOptions.resolve({}, {"device": "cpu"}, {"seed": seed})
    fetch = ImageFetcher(None, None, FetchPolicy.from_settings(settings)).fetch
    return run_pipeline(store, classes, export, opts, fetch, model_defaults(settings),
                        saliency_method=settings.saliency_method).summary


def describe(summary: dict) -> str:
    """The attention table and the fixed/broken counts as text."""
    att, ch = summary["attention"], summary["changes"] or {}
    lines = [f"{summary['parent']} -> {summary['version']} ({att['method']}, {att['measured']} training images with a "
             f"mask, {att['painted']} painted): attention on spurious pixels",
             f"  {'class':10s} {'before':>7s} {'after':>7s} {'area':>7s} {'images':>6s}"]
    rows = [*sorted(att["classes"].items()), ("all", att["overall"])]
    lines += [f"  {name:10s} {r.get('before') or float('nan'):7.3f} {r['after']:7.3f} {r['area']:7.3f} {r['images']:6d}"
              for name, r in rows]
    acc = {s: (summary["metrics"]["parent"][s]["accuracy"], m["accuracy"]) for s, m in summary["metrics"]["new"].items()}
    lines.append("  accuracy " + ", ".join(f"{s} {a:.3f} -> {b:.3f}" for s, (a, b) in acc.items()))
    lines.append(f"  test: fixed {ch.get('fixed')}, broken {ch.get('broken')}; run folder {summary['run_dir']}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--painted", type=int, default=3, help="training images painted (one per class in turn)")
    parser.add_argument("--seed", type=int, default=0, help="the dataset's and the models' seed (the demo: 0)")
    parser.add_argument("--out", type=Path, default=None, help="folder for the data and the models (default: a temp dir)")
    args = parser.parse_args(argv)
    out = args.out or Path(tempfile.mkdtemp(prefix="demo-attention-"))
    t = time.perf_counter()
    summary = measure(out, args.painted, args.seed)
    print(describe(summary) + f"\n  ({time.perf_counter() - t:.0f}s)")
    (out / "demo_attention.json").write_text(json.dumps({"painted": args.painted, "seed": args.seed,
                                                         "attention": summary["attention"],
                                                         "changes": summary["changes"]}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
