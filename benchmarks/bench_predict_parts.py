"""Latency of each prediction part for one batch (default: CPU, 224x224 images, batch of 16, median of 5).

    python -m benchmarks.bench_predict_parts            # the full table
    python -m benchmarks.bench_predict_parts --quick    # a seconds-long smoke run (tiny model, 32 px)
    python -m benchmarks.bench_predict_parts --parts saliency:gradcam,segmentation:v1 --seg-min-size 800

Every row calls the real part (``part(ctx)``) exactly as ``RobustarModel.predict`` does, on the same
batch of random task images, with a random-init ``--arch`` classifier (weights do not change the
cost): the classifier itself, saliency with each method (attribution + resize to the original
size + top-q RLE + heatmap PNG written to the cache), Mask R-CNN v1/v2 (random-init weights loaded
from a local file; ``--seg-min-size`` is torchvision's resize of the shorter side, 800 by default
as for the COCO weights) and influence (the batch's embeddings + one product against an index of
``--index-size`` training tasks + the text). After ``--warmup`` rounds, each of ``--repeats`` rounds
times every part once (so the load of other processes hits all parts alike); the table shows the
median, min and per-image milliseconds.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from label_config import render_config
from label_config.render import parse_config
from ml_backend.predict.classifier import classify
from ml_backend.predict.influence import InfluencePart, build_influence_index
from ml_backend.predict.parts import PredictContext
from ml_backend.predict.saliency import SaliencyPart
from ml_backend.predict.segmentation import SegmentationPart
from ml_backend.predict.registry import ServedModel
from ml_backend.settings import Settings
from training.checkpoints import CheckpointMeta, CheckpointStore
from training.models import build_model
from benchmarks import clock

CLASSES = [f"class{i}" for i in range(10)]


def _images(n: int, size: int, seed: int = 0) -> list[Image.Image]:
    rng = np.random.default_rng(seed)
    return [Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)) for _ in range(n)]


def _detector_weights(root: Path, arch: str) -> Path:
    from torchvision.models import detection

    path = root / f"{arch}.pt"
    if not path.exists():
        torch.manual_seed(0)
        model = getattr(detection, arch)(weights=None, weights_backbone=None, num_classes=91)
        torch.save(model.state_dict(), path)
    return path


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command-line options (``--quick`` applied); also used by ``benchmarks.speed``."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--arch", default="resnet-18")
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--parts", default="classifier,saliency:grad,saliency:max_grad,saliency:ig,saliency:gradcam,"
                    "segmentation:v1,segmentation:v2,influence")
    ap.add_argument("--ig-steps", type=int, default=16)
    ap.add_argument("--seg-min-size", type=int, default=800)
    ap.add_argument("--seg-max-size", type=int, default=1333)
    ap.add_argument("--seg-max-dets", type=int, default=100,
                    help="torchvision's box_detections_per_img (random-init weights fill all 100 slots; "
                         "real weights find a handful of objects per image)")
    ap.add_argument("--index-size", type=int, default=1000, help="training tasks in the influence index")
    clock.add_argument(ap)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--device", default="cpu", help="cpu / cuda (timings synchronise CUDA after each part)")
    ap.add_argument("--quick", action="store_true", help="tiny model, 32 px, batch 4, 1 repeat")
    args = ap.parse_args(argv)
    if args.quick:
        args.arch, args.size, args.batch, args.repeats, args.warmup = "tiny-cnn", 32, 4, 1, 1
        args.seg_min_size, args.seg_max_size, args.index_size, args.ig_steps = 64, 96, 64, 4
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    clock.use(args.clock)
    torch.manual_seed(0)

    tmp = Path(tempfile.mkdtemp(prefix="bench-parts-"))
    try:
        _run(args, tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def measure(args: argparse.Namespace, tmp: Path) -> list[tuple[str, list[float], str]]:
    """``(part, ms per round, note)`` for every part of ``args.parts`` (see the module docstring)."""
    settings = Settings(model_dir=tmp / "models", predict_batch_size=args.batch, influence_build="off")
    meta = CheckpointMeta(version="v0", arch=args.arch, classes=CLASSES, image_size=args.size)
    model = build_model(args.arch, len(CLASSES)).eval()
    model.to(args.device)
    served = ServedModel(model, meta, args.device)
    store = CheckpointStore(settings.model_dir, 1)
    store.save(model, meta)
    store.publish("v0")
    config = parse_config(render_config(CLASSES))
    images = _images(args.batch, args.size)
    tasks = [{"id": i + 1, "data": {"key": f"test/x/{i}.png", "split": "test"}} for i in range(args.batch)]
    probs = classify(served, images, args.batch)
    ctx = PredictContext(1, settings, config, served, tasks, images, probs)

    parts: list[tuple[str, object, str]] = []
    for spec in [p.strip() for p in args.parts.split(",") if p.strip()]:
        name, _, variant = spec.partition(":")
        note = ""
        if name == "classifier":
            fn = lambda: classify(served, images, args.batch)  # noqa: E731
        elif name == "saliency":
            part = SaliencyPart(variant or "grad", top_q=5, ig_steps=args.ig_steps, batch_size=args.batch)
            fn = lambda part=part: part(ctx)  # noqa: E731
            note = f"{args.ig_steps} steps" if variant == "ig" else ""
        elif name == "segmentation":
            arch = "maskrcnn_resnet50_fpn_v2" if variant == "v2" else "maskrcnn_resnet50_fpn"
            part = SegmentationPart(_detector_weights(tmp, arch), arch, score_threshold=0.5,
                                    min_size=args.seg_min_size, max_size=args.seg_max_size, batch_size=args.batch,
                                    detector_kwargs={"box_detections_per_img": args.seg_max_dets})
            part.detector(args.device)  # loading the weights file is a one-off, not per request
            fn = lambda part=part: part(ctx)  # noqa: E731
            note = f"min_size {args.seg_min_size}, <= {args.seg_max_dets} detections/image"
        elif name == "influence":
            train = [{"task_id": 10_000 + i, "target": i % len(CLASSES), "image": img}
                     for i, img in enumerate(_images(args.index_size, args.size, seed=1))]
            t = clock.now()
            build_influence_index(store, "v0", train, model=model, meta=meta, batch_size=64, device=args.device)
            note = f"index of {args.index_size} (built in {clock.now() - t:.1f}s)"
            part = InfluencePart(settings, mode="off")
            fn = lambda part=part: part(ctx)  # noqa: E731
        else:
            raise SystemExit(f"unknown part {spec!r}")
        parts.append((spec, fn, note))
    sync = torch.cuda.synchronize if torch.device(args.device).type == "cuda" else (lambda: None)
    for _ in range(args.warmup):
        for _, fn, _ in parts:
            fn()
    sync()
    times: dict[str, list[float]] = {spec: [] for spec, _, _ in parts}
    for r in range(args.repeats):  # each round times every part once, so other load hits them alike
        for spec, fn, _ in parts:
            t = clock.now()
            fn()
            sync()
            times[spec].append((clock.now() - t) * 1000.0)
        print(f"  round {r + 1}: " + ", ".join(f"{k} {v[-1]:.0f} ms" for k, v in times.items()), flush=True)
    return [(spec, times[spec], note) for spec, _, note in parts]


def _run(args: argparse.Namespace, tmp: Path) -> None:
    rows = measure(args, tmp)

    dev = args.device if args.device != "cpu" else f"CPU ({torch.get_num_threads()} threads)"
    print(f"\nPrediction parts: {args.arch}, {args.size}x{args.size} images, batch {args.batch}, {dev}, "
          f"median of {args.repeats} after {args.warmup} warm-up ({args.clock} clock)\n")
    print("| part | median ms / batch | min ms | ms / image | note |")
    print("|---|---:|---:|---:|---|")
    for spec, times, note in rows:
        med = statistics.median(times)
        print(f"| {spec} | {med:.0f} | {min(times):.0f} | {med / args.batch:.1f} | {note} |")


if __name__ == "__main__":
    main()
