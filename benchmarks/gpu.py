"""The GPU path, ready to measure whenever a GPU machine is at hand (one GPU, under 10 minutes):

    python -m benchmarks.gpu                 # CUDA: resnet-18 at 224 px (and the recipe rows at 128/224 px)
    python -m benchmarks.gpu --smoke         # CPU, seconds: CI runs it (tests/benchmarks/test_gpu_smoke.py)
    python -m benchmarks.gpu --out DIR       # also write gpu.md / gpu.json there

Three tables, every loop on the same model, initial weights, data, batch and device:

1. **Training images/s** over uint8 images already in memory (random pixels; throughput does not depend
   on them): ``reference`` = a torchvision ``references/classification/train.py`` loop (``DataLoader``
   with pinned memory on CUDA, ``model(normalize(x))``, cross-entropy, SGD momentum, bf16 autocast and
   channels-last on CUDA as its ``--amp``/``--channels-last`` flags do); ``product plain`` =
   ``training.engine.fit`` as a job runs it (``TRAIN_AMP`` bf16, channels-last, the split resident on the
   GPU) with nothing painted; ``product paired`` = every image painted (each step runs the model on twice
   the batch); ``reference at batch 2B`` = the floor of a paired step (every image twice, in steps of 2B);
   ``product plain, fp32`` = ``TRAIN_AMP=false`` (what bf16 buys); ``product plain, streamed`` = the split
   read from the image cache by the ``DataLoader`` path (``training.loader``: worker processes, pinned
   memory and persistent workers on CUDA), as a job over a set larger than ``TRAIN_MEMORY_BUDGET`` trains.
   Medians of ``--rounds`` rounds.
2. **Inference latency** of a ``/predict``-sized batch: the product's classifier (``predict.classifier.classify``:
   PIL images -> ``to_batch`` -> ``normalize`` -> forward -> softmax, as the backend serves) at batch 1 and
   ``PREDICT_BATCH_SIZE`` 16, p50/p95 ms; and the bare forward in bf16 + channels-last.
3. **Recipe rows** at 128 and 224 px (``benchmarks.recipe``: the default job against a plain loop, test
   accuracy and training seconds; ``--no-recipe`` leaves them out).

On a CPU the CUDA settings are no-ops (``training.accel``): the smoke run checks that every loop runs.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch.utils.data import DataLoader, TensorDataset

from benchmarks import recipe
from ml_backend.predict.classifier import classify
from ml_backend.predict.registry import ServedModel
from training import accel
from training.checkpoints import IMAGENET_MEAN, IMAGENET_STD, CheckpointMeta
from training.dataset import PairedDataset
from training.engine import fit
from training.image_cache import ImageCache
from training.images import make_normalizer
from training.loader import CachedImages, PackedMasks
from training.models import build_model
from training.options import TrainOptions


@dataclass(frozen=True)
class Size:
    arch: str
    px: int
    images: int
    batch: int
    epochs: int
    rounds: int
    latency_repeats: int
    recipe_rows: tuple[tuple[str, int, int], ...]  # (kind, px, images per class)


SIZES = {
    "gpu": Size("resnet-18", 224, 2048, 128, 2, 3, 50, (("background", 128, 200), ("background", 224, 100))),
    "smoke": Size("small-cnn", 24, 32, 16, 1, 1, 3, (("patch", 16, 3),)),
}
N_CLASSES = 10


def sync(device: str) -> None:
    if accel.is_cuda(device):
        torch.cuda.synchronize()


def data(n: int, px: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, 3, px, px), dtype=torch.uint8, generator=g), torch.randint(0, N_CLASSES, (n,), generator=g)


def painted(images: torch.Tensor, targets: torch.Tensor, every: bool, seed: int = 0) -> PairedDataset:
    """The set with nothing painted, or every image painted with a random square (a quarter of the side)."""
    n, s = images.shape[0], images.shape[-1]
    masks = torch.zeros(n, 1, s, s, dtype=torch.bool)
    if every:
        k = max(1, s // 4)
        for i, (y, x) in enumerate(torch.randint(0, s - k + 1, (n, 2), generator=torch.Generator().manual_seed(seed)).tolist()):
            masks[i, 0, y:y + k, x:x + k] = True
    return PairedDataset(images, masks, targets, list(range(n)))


def reference(model: torch.nn.Module, images: torch.Tensor, targets: torch.Tensor, batch: int, epochs: int,
              device: str) -> None:
    """torchvision references/classification ``train_one_epoch`` with ``--amp`` (bf16) and ``--channels-last``."""
    norm = make_normalizer(IMAGENET_MEAN, IMAGENET_STD)
    loader = DataLoader(TensorDataset(images, targets), batch_size=batch, shuffle=True, num_workers=0,
                        pin_memory=accel.is_cuda(device))
    accel.prepare_model(model, device).train()
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    for _ in range(epochs):
        for x, y in loader:
            x = accel.prepare_batch(x.to(device, non_blocking=True).float().div_(255.0))
            y = y.to(device, non_blocking=True)
            with accel.autocast(device):
                loss = F.cross_entropy(model(norm(x)), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()


def streamed(images: torch.Tensor, targets: torch.Tensor, root: Path) -> PairedDataset:
    """The same set written to an image cache and read back by the DataLoader path (nothing painted)."""
    cache = ImageCache(root)
    paths = [cache.write(f"bench://{i}", images.shape[-1], "v1", Image.fromarray(img.permute(1, 2, 0).numpy()))
             for i, img in enumerate(images)]
    n = len(paths)
    return PairedDataset(CachedImages(paths, images.shape[-1]), PackedMasks({}, n, images.shape[-1]), targets,
                         list(range(n)))


def training_throughput(size: Size, device: str, tmp: Path) -> dict[str, list[float]]:
    """Seconds per run of each loop, per round (a warm-up run first)."""
    images, targets = data(size.images, size.px)
    torch.manual_seed(0)
    init = build_model(size.arch, N_CLASSES).state_dict()

    def model() -> torch.nn.Module:
        m = build_model(size.arch, N_CLASSES)
        m.load_state_dict(init)
        return m

    def opts(amp: bool, workers: int = 4) -> TrainOptions:
        return TrainOptions(epochs=size.epochs, batch_size=size.batch, optimizer="sgd", lr=0.01, lr_schedule="constant",
                            device=device, eval_every_epoch=False, noise_mode="noise", amp=amp, loader_workers=workers)

    plain, paired = painted(images, targets, False), painted(images, targets, True)
    stream = streamed(images, targets, tmp / "cache")
    workers = 4 if accel.is_cuda(device) else 1
    twice = (images.repeat(2, 1, 1, 1), targets.repeat(2))
    runs = {
        "reference": lambda: reference(model(), images, targets, size.batch, size.epochs, device),
        "reference at batch 2B": lambda: reference(model(), *twice, 2 * size.batch, size.epochs, device),
        "product plain": lambda: fit(model(), plain, opts(True), IMAGENET_MEAN, IMAGENET_STD, device),
        "product paired": lambda: fit(model(), paired, opts(True), IMAGENET_MEAN, IMAGENET_STD, device),
        "product plain, fp32": lambda: fit(model(), plain, opts(False), IMAGENET_MEAN, IMAGENET_STD, device),
        f"product plain, streamed ({workers} DataLoader workers)":
            lambda: fit(model(), stream, opts(True, workers), IMAGENET_MEAN, IMAGENET_STD, device),
    }
    runs["reference"]()  # warm-up: cuDNN autotuning, the allocator
    times: dict[str, list[float]] = {k: [] for k in runs}
    for _ in range(size.rounds):
        for name, run in runs.items():
            sync(device)
            t = time.perf_counter()
            run()
            sync(device)
            times[name].append(time.perf_counter() - t)
    return times


def latency(size: Size, device: str) -> dict[str, list[float]]:
    """Milliseconds per call: the product's classifier on PIL images, and the bare bf16 channels-last forward."""
    rng = np.random.default_rng(0)
    pil = [Image.fromarray(rng.integers(0, 256, (size.px, size.px, 3), dtype=np.uint8)) for _ in range(16)]
    model = build_model(size.arch, N_CLASSES).to(device).eval()
    served = ServedModel(model, CheckpointMeta("v0", size.arch, [str(i) for i in range(N_CLASSES)], size.px), device)
    fast = accel.prepare_model(build_model(size.arch, N_CLASSES), device).eval()
    x16 = accel.prepare_batch(torch.rand(16, 3, size.px, size.px, device=device))
    out: dict[str, list[float]] = {}

    def timed(name: str, fn) -> None:
        fn()  # warm-up
        out[name] = []
        for _ in range(size.latency_repeats):
            sync(device)
            t = time.perf_counter()
            fn()
            sync(device)
            out[name].append(1000 * (time.perf_counter() - t))

    for b in (1, 16):
        timed(f"classify, batch {b} (fp32, PIL -> probabilities)", lambda b=b: classify(served, pil[:b], 16))
    with torch.inference_mode():
        for b in (1, 16):
            timed(f"forward, batch {b} (bf16 + channels-last on CUDA)",
                  lambda b=b: _forward(fast, x16[:b], device))
    return out


