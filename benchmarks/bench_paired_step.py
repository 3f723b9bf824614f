"""Time one paired training step against one plain step.

    python -m benchmarks.bench_paired_step            # CPU (or CUDA when available)
    python -m benchmarks.bench_paired_step --quick    # a seconds-long smoke run
    python -m benchmarks.bench_paired_step --device cpu --noise mixture --repeats 20

Every sample of the paired batch is painted (a random blob-ish rectangle mask), so the paired step
runs the model on 2B images: the goal is ``paired / plain <= 2.1``.  Timings are medians over
``--repeats`` steps after ``--warmup`` steps; on CUDA each step ends with ``torch.cuda.synchronize``.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from training.models import build_model
from training.paired import make_normalizer, paired_step, plain_step

CONFIGS = [  # (arch, image size, batch)
    ("tiny-cnn", 32, 64),
    ("resnet-18", 64, 32),
    ("resnet-18-32x32", 32, 32),
]
QUICK_CONFIGS = [("tiny-cnn", 32, 16), ("resnet-18", 64, 4), ("resnet-18-32x32", 32, 4)]


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _time(fn, device: torch.device, warmup: int, repeats: int) -> float:
    for _ in range(warmup):
        fn()
    _sync(device)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1e3


def _masks(b: int, size: int, gen: torch.Generator, device: torch.device) -> torch.Tensor:
    """One random square per sample (side 1/8 .. 1/2 of the image), so every sample is painted."""
    yy = torch.arange(size).view(1, size, 1)
    xx = torch.arange(size).view(1, 1, size)
    y0 = torch.randint(0, size // 2, (b, 1, 1), generator=gen)
    x0 = torch.randint(0, size // 2, (b, 1, 1), generator=gen)
    side = torch.randint(size // 8 + 1, size // 2 + 1, (b, 1, 1), generator=gen)
    m = (yy >= y0) & (yy < y0 + side) & (xx >= x0) & (xx < x0 + side)
    return m.unsqueeze(1).to(device)


def bench(arch: str, size: int, batch: int, device: torch.device, noise: str, warmup: int, repeats: int,
          num_classes: int = 10) -> tuple[float, float]:
    gen = torch.Generator().manual_seed(0)
    images = torch.rand(batch, 3, size, size, generator=gen).to(device)
    targets = torch.randint(0, num_classes, (batch,), generator=gen).to(device)
    masks = _masks(batch, size, gen, device)
    norm = make_normalizer((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    dev_gen = torch.Generator(device=device).manual_seed(1)

    def run(paired: bool) -> float:
        torch.manual_seed(0)
        model = build_model(arch, num_classes).to(device).train()
        opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
        if paired:
            fn = lambda: paired_step(model, opt, norm, images, masks, targets, 1.0, noise, dev_gen)  # noqa: E731
        else:
            fn = lambda: plain_step(model, opt, norm, images, targets)  # noqa: E731
        return _time(fn, device, warmup, repeats)

    # interleave to spread drift (thermal, other load) over both
    plain_a = run(False)
    paired_a = run(True)
    plain_b = run(False)
    paired_b = run(True)
    return min(plain_a, plain_b), min(paired_a, paired_b)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="tiny batches, few repeats (smoke run)")
    ap.add_argument("--device", default=None, help="cpu / cuda (default: cuda when available)")
    ap.add_argument("--noise", default="noise", help="noise mode for the paired step (default: noise)")
    ap.add_argument("--repeats", type=int, default=None, help="timed steps per measurement")
    ap.add_argument("--warmup", type=int, default=None)
    ap.add_argument("--threads", type=int, default=None, help="torch.set_num_threads for CPU runs")
    args = ap.parse_args(argv)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if args.threads:
        torch.set_num_threads(args.threads)
    configs = QUICK_CONFIGS if args.quick else CONFIGS
    repeats = args.repeats or (3 if args.quick else (30 if device.type == "cuda" else 10))
    warmup = args.warmup if args.warmup is not None else (1 if args.quick else 3)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu x{torch.get_num_threads()} threads"
    print(f"device: {name}   noise: {args.noise}   median of {repeats} steps (best of 2 interleaved runs)")
    print(f"{'model':<18}{'px':>5}{'batch':>7}{'plain ms':>11}{'paired ms':>11}{'ratio':>8}")
    worst = 0.0
    for arch, size, batch in configs:
        plain, paired = bench(arch, size, batch, device, args.noise, warmup, repeats)
        ratio = paired / plain
        worst = max(worst, ratio)
        print(f"{arch:<18}{size:>5}{batch:>7}{plain:>11.2f}{paired:>11.2f}{ratio:>8.2f}")
    print(f"worst ratio {worst:.2f} (goal <= 2.1)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