def _forward(model: torch.nn.Module, x: torch.Tensor, device: str) -> torch.Tensor:
    with accel.autocast(device):
        return model(x)


def throughput_table(times: dict[str, list[float]], size: Size) -> str:
    n = size.images * size.epochs
    med = {k: statistics.median(v) for k, v in times.items()}

    def ratio(a: str, b: str) -> float:
        return statistics.median(x / y for x, y in zip(times[a], times[b]))

    rows = ["| loop | images/s | time vs reference | time vs product plain |", "|---|---:|---:|---:|"]
    for name in times:
        rows.append(f"| {name} | {n / med[name]:.0f} | {ratio(name, 'reference'):.2f}x | "
                    f"{ratio(name, 'product plain'):.2f}x |")
    return "\n".join(rows)


def latency_table(ms: dict[str, list[float]]) -> str:
    rows = ["| call | p50 ms | p95 ms |", "|---|---:|---:|"]
    for name, v in ms.items():
        rows.append(f"| {name} | {statistics.median(v):.2f} | {float(np.percentile(v, 95)):.2f} |")
    return "\n".join(rows)


def recipe_rows(size: Size, device: str) -> tuple[str, list[dict]]:
    preset = recipe.Preset(rows=size.recipe_rows, n_classes=4, n_test=50 if device != "cpu" else 3,
                           arch="resnet-18", plain_epochs=(20, 30) if device != "cpu" else (1, 2), seeds=1,
                           old_defaults=False, product_overrides=() if device != "cpu" else (("epochs", 1),))
    with tempfile.TemporaryDirectory(prefix="bench-gpu-recipe-") as tmp:
        rows = recipe.run(preset, device, Path(tmp), log=lambda *a, **k: None)
    return recipe.table(rows, preset, device), rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--smoke", action="store_true", help="CPU-sized, seconds (CI)")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--no-recipe", action="store_true", help="leave the recipe rows out")
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads (1: comparable CPU timings)")
    ap.add_argument("--out", type=Path)
    args = ap.parse_args(argv)
    size = SIZES["smoke" if args.smoke else "gpu"]
    device = ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    torch.set_num_threads(args.threads)
    if accel.is_cuda(device):
        torch.backends.cudnn.benchmark = True
        hw = torch.cuda.get_device_name(0)
    else:
        hw = f"CPU ({platform.processor() or platform.machine()}, {torch.get_num_threads()} torch threads)"
    t0 = time.perf_counter()
    head = (f"GPU path ({'smoke' if args.smoke else 'full'}): {size.arch} at {size.px} px, {size.images} images, "
            f"batch {size.batch}, {size.epochs} epoch(s) per run, medians of {size.rounds} round(s), {device}: {hw}")
    print(head, flush=True)
    with tempfile.TemporaryDirectory(prefix="bench-gpu-") as tmp:
        times = training_throughput(size, device, Path(tmp))
    parts = [head, "", "Training", "", throughput_table(times, size)]
    print("\n".join(parts[2:]), flush=True)
    ms = latency(size, device)
    parts += ["", "Inference latency", "", latency_table(ms)]
    print("\n".join(parts[-4:]), flush=True)
    result = {"device": device, "hardware": hw, "size": size.__dict__, "train_s": times, "latency_ms": ms}
    if not args.no_recipe:
        md, rows = recipe_rows(size, device)
        parts += ["", "Recipe rows", "", md]
        print("\n".join(parts[-4:]), flush=True)
        result["recipe"] = rows
    total = time.perf_counter() - t0
    parts.append(f"\ntotal {total:.0f}s")
    print(parts[-1])
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "gpu.md").write_text("\n".join(parts) + "\n")
        (args.out / "gpu.json").write_text(json.dumps(result, indent=1, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
